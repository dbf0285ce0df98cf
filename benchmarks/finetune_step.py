"""Throughput of one Alg. 1 training iteration: images/s, FLOPs, model FLOP utilisation, peak memory.

One iteration = image encoder forward, 1 + n_steps prompt-encoder/mask-decoder passes with their
losses, backward, AdamW step (and, with ``--e-sem``, the encoder again, the decoder pass and a second
step of the same AdamW), on a synthetic batch of images at the model's input size with ``n_obj``
rectangular objects per image whose masks live in the training-image frame (``--mask-size``,
default half the input size: the reference's 512 px images for SAM's 1024 px input). FLOPs are
counted once with ``torch.utils.flop_counter.FlopCounterMode`` (matmuls/convs, forward+backward);
MFU = counted FLOPs per second / the device's peak (``--peak-tflops``; H100/A100 bf16 dense peaks
are filled in automatically).

``--freeze image_encoder`` trains without the encoder (as ``freeze`` in a finetune run: no gradient,
eval mode, one image at a time); ``--embedding-cache both`` then times the encoder run every
iteration (off) against embeddings read from the run's cache (on, warmed by the warm-up
iterations, as when an image comes back or another run on the same encoder met it first), and
prints their ratio.

    python benchmarks/finetune_step.py --model-type tiny --batch-sizes 1 2 4            # CPU
    python benchmarks/finetune_step.py --model-type vit_b --batch-sizes 1 4 7 --activation-checkpointing both
    python benchmarks/finetune_step.py --model-type lite_medsam --batch-sizes 1 --n-obj 1 --threads 1 \
        --activation-checkpointing off --freeze image_encoder --embedding-cache both    # LiteMedSAM, CPU
"""

from __future__ import annotations

import argparse
import json
import platform
import tempfile
import time

import numpy as np
import torch
from torch.utils.flop_counter import FlopCounterMode

from medpipe.finetune.encoder_cache import FrozenEncoder
from medpipe.finetune.objective import alg1_loss, semantic_dice_loss, semantic_outputs
from medpipe.finetune.trainer import enable_activation_checkpointing, freeze_parts
from medpipe.models.names import MODEL_TYPES
from medpipe.models.sam import build_sam, encoder_digest
from medpipe.models.sem_decoder import decoder_for

PEAK_BF16_TFLOPS = {"H100": 989.0, "H200": 989.0, "A100": 312.0}


def synthetic_batch(batch: int, n_obj: int, image_size: int, size: int, seed: int = 0):
    rng = np.random.default_rng(seed)
    images = torch.from_numpy(rng.normal(size=(batch, 3, image_size, image_size)).astype(np.float32))
    masks = torch.zeros(batch, n_obj, size, size)
    for b in range(batch):
        for k in range(n_obj):
            y0, x0 = rng.integers(0, size // 2, size=2)
            h, w = rng.integers(size // 16, size // 3, size=2)
            masks[b, k, y0 : y0 + h, x0 : x0 + w] = 1
    return images, masks


def make_step(model_type: str, batch: int, args, device, checkpointing: bool, cache_dir=None):
    torch.manual_seed(0)
    sam = build_sam(model_type, args.checkpoint).to(device).train()
    freeze_parts(sam, args.freeze)
    for part in args.freeze:
        getattr(sam, part).eval()
    frozen = None
    if "image_encoder" in args.freeze:
        frozen = FrozenEncoder(sam.image_encoder, encoder_digest(sam), cache_dir, 1e12 if cache_dir else 0)
    if checkpointing:
        enable_activation_checkpointing(sam)
    decoder = decoder_for(sam, out_channels=2).to(device) if args.e_sem else None
    params = [p for p in sam.parameters() if p.requires_grad]
    params += list(decoder.parameters()) if decoder is not None else []
    optimizer = torch.optim.AdamW(params, lr=1e-5)
    size = args.mask_size or sam.image_encoder.img_size // 2
    images, masks = synthetic_batch(batch, args.n_obj, sam.image_encoder.img_size, size)
    images, masks = images.to(device), masks.to(device)
    autocast = torch.autocast("cuda", dtype=torch.bfloat16, enabled=device.type == "cuda")

    def step(iteration: int):
        rngs = [np.random.default_rng([iteration, b]) for b in range(batch)]
        optimizer.zero_grad(set_to_none=True)
        with autocast:
            emb = sam.image_encoder(images) if frozen is None else frozen(images)
            loss = alg1_loss(sam, emb, masks, rngs, use_box=iteration % 2 == 1, use_mask=args.p_mask > 0,
                             n_steps=args.n_steps, box_distortion=0.025)["loss"]
        loss.backward()
        optimizer.step()
        if decoder is not None:
            optimizer.zero_grad(set_to_none=True)
            with autocast:
                probs = semantic_outputs(decoder, sam.image_encoder(images) if frozen is None else emb, size)
                sem = semantic_dice_loss(probs, masks.amax(1, keepdim=True))
            sem.backward()
            optimizer.step()

    return step


def sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def measure(model_type: str, batch: int, args, device, checkpointing: bool, model_flops: float | None = None,
            cache_dir=None) -> dict:
    """Time one configuration. ``model_flops``: FLOPs of the same iteration without activation
    checkpointing; MFU counts those (recomputation is not model work), TFLOP/iter counts what ran.
    ``cache_dir``: a frozen encoder's embeddings are kept there (``--embedding-cache on``)."""
    step = make_step(model_type, batch, args, device, checkpointing, cache_dir)
    for i in range(args.warmup):
        step(i)
    with FlopCounterMode(display=False) as counter:
        step(0)  # a point-prompt iteration (3-mask head on the first step)
    flops = counter.get_total_flops()
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    sync(device)
    start = time.perf_counter()
    for i in range(args.iterations):
        step(i)
    sync(device)
    seconds = (time.perf_counter() - start) / args.iterations
    peak = args.peak_tflops
    if peak is None and device.type == "cuda":
        name = torch.cuda.get_device_name(device)
        peak = next((v for k, v in PEAK_BF16_TFLOPS.items() if k in name), None)
    achieved = flops / seconds / 1e12
    useful = (model_flops or flops) / seconds / 1e12
    return {
        "model_type": model_type,
        "batch": batch,
        "activation_checkpointing": checkpointing,
        "n_steps": args.n_steps,
        "n_obj": args.n_obj,
        "e_sem": args.e_sem,
        "freeze": list(args.freeze),
        "embedding_cache": cache_dir is not None,
        "seconds_per_iteration": round(seconds, 4),
        "images_per_s": round(batch / seconds, 3),
        "tflop_per_iteration": round(flops / 1e12, 4),
        "achieved_tflops": round(achieved, 4),
        "mfu": round(useful / peak, 4) if peak else None,
        "flops": flops,
        "peak_memory_gib": round(torch.cuda.max_memory_allocated(device) / 2**30, 2) if device.type == "cuda" else None,
    }


def machine(device) -> str:
    if device.type == "cuda":
        return f"{torch.cuda.get_device_name(device)}, torch {torch.__version__}, bf16 autocast"
    return (f"CPU {platform.processor() or platform.machine()}, {torch.get_num_threads()} threads, "
            f"torch {torch.__version__}, fp32")


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model-type", default="tiny", choices=MODEL_TYPES)
    parser.add_argument("--checkpoint", default=None,
                        help="weights (a file or `bundled`); default: random, bundled for lite_medsam")
    parser.add_argument("--freeze", nargs="*", default=[], choices=["image_encoder", "prompt_encoder", "mask_decoder"])
    parser.add_argument("--embedding-cache", choices=["off", "on", "both"], default="off",
                        help="with --freeze image_encoder: encode every iteration (off) or read the run's cache (on)")
    parser.add_argument("--batch-sizes", type=int, nargs="+", default=[2])
    parser.add_argument("--n-obj", type=int, default=5)
    parser.add_argument("--n-steps", type=int, default=7, help="corrections; 7 = the reference's 8 decoder passes")
    parser.add_argument("--mask-size", type=int, default=None, help="mask frame; default half the input size")
    parser.add_argument("--p-mask", type=float, default=0.5)
    parser.add_argument("--e-sem", action="store_true")
    parser.add_argument("--activation-checkpointing", choices=["off", "on", "both"], default="both")
    parser.add_argument("--warmup", type=int, default=1)
    parser.add_argument("--iterations", type=int, default=3)
    parser.add_argument("--threads", type=int, default=None, help="CPU threads (torch.set_num_threads)")
    parser.add_argument("--peak-tflops", type=float, default=None, help="device peak for MFU")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--json", help="also write the results here")
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.checkpoint is None and args.model_type == "lite_medsam":
        args.checkpoint = "bundled"
    if args.embedding_cache != "off" and "image_encoder" not in args.freeze:
        parser.error("--embedding-cache needs --freeze image_encoder")
    device = torch.device(args.device)
    modes = {"off": [False], "on": [True], "both": [False, True]}[args.activation_checkpointing]
    caches = {"off": [False], "on": [True], "both": [False, True]}[args.embedding_cache]
    results = []
    frozen = ",".join(args.freeze) or "-"
    print(f"# {machine(device)}")
    print("| model | frozen | emb. cache | batch | act. ckpt | s/iter | images/s | TFLOP/iter | TFLOP/s | MFU "
          "| peak GiB |")
    print("|---|---|---|---|---|---|---|---|---|---|---|")
    for batch in args.batch_sizes:
        for checkpointing in modes:
            for cached in caches:
                with tempfile.TemporaryDirectory() as tmp:
                    try:
                        off = next((r for r in results if r["batch"] == batch and not r["activation_checkpointing"]
                                    and "flops" in r), None)
                        row = measure(args.model_type, batch, args, device, checkpointing,
                                      off["flops"] if off else None, tmp if cached else None)
                    except torch.cuda.OutOfMemoryError:
                        row = {"model_type": args.model_type, "batch": batch, "activation_checkpointing": checkpointing,
                               "error": "out of memory"}
                        torch.cuda.empty_cache()
                results.append(row)
                if "error" in row:
                    print(f"| {args.model_type} | {frozen} | {cached} | {batch} | {checkpointing} | OOM | | | | | |")
                    continue
                print(f"| {row['model_type']} | {frozen} | {'on' if cached else 'off'} | {batch} | "
                      f"{'on' if checkpointing else 'off'} | {row['seconds_per_iteration']} | "
                      f"{row['images_per_s']} | {row['tflop_per_iteration']} | {row['achieved_tflops']} | "
                      f"{row['mfu'] if row['mfu'] is not None else 'n/a'} | {row['peak_memory_gib'] or 'n/a'} |",
                      flush=True)
    for batch in args.batch_sizes:
        pair = [r for r in results if r["batch"] == batch and "error" not in r and not r["activation_checkpointing"]]
        if len({r["embedding_cache"] for r in pair}) == 2:
            on, off = (next(r for r in pair if r["embedding_cache"] == flag) for flag in (True, False))
            print(f"# batch {batch}: embedding cache ratio (images/s on / off) = "
                  f"{on['images_per_s'] / off['images_per_s']:.2f}")
    if args.json:
        with open(args.json, "w") as handle:
            json.dump({"machine": machine(device), "results": results}, handle, indent=2)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

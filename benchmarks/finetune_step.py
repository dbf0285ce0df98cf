"""Throughput of one Alg. 1 training iteration: images/s, FLOPs, model FLOP utilisation, peak memory.

One iteration = image encoder forward, 1 + n_steps prompt-encoder/mask-decoder passes with their
losses, backward, AdamW step (and, with ``--e-sem``, the encoder again, the decoder pass and a second
step of the same AdamW), on a synthetic batch of images at the model's input size with ``n_obj``
rectangular objects per image whose masks live in the training-image frame (``--mask-size``,
default half the input size: the reference's 512 px images for SAM's 1024 px input). FLOPs are
counted once with ``torch.utils.flop_counter.FlopCounterMode`` (matmuls/convs, forward+backward);
MFU = counted FLOPs per second / the device's peak (``--peak-tflops``; H100/A100 bf16 dense peaks
are filled in automatically).

    python benchmarks/finetune_step.py --model-type tiny --batch-sizes 1 2 4            # CPU
    python benchmarks/finetune_step.py --model-type vit_b --batch-sizes 1 4 7 --activation-checkpointing both
"""

from __future__ import annotations

import argparse
import json
import platform
import time

import numpy as np
import torch
from torch.utils.flop_counter import FlopCounterMode

from medpipe.finetune.objective import alg1_loss, semantic_dice_loss, semantic_outputs
from medpipe.finetune.trainer import enable_activation_checkpointing
from medpipe.models.sam import build_sam
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


def make_step(model_type: str, batch: int, args, device, checkpointing: bool):
    torch.manual_seed(0)
    sam = build_sam(model_type).to(device).train()
    if checkpointing:
        enable_activation_checkpointing(sam)
    decoder = decoder_for(sam, out_channels=2).to(device) if args.e_sem else None
    params = list(sam.parameters()) + (list(decoder.parameters()) if decoder is not None else [])
    optimizer = torch.optim.AdamW(params, lr=1e-5)
    size = args.mask_size or sam.image_encoder.img_size // 2
    images, masks = synthetic_batch(batch, args.n_obj, sam.image_encoder.img_size, size)
    images, masks = images.to(device), masks.to(device)
    autocast = torch.autocast("cuda", dtype=torch.bfloat16, enabled=device.type == "cuda")

    def step(iteration: int):
        rngs = [np.random.default_rng([iteration, b]) for b in range(batch)]
        optimizer.zero_grad(set_to_none=True)
        with autocast:
            emb = sam.image_encoder(images)
            loss = alg1_loss(sam, emb, masks, rngs, use_box=iteration % 2 == 1, use_mask=args.p_mask > 0,
                             n_steps=args.n_steps, box_distortion=0.025)["loss"]
        loss.backward()
        optimizer.step()
        if decoder is not None:
            optimizer.zero_grad(set_to_none=True)
            with autocast:
                probs = semantic_outputs(decoder, sam.image_encoder(images), size)
                sem = semantic_dice_loss(probs, masks.amax(1, keepdim=True))
            sem.backward()
            optimizer.step()

    return step


def sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def measure(model_type: str, batch: int, args, device, checkpointing: bool, model_flops: float | None = None) -> dict:
    """Time one configuration. ``model_flops``: FLOPs of the same iteration without activation
    checkpointing; MFU counts those (recomputation is not model work), TFLOP/iter counts what ran."""
    step = make_step(model_type, batch, args, device, checkpointing)
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
    parser.add_argument("--model-type", default="tiny", choices=["tiny", "vit_b", "vit_l", "vit_h"])
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
    device = torch.device(args.device)
    modes = {"off": [False], "on": [True], "both": [False, True]}[args.activation_checkpointing]
    results = []
    print(f"# {machine(device)}")
    print("| model | batch | act. ckpt | s/iter | images/s | TFLOP/iter | TFLOP/s | MFU | peak GiB |")
    print("|---|---|---|---|---|---|---|---|---|")
    for batch in args.batch_sizes:
        for checkpointing in modes:
            try:
                off = next((r for r in results if r["batch"] == batch and not r["activation_checkpointing"]
                            and "flops" in r), None)
                row = measure(args.model_type, batch, args, device, checkpointing, off["flops"] if off else None)
            except torch.cuda.OutOfMemoryError:
                row = {"model_type": args.model_type, "batch": batch, "activation_checkpointing": checkpointing,
                       "error": "out of memory"}
                torch.cuda.empty_cache()
            results.append(row)
            if "error" in row:
                print(f"| {args.model_type} | {batch} | {checkpointing} | OOM | | | | | |")
                continue
            print(f"| {row['model_type']} | {batch} | {'on' if checkpointing else 'off'} | "
                  f"{row['seconds_per_iteration']} | "
                  f"{row['images_per_s']} | {row['tflop_per_iteration']} | {row['achieved_tflops']} | "
                  f"{row['mfu'] if row['mfu'] is not None else 'n/a'} | {row['peak_memory_gib'] or 'n/a'} |",
                  flush=True)
    if args.json:
        with open(args.json, "w") as handle:
            json.dump({"machine": machine(device), "results": results}, handle, indent=2)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

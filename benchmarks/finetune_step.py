"""Throughput of one Alg. 1 training iteration: images/s, FLOPs, model FLOP utilisation, peak memory.

One iteration = image encoder forward, 1 + n_steps prompt-encoder/mask-decoder passes with their
losses, backward, AdamW step (and, with ``--e-sem``, the encoder again, the decoder pass and a second
step of the same AdamW), on a synthetic batch of images at the model's input size with ``n_obj``
rectangular objects per image whose masks live in the training-image frame (``--mask-size``,
default half the input size: the reference's 512 px images for SAM's 1024 px input). FLOPs are
counted once with ``torch.utils.flop_counter.FlopCounterMode`` (matmuls/convs, forward+backward);
MFU = counted FLOPs per second / the device's peak (``--peak-tflops``; H100/A100 bf16 dense peaks
are filled in automatically).

``--variants old new`` (the default) times the former iteration against today's in the same run:
*old* = segment_anything's encoder attention, numpy prompt draws per object and pass (predictions
copied to the host), SAM's prompt encoder, one decoder call per image, ``F.interpolate`` for the
loss, unfused AdamW and three scalar transfers for logging (``alg1_loss_reference``); *new* = fused
SDPA attention, prompts drawn on the device, one decoder call per pass for the whole batch, the
resize matrix, fused AdamW on CUDA and one logging transfer (``alg1_loss``, what the trainer runs).
Each row also times the encoder alone (forward + backward) and counts the host syncs of one
iteration: on CUDA with ``torch.cuda.set_sync_debug_mode`` (every warning it raises), on CPU with
:class:`medpipe.finetune.host_syncs.HostSyncCounter` (the ops that would synchronise on CUDA, in the
forward and backward and the logging; the optimiser step is left out there, since a CPU AdamW's
scalar reads are not device syncs).

``--freeze image_encoder`` trains without the encoder (as ``freeze`` in a finetune run: no gradient,
eval mode, one image at a time); ``--embedding-cache both`` then times the encoder run every
iteration (off) against embeddings read from the run's cache (on, warmed by the warm-up
iterations, as when an image comes back or another run on the same encoder met it first), and
prints their ratio.

    python benchmarks/finetune_step.py --model-type tiny vit_b --batch-sizes 1 --threads 2 \
        --activation-checkpointing off --n-obj 2                                        # old vs new, CPU
    python benchmarks/finetune_step.py --model-type tiny --batch-sizes 1 2 4            # CPU
    python benchmarks/finetune_step.py --model-type vit_b --batch-sizes 1 4 7 --activation-checkpointing both
    python benchmarks/finetune_step.py --model-type lite_medsam --batch-sizes 1 --n-obj 1 --threads 1 \
        --activation-checkpointing off --freeze image_encoder --embedding-cache both    # LiteMedSAM, CPU
"""

from __future__ import annotations

import argparse
import gc
import json
import platform
import tempfile
import time
import warnings

import numpy as np
import torch
from torch.utils.flop_counter import FlopCounterMode

from medpipe.finetune.encoder_cache import FrozenEncoder
from medpipe.finetune.host_syncs import HostSyncCounter
from medpipe.finetune.objective import alg1_loss, alg1_loss_reference, semantic_dice_loss, semantic_outputs
from medpipe.finetune.trainer import enable_activation_checkpointing, freeze_parts
from medpipe.models.attention import set_fused_attention
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


def make_step(model_type: str, batch: int, args, device, checkpointing: bool, cache_dir=None, variant="new"):
    """One training iteration of ``variant`` (old / new) as a function of the iteration number."""
    new = variant == "new"
    torch.manual_seed(0)
    sam = build_sam(model_type, args.checkpoint).to(device).train()
    set_fused_attention(sam, new)
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
    optimizer = torch.optim.AdamW(params, lr=1e-5, fused=new and device.type == "cuda")
    interactive_loss = alg1_loss if new else alg1_loss_reference
    size = args.mask_size or sam.image_encoder.img_size // 2
    images, masks = synthetic_batch(batch, args.n_obj, sam.image_encoder.img_size, size)
    images, masks = images.to(device), masks.to(device)
    autocast = torch.autocast("cuda", dtype=torch.bfloat16, enabled=device.type == "cuda")

    def step(iteration: int, optimize: bool = True):
        rngs = [np.random.default_rng([iteration, b]) for b in range(batch)]
        optimizer.zero_grad(set_to_none=True)
        with autocast:
            emb = sam.image_encoder(images) if frozen is None else frozen(images)
            losses = interactive_loss(sam, emb, masks, rngs, use_box=iteration % 2 == 1, use_mask=args.p_mask > 0,
                                      n_steps=args.n_steps, box_distortion=0.025)
        losses["loss"].backward()
        if optimize:
            optimizer.step()
        if new:  # the trainer's logging: one transfer of the stacked scalars
            torch.stack([v.detach().float() for v in losses.values()]).tolist()
        else:
            [float(v.detach()) for v in losses.values()]
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


def encoder_seconds(model_type: str, batch: int, args, device, checkpointing: bool, variant: str) -> float:
    """Seconds per forward + backward of the image encoder alone (old = reference attention)."""
    torch.manual_seed(0)
    sam = build_sam(model_type, args.checkpoint).to(device).train()
    set_fused_attention(sam, variant == "new")
    if checkpointing:
        enable_activation_checkpointing(sam)
    size = sam.image_encoder.img_size
    images = torch.randn(batch, 3, size, size, device=device)
    autocast = torch.autocast("cuda", dtype=torch.bfloat16, enabled=device.type == "cuda")

    def once():
        sam.zero_grad(set_to_none=True)
        with autocast:
            out = sam.image_encoder(images)
        out.float().square().mean().backward()

    for _ in range(args.warmup):
        once()
    sync(device)
    start = time.perf_counter()
    for _ in range(args.iterations):
        once()
    sync(device)
    return (time.perf_counter() - start) / args.iterations


def count_syncs(step, device, new: bool) -> int:
    """Host syncs of one iteration: CUDA's sync debug mode on a GPU, :class:`HostSyncCounter` on CPU."""
    if device.type == "cuda":
        sync(device)
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            torch.cuda.set_sync_debug_mode("warn")
            try:
                step(1)
                sync(device)
            finally:
                torch.cuda.set_sync_debug_mode("default")
        return sum("synchroniz" in str(w.message).lower() for w in caught)
    with HostSyncCounter() as counter:
        step(1, optimize=False)
    return counter.total + (1 if new else 0)  # + the logging copy, which CPU ``tolist`` does without dispatching


def measure(model_type: str, batch: int, args, device, checkpointing: bool, model_flops: float | None = None,
            cache_dir=None, variant: str = "new") -> dict:
    """Time one configuration. ``model_flops``: FLOPs of the same iteration without activation
    checkpointing; MFU counts those (recomputation is not model work), TFLOP/iter counts what ran.
    ``cache_dir``: a frozen encoder's embeddings are kept there (``--embedding-cache on``)."""
    step = make_step(model_type, batch, args, device, checkpointing, cache_dir, variant)
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
    syncs = count_syncs(step, device, variant == "new")
    encoder = (encoder_seconds(model_type, batch, args, device, checkpointing, variant)
               if args.time_encoder and "image_encoder" not in args.freeze else None)
    peak = args.peak_tflops
    if peak is None and device.type == "cuda":
        name = torch.cuda.get_device_name(device)
        peak = next((v for k, v in PEAK_BF16_TFLOPS.items() if k in name), None)
    achieved = flops / seconds / 1e12
    useful = (model_flops or flops) / seconds / 1e12
    return {
        "model_type": model_type,
        "variant": variant,
        "batch": batch,
        "activation_checkpointing": checkpointing,
        "n_steps": args.n_steps,
        "n_obj": args.n_obj,
        "e_sem": args.e_sem,
        "freeze": list(args.freeze),
        "embedding_cache": cache_dir is not None,
        "seconds_per_iteration": round(seconds, 4),
        "encoder_seconds": round(encoder, 4) if encoder is not None else None,
        "syncs_per_iteration": syncs,
        "images_per_s": round(batch / seconds, 3),
        "tflop_per_iteration": round(flops / 1e12, 4),
        "achieved_tflops": round(achieved, 4),
        "mfu": round(useful / peak, 4) if peak else None,
        "flops": flops,
        "peak_memory_gib": _gib(torch.cuda.max_memory_allocated(device)) if device.type == "cuda" else None,
        "peak_reserved_gib": _gib(torch.cuda.max_memory_reserved(device)) if device.type == "cuda" else None,
    }


def _gib(nbytes: int) -> float:
    return round(nbytes / 2**30, 2)


def machine(device) -> str:
    if device.type == "cuda":
        return f"{torch.cuda.get_device_name(device)}, torch {torch.__version__}, bf16 autocast"
    return (f"CPU {platform.processor() or platform.machine()}, {torch.get_num_threads()} threads, "
            f"torch {torch.__version__}, fp32")


def _error_row(model_type, variant, batch, checkpointing, error) -> dict:
    return {"model_type": model_type, "variant": variant, "batch": batch, "activation_checkpointing": checkpointing,
            "error": error}


def _cell(value, empty="n/a"):
    return empty if value is None else value


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model-type", nargs="+", default=["tiny"], choices=MODEL_TYPES)
    parser.add_argument("--checkpoint", default=None,
                        help="weights (a file or `bundled`); default: random, bundled for lite_medsam")
    parser.add_argument("--freeze", nargs="*", default=[], choices=["image_encoder", "prompt_encoder", "mask_decoder"])
    parser.add_argument("--embedding-cache", choices=["off", "on", "both"], default="off",
                        help="with --freeze image_encoder: encode every iteration (off) or read the run's cache (on)")
    parser.add_argument("--variants", nargs="+", choices=["old", "new"], default=["old", "new"],
                        help="the former iteration (old) and today's (new), timed in the same run")
    parser.add_argument("--batch-sizes", type=int, nargs="+", default=[2])
    parser.add_argument("--n-obj", type=int, default=5)
    parser.add_argument("--n-steps", type=int, default=7, help="corrections; 7 = the reference's 8 decoder passes")
    parser.add_argument("--mask-size", type=int, default=None, help="mask frame; default half the input size")
    parser.add_argument("--p-mask", type=float, default=0.5)
    parser.add_argument("--e-sem", action="store_true")
    parser.add_argument("--activation-checkpointing", choices=["off", "on", "both"], default="both")
    parser.add_argument("--no-encoder-timing", dest="time_encoder", action="store_false",
                        help="skip the encoder-alone timing of each row")
    parser.add_argument("--warmup", type=int, default=1)
    parser.add_argument("--iterations", type=int, default=3)
    parser.add_argument("--threads", type=int, default=None, help="CPU threads (torch.set_num_threads)")
    parser.add_argument("--peak-tflops", type=float, default=None, help="device peak for MFU")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--json", help="also write the results here (rewritten after every row)")
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.embedding_cache != "off" and "image_encoder" not in args.freeze:
        parser.error("--embedding-cache needs --freeze image_encoder")
    device = torch.device(args.device)
    if device.type == "cuda":  # as the trainer: TF32 where fp32 remains
        torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = True
    modes = {"off": [False], "on": [True], "both": [False, True]}[args.activation_checkpointing]
    caches = {"off": [False], "on": [True], "both": [False, True]}[args.embedding_cache]
    results = []
    frozen = ",".join(args.freeze) or "-"
    checkpoint_arg = args.checkpoint
    print(f"# {machine(device)}")
    print("| model | variant | frozen | emb. cache | batch | act. ckpt | encoder s/iter | s/iter | images/s "
          "| TFLOP/iter | TFLOP/s | MFU | syncs/iter | peak alloc GiB | peak reserved GiB |")
    print("|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|")
    for model_type in args.model_type:
        args.checkpoint = "bundled" if checkpoint_arg is None and model_type == "lite_medsam" else checkpoint_arg
        for batch in args.batch_sizes:
            for checkpointing in modes:
                for cached in caches:
                    for variant in args.variants:
                        same = [r for r in results if r["model_type"] == model_type and r["batch"] == batch
                                and "flops" in r and not r["activation_checkpointing"]]
                        # MFU divides the model's FLOPs: those of the iteration without recomputation, counted on
                        # the reference attention where it ran (the counter sees its matmuls in full)
                        model_flops = max((r["flops"] for r in same), default=None)
                        with tempfile.TemporaryDirectory() as tmp:
                            try:
                                row = measure(model_type, batch, args, device, checkpointing, model_flops,
                                              tmp if cached else None, variant)
                            except torch.cuda.OutOfMemoryError:
                                row = _error_row(model_type, variant, batch, checkpointing, "out of memory")
                            except RuntimeError as exc:  # one failing row loses no other
                                row = _error_row(model_type, variant, batch, checkpointing, str(exc).splitlines()[0])
                        if device.type == "cuda":  # free what a failed row left before the next one
                            gc.collect()
                            torch.cuda.empty_cache()
                        results.append(row)
                        head = (f"| {model_type} | {variant} | {frozen} | {'on' if cached else 'off'} | {batch} | "
                                f"{'on' if checkpointing else 'off'} |")
                        if "error" in row:
                            print(f"{head} {row['error'][:60]} | | | | | | | | |", flush=True)
                        else:
                            print(f"{head} {_cell(row['encoder_seconds'])} | {row['seconds_per_iteration']} | "
                                  f"{row['images_per_s']} | {row['tflop_per_iteration']} | {row['achieved_tflops']} | "
                                  f"{_cell(row['mfu'])} | {row['syncs_per_iteration']} | "
                                  f"{_cell(row['peak_memory_gib'])} | {_cell(row['peak_reserved_gib'])} |", flush=True)
                        if args.json:
                            with open(args.json, "w") as handle:
                                json.dump({"machine": machine(device), "results": results}, handle, indent=2)
    ok = [r for r in results if "error" not in r]
    for old in (r for r in ok if r["variant"] == "old"):
        new = next((r for r in ok if r["variant"] == "new" and all(
            r[k] == old[k] for k in ("model_type", "batch", "activation_checkpointing", "embedding_cache"))), None)
        if new is None:
            continue
        encoder = (f"encoder {old['encoder_seconds'] / new['encoder_seconds']:.2f}x, "
                   if old["encoder_seconds"] and new["encoder_seconds"] else "")
        ckpt = "on" if old["activation_checkpointing"] else "off"
        print(f"# {old['model_type']} batch {old['batch']} act. ckpt {ckpt}: old / new s/iter: {encoder}iteration "
              f"{old['seconds_per_iteration'] / new['seconds_per_iteration']:.2f}x; "
              f"syncs/iter {old['syncs_per_iteration']} -> {new['syncs_per_iteration']}")
    for batch in args.batch_sizes:
        pair = [r for r in ok if r["batch"] == batch and not r["activation_checkpointing"] and r["variant"] == "new"]
        if len({r["embedding_cache"] for r in pair}) == 2:
            on, off = (next(r for r in pair if r["embedding_cache"] == flag) for flag in (True, False))
            print(f"# batch {batch}: embedding cache ratio (images/s on / off) = "
                  f"{on['images_per_s'] / off['images_per_s']:.2f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

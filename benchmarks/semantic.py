"""Throughput of the semantic methods: training iterations/s and inference cases/s.

Part 1 (torch methods, synthetic data of the demo's sizes or of the paper's): SAM-UNETR 2D,
MA-SAM 3D and Swin UNETR 2D/3D, one training iteration = forward + Dice/CE loss + backward + AdamW
step on a batch of patches (SAM-UNETR: whole images, resized to the SAM input as in the reference);
inference = one whole case through the method's predictor (whole image / sliding window /
block-wise). Part 2 (``--snakemake-benchmarks DIR``): wall time of every ``semantic_run``
job of a finished run (Snakemake's benchmark files), which includes nnU-Net's planning,
preprocessing, training and prediction.

    python benchmarks/semantic.py --threads 1                                  # demo sizes, tiny SAM, CPU
    python benchmarks/semantic.py --size paper --model-type vit_b --device cuda    # vit_b, 1024 / (16, 512, 512)
    python benchmarks/semantic.py --snakemake-benchmarks results/benchmarks/semantic_run
"""

from __future__ import annotations

import argparse
import json
import platform
import time
from pathlib import Path

import numpy as np
import torch

SIZES = {  # (2D case, 3D case, SAM-UNETR patch, MA-SAM patch, MA-SAM input, Swin 2D patch, Swin 3D patch, batches)
    "demo": dict(case2d=(128, 128), case3d=(24, 96, 96), unetr_patch=128, masam_patch=(8, 96, 96), masam_input=64,
                 swin2d=(128, 128), swin3d=(64, 64, 64), batch2d=2, batch3d=1, feature_size=12),
    "paper": dict(case2d=(512, 512), case3d=(64, 512, 512), unetr_patch=512, masam_patch=(16, 512, 512),
                  masam_input=512, swin2d=(512, 512), swin3d=(96, 96, 96), batch2d=6, batch3d=2, feature_size=48),
}


def _sync(device):
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def methods(model_type: str, size: dict, device: str):
    from medpipe.models.ma_sam import build_ma_sam
    from medpipe.models.sam import build_sam
    from medpipe.models.sam_unetr import build_sam_unetr
    from medpipe.models.swin_unetr import build_swin_unetr
    from medpipe.models.transforms import pixel_stats
    from medpipe.semantic.methods import TorchMethod

    n_classes = 3
    sam = build_sam(model_type)
    unetr = build_sam_unetr(sam, n_classes)  # whole images, sigmoid outputs (the reference)
    yield "sam_unetr", TorchMethod("sam_unetr", unetr, 2, (size["unetr_patch"],) * 2, unetr.input_size,
                                   device=device, image_prep="resize", activation="sigmoid",
                                   pixels=pixel_stats(sam)), size["batch2d"]
    masam = build_ma_sam(build_sam(model_type), n_classes, size["masam_input"], activation="sigmoid")
    yield "ma_sam", TorchMethod("ma_sam", masam, 3, size["masam_patch"], masam.input_size, halo=2,
                                device=device, activation="sigmoid", pixels=pixel_stats(sam)), size["batch3d"]
    yield "swin_unetr_2d", TorchMethod("swin_unetr", build_swin_unetr(1, n_classes, 2, size["feature_size"]), 2,
                                       size["swin2d"], device=device), size["batch2d"]
    yield "swin_unetr_3d", TorchMethod("swin_unetr", build_swin_unetr(1, n_classes, 3, size["feature_size"]), 3,
                                       size["swin3d"], device=device), size["batch3d"]


def measure(name, method, batch, size, device, iterations, rng) -> dict:
    from medpipe.semantic.train import loss_and_metric

    model = method.model.to(device).train()
    loss_fn = loss_and_metric("reference" if method.activation == "sigmoid" else "dice_ce")[0]
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-4)
    shape = size["case2d"] if method.whole_images else method.patch  # SAM-UNETR trains on whole images
    images = [rng.uniform(0, 255, shape).astype(np.float32) for _ in range(batch)]
    labels = [rng.integers(0, 3, shape) for _ in range(batch)]
    x, y = method.to_batch(images, labels)
    x, y = x.to(device), y.to(device)
    times = []
    for i in range(iterations + 1):  # the first iteration is warm-up
        _sync(device)
        start = time.perf_counter()
        loss = loss_fn(model(x), y)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        _sync(device)
        if i:
            times.append(time.perf_counter() - start)
    case = rng.uniform(0, 255, size["case2d"] if method.ndim == 2 else size["case3d"]).astype(np.float32)
    _sync(device)
    start = time.perf_counter()
    prediction = method.predict(case)
    _sync(device)
    infer = time.perf_counter() - start
    assert prediction.shape == case.shape
    return {"method": name, "batch": batch, "patch": list(shape), "s_per_iter": float(np.median(times)),
            "iters_per_s": 1 / float(np.median(times)), "case_shape": list(case.shape), "s_per_case": infer,
            "cases_per_s": 1 / infer, "parameters": sum(p.numel() for p in model.parameters())}


def snakemake_jobs(folder) -> list[dict]:
    """Wall time of every semantic_run job from Snakemake's benchmark TSVs."""
    import pandas as pd

    rows = []
    for path in sorted(Path(folder).rglob("*.tsv")):
        parts = path.relative_to(folder).parts  # method/dataset/backbone.init/seedK.tsv
        frame = pd.read_csv(path, sep="\t")
        rows.append({"job": "/".join(parts)[: -len(".tsv")], "s": float(frame["s"].iloc[0]),
                     "max_rss_mb": float(frame["max_rss"].iloc[0]) if "max_rss" in frame else float("nan")})
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", choices=sorted(SIZES), default="demo")
    parser.add_argument("--model-type", default="tiny")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--iterations", type=int, default=3)
    parser.add_argument("--only", nargs="*", default=None, help="subset of method names")
    parser.add_argument("--snakemake-benchmarks", default=None, help="folder of semantic_run benchmark TSVs")
    parser.add_argument("--json", default=None)
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.snakemake_benchmarks:
        rows = snakemake_jobs(args.snakemake_benchmarks)
        print("| job | wall s | max RSS MB |\n|---|---|---|")
        for r in rows:
            print(f"| {r['job']} | {r['s']:.1f} | {r['max_rss_mb']:.0f} |")
        print(f"\ntotal {sum(r['s'] for r in rows):.1f} s over {len(rows)} jobs")
    else:
        torch.manual_seed(0)
        rng = np.random.default_rng(0)
        size = SIZES[args.size]
        rows = []
        for name, method, batch in methods(args.model_type, size, args.device):
            if args.only and name not in args.only:
                continue
            rows.append(measure(name, method, batch, size, args.device, args.iterations, rng))
            r = rows[-1]
            print(f"{name}: batch {batch} patch {tuple(r['patch'])}: {r['s_per_iter']:.3f} s/iter "
                  f"({r['iters_per_s']:.2f} it/s); case {tuple(r['case_shape'])}: {r['s_per_case']:.2f} s "
                  f"({r['cases_per_s']:.3f} cases/s); {r['parameters'] / 1e6:.2f} M parameters", flush=True)
    if args.json:
        Path(args.json).write_text(json.dumps({"machine": platform.machine(), "torch": torch.__version__,
                                               "threads": torch.get_num_threads(), "rows": rows}, indent=2))


if __name__ == "__main__":
    main()

"""Interactive evaluation speed: embedding reuse against the reference code's recomputation.

2D: the full iterative protocol (point start, ``--iterations`` predictions in all, mask prompts off) on
generated images, (a) with one encoder pass per image (this pipeline), (b) recomputing the image
embedding before every decoder step (the reference code's behaviour), and (c) one bare encoder
pass per image (the floor). Goals: (b)/(a) >= 5 and (a)/(c) <= 1.2.

3D: the 275-point propagation grid on generated volumes, (a) the pipeline (each volume's slice
embeddings computed once, grid points that prompt alike sharing one walk), (b) the reference: the
volume encoded afresh and propagated alone for every grid point. Goal: (b)/(a) >= 50. When (b) is
too slow to run 275 times (ViT-b on a CPU), ``--baseline-points N`` times it on N evenly spaced
points and scales by 275/N; the output says so. Every timed reference point's Dice is checked
against (a)'s.

    python benchmarks/interactive.py --threads 1                                     # tiny SAM, CPU
    python benchmarks/interactive.py --model-type vit_b --images 1 --volumes 1 \
        --volume-shape 6 48 48 --baseline-points 2                                   # ViT-b, CPU
    python benchmarks/interactive.py --model-type vit_b --device cuda                # ViT-b, GPU
    python benchmarks/interactive.py --model-type lite_medsam --threads 1 --volumes 1 \
        --volume-shape 12 64 64 --baseline-points 3                                  # LiteMedSAM (bundled), CPU
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
from medpipe import prompts  # noqa: E402
from medpipe.interactive import eval2d, grid, preprocess, propagate3d  # noqa: E402
from medpipe.interactive.objects import connected_objects, objects_3d, start_slice  # noqa: E402
from medpipe.interactive.predictor import BatchedPredictor  # noqa: E402
from medpipe.metrics import dice  # noqa: E402
from medpipe.models.sam import load_model  # noqa: E402
from medpipe.models.specs import ModelSpec  # noqa: E402

from interactive_fixtures import image_2d, volume_3d  # noqa: E402


class RecomputingPredictor(BatchedPredictor):
    """The reference behaviour: the image is encoded again before every decoder call."""

    def __init__(self, sam, device, slices):
        super().__init__(sam, device)
        self.slices = slices  # slice index -> uint8 image; the embedding passed in carries the index

    def predict(self, embedding, *args, **kwargs):
        index = int(np.asarray(embedding).ravel()[0])
        fresh = self.encode(self.slices[index][None])[0]
        return super().predict(fresh, *args, **kwargs)


def sync(device):
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def bench_2d(sam, device, n_images, iterations, size):
    images = [image_2d(i, size) for i in range(n_images)]
    slices = [preprocess.image_2d(img, "aspect") for img, _ in images]
    objects = [connected_objects(label, {1: "a", 2: "b"}) for _, label in images]
    pred = BatchedPredictor(sam, device)
    rec = RecomputingPredictor(sam, device, slices)
    pred.encode(slices[0][None])  # warm-up
    sync(device)
    t0 = time.perf_counter()
    for s in slices:
        pred.encode(s[None])
    sync(device)
    t_encode = time.perf_counter() - t0
    t0 = time.perf_counter()
    reuse_scores = []
    for i, s in enumerate(slices):
        emb = pred.encode(s[None])[0]
        reuse_scores.append(eval2d.evaluate_objects(pred, emb, s.shape[:2], objects[i], "point", "off", iterations,
                                                    np.random.default_rng(i))[0])
    sync(device)
    t_reuse = time.perf_counter() - t0
    t0 = time.perf_counter()
    for i, s in enumerate(slices):
        scores = eval2d.evaluate_objects(rec, np.full(1, i), s.shape[:2], objects[i], "point", "off", iterations,
                                         np.random.default_rng(i))[0]
        if not np.allclose(scores, reuse_scores[i], atol=1e-6):
            raise AssertionError(f"image {i}: Dice with re-encoding differs from Dice with the reused embedding")
    sync(device)
    t_recompute = time.perf_counter() - t0
    return {"images": n_images, "iterations": iterations, "size": size,
            "s_per_image_reuse": t_reuse / n_images, "s_per_image_recompute": t_recompute / n_images,
            "s_per_image_encoder_only": t_encode / n_images, "images_per_s_reuse": n_images / t_reuse,
            "speedup_vs_recompute": t_recompute / t_reuse, "overhead_vs_one_encoder_pass": t_reuse / t_encode}


def paper_grid() -> list:
    """The reference's 275 points (the config schema's defaults)."""
    thresholds = [0.5, 0.6, 0.7, 0.8, 0.9]
    extensions = [round(0.025 * i, 3) for i in range(11)]
    return grid.make_grid(thresholds, list(propagate3d.PROJECTIONS), extensions)


def reference_grid_point(pred, slices, label, classes, point):
    """One grid point the reference way: encode the volume afresh, then propagate this point alone."""
    emb = pred.encode(slices)
    size = label.shape[1:]
    scores = []
    for obj in objects_3d(label, classes):
        z = start_slice(obj.mask)
        if z is None:
            continue
        first_prompt = {"points": None, "labels": None, "box": prompts.tight_bbox(obj.mask[z]), "use_mask": False}
        first = propagate3d.start_mask(pred, emb[z], size, first_prompt)
        scores.append(dice(propagate3d.propagate(pred, emb, size, first, z, point), obj.mask))
    return scores


def bench_3d(sam, device, n_volumes, grid_points, shape, baseline_points):
    """Box start, every object; (a) the pipeline's ``grid.evaluate_volume``, (b) the reference per point.

    With ``baseline_points`` < grid size, (b) runs on that many evenly spaced grid points and its
    total is their mean time x the grid size: each reference point costs one full encoding of
    the volume plus one walk, so the mean of a few points is a close estimate (reported as such).
    """
    volumes = [volume_3d(i, shape) for i in range(n_volumes)]
    classes = {1: "ball", 2: "box"}
    points = paper_grid()[:grid_points] if grid_points else paper_grid()
    pred = BatchedPredictor(sam, device)
    pred.encode(preprocess.volume(volumes[0][0], "reference")[:1])  # warm-up
    t0 = time.perf_counter()
    reuse_rows = []
    for i, (image, label) in enumerate(volumes):
        emb = pred.encode(preprocess.volume(image, "reference"))
        reuse_rows += grid.evaluate_volume(pred, emb, label.shape[1:], label, classes, points, ["box"], [0],
                                           {"case": f"v{i}"})
    sync(device)
    t_reuse = time.perf_counter() - t0
    n_base = min(baseline_points or len(points), len(points))
    sample = [points[int(i)] for i in np.linspace(0, len(points) - 1, n_base).round()]
    t0 = time.perf_counter()
    for i, (image, label) in enumerate(volumes):
        slices = preprocess.volume(image, "reference")
        for point in sample:
            reference = reference_grid_point(pred, slices, label, classes, point)
            ours = [r["dice"] for r in reuse_rows if r["case"] == f"v{i}" and r["projection"] == point.projection
                    and r["iou_threshold"] == point.iou_threshold and r["box_extension"] == point.box_extension]
            if not np.allclose(reference, ours):
                raise AssertionError(f"volume {i}: the reference and the shared grid disagree at {point}")
    sync(device)
    t_sample = time.perf_counter() - t0
    t_recompute = t_sample / n_base * len(points)
    return {"volumes": n_volumes, "shape": list(shape), "grid_points": len(points),
            "objects": len(reuse_rows) // len(points),
            "s_reuse": t_reuse, "baseline_points_timed": n_base, "s_baseline_timed": t_sample,
            "s_recompute": t_recompute, "recompute_extrapolated": n_base < len(points),
            "speedup": t_recompute / t_reuse}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model-type", default="tiny")
    parser.add_argument("--checkpoint", default=None,
                        help="weights (a file or `bundled`); default: random, bundled for lite_medsam")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--threads", type=int, default=0)
    parser.add_argument("--images", type=int, default=4)
    parser.add_argument("--iterations", type=int, default=8)
    parser.add_argument("--size", type=int, default=128)
    parser.add_argument("--volumes", type=int, default=2)
    parser.add_argument("--volume-shape", type=int, nargs=3, default=[12, 64, 64])
    parser.add_argument("--grid-points", type=int, default=0, help="first N points of the 275-point grid (0 = all)")
    parser.add_argument("--baseline-points", type=int, default=0,
                        help="time the reference on N evenly spaced grid points and scale (0 = every point)")
    parser.add_argument("--json", help="write the results here too")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    checkpoint = args.checkpoint or ("bundled" if args.model_type == "lite_medsam" else None)
    sam = load_model(ModelSpec(args.model_type, args.model_type, checkpoint), seed=0, device=args.device)
    result = {
        "machine": {"platform": platform.platform(), "processor": platform.processor() or platform.machine(),
                    "torch": torch.__version__, "threads": torch.get_num_threads(), "device": args.device,
                    "gpu": torch.cuda.get_device_name() if args.device.startswith("cuda") else None},
        "model_type": args.model_type,
        "checkpoint": checkpoint,
        "2d": bench_2d(sam, args.device, args.images, args.iterations, args.size),
        "3d": bench_3d(sam, args.device, args.volumes, args.grid_points, tuple(args.volume_shape),
                       args.baseline_points),
    }
    text = json.dumps(result, indent=2)
    print(text)
    if args.json:
        Path(args.json).write_text(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())

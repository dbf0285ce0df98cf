"""Interactive evaluation speed: embedding reuse against the reference code's recomputation.

2D: the full iterative protocol (point start, ``--iterations`` corrections, mask prompts off) on
generated images, (a) with one encoder pass per image (this pipeline), (b) recomputing the image
embedding before every decoder step (the reference code's behaviour), and (c) one bare encoder
pass per image (the floor). Goals: (b)/(a) >= 5 and (a)/(c) <= 1.2.

3D: the propagation grid on generated volumes, (a) each volume's slice embeddings computed once
for the whole grid, (b) recomputed for every grid point (reference). Goal: (b)/(a) >= 50 for the
275-point grid; with a smaller ``--grid-points`` the measured ratio is reported together with the
encoder and decoder times, from which the 275-point ratio follows.

    python benchmarks/interactive.py --model-type tiny --threads 1          # CPU
    python benchmarks/interactive.py --model-type vit_b --device cuda       # GPU
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
from interactive_fixtures import image_2d, volume_3d  # noqa: E402

from medpipe.interactive import eval2d, grid  # noqa: E402
from medpipe.interactive.models import ModelSpec, load_model  # noqa: E402
from medpipe.interactive.objects import connected_objects  # noqa: E402
from medpipe.interactive.predictor import BatchedPredictor, image_to_uint8_slices  # noqa: E402


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
    slices = [image_to_uint8_slices(img, 2)[0] for img, _ in images]
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
    for i, s in enumerate(slices):
        emb = pred.encode(s[None])[0]
        eval2d.evaluate_objects(pred, emb, s.shape[:2], objects[i], "point", "off", iterations, np.random.default_rng(i))
    sync(device)
    t_reuse = time.perf_counter() - t0
    t0 = time.perf_counter()
    for i, s in enumerate(slices):
        eval2d.evaluate_objects(rec, np.full(1, i), s.shape[:2], objects[i], "point", "off", iterations, np.random.default_rng(i))
    sync(device)
    t_recompute = time.perf_counter() - t0
    return {"images": n_images, "iterations": iterations, "size": size,
            "s_per_image_reuse": t_reuse / n_images, "s_per_image_recompute": t_recompute / n_images,
            "s_per_image_encoder_only": t_encode / n_images, "images_per_s_reuse": n_images / t_reuse,
            "speedup_vs_recompute": t_recompute / t_reuse, "overhead_vs_one_encoder_pass": t_reuse / t_encode}


def bench_3d(sam, device, n_volumes, grid_points, shape):
    volumes = [volume_3d(i, shape) for i in range(n_volumes)]
    classes = {1: "ball", 2: "box"}
    projections = ["box", "mask", "single_point", "points", "points_and_mask"]
    points = grid.make_grid([0.5, 0.8], projections, [0.0, 0.1, 0.2, 0.25])[:grid_points]
    pred = BatchedPredictor(sam, device)
    t0 = time.perf_counter()
    for image, label in volumes:
        slices = image_to_uint8_slices(image, 3)
        emb = pred.encode(slices)
        grid.evaluate_volume(pred, emb, label.shape[1:], label, classes, points, ["box"], [0], {"case": "v"})
    sync(device)
    t_reuse = time.perf_counter() - t0
    t0 = time.perf_counter()
    t_enc = 0.0
    for image, label in volumes:
        slices = image_to_uint8_slices(image, 3)
        for point in points:  # the reference: a fresh embedding of the volume for every grid point
            t1 = time.perf_counter()
            emb = pred.encode(slices)
            sync(device)
            t_enc += time.perf_counter() - t1
            grid.evaluate_volume(pred, emb, label.shape[1:], label, classes, [point], ["box"], [0], {"case": "v"})
    sync(device)
    t_recompute = time.perf_counter() - t0
    enc_per_volume = t_enc / (n_volumes * len(points))
    dec_per_point = (t_recompute - t_enc) / (n_volumes * len(points))
    ratio_275 = (275 * (enc_per_volume + dec_per_point)) / (enc_per_volume + 275 * dec_per_point)
    return {"volumes": n_volumes, "shape": list(shape), "grid_points": len(points), "s_reuse": t_reuse,
            "s_recompute": t_recompute, "speedup_measured": t_recompute / t_reuse,
            "encoder_s_per_volume": enc_per_volume, "decoder_s_per_volume_and_point": dec_per_point,
            "speedup_275_extrapolated": ratio_275}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model-type", default="tiny")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--threads", type=int, default=0)
    parser.add_argument("--images", type=int, default=4)
    parser.add_argument("--iterations", type=int, default=8)
    parser.add_argument("--size", type=int, default=128)
    parser.add_argument("--volumes", type=int, default=2)
    parser.add_argument("--grid-points", type=int, default=20)
    parser.add_argument("--json", help="write the results here too")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    sam = load_model(ModelSpec(args.model_type, args.model_type, None), seed=0, device=args.device)
    result = {
        "machine": {"platform": platform.platform(), "processor": platform.processor() or platform.machine(),
                    "torch": torch.__version__, "threads": torch.get_num_threads(), "device": args.device,
                    "gpu": torch.cuda.get_device_name() if args.device.startswith("cuda") else None},
        "model_type": args.model_type,
        "2d": bench_2d(sam, args.device, args.images, args.iterations, args.size),
        "3d": bench_3d(sam, args.device, args.volumes, args.grid_points, (12, 64, 64)),
    }
    text = json.dumps(result, indent=2)
    print(text)
    if args.json:
        Path(args.json).write_text(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())

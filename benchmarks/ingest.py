"""Ingest throughput and peak memory: ``medpipe ingest`` against a plain load-everything loop.

Generates a >= 2 GB 3D dataset (int16 NIfTI volumes with uint8 labels, uncompressed ``.nii`` so
generation is fast) in a temporary folder, then ingests it with

* **ours**: ``medpipe.data.ingest.ingest_dataset`` (chunk-wise dask pass with checks and SHA-256), and
* **baseline**: for each case ``np.asarray(nib.load(path).dataobj)`` -> ``zarr`` array write with
  the same chunks and the default (zstd) codec, no checks, no checksums,

each in its own subprocess so peak RSS (``ru_maxrss`` of that process) does not mix. Prints
throughput (source MB/s) of both, the ratio ours/baseline and the peak RSS; the temporary folder is
removed at the end. Runs alternate (baseline, ours, baseline, ours ...) to even out page-cache and
load effects; the best run of each is reported.

    python benchmarks/ingest.py                      # 8 x 512^3 int16 (2.1 GB images + 1.1 GB labels)
    python benchmarks/ingest.py --cases 2 --shape 64 128 128 --repeats 1   # quick smoke run
"""

from __future__ import annotations

import argparse
import json
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

CHUNKS_3D = [32, 256, 256]


def generate(folder: Path, cases: int, shape: tuple[int, int, int], seed: int) -> int:
    """Write ``cases`` image/label pairs; return the number of source bytes (image + label data)."""
    import nibabel as nib

    rng = np.random.default_rng(seed)
    (folder / "images").mkdir(parents=True)
    (folder / "labels").mkdir(parents=True)
    z, y, x = shape
    # CT-like content: a smooth ramp plus noise, so the data is neither constant nor pure noise
    ramp = (np.arange(y)[:, None] + np.arange(x)[None, :]).astype(np.int16)
    total = 0
    for i in range(cases):
        image = np.empty((x, y, z), np.int16, order="F")  # NIfTI (x, y, z) written without a copy
        for k in range(z):
            image[:, :, k] = (ramp + rng.integers(-50, 50, (y, x), dtype=np.int16) - 1000 + k).T
        label = np.zeros((x, y, z), np.uint8, order="F")
        label[x // 4: x // 2, y // 4: y // 2, z // 4: z // 2] = 1
        affine = np.diag([0.8, 0.8, 2.0, 1.0])
        nib.save(nib.Nifti1Image(image, affine), str(folder / f"images/case{i:03d}_0000.nii"))
        nib.save(nib.Nifti1Image(label, affine), str(folder / f"labels/case{i:03d}.nii"))
        total += image.nbytes + label.nbytes
    return total


def child_ours(data: Path, out: Path) -> None:
    from medpipe.data.ingest import ingest_dataset

    spec = {"modality": "ct", "ndim": 3, "images": str(data / "images/*.nii"), "labels": str(data / "labels/*.nii"),
            "case_id": r"^(?P<case>.+?)(_0000)?\.nii$", "classes": {1: "organ"}}
    report = ingest_dataset("bench", spec, out / "bench.zarr", out / "bench.quarantine.tsv",
                            {"chunks_2d": [512, 512], "chunks_3d": CHUNKS_3D})
    assert not report.quarantined, report.quarantined


def child_baseline(data: Path, out: Path) -> None:
    import nibabel as nib
    import zarr

    root = zarr.open_group(str(out / "baseline.zarr"), mode="w", zarr_format=3)
    for image_path in sorted((data / "images").glob("*.nii")):
        case = image_path.name.replace("_0000.nii", "")
        group = root.create_group(case)
        for name, path in (("image", image_path), ("label", data / f"labels/{case}.nii")):
            array = np.asarray(nib.load(str(path)).dataobj).transpose(2, 1, 0)
            target = group.create_array(name, shape=array.shape, dtype=array.dtype,
                                        chunks=tuple(min(c, n) for c, n in zip(CHUNKS_3D, array.shape)))
            target[...] = array


def run_child(kind: str, data: Path, out: Path) -> dict:
    """Run one ingest in a fresh interpreter; return its wall time and its own peak RSS."""
    out.mkdir(parents=True)
    command = [sys.executable, __file__, "--child", kind, str(data), str(out)]
    result = subprocess.run(command, capture_output=True, text=True)
    shutil.rmtree(out)
    if result.returncode != 0:
        raise RuntimeError(f"{kind} run failed:\n{result.stderr[-3000:]}")
    return json.loads(result.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cases", type=int, default=8)
    parser.add_argument("--shape", type=int, nargs=3, default=[512, 512, 512], metavar=("Z", "Y", "X"))
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--workdir", default=None, help="where the temporary dataset goes (default: system temp)")
    parser.add_argument("--child", nargs=3, metavar=("KIND", "DATA", "OUT"), help=argparse.SUPPRESS)
    args = parser.parse_args()

    if args.child:
        kind, data, out = args.child[0], Path(args.child[1]), Path(args.child[2])
        import nibabel  # noqa: F401,E401 - imports are not part of the measured time

        import medpipe.data.ingest  # noqa: F401
        start = time.perf_counter()
        (child_ours if kind == "ours" else child_baseline)(data, out)
        seconds = time.perf_counter() - start
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # Linux reports KiB
        print(json.dumps({"seconds": seconds, "peak_rss_bytes": peak}))
        return

    tmp = Path(tempfile.mkdtemp(prefix="medpipe-ingest-bench-", dir=args.workdir))
    try:
        t0 = time.perf_counter()
        nbytes = generate(tmp / "data", args.cases, tuple(args.shape), args.seed)
        print(f"generated {args.cases} cases of {tuple(args.shape)} int16 + uint8 labels: "
              f"{nbytes / 1e9:.2f} GB in {time.perf_counter() - t0:.0f} s", flush=True)
        runs: dict[str, list[dict]] = {"baseline": [], "ours": []}
        for repeat in range(args.repeats):
            for kind in ("baseline", "ours"):
                result = run_child(kind, tmp / "data", tmp / f"out-{kind}-{repeat}")
                runs[kind].append(result)
                print(f"{kind:8s} run {repeat}: {result['seconds']:.1f} s, "
                      f"{nbytes / 1e6 / result['seconds']:.0f} MB/s, "
                      f"peak RSS {result['peak_rss_bytes'] / 2**30:.2f} GiB", flush=True)
        best = {kind: min(r["seconds"] for r in results) for kind, results in runs.items()}
        peak_ours = max(r["peak_rss_bytes"] for r in runs["ours"])
        peak_base = max(r["peak_rss_bytes"] for r in runs["baseline"])
        print(f"\nsource data: {nbytes / 1e9:.2f} GB ({args.cases} cases)")
        print(f"baseline: {nbytes / 1e6 / best['baseline']:.0f} MB/s (best of {args.repeats}), "
              f"peak RSS {peak_base / 2**30:.2f} GiB")
        print(f"ours:     {nbytes / 1e6 / best['ours']:.0f} MB/s (best of {args.repeats}), "
              f"peak RSS {peak_ours / 2**30:.2f} GiB")
        print(f"ratio ours/baseline (throughput): {best['baseline'] / best['ours']:.2f}")
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()

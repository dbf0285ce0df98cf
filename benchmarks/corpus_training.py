"""SA-Med2D-20M at the paper's scale: finetune start-up and the training loader.

The training half of ``benchmarks/corpus_scale.py`` (which runs it for ``--measure startup loader``;
the ingest half is there); each part is a function run by ``main`` and chosen with ``--only``:

* **startup** (:func:`bench_startup`): finetune start-up until the train and val items are ready
  (``build_items`` as the trainer calls it, twice) at ``--images`` images (3.7 M by default) with
  ~4.3 objects each: a synthetic object table of that size (arrays only, no image), a store whose
  case index has that many cases, and a corpus table of that many rows (90/10 train/val). The
  object table is read from ``.npy`` files inside the timed region (what reading it from the store
  costs is the ingest half's). Against **today's** start-up: the label scan of ``build_items``
  before issue 18 (kept verbatim in ``tests/legacy_samples.py``) measured per image on
  ``--scan-images`` SA-Med2D-like images in today's per-case store and scaled to ``--images``, and
  the memory of today's item list (one Python ``Item`` per image) measured at full size.
* **loader** (:func:`bench_loader`): one loader worker's CPU time per sample and bytes handed to
  the trainer, at patch 512 / input 1024 (the study's settings), on ``--loader-images`` generated
  SA-Med2D-like images (grey uint8, sizes 512², 290x320, 181x258, 155x225, 1024², 1-15 objects,
  ~4.3 on average): today's sample path (float32 at the input size, made by the worker) against
  the lean one (uint8; the 1024 stage, timed separately here on the CPU, runs on the GPU in
  training). Samples/s per core = 1 / CPU seconds per sample with one thread.

Each measurement runs in its own subprocess; peak RSS is that process's ``VmHWM``. Prints JSON
lines and a summary with the ratios against today's path.

    python benchmarks/corpus_training.py --only startup,loader            # 3.7 M images (~2 GB of files)
    python benchmarks/corpus_training.py --only startup --images 200000   # quick run
"""

from __future__ import annotations

import argparse
import json
import platform
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "src"))
sys.path.insert(0, str(REPO / "tests"))

SIZES = [(512, 512), (290, 320), (181, 258), (155, 225), (1024, 1024)]  # mixed like the release
SIZE_SHARE = [0.55, 0.15, 0.1, 0.1, 0.1]
PATCH, INPUT, N_OBJ, MIN_PX = 512, 1024, 5, 10
DATASET = "sa_med2d"


def peak_mib() -> float:
    """This process's peak RSS (``VmHWM`` on Linux, ``ru_maxrss`` elsewhere)."""
    try:
        with open("/proc/self/status") as handle:
            for line in handle:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) / 1024
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def rss_mib() -> float:
    with open("/proc/self/status") as handle:
        for line in handle:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return float("nan")


def objects_per_image(rng, n):
    """1-15 objects per image, ~4.3 on average (SA-Med2D: 15.8 M masks on 3.7 M images)."""
    import numpy as np

    return np.clip(1 + rng.poisson(3.3, n), 1, 15).astype(np.int32)


# ------------------------------------------------------------------------------ generated data


def case_ids(n: int):
    """SA-Med2D-like image names (~45 bytes), sorted, as a byte-string array; volumes of 100 slices."""
    import numpy as np

    index = np.arange(n)
    ids = np.char.add(np.char.add(b"ct_00--Source", np.char.mod("%02d", index // 100_000).astype(bytes)),
                      np.char.add(b"--case_", np.char.mod("%07d", index // 100).astype(bytes)))
    return np.char.add(ids, np.char.add(b"--x_", np.char.mod("%04d", index % 100).astype(bytes)))


def write_index_store(path: Path, ids, patients) -> None:
    """A complete store with a case index of ``ids`` and no case data (start-up reads no image)."""
    import zarr

    from medpipe.store import FORMAT_VERSION, INDEX_ROWS, _pack

    root = zarr.open_group(str(path), mode="w", zarr_format=3)
    root.attrs["dataset"] = {"name": DATASET, "modality": "mixed", "ndim": 2, "classes": {"1": "object"},
                             "label_kind": "instances"}
    root.create_group("cases")
    index = root.create_group("index")
    for name, values in (("case_id", ids), ("patient_id", patients)):
        packed = _pack(values)
        index.create_array(name, data=packed, chunks=(INDEX_ROWS, packed.shape[1]), dimension_names=["case", "byte"])
    root.attrs["case_count"] = len(ids)
    root.attrs["medpipe"] = {"format_version": FORMAT_VERSION, "complete": True}


def write_object_table(folder: Path, n: int, seed: int = 0) -> int:
    """A synthetic object table of ``n`` images as .npy files; returns the number of objects."""
    import numpy as np

    from medpipe.data.objects import IMAGE_COLUMNS

    rng = np.random.default_rng(seed)
    kind = rng.choice(len(SIZES), size=n, p=SIZE_SHARE)
    height = np.array([s[0] for s in SIZES], np.int32)[kind]
    width = np.array([s[1] for s in SIZES], np.int32)[kind]
    count = objects_per_image(rng, n)
    first = np.concatenate([[0], np.cumsum(count[:-1], dtype=np.int64)])
    m = int(count.sum())
    image_of = np.repeat(np.arange(n), count)
    h, w = height[image_of].astype(np.int64), width[image_of].astype(np.int64)
    y0, x0 = (rng.random(m) * h).astype(np.int64), (rng.random(m) * w).astype(np.int64)
    y1 = np.minimum(y0 + 1 + (rng.random(m) * 120).astype(np.int64), h)
    x1 = np.minimum(x0 + 1 + (rng.random(m) * 120).astype(np.int64), w)
    area = np.maximum(((y1 - y0) * (x1 - x0) * rng.uniform(0.3, 1.0, m)).astype(np.int64), 1)
    arrays = {"case": np.arange(n, dtype=np.int64), "z": np.full(n, -1, np.int32), "height": height, "width": width,
              "first": first, "count": count, "label": (np.arange(m) - np.repeat(first, count) + 1).astype(np.int32),
              "area": area, "bbox": np.stack([y0, x0, y1, x1], axis=1).astype(np.int32)}
    folder.mkdir(parents=True, exist_ok=True)
    for name, values in arrays.items():
        np.save(folder / f"{name}.npy", values.astype(IMAGE_COLUMNS.get(name, values.dtype), copy=False))
    return m


def write_corpus_table(path: Path, ids, patients) -> None:
    """The corpus table (dataset, case, patient, modality, split, in_full, in_p60), 90/10, in blocks."""
    import numpy as np
    import pandas as pd

    rng = np.random.default_rng(1)
    header = True
    for lo in range(0, len(ids), 500_000):
        block = slice(lo, lo + 500_000)
        val = rng.random(len(ids[block])) < 0.1
        frame = pd.DataFrame({"dataset": DATASET, "case_id": np.char.decode(ids[block]),
                              "patient_id": np.char.decode(patients[block]), "modality": "ct",
                              "split": np.where(val, "val", "train"), "in_full": "True",
                              "in_p60": np.where(rng.random(len(val)) < 0.55, "True", "False")})
        frame.to_csv(path, sep="\t", index=False, header=header, mode="w" if header else "a")
        header = False


def sa_med2d_like_case(rng, shape):
    """A grey uint8 image and its instance label (1-15 objects, ~4.3 on average) of ``shape``."""
    import numpy as np

    h, w = shape
    label = np.zeros(shape, np.uint16)
    yy, xx = np.ogrid[:h, :w]
    for obj in range(1, int(objects_per_image(rng, 1)[0]) + 1):
        cy, cx = rng.integers(0, h), rng.integers(0, w)
        ry, rx = rng.integers(4, max(h // 6, 6)), rng.integers(4, max(w // 6, 6))
        label[((yy - cy) / ry) ** 2 + ((xx - cx) / rx) ** 2 <= 1] = obj
    label[rng.integers(0, h), rng.integers(0, w)] = 0
    if not label.any():
        label[h // 2 - 5:h // 2 + 5, w // 2 - 5:w // 2 + 5] = 1
    image = np.clip(rng.normal(90, 35, shape) + 60 * (label > 0), 0, 255).astype(np.uint8)
    return image, label


def write_case_store(folder: Path, n: int, seed: int = 2) -> tuple[Path, Path]:
    """Today's per-case store of ``n`` SA-Med2D-like images (instance labels) and its corpus table."""
    import numpy as np

    from medpipe.store import StoreWriter

    rng = np.random.default_rng(seed)
    names = []
    with StoreWriter(folder / "cases.zarr", DATASET, "mixed", 2, {1: "object"}, label_kind="instances") as writer:
        for i in range(n):
            shape = SIZES[int(rng.choice(len(SIZES), p=SIZE_SHARE))]
            image, label = sa_med2d_like_case(rng, shape)
            name = f"ct_00--Source00--case_{i:07d}--x_0000"
            writer.write_case(name, image, label, patient_id=f"p{i}", modality="ct", spacing=[1.0, 1.0])
            names.append(name)
        store = writer.publish()
    table = folder / "cases.tsv"
    rows = ["dataset\tcase_id\tpatient_id\tmodality\tsplit\tin_full"]
    rows += [f"{DATASET}\t{name}\tp{i}\tct\ttrain\tTrue" for i, name in enumerate(sorted(names))]
    table.write_text("\n".join(rows) + "\n")
    return store, table


# ------------------------------------------------------------------------------ children


def child_startup(args) -> dict:
    """Ours: build_items for train and val from the object table's arrays (no label)."""
    import numpy as np

    from medpipe.data.objects import ObjectTable
    from medpipe.finetune import data
    from medpipe.store import DatasetStore

    folder = Path(args.folder)
    names = ["case", "z", "height", "width", "first", "count", "label", "area", "bbox"]

    def stored_table(self):  # reading the table's arrays (the ingest half stores them in the store)
        return ObjectTable.from_arrays({name: np.load(folder / "objects" / f"{name}.npy") for name in names})

    DatasetStore.object_table = stored_table
    before = rss_mib()
    tick, cpu = time.perf_counter(), time.process_time()
    train = data.build_items(folder / "corpus.tsv", {DATASET: str(folder / "index.zarr")}, "train", "full", MIN_PX,
                             PATCH)
    val = data.build_items(folder / "corpus.tsv", {DATASET: str(folder / "index.zarr")}, "val", "full", MIN_PX,
                           PATCH)
    seconds = time.perf_counter() - tick
    return {"part": "startup", "path": "ours", "seconds": seconds, "cpu_s": time.process_time() - cpu,
            "train_items": len(train), "val_items": len(val),
            "items_mib": (train.nbytes + val.nbytes - sum(a.nbytes for a in val.case_ids)) / 2**20,
            "rss_before_mib": before, "peak_mib": peak_mib()}


def child_scan(args) -> dict:
    """Today: the label scan of build_items (tests/legacy_samples.py), per image."""
    import legacy_samples as legacy

    folder = Path(args.folder)
    legacy.build_items(folder / "cases.tsv", {DATASET: str(folder / "cases.zarr")}, "train", "full", MIN_PX,
                       PATCH)  # warm up: imports, first reads
    tick, cpu = time.perf_counter(), time.process_time()
    items = legacy.build_items(folder / "cases.tsv", {DATASET: str(folder / "cases.zarr")}, "train", "full", MIN_PX,
                               PATCH)
    seconds = time.perf_counter() - tick
    return {"part": "startup", "path": "today_scan", "seconds": seconds, "cpu_s": time.process_time() - cpu,
            "images": args.scan_images,
            "items": len(items), "peak_mib": peak_mib()}


def child_item_list(args) -> dict:
    """Today's item list: one Python ``Item`` per image, at full size."""
    from medpipe.finetune.data import Item

    before = rss_mib()
    tick = time.perf_counter()
    items = [Item(DATASET, f"ct_00--Source{i // 100_000:02d}--case_{i // 100:07d}--x_{i % 100:04d}", None)
             for i in range(args.images)]
    seconds = time.perf_counter() - tick
    return {"part": "startup", "path": "today_items", "images": len(items), "seconds": seconds,
            "items_mib": rss_mib() - before, "peak_mib": peak_mib()}


def child_loader(args) -> dict:
    """Per-sample CPU time and bytes of today's worker and the lean one (one thread)."""
    import numpy as np
    import torch

    torch.set_num_threads(1)
    import legacy_samples as legacy

    from medpipe.finetune import data
    from medpipe.models.transforms import SAM_PIXELS

    folder = Path(args.folder)
    store, table = folder / "cases.zarr", folder / "cases.tsv"
    paths = {DATASET: str(store)}
    settings = {"patch_size": PATCH, "input_size": INPUT, "n_obj": N_OBJ, "min_object_px": MIN_PX, "flips": False,
                "image_prep": "resize"}
    positions = range(args.samples)
    old_items = legacy.build_items(table, paths, "train", "full", MIN_PX, PATCH)
    old_items and legacy.legacy_sample_at(old_items, paths, settings, 0, 0, 0, SAM_PIXELS)  # warm up
    cpu, wall, size = time.process_time(), time.perf_counter(), 0
    for p in positions:
        sample = legacy.legacy_sample_at(old_items, paths, settings, 0, 0, p, SAM_PIXELS)
        size += sum(sample[k].numel() * sample[k].element_size() for k in ("image", "masks", "foreground"))
    n = len(positions)
    today = {"cpu_s": (time.process_time() - cpu) / n, "wall_s": (time.perf_counter() - wall) / n, "bytes": size / n}

    dataset = data.CorpusSamples(data.build_items(table, paths, "train", "full", MIN_PX, PATCH), paths, settings, 0,
                                 pixels=SAM_PIXELS)
    dataset[0]  # warm up
    cpu, wall, size, samples = time.process_time(), time.perf_counter(), 0, []
    for p in positions:
        sample = dataset[p]
        size += sum(v.nbytes for v in sample.values() if isinstance(v, np.ndarray))
        samples.append(sample)
    ours = {"cpu_s": (time.process_time() - cpu) / n, "wall_s": (time.perf_counter() - wall) / n, "bytes": size / n,
            "rejected": dataset.rejected}
    batches = [samples[i:i + 7] for i in range(0, len(samples) - 6, 7)]
    cpu = time.process_time()
    for batch in batches:
        dataset.to_device(data.collate(batch), "cpu")
    ours["device_stage_cpu_s_per_sample"] = (time.process_time() - cpu) / max(7 * len(batches), 1)
    return {"part": "loader", "samples": len(positions), "images": args.loader_images, "today": today, "ours": ours,
            "peak_mib": peak_mib()}


CHILDREN = {"startup": child_startup, "scan": child_scan, "items": child_item_list, "loader": child_loader}


def run_child(kind: str, args, timeout: int = 3600) -> dict:
    command = [sys.executable, __file__, "--child", kind, "--folder", args.folder, "--images", str(args.images),
               "--scan-images", str(args.scan_images), "--loader-images", str(args.loader_images),
               "--samples", str(args.samples)]
    result = subprocess.run(command, capture_output=True, text=True, timeout=timeout)
    if result.returncode != 0:
        raise SystemExit(f"{kind} failed:\n{result.stderr[-3000:]}")
    row = json.loads(result.stdout.strip().splitlines()[-1])
    print(json.dumps(row), flush=True)
    return row


# ------------------------------------------------------------------------------ parts


def bench_startup(args) -> dict:
    """Start-up at ``args.images`` images against today's label scan, scaled from a measured sample."""
    import numpy as np

    folder = Path(args.folder)
    tick = time.perf_counter()
    ids = case_ids(args.images)
    patients = np.char.add(b"ct_00--case_", np.char.mod("%07d", np.arange(args.images) // 100).astype(bytes))
    write_index_store(folder / "index.zarr", ids, patients)
    objects = write_object_table(folder / "objects", args.images)
    write_corpus_table(folder / "corpus.tsv", ids, patients)
    del ids, patients
    print(f"# generated {args.images} images, {objects} objects in {time.perf_counter() - tick:.0f} s", flush=True)
    ours = run_child("startup", args)
    write_case_store(folder, args.scan_images)
    scan = run_child("scan", args)
    items = run_child("items", args)
    per_image = scan["seconds"] / args.scan_images
    today_s = per_image * args.images * 2  # the trainer built the items twice (train, val), each a full scan
    summary = {"part": "startup", "images": args.images, "objects": objects, "ours_s": ours["seconds"],
               "ours_cpu_s": ours["cpu_s"], "ours_peak_mib": ours["peak_mib"],
               "ours_startup_mib": ours["peak_mib"] - ours["rss_before_mib"], "ours_items_mib": ours["items_mib"],
               "today_scan_cpu_ms_per_image": 1000 * scan["cpu_s"] / args.scan_images,
               "today_scan_ms_per_image": 1000 * per_image, "today_s_extrapolated": today_s,
               "today_items_mib": items["items_mib"], "speedup": today_s / ours["seconds"]}
    print(json.dumps(summary), flush=True)
    return summary


def bench_loader(args) -> dict:
    """Loader CPU per sample and bytes per sample, today's path and the lean one in the same run."""
    folder = Path(args.folder)
    if not (folder / "cases.zarr").exists() or args.scan_images != args.loader_images:
        write_case_store(folder, args.loader_images)
    row = run_child("loader", args)
    today, ours = row["today"], row["ours"]
    summary = {"part": "loader", "today_samples_per_s_core": 1 / today["cpu_s"],
               "ours_samples_per_s_core": 1 / ours["cpu_s"], "speedup": today["cpu_s"] / ours["cpu_s"],
               "today_mb_per_sample": today["bytes"] / 1e6, "ours_mb_per_sample": ours["bytes"] / 1e6,
               "device_stage_cpu_ms_per_sample": 1000 * ours["device_stage_cpu_s_per_sample"],
               "rejected": ours["rejected"]}
    print(json.dumps(summary), flush=True)
    return summary


PARTS = {"startup": bench_startup, "loader": bench_loader}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--only", default="startup,loader", help=f"comma-separated parts of {sorted(PARTS)}")
    parser.add_argument("--images", type=int, default=3_700_000, help="corpus size for the start-up")
    parser.add_argument("--scan-images", type=int, default=200, help="images today's label scan is measured on")
    parser.add_argument("--loader-images", type=int, default=200, help="images the loader draws from")
    parser.add_argument("--samples", type=int, default=200, help="samples timed per loader path")
    parser.add_argument("--folder", default=None, help="scratch folder (default: a temporary one)")
    parser.add_argument("--child", choices=sorted(CHILDREN), help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child:
        print(json.dumps(CHILDREN[args.child](args)))
        return 0
    print(f"# {platform.node()} {platform.machine()} python {platform.python_version()}", flush=True)
    unknown = [part for part in args.only.split(",") if part not in PARTS]
    if unknown:
        raise SystemExit(f"--only: unknown part {unknown[0]!r}; expected some of {sorted(PARTS)}")
    with tempfile.TemporaryDirectory(dir=args.folder) as scratch:
        args.folder = scratch
        for part in args.only.split(","):
            PARTS[part](args)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

"""SA-Med2D-20M at the paper's scale: discovery, split and dry run with a 3.7M-entry JSON index.

Issue 14 item 4: the public part of SA-Med2D-20M is 3.7 M images; ingest and split must not hold
a per-image Python object list, and the study's dry run must stay under 10 s. Measured on a
generated ``SAMed2D_v1.json`` of N entries (4 masks each, names of the real form), not on N files:

* **discovery** (ours): ``layout: sa_med2d`` discovery streamed over the whole index (the
  ``include`` of one modality entry applied, ids and patient ids derived; the file-existence checks
  answered without touching the disk, since no image exists) against the **baseline**
  ``json.load`` of the index plus a list of one case record per image (what a glob- or list-based
  discovery holds);
* **split** (ours): ``medpipe.splits.split_dataset`` on a store whose case index has N cases,
  against the **baseline** of the previous implementation: the cases as a pandas frame of Python
  strings grouped with ``groupby`` (its algorithm, copied below; for one dataset the split rules
  of issue 13 give the same table); then twice as the workflow runs it, with a ledger: the first
  run writes the ledger, the second reads it (missing-case check, kept assignments) and grows it;
* **dry run**: ``snakemake -n`` of config/study.yaml with the N-entry index in the placeholder
  tree, against the same dry run with a 2-entry index.

Each measurement runs in its own subprocess; its peak RSS is that process's ``VmHWM`` (Linux;
``ru_maxrss`` elsewhere, which on Linux also counts the parent's RSS at the spawn). Prints
seconds and peak MiB of each, and the ratios ours/baseline.

    python benchmarks/corpus_index.py                         # N = 3.7M (writes a ~1.3 GB index)
    python benchmarks/corpus_index.py --entries 200000        # quick run
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
sys.path.insert(0, str(REPO / "tests"))

SLICES_PER_VOLUME = 100  # patient groups: volumes of 100 slices


def peak_mib() -> float:
    """This process's peak RSS. ``ru_maxrss`` keeps the high-water mark of the memory it replaced
    at ``exec`` (the parent's, when spawned by vfork), so small runs would report the parent's RSS;
    ``VmHWM`` is this program's own."""
    try:
        with open("/proc/self/status") as handle:
            for line in handle:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) / 1024
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


# ------------------------------------------------------------------------------ children


def child_discover(index: str) -> dict:
    from unittest import mock

    from medpipe.io.layouts import sa_med2d

    start = time.perf_counter()
    cases = refused = 0
    spec = {"index": index, "include": "^ct_"}
    with mock.patch("os.path.isfile", lambda path: True):  # no image or mask exists
        for item in sa_med2d.discover("sa_med2d_ct", spec):
            if hasattr(item, "problem"):
                refused += 1
            else:
                cases += 1
    return {"seconds": time.perf_counter() - start, "cases": cases, "refused": refused}


def child_discover_baseline(index: str) -> dict:
    start = time.perf_counter()
    with open(index) as handle:
        entries = json.load(handle)
    records = []
    for key, masks in entries.items():
        name = key.rsplit("/", 1)[-1]
        if name.startswith("ct_"):
            case_id = name[:-4]
            records.append({"case_id": case_id, "patient_id": "--".join(case_id.split("--")[1:-1]),
                            "image": key, "masks": sorted(masks)})
    return {"seconds": time.perf_counter() - start, "cases": len(records), "refused": 0}


def child_split(store: str, out: str, ledger: str = "") -> dict:
    from medpipe.splits import split_dataset

    start = time.perf_counter()
    counts = split_dataset(store, out, {"train": 0.9, "val": 0.1, "test": 0.0}, seed=0, ledger=ledger or None,
                           max_missing=0.1)
    return {"seconds": time.perf_counter() - start, "cases": sum(counts.values())}


def child_split_baseline(store: str, out: str) -> dict:
    """The previous implementation: a pandas frame of Python strings, groupby, a dict per patient."""
    import hashlib

    import pandas as pd

    from medpipe.store import DatasetStore

    start = time.perf_counter()
    store = DatasetStore(store)
    cases, patients = store.case_index()
    rows = [(store.name, c.decode(), p.decode(), store.modality) for c, p in zip(cases.tolist(), patients.tolist())]
    frame = pd.DataFrame(rows, columns=["dataset", "case_id", "patient_id", "modality"])
    fractions = {"train": 0.9, "val": 0.1, "test": 0.0}
    group_split = {}
    for modality, stratum in frame.groupby("modality", sort=True):
        sizes = stratum.groupby(["dataset", "patient_id"]).size()
        counts = {name: 0 for name in fractions}
        free = [(hashlib.sha256("\x1f".join(["0", modality, *g]).encode()).hexdigest(), g, int(n))
                for g, n in sizes.items()]
        total = 0
        for _, group, size in sorted(free):
            total += size
            deficits = {name: fractions[name] * total - counts[name] for name in fractions}
            choice = max(fractions, key=lambda name: (deficits[name], -list(fractions).index(name)))
            counts[choice] += size
            group_split[group] = choice
    frame["split"] = [group_split[(d, p)] for d, p in zip(frame["dataset"], frame["patient_id"])]
    frame.sort_values(["dataset", "case_id"]).to_csv(out, sep="\t", index=False)
    return {"seconds": time.perf_counter() - start, "cases": len(frame)}


def child_dry_run(root: str, entries: int, repeat: int = 3) -> dict:
    """The best of ``repeat`` dry runs (the machine is shared; the minimum is the least disturbed)."""
    from dag_fixtures import job_counts, placeholder_config, timed_dry_run

    configfile, config = placeholder_config(Path(root), cases_per_dataset=2, index_entries=int(entries))
    spec = next(s for s in config["datasets"].values() if s.get("layout") == "sa_med2d")
    index = Path(spec["index"]) if "index" in spec else Path(spec["root"]) / "SAMed2Dv1" / "SAMed2D_v1.json"
    times = []
    for _ in range(int(repeat)):
        seconds, result = timed_dry_run(Path(root), configfile)
        if result.returncode != 0:
            raise RuntimeError(result.stderr[-3000:])
        times.append(seconds)
    return {"seconds": min(times), "jobs": sum(job_counts(result.stdout + result.stderr).values()),
            "index_mib": index.stat().st_size / 2**20,
            "snakemake_peak_mib": resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024}


CHILDREN = {"discover": child_discover, "discover_baseline": child_discover_baseline, "split": child_split,
            "split_baseline": child_split_baseline, "dry_run": child_dry_run}


# ------------------------------------------------------------------------------- parent


def write_index(path: Path, entries: int) -> None:
    """The index: 8 modality prefixes in the real proportions' order of magnitude, 4 masks per image."""
    prefixes = ["ct_00", "mr_00", "mr_t2", "x_ray", "ultrasound_00", "endoscopy_00", "fundus_photography", "pet_00"]
    with open(path, "w") as handle:
        handle.write("{")
        for i in range(entries):
            prefix = prefixes[0] if i % 2 == 0 else prefixes[1 + i % 7]
            volume = i // SLICES_PER_VOLUME
            name = f"{prefix}--Source{volume % 91}--case_{volume:07d}--z_{i % SLICES_PER_VOLUME:04d}"
            masks = ", ".join(f'"masks/{name}--{k:04d}_000.png"' for k in range(4))
            handle.write(f'{"," if i else ""}\n  "images/{name}.png": [{masks}]')
        handle.write("\n}\n")


def write_store(path: Path, entries: int) -> None:
    """A store whose case index holds ``entries`` cases (the split stage reads only the index)."""
    from medpipe.store import StoreWriter

    with StoreWriter(path, "sa_med2d_ct", "ct", 2, {1: "object"}, "instances") as writer:
        for i in range(entries):
            volume = i // SLICES_PER_VOLUME
            patient = f"Source{volume % 91}--case_{volume:07d}"
            writer.case_done(f"ct_00--{patient}--z_{i % SLICES_PER_VOLUME:04d}", patient)
        writer.publish()


def run_child(kind: str, *args: str) -> dict:
    command = [sys.executable, __file__, "--child", kind, *args]
    result = subprocess.run(command, capture_output=True, text=True)
    if result.returncode != 0:
        raise RuntimeError(f"{kind} failed:\n{result.stderr[-3000:]}")
    return json.loads(result.stdout.strip().splitlines()[-1])


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--entries", type=int, default=3_700_000, help="images in the generated index")
    parser.add_argument("--steps", nargs="+", default=["discover", "split", "dry_run"],
                        choices=["discover", "split", "dry_run"], help="what to measure (default: all)")
    parser.add_argument("--child", choices=sorted(CHILDREN), help=argparse.SUPPRESS)
    parser.add_argument("args", nargs="*", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child:
        result = CHILDREN[args.child](*args.args)
        result["peak_mib"] = peak_mib()
        print(json.dumps(result))
        return 0
    rows, same = {}, None
    with tempfile.TemporaryDirectory(prefix="medpipe-corpus-") as tmp:
        root = Path(tmp)
        if "discover" in args.steps:
            start = time.perf_counter()
            index = root / "SAMed2D_v1.json"
            write_index(index, args.entries)
            print(f"index: {args.entries} entries, {index.stat().st_size / 2**20:.0f} MiB, "
                  f"written in {time.perf_counter() - start:.0f} s", flush=True)
            rows["discover"] = run_child("discover", str(index))
            rows["discover_baseline"] = run_child("discover_baseline", str(index))
            index.unlink()
        if "split" in args.steps:
            write_store(root / "s.zarr", args.entries)
            rows["split"] = run_child("split", str(root / "s.zarr"), str(root / "split.tsv"))
            rows["split_baseline"] = run_child("split_baseline", str(root / "s.zarr"), str(root / "base.tsv"))
            ledger = str(root / "ledger.tsv")
            rows["split_ledger"] = run_child("split", str(root / "s.zarr"), str(root / "split2.tsv"), ledger)
            rows["split_rerun"] = run_child("split", str(root / "s.zarr"), str(root / "split3.tsv"), ledger)
            tables = [(root / name).read_bytes() for name in ("split.tsv", "base.tsv", "split2.tsv", "split3.tsv",
                                                               "ledger.tsv")]
            same = all(table == tables[0] for table in tables)
            del tables
        if "dry_run" in args.steps:
            (root / "study").mkdir()
            (root / "small").mkdir()
            rows["dry_run"] = run_child("dry_run", str(root / "study"), str(args.entries))
            rows["dry_run_baseline"] = run_child("dry_run", str(root / "small"), "2")
            for key in ("dry_run", "dry_run_baseline"):  # the dry run's memory is Snakemake's
                rows[key]["peak_mib"] = rows[key].pop("snakemake_peak_mib")
    for name, row in rows.items():
        print(name, json.dumps(row), flush=True)
    print(f"\nmachine: {platform.node()} ({platform.processor() or platform.machine()}), "
          f"python {platform.python_version()}; index of {args.entries} images\n")
    print("| step | ours s | ours peak MiB | baseline s | baseline peak MiB | time ratio | memory ratio |")
    print("|---|---:|---:|---:|---:|---:|---:|")
    for step, label in (("discover", "discovery (stream, ct_ entries)"), ("split", "split of one store"),
                        ("split_ledger", "split, first run with a ledger"),
                        ("split_rerun", "split, second run (ledger read and grown)"),
                        ("dry_run", "study dry run (N-entry vs 2-entry index)")):
        if step not in rows:
            continue
        ours, base = rows[step], rows["split_baseline" if step.startswith("split") else f"{step}_baseline"]
        print(f"| {label} | {ours['seconds']:.1f} | {ours['peak_mib']:.0f} | {base['seconds']:.1f} | "
              f"{base['peak_mib']:.0f} | {ours['seconds'] / base['seconds']:.2f} | "
              f"{ours['peak_mib'] / base['peak_mib']:.2f} |")
    if same is not None:
        print(f"\nsplit tables of ours (with and without a ledger), the baseline and the ledger identical: {same}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

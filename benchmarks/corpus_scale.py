"""The SA-Med2D corpus at scale: ingest in parts (packed store) against today's per-case ingest.

Measurements (``--measure``; one function each, ``main`` runs the selected ones):

* ``ingest``: generates an SA-Med2D-like corpus (``medpipe.synth.sa_med2d``: the release's image
  sizes 512², 290×320, 181×258, 155×225 in turn, 3-channel identical PNGs, 1-15 masks, ~4.3 on
  average) as ``data.zip``, and ingests it through plan -> parts -> gather, each step in its own
  process (CPU time and peak RSS per process). Today's path (``medpipe ingest``, per-case layout,
  which cannot read the zip) ingests the first ``--baseline-images`` of the same corpus from the
  unpacked folder, in the same run, and so does the new path (same input, same images). Reports
  images/s per core (images / CPU seconds of the job processes, all threads), files created per
  image, peak RSS per part, and projects the whole corpus (3.7 M images) on 64 parts.
* ``member_table``: a zip of ``--members`` members named like the release's; the time and memory
  ``zipfile.ZipFile`` needs to read its member table (central directory), and those of the planning
  step's stream over it (``medpipe.data.corpus._plan_members``: one block in memory, each member's
  place written to the member file of its part, 64 parts), scaled to 19.5 M members. A part job
  loads only its own member file.
* ``startup`` and ``loader``: finetune start-up at ``--startup-images`` (3.7 M) from an object table
  and the lean training loader, each against today's path in the same run; they live in
  ``benchmarks/corpus_training.py``, run here as a subprocess.

``pool`` rendered images (with their masks) per size are reused under new names, so generation is
fast; ingest still reads, decodes, checks and stores every image. The zip is written with stored
members (the PNGs are already compressed; the reader also inflates deflated members).

    python benchmarks/corpus_scale.py                              # 20 k images, 1 M members
    python benchmarks/corpus_scale.py --images 2000 --baseline-images 200 --members 100000   # smoke
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import subprocess
import sys
import tempfile
import time
import zipfile
from pathlib import Path

CORPUS_IMAGES = 3_700_000
CORPUS_MEMBERS = 19_500_000
PARTS_AT_SCALE = 64
SPEC = {"layout": "sa_med2d", "modality": "other", "ndim": 2, "label_kind": "instances", "classes": {1: "object"}}


# ----------------------------------------------------------------------------------- child processes


def _cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def _rss_mib() -> float:
    """The current resident set (VmRSS) of this process."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def _hwm_mib() -> float:
    """The peak resident set (VmHWM) of this process."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def _usage(cpu_before: float) -> dict:
    """CPU seconds of the work itself (all threads; interpreter start and imports excluded) and the
    peak RSS of the whole process."""
    return {"cpu_s": _cpu() - cpu_before, "process_cpu_s": _cpu(),
            "peak_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}


def _imports() -> float:
    """Import what every step imports, so its CPU time counts the work only."""
    import medpipe.data.corpus  # noqa: F401
    import medpipe.data.ingest  # noqa: F401

    return _cpu()


def child_plan(root: str, plan: str, parts: str) -> dict:
    from medpipe.data.corpus import plan_corpus

    cpu, start = _imports(), time.perf_counter()
    plan_corpus("sa", dict(SPEC, root=root), int(parts), plan)
    return {"wall_s": time.perf_counter() - start, **_usage(cpu)}


def child_part(plan: str, part: str, out: str, root: str) -> dict:
    from medpipe.data.corpus import ingest_part

    cpu, start = _imports(), time.perf_counter()
    written, quarantined = ingest_part("sa", dict(SPEC, root=root), plan, int(part), out)
    return {"wall_s": time.perf_counter() - start, "written": written, "quarantined": quarantined, **_usage(cpu)}


def child_gather(out: str, quarantine: str, root: str, *parts: str) -> dict:
    from medpipe.data.corpus import gather_corpus

    cpu, start = _imports(), time.perf_counter()
    count = gather_corpus("sa", dict(SPEC, root=root), list(parts), out, quarantine)
    return {"wall_s": time.perf_counter() - start, "written": count, **_usage(cpu)}


def child_cases(index: str, out: str, quarantine: str) -> dict:
    """Today's path: ``medpipe ingest`` of the unpacked folder into the per-case layout."""
    from medpipe.data.ingest import ingest_dataset

    cpu, start = _imports(), time.perf_counter()
    report = ingest_dataset("sa", dict(SPEC, index=index), out, quarantine)
    return {"wall_s": time.perf_counter() - start, "written": report.n_cases, **_usage(cpu)}


def child_member_table(path: str) -> dict:
    import medpipe.data.corpus  # noqa: F401  (the same imports as member_scan, before the measurement)

    before = _rss_mib()
    start = time.perf_counter()
    with zipfile.ZipFile(path) as archive:
        members = len(archive.infolist())
        seconds = time.perf_counter() - start
        after = _rss_mib()
    return {"members": members, "seconds": seconds, "mib": after - before, "peak_mib": _hwm_mib()}


def child_member_scan(path: str, folder: str, parts: str) -> dict:
    """The planning step's pass over the member table: stream the central directory, write each
    image's and mask's place to the member file of its part (medpipe.data.corpus._plan_members)."""
    from medpipe.data.corpus import _plan_members
    from medpipe.io.layouts.sa_med2d_release import Source

    before = _rss_mib()
    start = time.perf_counter()
    _plan_members(Source("zip", path), int(parts), Path(folder), "bench")
    seconds = time.perf_counter() - start
    return {"seconds": seconds, "mib": _rss_mib() - before, "peak_mib": _hwm_mib(),
            "part_file_mib": max(f.stat().st_size for f in Path(folder).glob("members-*")) / 2**20}


CHILDREN = {"member_scan": child_member_scan, "plan": child_plan, "part": child_part, "gather": child_gather,
            "cases": child_cases,
            "member_table": child_member_table}


def run_child(kind: str, *args) -> dict:
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(Path(__file__).resolve().parents[1] / "src"),
                                                         os.environ.get("PYTHONPATH", "")])}
    result = subprocess.run([sys.executable, __file__, "--child", kind, *map(str, args)], capture_output=True,
                            text=True, env=env)
    if result.returncode:
        raise RuntimeError(f"{kind} failed:\n{result.stderr[-3000:]}")
    return json.loads(result.stdout.strip().splitlines()[-1])


# --------------------------------------------------------------------------------------- measurements


def count_inodes(*folders: Path) -> int:
    """Files and folders under ``folders``, each inode once (the store links the parts' shards)."""
    seen = set()
    for folder in folders:
        for path in [folder, *folder.rglob("*")]:
            seen.add(os.lstat(path).st_ino)
    return len(seen)


def ingest_new(root: Path, work: Path, parts: int, images: int) -> dict:
    """plan -> parts (one process each, one after the other: each uses one core) -> gather."""
    plan = run_child("plan", root, work / "plan", parts)
    part_results = [run_child("part", work / "plan", k, work / f"part{k}", root) for k in range(parts)]
    gather = run_child("gather", work / "sa.zarr", work / "q.tsv", root, *[work / f"part{k}" for k in range(parts)])
    written = sum(p["written"] for p in part_results)
    part_cpu = sum(p["cpu_s"] for p in part_results)
    total_cpu = part_cpu + plan["cpu_s"] + gather["cpu_s"]
    store_files = sum(1 for _ in (work / "sa.zarr").rglob("*")) + 1
    created = count_inodes(work / "sa.zarr", work / "plan", *[work / f"part{k}" for k in range(parts)])
    return {"images": images, "written": written, "parts": parts,
            "plan_s": plan["wall_s"], "plan_cpu_s": plan["cpu_s"], "plan_peak_mib": plan["peak_mib"],
            "part_cpu_s": part_cpu, "part_wall_s": sum(p["wall_s"] for p in part_results),
            "part_peak_mib": max(p["peak_mib"] for p in part_results),
            "gather_s": gather["wall_s"], "gather_cpu_s": gather["cpu_s"], "gather_peak_mib": gather["peak_mib"],
            "images_per_cpu_s_parts": written / part_cpu, "images_per_cpu_s_all": written / total_cpu,
            "store_files_per_image": store_files / written, "inodes_per_image": created / written}


def ingest_today(index: Path, work: Path, images: int) -> dict:
    result = run_child("cases", index, work / "cases.zarr", work / "cases.tsv")
    created = count_inodes(work / "cases.zarr")
    return {"images": images, "written": result["written"], "wall_s": result["wall_s"], "cpu_s": result["cpu_s"],
            "peak_mib": result["peak_mib"], "images_per_cpu_s": result["written"] / result["cpu_s"],
            "inodes_per_image": created / result["written"]}


def measure_ingest(args, work: Path) -> dict:
    from medpipe.synth.sa_med2d import write_corpus

    start = time.perf_counter()
    write_corpus(work / "zipped", args.images, seed=0, pool=args.pool, method=zipfile.ZIP_STORED)
    write_corpus(work / "folder", args.baseline_images, seed=0, pool=args.pool, zipped=False)
    generated = time.perf_counter() - start
    print(f"generated {args.images} images (zip) + {args.baseline_images} (folder) in {generated:.0f} s",
          file=sys.stderr)
    today = ingest_today(work / "folder" / "SAMed2Dv1" / "SAMed2D_v1.json", work / "today", args.baseline_images)
    same_input = ingest_new(work / "folder", work / "new_folder", 1, args.baseline_images)
    new = ingest_new(work / "zipped", work / "new_zip", args.parts, args.images)
    per_image_part_s = new["part_cpu_s"] / new["written"]
    projection = {  # the whole corpus on 64 parts, one core each, from the per-image costs measured here
        "parts_h": per_image_part_s * CORPUS_IMAGES / PARTS_AT_SCALE / 3600,
        "plan_h_without_member_table": new["plan_cpu_s"] / new["written"] * CORPUS_IMAGES / 3600,
        "gather_h": new["gather_cpu_s"] / new["written"] * CORPUS_IMAGES / 3600,
        "today_one_job_h": CORPUS_IMAGES / today["images_per_cpu_s"] / 3600,
    }
    return {"generated_s": generated, "today_folder": today, "new_folder_same_images": same_input, "new_zip": new,
            "speedup_per_core": same_input["images_per_cpu_s_all"] / today["images_per_cpu_s"],
            "projection": projection}


def write_member_zip(path: Path, members: int) -> float:
    """A zip of ``members`` one-byte members named like the release's masks; returns seconds."""
    from medpipe.synth.sa_med2d import image_name

    start = time.perf_counter()
    with zipfile.ZipFile(path, "w", compression=zipfile.ZIP_STORED) as archive:
        for k in range(members):
            archive.writestr(f"SAMed2Dv1/masks/{image_name(k // 4, 5)}--{k % 4:04d}_000.png", b"x")
        archive.writestr("SAMed2Dv1/SAMed2D_v1.json", b"{}")  # the planner looks for it
    return time.perf_counter() - start


def measure_member_table(args, work: Path) -> dict:
    seconds = write_member_zip(work / "members.zip", args.members)
    print(f"wrote a zip of {args.members} members in {seconds:.0f} s", file=sys.stderr)
    result = run_child("member_table", work / "members.zip")
    (work / "scan").mkdir()
    scan = run_child("member_scan", work / "members.zip", work / "scan", PARTS_AT_SCALE)
    scale = CORPUS_MEMBERS / result["members"]
    return {"zipfile": {**result, "scaled_seconds": result["seconds"] * scale,
                        "scaled_gib": result["mib"] * scale / 1024},
            "stream": {**scan, "scaled_seconds": scan["seconds"] * scale,
                       "part_member_file_mib_at_scale": scan["part_file_mib"] * scale},
            "zip_mib": (work / "members.zip").stat().st_size / 2**20}


TRAINING = Path(__file__).with_name("corpus_training.py")


def training_measurement(part: str):
    """A measurement of ``benchmarks/corpus_training.py`` (its last printed line is the summary)."""

    def measure(args, work: Path) -> dict:
        command = [sys.executable, str(TRAINING), "--only", part, "--folder", str(work),
                   "--images", str(args.startup_images), "--scan-images", str(args.scan_images),
                   "--loader-images", str(args.loader_images), "--samples", str(args.samples)]
        result = subprocess.run(command, capture_output=True, text=True)
        if result.returncode != 0:
            raise SystemExit(f"{part} failed:\n{result.stderr[-3000:]}")
        return json.loads(result.stdout.strip().splitlines()[-1])

    return measure


MEASUREMENTS = {"ingest": measure_ingest, "member_table": measure_member_table,
                "startup": training_measurement("startup"), "loader": training_measurement("loader")}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--measure", nargs="+", default=list(MEASUREMENTS), choices=sorted(MEASUREMENTS))
    parser.add_argument("--images", type=int, default=20_000, help="images of the generated corpus (new path)")
    parser.add_argument("--baseline-images", type=int, default=1_000,
                        help="first images of the corpus ingested by both paths from the unpacked folder")
    parser.add_argument("--parts", type=int, default=4, help="ingest parts of the new path")
    parser.add_argument("--pool", type=int, default=64, help="rendered images per size, reused under new names")
    parser.add_argument("--members", type=int, default=1_000_000, help="members of the member-table zip")
    parser.add_argument("--startup-images", type=int, default=CORPUS_IMAGES, help="corpus size for the start-up")
    parser.add_argument("--scan-images", type=int, default=200, help="images today's label scan is measured on")
    parser.add_argument("--loader-images", type=int, default=200, help="images the loader draws from")
    parser.add_argument("--samples", type=int, default=200, help="samples timed per loader path")
    parser.add_argument("--workdir", help="keep the generated data here (default: a temporary folder, removed)")
    parser.add_argument("--child", choices=sorted(CHILDREN), help=argparse.SUPPRESS)
    parser.add_argument("args", nargs="*", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child:
        print(json.dumps(CHILDREN[args.child](*args.args)))
        return 0
    work = Path(args.workdir or tempfile.mkdtemp(prefix="corpus_scale-"))
    try:
        results = {}
        for name in args.measure:
            folder = work / name
            folder.mkdir(parents=True, exist_ok=True)
            results[name] = MEASUREMENTS[name](args, folder)
            print(json.dumps({name: results[name]}, indent=1))
    finally:
        if not args.workdir:
            shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())

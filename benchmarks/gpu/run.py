"""Measure every GPU row of docs/benchmarks.md in two short commands (benchmarks/gpu/README.md).

Each part runs in its own subprocess with its own timeout, so a part that runs out of memory,
crashes or hangs loses no other part; rows inside a part are guarded too (the finetune benchmark
catches out-of-memory per row and rewrites its JSON after every row). A command writes at most 8
files into ``--out``: one JSON per part, ``log.txt`` (every part's output) and ``summary.md`` (the
environment and each part's status, written after every part).

    python benchmarks/gpu/run.py finetune --out $OUT     # command 1: vit_b finetune step rows
    python benchmarks/gpu/run.py rest --out $OUT         # command 2: interactive, semantic, DDP smoke, resume
    python benchmarks/gpu/run.py smoke --out /tmp/smoke  # CPU, tiny model, seconds (CI: tests/test_gpu_script.py)
"""

from __future__ import annotations

import argparse
import importlib.util
import os
import platform
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
PY = sys.executable
#: modules the parts import that the GPU machines' image lacks (travel as wheels: README.md)
NEEDED = ("segment_anything", "zarr", "numcodecs", "donfig", "jsonschema", "referencing", "rpds", "monai",
          "skimage", "scipy", "pandas", "yaml", "tqdm", "tensorboard")
MAX_FILES = 8


@dataclass
class Part:
    name: str
    argv: list[str]
    timeout: int
    writes_json: bool = True


def _finetune(name: str, batch: int, device: str, timeout: int, smoke: bool) -> Part:
    model = ["--model-type", "tiny", "--n-obj", "2", "--n-steps", "1", "--warmup", "0", "--iterations", "1",
             "--activation-checkpointing", "off", "--threads", "1"] if smoke else [
        "--model-type", "vit_b", "--activation-checkpointing", "both", "--warmup", "1", "--iterations", "3"]
    return Part(name, [PY, "benchmarks/finetune_step.py", *model, "--batch-sizes", str(batch),
                       "--variants", "old", "new", "--device", device, "--json", "{json}"], timeout)


def parts(command: str) -> list[Part]:
    checks = "benchmarks/gpu/checks.py"
    if command == "finetune":  # 4 parts x <= 115 s: < 8 min with start-up
        return [_finetune(f"finetune_vit_b_batch{b}", b, "cuda", 115, False) for b in (1, 2, 4, 7)]
    if command == "rest":  # 95 + 150 + 90 + 120 s at most
        return [
            Part("interactive_vit_b", [PY, "benchmarks/interactive.py", "--model-type", "vit_b", "--device", "cuda",
                                       "--images", "4", "--volumes", "1", "--volume-shape", "8", "128", "128",
                                       "--baseline-points", "4", "--json", "{json}"], 95),
            Part("semantic_vit_b", [PY, "benchmarks/semantic.py", "--size", "paper", "--model-type", "vit_b",
                                    "--device", "cuda", "--iterations", "3", "--json", "{json}"], 150),
            Part("ddp_smoke_cuda", [PY, checks, "ddp", "--device", "cuda", "--json", "{json}"], 90),
            Part("kill_resume_cuda", [PY, checks, "resume", "--device", "cuda", "--json", "{json}"], 120),
        ]
    if command == "smoke":  # the same machinery on CPU with a tiny model, for CI
        return [_finetune("finetune_tiny", 1, "cpu", 120, True),
                Part("ddp_smoke_cpu", [PY, checks, "ddp", "--device", "cpu", "--iterations", "1", "--batch", "1",
                                       "--json", "{json}"], 120)]
    raise ValueError(f"unknown command {command!r}; expected finetune, rest or smoke")


def environment() -> list[str]:
    lines = [f"- python {platform.python_version()} ({sys.executable}), {platform.platform()}"]
    try:
        import torch

        lines.append(f"- torch {torch.__version__}, CUDA available: {torch.cuda.is_available()}")
        if torch.cuda.is_available():
            props = torch.cuda.get_device_properties(0)
            lines.append(f"- GPU: {props.name}, {props.total_memory / 2**30:.1f} GiB, "
                         f"{props.multi_processor_count} SMs")
    except ImportError as exc:  # pragma: no cover - the machines hold torch
        lines.append(f"- torch missing: {exc}")
    missing = [m for m in NEEDED if importlib.util.find_spec(m) is None]
    lines.append(f"- missing modules: {', '.join(missing) or 'none'}")
    return lines


def run_part(part: Part, out: Path, log) -> dict:
    json_path = out / f"{part.name}.json"
    argv = [a.replace("{json}", str(json_path)) for a in part.argv]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT / "src"), os.environ.get("PYTHONPATH")])),
           "PYTHONUNBUFFERED": "1"}
    log.write(f"\n===== {part.name}: {' '.join(argv)} (timeout {part.timeout} s)\n")
    log.flush()
    start = time.monotonic()
    try:
        done = subprocess.run(argv, cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT, timeout=part.timeout)
        status = "ok" if done.returncode == 0 else f"exit {done.returncode}"
    except subprocess.TimeoutExpired:
        status = f"timeout after {part.timeout} s"
    seconds = time.monotonic() - start
    log.flush()
    if status == "ok" and part.writes_json and not json_path.exists():
        status = "no result file"
    return {"part": part.name, "status": status, "seconds": round(seconds, 1),
            "result": json_path.name if json_path.exists() else None}


def write_summary(out: Path, command: str, env_lines: list[str], results: list[dict]) -> None:
    lines = [f"# benchmarks/gpu/run.py {command}", "", *env_lines, "", "| part | status | seconds | result |",
             "|---|---|---|---|"]
    lines += [f"| {r['part']} | {r['status']} | {r['seconds']} | {r['result'] or ''} |" for r in results]
    (out / "summary.md").write_text("\n".join(lines) + "\n")


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("command", choices=["finetune", "rest", "smoke"])
    parser.add_argument("--out", default=os.environ.get("OUT"), help="result folder (default: $OUT)")
    parser.add_argument("--only", nargs="*", default=None, help="run only these parts (names in summary.md)")
    args = parser.parse_args(argv)
    if not args.out:
        parser.error("--out (or $OUT) is required")
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    todo = [p for p in parts(args.command) if args.only is None or p.name in args.only]
    if len(todo) + 2 > MAX_FILES:
        raise SystemExit(f"{len(todo)} parts would write more than {MAX_FILES} files")
    env_lines = environment()
    print("\n".join(env_lines), flush=True)
    results = []
    with open(out / "log.txt", "a") as log:
        for part in todo:
            results.append(run_part(part, out, log))
            write_summary(out, args.command, env_lines, results)
            print(f"{part.name}: {results[-1]['status']} ({results[-1]['seconds']} s)", flush=True)
    return 0 if all(r["status"] == "ok" for r in results) else 1


if __name__ == "__main__":
    raise SystemExit(main())

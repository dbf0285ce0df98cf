"""The prepared GPU script (benchmarks/gpu/run.py) in its CPU smoke mode: parts, guards, result files."""

import importlib.util
import json
import sys

import pytest

from conftest import REPO_ROOT


def _runner():
    spec = importlib.util.spec_from_file_location("gpu_run", REPO_ROOT / "benchmarks" / "gpu" / "run.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules["gpu_run"] = module  # dataclasses look their module up
    spec.loader.exec_module(module)
    return module


def test_commands_fit_the_file_and_time_limits():
    run = _runner()
    for command in ("finetune", "rest"):
        parts = run.parts(command)
        assert len(parts) + 2 <= run.MAX_FILES  # one JSON per part + log.txt + summary.md
        assert sum(p.timeout for p in parts) < 9 * 60 - 60  # < 9 min with a minute for start-up
    finetune = " ".join(" ".join(p.argv) for p in run.parts("finetune"))
    assert all(f"--batch-sizes {b} " in finetune for b in (1, 2, 4, 7))
    assert "--variants old new" in finetune and "--activation-checkpointing both" in finetune


def test_a_failing_or_hanging_part_loses_no_other(tmp_path, monkeypatch):
    run = _runner()
    py = sys.executable
    monkeypatch.setattr(run, "parts", lambda command: [
        run.Part("crashes", [py, "-c", "raise SystemExit(3)"], 30),
        run.Part("hangs", [py, "-c", "import time; time.sleep(60)"], 2),
        run.Part("works", [py, "-c", "import sys, json; open(sys.argv[1], 'w').write(json.dumps({'x': 1}))",
                           "{json}"], 30),
    ])
    assert run.main(["smoke", "--out", str(tmp_path)]) == 1
    summary = (tmp_path / "summary.md").read_text()
    assert "| crashes | exit 3 |" in summary and "| hangs | timeout after 2 s |" in summary
    assert "| works | ok |" in summary and json.loads((tmp_path / "works.json").read_text()) == {"x": 1}
    assert sorted(p.name for p in tmp_path.iterdir()) == ["log.txt", "summary.md", "works.json"]


def test_cpu_smoke_of_the_finetune_part(tmp_path):
    run = _runner()
    assert run.main(["smoke", "--out", str(tmp_path), "--only", "finetune_tiny"]) == 0
    rows = json.loads((tmp_path / "finetune_tiny.json").read_text())["results"]
    assert [r["variant"] for r in rows] == ["old", "new"]
    old, new = rows
    assert new["syncs_per_iteration"] <= 10 < old["syncs_per_iteration"]
    assert all(r["seconds_per_iteration"] > 0 and r["encoder_seconds"] > 0 and r["flops"] > 0 for r in rows)


@pytest.mark.slow
def test_cpu_smoke_of_the_two_process_check(tmp_path):
    run = _runner()
    assert run.main(["smoke", "--out", str(tmp_path), "--only", "ddp_smoke_cpu"]) == 0
    result = json.loads((tmp_path / "ddp_smoke_cpu.json").read_text())
    assert result["ok"] and result["ranks"] == 2 and result["max_rank_divergence"] == 0.0

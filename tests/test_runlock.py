"""One trainer per run folder: a second one exits at once naming the holder; a crash leaves no lock."""

import json
import os
import signal
import socket
import subprocess
import sys
import time

import pytest

from medpipe import runlock
from medpipe.runlock import RunLocked, run_lock

from finetune_fixtures import TINY_RUN, write_config

HOLD = ("import sys, time\nfrom medpipe.runlock import run_lock\n"
        "with run_lock(sys.argv[1]):\n    print('held', flush=True)\n    time.sleep(60)\n")


def _holder(tmp_path, env=None):
    """Another process holding the lock (as a running trainer would)."""
    proc = subprocess.Popen([sys.executable, "-c", HOLD, str(tmp_path / "run")], stdout=subprocess.PIPE, text=True,
                            env={**os.environ, **(env or {})})
    assert proc.stdout.readline().strip() == "held"
    return proc


def test_a_second_trainer_is_refused_naming_host_pid_and_slurm_job(tmp_path):
    proc = _holder(tmp_path, {"SLURM_JOB_ID": "4711"})
    try:
        with pytest.raises(RunLocked) as info, run_lock(tmp_path / "run"):
            pass
        message = str(info.value)
        assert f"host {socket.gethostname()}, PID {proc.pid}, SLURM job 4711" in message
        assert "scancel 4711" in message and "\n" not in message
    finally:
        proc.kill()
        proc.wait()


def test_a_crashed_trainer_does_not_block_the_rerun(tmp_path):
    proc = _holder(tmp_path)
    os.kill(proc.pid, signal.SIGKILL)  # the record stays behind, the kernel's lock does not
    proc.wait()
    assert json.loads((tmp_path / "run" / "trainer.lock").read_text())["pid"] == proc.pid
    with run_lock(tmp_path / "run") as path:
        assert json.loads(path.read_text())["pid"] == os.getpid()
    assert path.read_text() == ""  # released
    with run_lock(tmp_path / "run"):  # and taken again
        pass


def test_without_flock_the_record_decides(tmp_path, monkeypatch):
    def no_flock(fd, op):
        raise OSError(runlock.errno.ENOLCK, "no locks available")

    monkeypatch.setattr(runlock.fcntl, "flock", no_flock)
    folder = tmp_path / "run"
    folder.mkdir()
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    record = {"host": socket.gethostname(), "pid": dead.pid, "slurm_job_id": None, "since": "x"}
    (folder / "trainer.lock").write_text(json.dumps(record))
    with run_lock(folder):  # its process is gone: stale
        pass
    live = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        (folder / "trainer.lock").write_text(json.dumps({**record, "pid": live.pid}))
        with pytest.raises(RunLocked, match=f"PID {live.pid}"), run_lock(folder):
            pass
    finally:
        live.kill()
        live.wait()


def test_finetune_command_exits_at_once_while_another_trainer_runs(tmp_path, capsys):
    from medpipe.cli import main

    config = write_config(tmp_path, {"t": TINY_RUN})
    proc = _holder(tmp_path)
    try:
        tick = time.perf_counter()
        code = main(["finetune", "t", "--config", str(config), "--corpus", "c.tsv", "--stores",
                     str(tmp_path / "missing.zarr"), "--out-dir", str(tmp_path / "run")])
        err = capsys.readouterr().err.strip()
        assert code == 2 and time.perf_counter() - tick < 10
        assert len(err.splitlines()) == 1 and f"PID {proc.pid}" in err and "another trainer is running" in err
        assert not (tmp_path / "run" / "latest.pt").exists()
    finally:
        proc.kill()
        proc.wait()


def test_another_nodes_record_blocks_while_squeue_lists_its_job(tmp_path, monkeypatch):
    """Lustre with localflock: each node gets its own flock, so the record of a live job elsewhere counts."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    squeue = bin_dir / "squeue"
    squeue.write_text("#!/bin/sh\n[ \"$3\" = 4711 ] && echo RUNNING\nexit 0\n")
    squeue.chmod(0o755)
    monkeypatch.setenv("PATH", f"{bin_dir}{os.pathsep}{os.environ['PATH']}")
    monkeypatch.delenv("SLURM_JOB_ID", raising=False)
    folder = tmp_path / "run"
    folder.mkdir()
    record = {"host": "gpu-node-17", "pid": 1234, "slurm_job_id": "4711", "since": "x"}
    (folder / "trainer.lock").write_text(json.dumps(record))
    with pytest.raises(RunLocked, match="host gpu-node-17, PID 1234, SLURM job 4711"), run_lock(folder):
        pass
    (folder / "trainer.lock").write_text(json.dumps({**record, "slurm_job_id": "4712"}))  # that job is gone
    with run_lock(folder):
        pass

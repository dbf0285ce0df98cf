"""One trainer per run folder: a lock held for the life of the training.

After the head Snakemake process dies and is restarted (a login-node reboot), ``--rerun-incomplete``
may submit a second job into a run folder whose first job still runs; both would write
``latest.pt``. The trainer therefore holds an exclusive ``flock`` on ``<folder>/trainer.lock`` while
it trains, and writes who holds it (host, PID, SLURM job id, since when) into the file. A second
trainer exits at once naming the holder. The kernel (or the NFS / Lustre lock manager) releases the
lock when the holder's process ends, however it ends, so a crash leaves nothing that blocks a rerun.
On a file system without ``flock`` the file's contents decide: a holder whose process (same host)
or SLURM job (``squeue``) is gone does not block. Lustre mounted with ``localflock`` grants each node
its own locks; there a record left by a trainer on another node whose SLURM job ``squeue`` still
lists blocks too.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import json
import os
import shutil
import socket
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

from medpipe.errors import MedpipeError

LOCK_NAME = "trainer.lock"
_NO_FLOCK = (errno.ENOLCK, errno.EOPNOTSUPP, errno.ENOSYS, errno.EINVAL)


class RunLocked(MedpipeError, RuntimeError):
    """Another trainer holds the run folder; the message names it and what to do."""


def holder_record() -> dict:
    return {"host": socket.gethostname(), "pid": os.getpid(), "slurm_job_id": os.environ.get("SLURM_JOB_ID"),
            "since": time.strftime("%Y-%m-%dT%H:%M:%S%z")}


def describe(holder: dict) -> str:
    job = holder.get("slurm_job_id")
    return (f"host {holder.get('host', '?')}, PID {holder.get('pid', '?')}, SLURM job {job or 'none'}, "
            f"since {holder.get('since', '?')}")


def _read(fd: int) -> dict:
    os.lseek(fd, 0, os.SEEK_SET)
    try:
        holder = json.loads(os.read(fd, 4096).decode() or "{}")
    except (ValueError, UnicodeDecodeError):
        return {}
    return holder if isinstance(holder, dict) else {}


def _slurm_job_alive(holder: dict) -> bool:
    """Whether ``squeue`` lists the holder's SLURM job (False without a job id or without squeue)."""
    job = holder.get("slurm_job_id")
    if not job or job == os.environ.get("SLURM_JOB_ID") or not shutil.which("squeue"):
        return False
    result = subprocess.run(["squeue", "-h", "-j", str(job), "-o", "%T"], capture_output=True, text=True, timeout=60)
    return result.returncode == 0 and bool(result.stdout.strip())


def holder_alive(holder: dict) -> bool:
    """Without ``flock``: whether the recorded holder still runs (unknown counts as running)."""
    if not holder.get("pid"):
        return False
    if holder.get("host") == socket.gethostname():
        try:
            os.kill(int(holder["pid"]), 0)
        except ProcessLookupError:
            return False
        except PermissionError:
            return True
        return True
    if holder.get("slurm_job_id") and shutil.which("squeue"):
        return _slurm_job_alive(holder)
    return True


@contextlib.contextmanager
def run_lock(folder) -> Iterator[Path]:
    """Hold ``<folder>/trainer.lock`` for the ``with`` block; :class:`RunLocked` when someone else does."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / LOCK_NAME
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    locked = False
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            locked = True
            holder = _read(fd)  # node-local flock (Lustre localflock): another node's live SLURM job still counts
            if holder.get("host") not in (None, socket.gethostname()) and _slurm_job_alive(holder):
                raise RunLocked(_refusal(folder, holder))
        except BlockingIOError:
            holder = _read(fd)
            raise RunLocked(_refusal(folder, holder)) from None
        except OSError as exc:
            if exc.errno not in _NO_FLOCK:
                raise
            holder = _read(fd)  # no flock here: trust the record if its holder still runs
            if holder and holder_alive(holder) and holder.get("pid") != os.getpid():
                raise RunLocked(_refusal(folder, holder)) from None
        os.ftruncate(fd, 0)
        os.lseek(fd, 0, os.SEEK_SET)
        os.write(fd, json.dumps(holder_record()).encode())
        os.fsync(fd)
        yield path
        os.ftruncate(fd, 0)  # released: an empty record
    finally:
        if locked:
            fcntl.flock(fd, fcntl.LOCK_UN)
        os.close(fd)


def _refusal(folder: Path, holder: dict) -> str:
    job = holder.get("slurm_job_id")
    hint = f"`squeue -j {job}` shows it; `scancel {job}` stops it" if job else "wait for it or stop that process"
    return (f"{folder}: another trainer is running in this run folder ({describe(holder)}); {hint}, then rerun "
            "(a crashed trainer holds no lock)")

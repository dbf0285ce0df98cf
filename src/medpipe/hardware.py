"""What a job runs on: refuse a GPU job without a usable CUDA device, and say in every job log what
the job found (torch, its CUDA build, the driver, the devices, the world size).

A job whose rule asks for GPUs is started with ``--device cuda``; it must not train or evaluate on
the CPUs of a GPU allocation. The two usual causes get one line each: no device is visible to the
process (a CPU node, a wrong ``CUDA_VISIBLE_DEVICES``, no GPU in the allocation), or the driver
supports an older CUDA than the torch wheel was built for (PyPI's wheel needs a recent driver
branch; ``TORCH_CUDA=cu126 scripts/setup.sh`` installs a CUDA 12.6 build for R535/R570 drivers).
"""

from __future__ import annotations

import os
import socket
from pathlib import Path

from medpipe.errors import MedpipeError

#: the NVIDIA kernel module's version file (driver version without starting a CUDA context)
DRIVER_FILE = Path("/proc/driver/nvidia/version")


class DeviceError(MedpipeError, RuntimeError):
    """A job was asked to use a GPU and cannot; the message is one line naming the cause."""

    exit_code = 3  # docs/reliability.md: a GPU job without a usable GPU
    names_command = True


def _version(text: str | None) -> tuple[int, ...]:
    try:
        return tuple(int(part) for part in str(text).split(".")[:2])
    except ValueError:
        return ()


def driver_cuda_version() -> tuple[int, ...]:
    """The newest CUDA version the installed driver supports, e.g. (12, 4); () when unknown / no driver."""
    import torch

    try:
        encoded = int(torch._C._cuda_getDriverVersion())
    except Exception:  # CPU-only torch build, or no driver library at all
        return ()
    return (encoded // 1000, encoded % 1000 // 10) if encoded > 0 else ()


def driver_version() -> str:
    """The NVIDIA driver's version (e.g. ``535.183.01``), or ``none`` without the kernel module."""
    try:
        words = DRIVER_FILE.read_text().split()
    except OSError:
        return "none"
    versions = [w for w in words if w[:1].isdigit() and w.count(".") >= 1]
    return versions[0] if versions else "unknown"


def require_cuda() -> None:
    """Return when CUDA works in this process; else raise :class:`DeviceError` naming the cause."""
    import torch

    if torch.cuda.is_available() and torch.cuda.device_count() > 0:
        return
    built = torch.version.cuda
    if not built:
        raise DeviceError(f"this job asks for a GPU but torch {torch.__version__} is a CPU-only build; install a "
                          "CUDA build (scripts/setup.sh, TORCH_CUDA in README 'Installation')")
    driver = driver_cuda_version()
    if driver and driver[:1] < _version(built)[:1]:  # CUDA minor-version compatibility: majors must match
        raise DeviceError(
            f"this job asks for a GPU but the NVIDIA driver ({driver_version()}) supports CUDA "
            f"{'.'.join(map(str, driver))}, older than CUDA {built} of torch {torch.__version__}; reinstall torch "
            "for this driver (e.g. TORCH_CUDA=cu126 scripts/setup.sh, README 'Installation') or use newer nodes")
    visible = os.environ.get("CUDA_VISIBLE_DEVICES")
    raise DeviceError(
        f"this job asks for a GPU but no CUDA device is visible on {socket.gethostname()} (driver "
        f"{driver_version()}, CUDA_VISIBLE_DEVICES={'unset' if visible is None else repr(visible)}); "
        "was it given a GPU (the rule's gpu resource, the profile's partition)?")


def job_header(device: str) -> str:
    """One log line with everything that decides where and how fast the job runs."""
    import torch

    names = ([torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())]
             if device.startswith("cuda") and torch.cuda.is_available() else [])
    env = os.environ
    return (f"job on {socket.gethostname()}: torch {torch.__version__}, built for CUDA {torch.version.cuda or 'none'}, "
            f"driver {driver_version()}, device {device}, GPUs {names or 'none'}, "
            f"world size {env.get('WORLD_SIZE', '1')} (rank {env.get('RANK', '0')}), "
            f"SLURM job {env.get('SLURM_JOB_ID', 'none')}, CPUs {len(os.sched_getaffinity(0))}")

"""A GPU job refuses to start without a usable CUDA device (simulated), with one line naming the cause;
every torch job's log starts with the hardware it found."""

import pytest
import torch

from medpipe import hardware
from medpipe.cli import main
from medpipe.finetune import distributed as D


@pytest.fixture
def no_cuda(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 0)
    monkeypatch.setattr(torch.version, "cuda", "13.0")


def test_no_visible_device_is_named(no_cuda, monkeypatch):
    monkeypatch.setattr(hardware, "driver_cuda_version", lambda: (13, 0))
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "")
    with pytest.raises(hardware.DeviceError, match="no CUDA device is visible") as info:
        hardware.require_cuda()
    assert "CUDA_VISIBLE_DEVICES=''" in str(info.value) and "\n" not in str(info.value)


def test_driver_older_than_the_wheel_is_named(no_cuda, monkeypatch):
    monkeypatch.setattr(hardware, "driver_cuda_version", lambda: (12, 2))  # an R535 driver
    with pytest.raises(hardware.DeviceError, match=r"supports CUDA 12\.2, older than CUDA 13\.0") as info:
        hardware.require_cuda()
    assert "TORCH_CUDA=cu126" in str(info.value) and "\n" not in str(info.value)


def test_an_older_minor_of_the_same_cuda_major_is_compatible(no_cuda, monkeypatch):
    monkeypatch.setattr(torch.version, "cuda", "12.6")  # the cu126 wheel on an R535 driver (CUDA 12.2) runs
    monkeypatch.setattr(hardware, "driver_cuda_version", lambda: (12, 2))
    with pytest.raises(hardware.DeviceError, match="no CUDA device is visible"):  # the real cause here
        hardware.require_cuda()


def test_cpu_only_build_is_named(no_cuda, monkeypatch):
    monkeypatch.setattr(torch.version, "cuda", None)
    with pytest.raises(hardware.DeviceError, match="CPU-only build"):
        hardware.require_cuda()


def test_finetune_process_group_never_falls_back_to_cpu(no_cuda, monkeypatch):
    monkeypatch.setattr(hardware, "driver_cuda_version", lambda: ())
    with pytest.raises(hardware.DeviceError, match="no CUDA device is visible"):
        D.setup("cuda")
    assert D.setup("cpu").device == torch.device("cpu")  # asked for CPU: fine
    with pytest.raises(ValueError, match="cpu or cuda"):
        D.setup("auto")


def test_cli_refuses_a_cuda_job_before_it_starts(no_cuda, monkeypatch, tmp_path, capsys):
    monkeypatch.setattr(hardware, "driver_cuda_version", lambda: (12, 4))
    code = main(["finetune", "run", "--config", str(tmp_path / "missing.yaml"), "--corpus", "c.tsv", "--stores", "s",
                 "--out-dir", str(tmp_path / "out"), "--device", "cuda"])
    err = capsys.readouterr().err.strip()
    assert code == 3 and len(err.splitlines()) == 1
    assert err.startswith("medpipe finetune: this job asks for a GPU but the NVIDIA driver")
    assert not (tmp_path / "out").exists()  # nothing started


def test_job_header_names_torch_cuda_driver_devices_and_world(monkeypatch, caplog):
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv("SLURM_JOB_ID", "4711")
    line = hardware.job_header("cpu")
    for part in (f"torch {torch.__version__}", "built for CUDA", "driver ", "device cpu", "GPUs none",
                 "world size 2", "SLURM job 4711"):
        assert part in line, line

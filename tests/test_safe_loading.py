"""Every checkpoint the project reads goes through `medpipe.files.load_torch` (weights only).

Issue 13: `check-compat --model-type vit_b|vit_l|vit_h` loaded through `segment_anything`'s own
`torch.load`, which `TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD=1` turns into a plain unpickler: a crafted
checkpoint ran code. Here a payload checkpoint (it copies a file when unpickled freely) is handed to
every entry point that reads a checkpoint, with that variable set; each must refuse it, name the
file, and leave no trace of the payload. A truncated `latest.pt` names the file and the way out.
"""

from __future__ import annotations

import re
import shutil
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch

from medpipe.cli import main
from medpipe.files import TorchFileError, load_torch, save_torch

SRC = Path(__file__).resolve().parents[1] / "src" / "medpipe"


class Payload:
    """Unpickled without restriction, it copies ``source`` to ``target`` (the issue's probe)."""

    def __init__(self, source: Path, target: Path):
        self.source, self.target = str(source), str(target)

    def __reduce__(self):
        return shutil.copyfile, (self.source, self.target)


@pytest.fixture
def payload(tmp_path, monkeypatch):
    """A factory of payload checkpoints (the object sits where each loader expects weights)."""
    monkeypatch.setenv("TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD", "1")
    (tmp_path / "source.txt").write_text("payload ran")
    marker = tmp_path / "PWNED"

    def make(name: str, wrap=lambda p: {"image_encoder.pos_embed": p}) -> Path:
        path = tmp_path / name
        path.parent.mkdir(parents=True, exist_ok=True)
        torch.save(wrap(Payload(tmp_path / "source.txt", marker)), path)
        return path

    make.marker = marker
    return make


def test_the_probe_works_without_weights_only(payload):
    """The payload is real: an unrestricted load under the variable runs it."""
    path = payload("probe.pth")
    torch.load(path)  # what segment_anything's builder does: weights_only not passed
    assert payload.marker.read_text() == "payload ran"


def test_the_loader_refuses_a_payload_even_when_forced(payload):
    path = payload("x.pth")
    with pytest.raises(TorchFileError, match=r"x\.pth: cannot be read as a weights-only torch file: refused"):
        load_torch(path)
    assert not payload.marker.exists()


@pytest.mark.parametrize("model_type", ["vit_b", "vit_l", "vit_h", "tiny"])
def test_check_compat_refuses_a_payload_for_every_model_type(payload, model_type, tmp_path, capsys):
    path = payload(f"{model_type}.pth")
    code = main(["check-compat", str(path), "--model-type", model_type, "--no-predict",
                 "--out", str(tmp_path / "c.json")])
    assert code == 1
    assert "weights-only" in capsys.readouterr().err
    assert not payload.marker.exists()


def test_build_sam_export_decoder_and_resume_refuse_a_payload(payload, tmp_path):
    from medpipe.export.checkpoint import ExportError, export
    from medpipe.finetune.trainer import ResumeError, resume
    from medpipe.models.sam import CheckpointError, build_sam
    from medpipe.models.sem_decoder import load_decoder

    for model_type in ("tiny", "vit_b"):  # interactive evaluation, finetune base, semantic backbones
        with pytest.raises(CheckpointError, match="base.pth: cannot be read as a weights-only"):
            build_sam(model_type, payload("base.pth"))
    with pytest.raises(ExportError, match="best.pt: cannot be read as a weights-only"):
        export(payload("best.pt", lambda p: {"model_state": p}), tmp_path / "out.pth")
    with pytest.raises(TorchFileError, match="m.decoder.pth"):
        load_decoder(payload("m.decoder.pth", lambda p: {"config": {}, "state_dict": p}))
    latest = payload("run/latest.pt", lambda p: {"model_state": p})
    run = SimpleNamespace(latest=latest, best_path=latest.with_name("best.pt"), ctx=SimpleNamespace(device="cpu"))
    with pytest.raises(ResumeError, match="latest.pt: cannot be read as a weights-only"):
        resume(run)
    assert not payload.marker.exists()


@pytest.mark.slow
def test_sam2_baseline_and_nnunet_predictor_refuse_a_payload(payload, tmp_path):
    pytest.importorskip("sam2")
    from medpipe.interactive.sam2_baseline import Sam2ConfigError, build_video_predictor
    from medpipe.semantic.nnunet import NnUNetError, configure_environment, load_trained_model

    with pytest.raises(Sam2ConfigError, match="sam2.pt: cannot be read as a weights-only"):
        build_video_predictor("configs/sam2.1/sam2.1_hiera_t.yaml", str(payload("sam2.pt", lambda p: {"model": p})),
                              "cpu", 0)
    configure_environment(tmp_path / "nnunet")
    folder = tmp_path / "nnunet/results/Dataset501_x/nnUNetTrainerMedpipe__nnUNetPlans__2d"
    payload(str((folder / "fold_0/checkpoint_final.pth").relative_to(tmp_path)), lambda p: {"network_weights": p})
    with pytest.raises(NnUNetError, match="checkpoint_final.pth: cannot be read as a weights-only"):
        load_trained_model(SimpleNamespace(), folder)
    assert not payload.marker.exists()


def test_no_checkpoint_is_read_past_the_loader():
    """Static guard: `torch.load`, the segment_anything/sam2 builders given a checkpoint and nnU-Net's
    own checkpoint reader appear nowhere in the package but in the loader."""
    patterns = {r"torch\.load\(": {"files.py"},
                r"sam_model_registry\[[^\]]+\]\(checkpoint=(?!None)": set(),
                r"build_sam2\w*\(": set(),
                r"initialize_from_trained_model_folder\(": set(),
                r"get_sam_model\(": {"export/compat.py"}}  # micro-sam runs only on a file load_torch accepted
    offenders = []
    for path in sorted(SRC.rglob("*.py")):
        name = str(path.relative_to(SRC))
        for number, line in enumerate(path.read_text().splitlines(), 1):
            code = re.sub(r"``[^`]*``", "", line.split("#")[0])  # code quoted in docstrings is not code
            offenders += [f"{name}:{number}: {line.strip()}" for pattern, allowed in patterns.items()
                          if re.search(pattern, code) and name not in allowed]
    assert offenders == []


def truncated_latest(tmp_path) -> SimpleNamespace:
    """A run folder whose latest.pt is cut in half (a full disk, a copy cut short) next to a best.pt."""
    run_dir = tmp_path / "run"
    save_torch({"model_state": {"w": torch.ones(64, 64)}, "iteration": 10}, run_dir / "best.pt")
    data = (run_dir / "best.pt").read_bytes()
    (run_dir / "latest.pt").write_bytes(data[: len(data) // 2])
    return SimpleNamespace(latest=run_dir / "latest.pt", best_path=run_dir / "best.pt",
                           ctx=SimpleNamespace(device="cpu"), out_dir=run_dir)


def test_a_truncated_latest_pt_names_the_file_and_the_way_out(tmp_path):
    from medpipe.finetune.trainer import ResumeError, resume

    run = truncated_latest(tmp_path)
    with pytest.raises(ResumeError) as error:
        resume(run)
    message = str(error.value)
    assert message.startswith(f"{run.latest}: cannot be read as a weights-only torch file: truncated or corrupt")
    assert f"delete {run.latest} to restart the run from iteration 0" in message
    assert f"copy {run.best_path} over it to resume from the best validated checkpoint" in message
    assert "\n" not in message
    run.best_path.unlink()
    with pytest.raises(ResumeError, match="iteration 0$"):
        resume(run)


def test_numpy_scalars_are_admitted_only_when_asked(tmp_path):
    save_torch({"log": [np.float64(0.5)]}, tmp_path / "n.pth")
    with pytest.raises(TorchFileError, match="refused"):
        load_torch(tmp_path / "n.pth")
    assert load_torch(tmp_path / "n.pth", numpy_scalars=True)["log"] == [0.5]

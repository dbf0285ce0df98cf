"""SAM-compatible export: flat keys, separate decoder, hash, strict loading, identical outputs."""

import hashlib
import json

import numpy as np
import pytest
import torch
from segment_anything import sam_model_registry

from medpipe import export as E
from medpipe.cli import main
from medpipe.export.compat import check_micro_sam
from medpipe.finetune.trainer import FinetuneModel
from medpipe.models.sam import build_sam
from medpipe.models.sem_decoder import decoder_for, load_decoder


def _training_ckpt(path, model, prefix="", **extra):
    state = {prefix + k: v for k, v in model.state_dict().items()}
    torch.save({"model_state": state, "iteration": 3, "model_type": "tiny", **extra}, path)
    return path


def _predict(sam, image):
    points = (torch.tensor([[[40.0, 50.0]]]), torch.tensor([[1]]))
    with torch.no_grad():
        emb = sam.image_encoder(image)
        sparse, dense = sam.prompt_encoder(points=points, boxes=None, masks=None)
        return sam.mask_decoder(emb, sam.prompt_encoder.get_dense_pe(), sparse, dense, multimask_output=True)


def test_export_tiny_ddp_checkpoint_with_decoder(tmp_path):
    torch.manual_seed(1)
    sam = build_sam("tiny")
    decoder = decoder_for(sam)
    ckpt = _training_ckpt(tmp_path / "latest.pt", FinetuneModel(sam, decoder), prefix="module.",
                          sem_decoder_config=decoder.config)
    out = tmp_path / "models" / "run.pth"
    summary = E.export(ckpt, out)
    assert summary["decoder"] and summary["iteration"] == 3
    flat = torch.load(out, weights_only=True)
    assert set(flat) == set(sam.state_dict())
    assert all(k.startswith(E.SAM_PREFIXES) for k in flat)
    # the decoder travels separately and rebuilds strictly
    rebuilt = load_decoder(tmp_path / "models" / "run.decoder.pth")
    for key, value in decoder.state_dict().items():
        assert torch.equal(value, rebuilt.state_dict()[key])
    # sha256 file lists both files with their real hashes
    lines = dict(reversed(line.split("  ")) for line in (tmp_path / "models" / "run.sha256").read_text().splitlines())
    assert lines["run.pth"] == hashlib.sha256(out.read_bytes()).hexdigest()
    assert "run.decoder.pth" in lines
    # identical outputs after the round trip
    loaded = build_sam("tiny", out)
    image = torch.randn(1, 3, 256, 256)
    for a, b in zip(_predict(sam, image), _predict(loaded, image)):
        assert torch.equal(a, b)
    result = E.check_compat(out, "tiny")
    assert result["compatible"] and result["libraries"][0]["predicts"]
    micro = result["libraries"][1]
    assert micro["library"] == "micro_sam" and not micro["loads_strict"]
    # the row says precisely why micro-sam cannot take it (it builds vit_b/l/h by encoder width)
    assert micro["status"] == ("cannot load: micro-sam's get_sam_model builds only vit_b/vit_l/vit_h, chosen by the "
                               "image encoder width (768/1024/1280); this tiny checkpoint's is 64")


def test_random_vit_b_export_loads_strictly_in_segment_anything(tmp_path):
    torch.manual_seed(0)
    sam = sam_model_registry["vit_b"]()
    ckpt = _training_ckpt(tmp_path / "best.pt", FinetuneModel(sam), model_type="vit_b")
    out = tmp_path / "vit_b_export.pth"
    summary = E.export(ckpt, out)
    assert not summary["decoder"] and not (tmp_path / "vit_b_export.decoder.pth").exists()
    loaded = sam_model_registry["vit_b"](checkpoint=str(out))  # strict load_state_dict inside
    for key, value in sam.state_dict().items():
        assert torch.equal(value, loaded.state_dict()[key]), key
    # identical prompt-encoder + mask-decoder outputs on a shared image embedding (the 1024 px
    # encoder forward is covered by the tiny test; identical weights make it identical too)
    emb = torch.randn(1, 256, 64, 64)
    outputs = []
    for model in (sam, loaded):
        with torch.no_grad():
            sparse, dense = model.prompt_encoder(points=(torch.tensor([[[500.0, 300.0]]]), torch.tensor([[1]])),
                                                 boxes=torch.tensor([[100.0, 100.0, 600.0, 700.0]]), masks=None)
            outputs.append(model.mask_decoder(emb, model.prompt_encoder.get_dense_pe(), sparse, dense, False))
    assert all(torch.equal(a, b) for a, b in zip(*outputs))
    result = E.check_compat(out, "vit_b", predict=False)
    assert result["compatible"] and result["libraries"][0]["loads_strict"]


@pytest.mark.slow
def test_random_vit_b_export_loads_and_predicts_in_micro_sam(tmp_path):
    """micro-sam for real: get_sam_model (strict) on the exported file, then one batched_inference call
    (the ViT-b encoder at 1024 px: ~30 s on one CPU thread)."""
    pytest.importorskip("micro_sam")
    torch.manual_seed(0)
    ckpt = _training_ckpt(tmp_path / "best.pt", FinetuneModel(sam_model_registry["vit_b"]()), model_type="vit_b")
    out = tmp_path / "vit_b_export.pth"
    E.export(ckpt, out)
    result = check_micro_sam(out, "vit_b")
    assert result["loads_strict"] and result["predicts"] and result["status"] == "ok", result
    assert result["version"] == "1.8.14"


def test_micro_sam_row_when_it_is_not_installed(tmp_path, monkeypatch):
    import importlib.util

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "micro_sam" else real(name, *a))
    result = check_micro_sam(tmp_path / "any.pth", "vit_b")
    assert not result["loads_strict"] and result["status"].startswith("not installed")


def test_export_errors_name_the_file(tmp_path):
    torch.save({"model_state": {"sam.image_encoder.lora.weight": torch.zeros(1), "sam.adapter.x": torch.zeros(1)}},
               tmp_path / "adapter.pt")
    with pytest.raises(E.ExportError, match=r"adapter\.pt.*outside SAM"):
        E.export(tmp_path / "adapter.pt", tmp_path / "o.pth")
    torch.save({"weights": 1}, tmp_path / "plain.pt")
    with pytest.raises(E.ExportError, match=r"plain\.pt.*not a medpipe training checkpoint"):
        E.export(tmp_path / "plain.pt", tmp_path / "o.pth")
    assert main(["export", str(tmp_path / "plain.pt"), str(tmp_path / "o.pth")]) == 2


def test_check_compat_cli_and_table(tmp_path):
    torch.manual_seed(2)
    sam = build_sam("tiny")
    good = tmp_path / "good.pth"
    torch.save(sam.state_dict(), good)
    state = sam.state_dict()
    state["extra.weight"] = torch.zeros(1)
    bad = tmp_path / "bad.pth"
    torch.save(state, bad)
    assert main(["check-compat", str(good), "--model-type", "tiny", "--base", "random-init",
                 "--out", str(tmp_path / "good.compat.json")]) == 0
    assert main(["check-compat", str(bad), "--model-type", "tiny", "--out", str(tmp_path / "bad.compat.json")]) == 1
    bad_result = json.loads((tmp_path / "bad.compat.json").read_text())
    assert not bad_result["compatible"] and "Unexpected key" in bad_result["libraries"][0]["status"]
    table = tmp_path / "tables" / "compatibility.tsv"
    assert main(["compat-table", str(tmp_path / "good.compat.json"), str(tmp_path / "bad.compat.json"),
                 "--out", str(table)]) == 0
    import pandas as pd

    frame = pd.read_csv(table, sep="\t")
    sam_rows = frame[frame["library"] == "segment_anything"].set_index("model")
    assert bool(sam_rows.loc["good", "loads_strict"]) and bool(sam_rows.loc["good", "predicts"])
    assert not bool(sam_rows.loc["bad", "loads_strict"])
    assert sam_rows.loc["good", "base"] == "random-init"
    assert set(frame["library"]) == {"segment_anything", "micro_sam"}
    assert np.all(frame["sha256"].str.len() == 64)

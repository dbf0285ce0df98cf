"""Atomic, reproducible writes: the file utilities every stage writes its outputs through."""

import hashlib

import pandas as pd
import pytest
import torch

from medpipe import files
from medpipe.export import export


def _sha(path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def test_equal_tensors_give_equal_bytes_whatever_the_file_name(tmp_path):
    state = {"w": torch.arange(12.0).reshape(3, 4), "b": torch.zeros(2)}
    a = files.save_torch(state, tmp_path / "a.pth")
    b = files.save_torch({k: v.clone() for k, v in state.items()}, tmp_path / "sub" / "other-name.pth")
    assert _sha(a) == _sha(b)
    assert torch.equal(torch.load(b, weights_only=True)["w"], state["w"])


def test_two_exports_of_equal_weights_publish_the_same_sha256(tmp_path):
    state = {"sam.image_encoder.w": torch.ones(3), "sam.mask_decoder.b": torch.arange(4.0)}
    for name in ("first", "second"):  # two runs, exported under different names
        torch.save({"model_state": state, "iteration": 1}, tmp_path / f"{name}.pt")
        export(tmp_path / f"{name}.pt", tmp_path / f"{name}_run.pth")
    assert _sha(tmp_path / "first_run.pth") == _sha(tmp_path / "second_run.pth")
    recorded = [(tmp_path / f"{name}_run.sha256").read_text().split()[0] for name in ("first", "second")]
    assert recorded[0] == recorded[1] == _sha(tmp_path / "first_run.pth")


def test_a_failed_write_keeps_the_old_file_and_leaves_no_temporary(tmp_path):
    target = files.write_text(tmp_path / "table.tsv", "old\n")
    with pytest.raises(RuntimeError), files.atomic_path(target) as tmp:
        tmp.write_text("half")
        raise RuntimeError("killed mid-write")
    assert target.read_text() == "old\n"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["table.tsv"]


def test_temporary_name_keeps_the_format_extension(tmp_path):
    assert files.temporary_sibling(tmp_path / "case.nii.gz").name.endswith(".tmp.nii.gz")
    assert files.temporary_sibling(tmp_path / "fig.png").name.endswith(".tmp.png")


def test_writers_produce_the_expected_text(tmp_path):
    files.write_json(tmp_path / "a.json", {"b": 1, "a": [1.5]})
    assert (tmp_path / "a.json").read_text() == '{\n  "a": [\n    1.5\n  ],\n  "b": 1\n}\n'
    files.write_tsv(pd.DataFrame({"case": ["NA"], "dice": [0.5]}), tmp_path / "t.tsv")
    assert (tmp_path / "t.tsv").read_text() == "case\tdice\nNA\t0.5\n"

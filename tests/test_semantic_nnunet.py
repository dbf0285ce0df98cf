"""nnU-Net v2: raw-format conversion, our split as splits_final.json, and (slow) the whole run."""

import json
import os
import subprocess
import sys

import numpy as np
import pandas as pd
import pytest
import SimpleITK as sitk

from medpipe.semantic.data import read_split
from medpipe.semantic.nnunet import (
    FLAT_Z_SPACING,
    configure_environment,
    convert_to_raw,
    dataset_folder_name,
    label_mapping,
    read_prediction,
    splits_final,
    write_splits_final,
)
from medpipe.store import DatasetStore

from semantic_fixtures import make_semantic_data, write_semantic_config


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    return make_semantic_data(tmp_path_factory.mktemp("sem"))


def test_raw_conversion_layout_and_dataset_json(data, tmp_path):
    store = DatasetStore(data["store3d"])
    split = read_split(data["split3d"], "sem3d", store)
    folder = convert_to_raw(store, split, tmp_path / "raw")
    assert folder.name == "Dataset501_sem3d"
    assert sorted(p.name for p in (folder / "imagesTr").iterdir()) == ["v0_vol_0000.nii.gz", "v1_vol_0000.nii.gz",
                                                                       "v2_vol_0000.nii.gz"]
    assert sorted(p.name for p in (folder / "labelsTr").iterdir()) == ["v0_vol.nii.gz", "v1_vol.nii.gz",
                                                                       "v2_vol.nii.gz"]
    assert sorted(p.name for p in (folder / "imagesTs").iterdir()) == ["v3_vol_0000.nii.gz"]
    meta = json.loads((folder / "dataset.json").read_text())
    assert meta == {"channel_names": {"0": "CT"}, "labels": {"background": 0, "small": 1, "large": 2},
                    "numTraining": 3, "file_ending": ".nii.gz", "name": "sem3d"}
    # arrays keep our z, y, x order and values; spacing is written x, y, z
    image = sitk.ReadImage(str(folder / "imagesTr" / "v0_vol_0000.nii.gz"))
    assert np.array_equal(sitk.GetArrayFromImage(image), store.image("v0_vol"))
    label = sitk.GetArrayFromImage(sitk.ReadImage(str(folder / "labelsTr" / "v0_vol.nii.gz")))
    assert np.array_equal(label, store.label("v0_vol"))


def test_2d_colour_conversion_uses_one_file_per_channel_and_flat_z(tmp_path):
    d = make_semantic_data(tmp_path, colour=True)
    store = DatasetStore(d["store2d"])
    split = read_split(d["split2d"], "sem2d", store)
    folder = convert_to_raw(store, split, tmp_path / "raw")
    meta = json.loads((folder / "dataset.json").read_text())
    assert meta["channel_names"] == {"0": "rgb_to_0_1", "1": "rgb_to_0_1", "2": "rgb_to_0_1"}
    assert meta["numTraining"] == 4  # 3 train + 1 val
    names = sorted(p.name for p in (folder / "imagesTs").iterdir())
    assert names == [f"p{i}_img_{c:04d}.nii.gz" for i in (4, 5) for c in range(3)]
    green = sitk.ReadImage(str(folder / "imagesTs" / "p4_img_0001.nii.gz"))
    assert green.GetSpacing() == (1.0, 1.0, FLAT_Z_SPACING)
    assert np.array_equal(sitk.GetArrayFromImage(green)[0], store.image("p4_img")[..., 1])


def test_splits_final_matches_our_split(data, tmp_path):
    store = DatasetStore(data["store2d"])
    split = read_split(data["split2d"], "sem2d", store)
    path = write_splits_final(tmp_path / "pre" / "Dataset501_sem2d", split)
    content = json.loads(path.read_text())
    table = pd.read_csv(data["split2d"], sep="\t")
    assert content == [{"train": sorted(table.case_id[table.split == "train"]),
                        "val": sorted(table.case_id[table.split == "val"])}]
    assert not set(content[0]["train"]) & set(table.case_id[table.split == "test"])
    # without val cases, nnU-Net validates on train (it cannot run with an empty val list)
    assert splits_final({"train": ["a", "b"], "val": [], "test": ["c"]}) == [{"train": ["a", "b"], "val": ["a", "b"]}]


def test_label_mapping_is_consecutive_and_inverted(tmp_path):
    mapping = label_mapping({1: "a", 4: "b", 7: "c"})
    assert mapping == {1: 1, 4: 2, 7: 3}
    pred = np.array([[[0, 1], [2, 3]]], dtype=np.uint8)
    path = tmp_path / "p.nii.gz"
    sitk.WriteImage(sitk.GetImageFromArray(pred), str(path))
    assert np.array_equal(read_prediction(path, 2, mapping), [[0, 1], [4, 7]])
    with pytest.raises(Exception, match="missing.nii.gz: nnU-Net wrote no prediction"):
        read_prediction(tmp_path / "missing.nii.gz", 2, mapping)


def test_environment_points_at_job_folders_and_our_trainer(tmp_path, monkeypatch):
    for key in ("nnUNet_raw", "nnUNet_preprocessed", "nnUNet_results", "nnUNet_extTrainer", "nnUNet_n_proc_DA",
                "nnUNet_def_n_proc"):
        monkeypatch.delenv(key, raising=False)
    env = configure_environment(tmp_path / "work")
    assert env["nnUNet_raw"] == str((tmp_path / "work" / "raw").resolve())
    assert (tmp_path / "work" / "results").is_dir()
    assert env["nnUNet_n_proc_DA"] == "0" and env["nnUNet_def_n_proc"] == "1"
    assert os.path.isfile(os.path.join(env["nnUNet_extTrainer"], "medpipe_trainer.py"))
    assert dataset_folder_name("demo-ct_1") == "Dataset501_democt1"


@pytest.mark.slow
def test_nnunet_end_to_end_trains_predicts_and_scores(data, tmp_path):
    """Plan, preprocess, 1 epoch x 3 iterations, predict the test cases, Dice table (about 45 s)."""
    config = write_semantic_config(tmp_path)
    table = tmp_path / "nnunet.tsv"
    cmd = [sys.executable, "-m", "medpipe", "semantic-run", "--config", str(config), "--method", "nnunet",
           "--dataset", "sem2d", "--store", str(data["store2d"]), "--split", str(data["split2d"]), "--seed", "0",
           "--table", str(table), "--pred-dir", str(tmp_path / "pred"), "--work-dir", str(tmp_path / "work"),
           "--device", "cpu"]
    result = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    frame = pd.read_csv(table, sep="\t")
    assert sorted(set(frame.case_id)) == ["p4_img", "p5_img"] and sorted(set(frame.class_id)) == [1, 2]
    assert set(frame.method) == {"nnunet"}
    from medpipe.store import DatasetStore

    store = DatasetStore(data["store2d"])  # NaN exactly where the case has no ground truth for the class
    has_class = [bool((store.label(c) == k).any()) for c, k in zip(frame.case_id, frame.class_id)]
    assert frame.dice.notna().tolist() == has_class and frame.dice.dropna().between(0, 1).all()
    assert (tmp_path / "pred" / "p4_img.png").is_file()
    trained = list((tmp_path / "work" / "results").rglob("checkpoint_final.pth"))
    assert len(trained) == 1 and "nnUNetTrainerMedpipe__nnUNetPlans__2d" in str(trained[0])
    assert json.loads((tmp_path / "work" / "preprocessed" / "Dataset501_sem2d" / "splits_final.json").read_text())[0][
        "val"] == ["p3_img"]
    # a rerun (the job was cut after training) continues from nnU-Net's checkpoint instead of training again
    result = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    assert "nnU-Net continues from" in result.stderr and "checkpoint_final.pth" in result.stderr


def test_a_rerun_continues_from_nnunets_own_checkpoint(tmp_path):
    import torch

    from medpipe.semantic.nnunet import augmentation_processes, load_checkpoint_weights_only, resume_checkpoint

    assert resume_checkpoint(tmp_path) is None  # a fresh run
    torch.save({"network_weights": {}, "current_epoch": 7}, tmp_path / "checkpoint_latest.pth")
    assert resume_checkpoint(tmp_path).name == "checkpoint_latest.pth"
    torch.save({"network_weights": {}, "current_epoch": 9}, tmp_path / "checkpoint_final.pth")
    assert resume_checkpoint(tmp_path).name == "checkpoint_final.pth"  # as nnUNetv2_train --c picks it

    class Trainer:  # nnU-Net's load_checkpoint reads the file with torch.load; ours is weights-only
        def load_checkpoint(self, path):
            self.loaded = torch.load(path, map_location="cpu", weights_only=False)

    trainer = Trainer()
    load_checkpoint_weights_only(trainer, resume_checkpoint(tmp_path))
    assert trainer.loaded["current_epoch"] == 9 and torch.load is not None
    assert torch.load.__module__.startswith("torch")  # put back
    # augmentation workers from the job's CPUs
    assert [augmentation_processes(c) for c in (1, 2, 8, 16)] == [0, 0, 7, 15]

"""SAM2 baseline: same objects, start slices and first prompts as the SAM propagation."""

import numpy as np
import pandas as pd
import pytest
import yaml

from medpipe.cli import main
from medpipe.interactive import sam2_baseline
from medpipe.interactive.objects import objects_3d, start_slice

from interactive_fixtures import volume_3d, write_splits, write_store


class FakeVideoPredictor:
    """Records the calls and 'tracks' by returning the prompted box on every frame it visits."""

    def __init__(self):
        self.calls = []

    def reset_state(self, state):
        self.calls.append(("reset",))

    def add_new_points_or_box(self, state, frame_idx, obj_id, points=None, labels=None, box=None):
        self.calls.append(("prompt", frame_idx, None if box is None else box.tolist(),
                           None if points is None else points.tolist(), None if labels is None else labels.tolist()))
        self.box = box

    def propagate_in_video(self, state, start_frame_idx, reverse=False):
        import torch

        self.calls.append(("propagate", start_frame_idx, reverse))
        frames = range(start_frame_idx, -1, -1) if reverse else range(start_frame_idx, state["num_frames"])
        for frame in frames:
            logits = -torch.ones(1, 1, *state["size"])
            x0, y0, x1, y1 = (int(v) for v in self.box)
            logits[0, 0, y0:y1, x0:x1] = 1.0
            yield frame, [1], logits


def test_propagate_object_prompts_the_start_slice_and_tracks_both_ways():
    predictor = FakeVideoPredictor()
    state = {"num_frames": 6, "size": (16, 16)}
    prompt = {"box": np.array([2, 3, 7, 9]), "points": None, "labels": None, "use_mask": False}
    out = sam2_baseline.propagate_object(predictor, state, 2, prompt, (6, 16, 16))
    assert predictor.calls[0] == ("reset",)
    assert predictor.calls[1] == ("prompt", 2, [2.0, 3.0, 7.0, 9.0], None, None)
    assert predictor.calls[2:] == [("propagate", 2, False), ("propagate", 2, True)]
    expected = np.zeros((16, 16), bool)
    expected[3:9, 2:7] = True
    assert out.shape == (6, 16, 16) and all((out[z] == expected).all() for z in range(6))


@pytest.mark.slow
def test_random_tiny_sam2_runs_the_protocol_on_test_volumes(tmp_path):
    pytest.importorskip("sam2")
    image, label = volume_3d(0, shape=(5, 48, 48))
    label[label == 2] = 0  # one object keeps the CPU run short (SAM2 encodes each frame at 1024 px)
    write_store(tmp_path / "d3.zarr", "d3", 3, {1: "ball"}, {"v0": (image, label)})
    write_splits(tmp_path / "d3.tsv", "d3", {"v0": "test"})
    config = {"datasets": {"d3": {"modality": "ct", "ndim": 3, "images": "x", "labels": "y", "classes": {1: "a"}}},
              "interactive": {"seeds": [0], "starts3d": ["box"],
                              "sam2": {"sam2_tiny": {"config": "configs/sam2.1/sam2.1_hiera_t.yaml"}}}}
    (tmp_path / "c.yaml").write_text(yaml.safe_dump(config))
    assert main(["eval3d-sam2", "--config", str(tmp_path / "c.yaml"), "--model", "sam2_tiny", "--dataset", "d3",
                 "--store", str(tmp_path / "d3.zarr"), "--splits", str(tmp_path / "d3.tsv"), "--device", "cpu",
                 "--out", str(tmp_path / "sam2.tsv")]) == 0
    table = pd.read_csv(tmp_path / "sam2.tsv", sep="\t")
    objects = [o for o in objects_3d(label, {1: "ball"}) if start_slice(o.mask) is not None]
    assert len(table) == len(objects) > 0
    assert sorted(table["z_start"]) == sorted(start_slice(o.mask) for o in objects)
    assert set(table["model"]) == {"sam2_tiny"} and set(table["split"]) == {"test"}
    assert table["dice"].between(0, 1).all() and (table["n_slices"] <= 5).all()

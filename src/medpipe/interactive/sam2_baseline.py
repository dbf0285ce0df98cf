"""SAM2 baseline for interactive 3D: the ``sam2`` video predictor propagates through a volume.

The paper compares SAM-based propagation with SAM2 / MedSAM2, which treat the slices as video
frames. To keep the comparison paired object by object, everything but the propagation is the
SAM protocol's own (``medpipe.interactive.grid``): the same objects (``Settings3D``), the same start
slice (middle of the z-extent, >= 10 px), the same first prompt (tight box, or one positive + one
distant negative drawn from the same seeded generator) and the same intensities
(``interactive.preprocess``). The predictor reads frames from a folder of JPEGs (the only frame
source ``sam2`` accepts besides MP4), written at quality 95.
"""

from __future__ import annotations

import logging
import tempfile
from pathlib import Path

import numpy as np
import pandas as pd
from PIL import Image
from tqdm import tqdm

from medpipe.interactive import preprocess
from medpipe.interactive.grid import DEFAULT_3D, Settings3D, volume_rng
from medpipe.interactive.objects import objects_3d, start_slice
from medpipe.interactive.propagate3d import first_slice_prompts
from medpipe.metrics import dice

log = logging.getLogger(__name__)

COLUMNS = ["dataset", "split", "case", "model", "class_id", "class", "object", "z_start", "start", "dice",
           "n_slices", "seed"]


def build_video_predictor(config_file: str, checkpoint: str | None, device: str, seed: int):
    """The sam2 video predictor from a package config; ``checkpoint`` None means random weights."""
    import torch
    from sam2.build_sam import build_sam2_video_predictor

    torch.manual_seed(seed)
    return build_sam2_video_predictor(config_file, checkpoint, device=device)


def write_frames(slices: np.ndarray, folder: Path) -> Path:
    """(S, H, W, 3) uint8 slices as ``<index>.jpg`` frames, the layout ``init_state`` reads."""
    folder.mkdir(parents=True, exist_ok=True)
    for index, frame in enumerate(slices):
        Image.fromarray(frame).save(folder / f"{index:05d}.jpg", quality=95)
    return folder


def propagate_object(predictor, state, z_start: int, prompt: dict, shape: tuple[int, int, int]) -> np.ndarray:
    """Prompt one object on ``z_start`` and propagate up and down the volume; (Z, H, W) bool."""
    predictor.reset_state(state)
    box = None if prompt["box"] is None else np.asarray(prompt["box"], dtype=np.float32)
    points = None if prompt["points"] is None else np.asarray(prompt["points"], dtype=np.float32)
    labels = None if prompt["labels"] is None else np.asarray(prompt["labels"], dtype=np.int32)
    predictor.add_new_points_or_box(state, frame_idx=z_start, obj_id=1, points=points, labels=labels, box=box)
    out = np.zeros(shape, dtype=bool)
    for reverse in (False, True):
        for frame, _, logits in predictor.propagate_in_video(state, start_frame_idx=z_start, reverse=reverse):
            out[frame] = (logits[0, 0] > 0).cpu().numpy()
    return out


def evaluate_volume(predictor, image: np.ndarray, label: np.ndarray, classes: dict, starts, seeds, meta: dict,
                    settings: Settings3D = DEFAULT_3D, preprocess_mode: str = "reference") -> list[dict]:
    """Rows (one per object x start x seed) of SAM2 propagation on one volume."""
    import torch

    rows = []
    with tempfile.TemporaryDirectory(prefix="medpipe-sam2-") as tmp, torch.inference_mode():
        frames = write_frames(preprocess.volume(image, preprocess_mode), Path(tmp))
        state = predictor.init_state(video_path=str(frames))
        for obj in objects_3d(label, classes, settings.classes, settings.components):
            z = start_slice(obj.mask)
            if z is None:
                continue
            for start in starts:
                for seed in seeds:
                    rng = volume_rng(seed, meta["case"], obj.class_id, obj.index, start)
                    seg = propagate_object(predictor, state, z, first_slice_prompts(obj.mask[z], start, rng),
                                           label.shape)
                    rows.append({**meta, "class_id": obj.class_id, "class": obj.class_name, "object": obj.index,
                                 "z_start": z, "start": start, "dice": dice(seg, obj.mask),
                                 "n_slices": int(seg.any(axis=(1, 2)).sum()), "seed": seed})
    return rows


def evaluate_split(predictor, store, case_ids, split, starts, seeds, model, settings: Settings3D = DEFAULT_3D,
                   preprocess_mode: str = "reference") -> pd.DataFrame:
    if store.ndim != 3:
        raise ValueError(f"{store.path}: the SAM2 baseline needs a 3D dataset, this one has ndim={store.ndim}")
    rows = []
    for case_id in tqdm(case_ids, desc=f"SAM2 {model}/{store.name}/{split}", unit="volume"):
        meta = {"dataset": store.name, "split": split, "case": case_id, "model": model}
        rows += evaluate_volume(predictor, store.image(case_id), store.label(case_id), store.classes, starts, seeds,
                                meta, settings, preprocess_mode)
    return pd.DataFrame(rows, columns=COLUMNS)

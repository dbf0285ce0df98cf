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

from medpipe.config import sam2_config_path
from medpipe.errors import MedpipeError
from medpipe.interactive import preprocess
from medpipe.interactive.grid import DEFAULT_3D, Settings3D, volume_rng
from medpipe.interactive.objects import objects_3d, start_slice
from medpipe.interactive.propagate3d import first_slice_prompts
from medpipe.metrics import dice

log = logging.getLogger(__name__)

COLUMNS = ["dataset", "split", "case", "model", "class_id", "class", "object", "z_start", "start", "dice",
           "n_slices", "seed"]


#: what ``sam2.build_sam.build_sam2_video_predictor`` overrides in every config (sam2 1.1)
VIDEO_PREDICTOR_OVERRIDES = {
    "model._target_": "sam2.sam2_video_predictor.SAM2VideoPredictor",
    "model.sam_mask_decoder_extra_args.dynamic_multimask_via_stability": True,
    "model.sam_mask_decoder_extra_args.dynamic_multimask_stability_delta": 0.05,
    "model.sam_mask_decoder_extra_args.dynamic_multimask_stability_thresh": 0.98,
    "model.binarize_mask_from_pts_for_mem_enc": True,
    "model.fill_hole_area": 8,
}


class Sam2ConfigError(MedpipeError, ValueError):
    """A SAM2 config or checkpoint that medpipe refuses to build from; names the file."""


def _targets(node, where="") -> list[tuple[str, str]]:
    """Every ``(key path, _target_)`` in a config tree (hydra instantiates each of them)."""
    found = []
    if isinstance(node, dict):
        for key, value in node.items():
            if key == "_target_":
                found.append((where, str(value)))
            found += _targets(value, f"{where}.{key}" if where else str(key))
    elif isinstance(node, list):
        for index, value in enumerate(node):
            found += _targets(value, f"{where}.{index}")
    return found


def check_targets(config: dict, path) -> None:
    """Refuse a config whose ``_target_`` is anything but a torch module class of the sam2 package.

    The class is looked up (importing sam2 modules only) and must be defined in ``sam2``, so
    ``sam2.build_sam.os.system`` or ``shutil.copyfile`` never reach ``instantiate``.
    """
    import torch
    from hydra.utils import get_class

    for where, target in _targets(config):
        if target.split(".")[0] != "sam2":
            raise Sam2ConfigError(f"{path}: {where}._target_ {target!r} is not a class of the sam2 package")
        try:
            cls = get_class(target)
        except Exception as exc:
            raise Sam2ConfigError(f"{path}: {where}._target_ {target!r} is not a class ({exc})") from exc
        if not (cls.__module__.split(".")[0] == "sam2" and issubclass(cls, torch.nn.Module)):
            raise Sam2ConfigError(f"{path}: {where}._target_ {target!r} is not a torch module of the sam2 package")


def build_video_predictor(config_file: str, checkpoint: str | None, device: str, seed: int, trusted=()):
    """The sam2 video predictor of a package config (or a ``trusted`` file); ``checkpoint`` None means
    random weights.

    What ``sam2.build_sam.build_sam2_video_predictor`` does, in the open: the config is resolved
    by :func:`medpipe.config.sam2_config_path` (inside the package's configs folder, or listed as
    trusted), every ``_target_`` is checked (:func:`check_targets`) before hydra instantiates the
    model without weights, and the checkpoint's ``model`` state dict is read by medpipe's
    weights-only loader and loaded with strict keys.
    """
    import torch
    from hydra.utils import instantiate
    from omegaconf import OmegaConf

    from medpipe.files import TorchFileError, load_torch

    try:
        path = sam2_config_path(config_file, trusted)
    except ValueError as exc:
        raise Sam2ConfigError(f"interactive.sam2 config: {exc}") from exc
    config = OmegaConf.load(path)
    check_targets(OmegaConf.to_container(config), path)  # as written, before any key is overridden
    for key, value in VIDEO_PREDICTOR_OVERRIDES.items():
        OmegaConf.update(config, key, value, force_add=True)
    OmegaConf.resolve(config)
    check_targets(OmegaConf.to_container(config), path)
    torch.manual_seed(seed)
    model = instantiate(config.model, _recursive_=True)
    if checkpoint is not None:
        try:
            blob = load_torch(checkpoint)
        except TorchFileError as exc:
            raise Sam2ConfigError(str(exc)) from exc
        if not isinstance(blob, dict) or "model" not in blob:
            raise Sam2ConfigError(f"{checkpoint}: not a SAM2 checkpoint (no 'model' state dict)")
        try:
            model.load_state_dict(blob["model"], strict=True)
        except RuntimeError as exc:
            raise Sam2ConfigError(f"{checkpoint}: does not match {config_file} ({str(exc).splitlines()[0]})") from exc
    return model.to(device).eval()


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

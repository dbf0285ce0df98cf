"""nnU-Net v2 driven through its Python API from a medpipe store and split (docs/fidelity.md).

Steps: convert the store to nnU-Net's raw format (train+val cases in ``imagesTr``/``labelsTr``,
test cases in ``imagesTs``), write *our* train/val split as ``splits_final.json`` (fold 0) so
nnU-Net trains on exactly the cases the other methods train on, plan and preprocess with a
configurable planner, train fold 0 with ``nnUNetTrainerMedpipe`` (found through
``nnUNet_extTrainer``), predict the test cases with ``nnUNetPredictor`` and score them with
medpipe's own metric. The predictor gets the trained network from :func:`load_trained_model`, which
reads ``checkpoint_final.pth`` with medpipe's weights-only loader (nnU-Net's own reader unpickles
it without restriction).

nnU-Net reads its folders and process counts from environment variables when it is imported, so
:func:`configure_environment` must run before the first ``import nnunetv2``; run this module in its
own process (``medpipe semantic-run``), where the entry point is under ``__main__``.
"""

from __future__ import annotations

import json
import logging
import os
import random
import re
from pathlib import Path

import numpy as np

from medpipe.errors import MedpipeError
from medpipe.store import DatasetStore

log = logging.getLogger(__name__)

DATASET_ID = 501  # every job has its own nnU-Net folders, so one fixed id is unambiguous
FILE_ENDING = ".nii.gz"
TRAINER = "nnUNetTrainerMedpipe"
TRAINER_DIR = Path(__file__).with_name("nnunet_trainers")
FLAT_Z_SPACING = 999.0  # nnU-Net's convention for 2D images stored as 3D: never resampled along z


class NnUNetError(MedpipeError, RuntimeError):
    """The data cannot be converted or nnU-Net's output is not what we expect."""


def dataset_folder_name(name: str, dataset_id: int = DATASET_ID) -> str:
    return f"Dataset{dataset_id:03d}_{re.sub(r'[^A-Za-z0-9]', '', name) or 'data'}"


def configure_environment(work_dir, n_proc_da: int = 0, n_proc: int = 1) -> dict[str, str]:
    """Point nnU-Net at ``work_dir``'s raw/preprocessed/results folders and our trainer folder.

    Must run before ``nnunetv2`` is imported (it reads these at import time). On 2 cores
    ``nnUNet_n_proc_DA=0`` (augmentation in the main process) and one worker are fastest.
    """
    work = Path(work_dir).resolve()
    env = {
        "nnUNet_raw": str(work / "raw"),
        "nnUNet_preprocessed": str(work / "preprocessed"),
        "nnUNet_results": str(work / "results"),
        "nnUNet_extTrainer": str(TRAINER_DIR),
        "nnUNet_n_proc_DA": str(n_proc_da),
        "nnUNet_def_n_proc": str(n_proc),
    }
    for key in ("nnUNet_raw", "nnUNet_preprocessed", "nnUNet_results"):
        Path(env[key]).mkdir(parents=True, exist_ok=True)
    os.environ.update(env)
    return env


def channel_names(store: DatasetStore, first_case: str) -> dict[str, str]:
    """nnU-Net normalisation per channel: CT scheme for CT, 0-1 for colour, z-score otherwise."""
    shape = store.image_array(first_case).shape
    if store.ndim == 2 and len(shape) == 3:
        return {str(i): "rgb_to_0_1" for i in range(shape[-1])}
    return {"0": "CT" if store.modality == "ct" else "zscore"}


def label_mapping(classes: dict[int, str]) -> dict[int, int]:
    """Our class ids -> consecutive ids 1..K (nnU-Net requires consecutive labels)."""
    return {cid: i + 1 for i, cid in enumerate(sorted(classes))}


def _write_nifti(array: np.ndarray, spacing, path: Path) -> None:
    import SimpleITK as sitk

    if array.ndim == 2:  # 2D as a one-slice volume
        array, spacing = array[None], (FLAT_Z_SPACING, *spacing)
    image = sitk.GetImageFromArray(np.ascontiguousarray(array))
    image.SetSpacing(tuple(float(s) for s in reversed(spacing)))  # ITK spacing is x, y, z
    sitk.WriteImage(image, str(path), useCompression=True)


def _write_case(store: DatasetStore, case_id: str, folder: Path, n_channels: int) -> list[Path]:
    image = store.image(case_id)
    spacing = store.info(case_id).spacing[: store.ndim]
    paths = []
    for c in range(n_channels):
        channel = image[..., c] if n_channels > 1 else image
        path = folder / f"{case_id}_{c:04d}{FILE_ENDING}"
        _write_nifti(channel, spacing, path)
        paths.append(path)
    return paths


def convert_to_raw(store: DatasetStore, split: dict[str, list[str]], raw_root, dataset_id: int = DATASET_ID) -> Path:
    """Write the nnU-Net raw dataset folder of ``store``; returns it.

    Train and val cases go to ``imagesTr``/``labelsTr`` (nnU-Net validates on fold 0's val part,
    which :func:`write_splits_final` sets to our val cases), test cases to ``imagesTs``. Class ids
    are renumbered consecutively; the mapping is kept in ``medpipe.json``.
    """
    folder = Path(raw_root) / dataset_folder_name(store.name, dataset_id)
    for sub in ("imagesTr", "labelsTr", "imagesTs"):
        (folder / sub).mkdir(parents=True, exist_ok=True)
    trainval = split["train"] + split["val"]
    channels = channel_names(store, trainval[0])
    mapping = label_mapping(store.classes)
    lut = np.zeros(max(mapping) + 1, dtype=np.uint8)
    for ours, theirs in mapping.items():
        lut[ours] = theirs
    for case_id in trainval:
        _write_case(store, case_id, folder / "imagesTr", len(channels))
        label = store.label(case_id)
        if label.max(initial=0) > max(mapping):
            raise NnUNetError(f"{store.path}: case {case_id} has label {label.max()} not among classes {store.classes}")
        _write_nifti(lut[label], store.info(case_id).spacing[: store.ndim],
                     folder / "labelsTr" / f"{case_id}{FILE_ENDING}")
    for case_id in split["test"]:
        _write_case(store, case_id, folder / "imagesTs", len(channels))
    labels = {"background": 0, **{store.classes[ours]: theirs for ours, theirs in mapping.items()}}
    dataset_json = {"channel_names": channels, "labels": labels, "numTraining": len(trainval),
                    "file_ending": FILE_ENDING, "name": store.name}
    (folder / "dataset.json").write_text(json.dumps(dataset_json, indent=2))
    (folder / "medpipe.json").write_text(json.dumps(
        {"store": str(store.path), "label_mapping": {str(k): v for k, v in mapping.items()},
         "ndim": store.ndim, "split": split}, indent=2))
    log.info("converted %s to nnU-Net raw format in %s (%d train+val, %d test cases)", store.path, folder,
             len(trainval), len(split["test"]))
    return folder


def splits_final(split: dict[str, list[str]]) -> list[dict[str, list[str]]]:
    """nnU-Net's split file content: fold 0 = our train/val split.

    nnU-Net's own 5-fold split is never used (it would mix our val into training and needs >= 5
    cases). A dataset without val cases validates on its train cases, with a warning.
    """
    val = split["val"]
    if not val:
        log.warning("no val cases: nnU-Net's validation will run on the train cases")
        val = split["train"]
    return [{"train": list(split["train"]), "val": list(val)}]


def write_splits_final(preprocessed_dataset_folder, split) -> Path:
    path = Path(preprocessed_dataset_folder) / "splits_final.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(splits_final(split), indent=2))
    return path


def configuration_for(store: DatasetStore) -> str:
    return "2d" if store.ndim == 2 else "3d_fullres"


def plan_and_preprocess(dataset_id: int, planner: str, configuration: str, gpu_memory_gb=None) -> str:
    """Fingerprint, plan and preprocess one configuration; returns the plans identifier."""
    from nnunetv2.experiment_planning.plan_and_preprocess_api import (
        extract_fingerprints,
        plan_experiments,
        preprocess,
    )

    extract_fingerprints([dataset_id], num_processes=1, check_dataset_integrity=True, clean=True, verbose=False)
    # the planner calls torch.set_num_threads(nnUNet_n_proc_DA), which refuses the 0 we train with
    da = os.environ.get("nnUNet_n_proc_DA")
    os.environ["nnUNet_n_proc_DA"] = str(max(1, int(da or 1)))
    try:
        plans_identifier = plan_experiments([dataset_id], planner, gpu_memory_target_in_gb=gpu_memory_gb)
    finally:
        if da is not None:
            os.environ["nnUNet_n_proc_DA"] = da
    preprocess([dataset_id], plans_identifier, configurations=[configuration], num_processes=[1], verbose=False)
    return plans_identifier


def train(dataset_id: int, configuration: str, plans_identifier: str, schedule: dict, seed: int, device) -> Path:
    """Train fold 0 with ``nnUNetTrainerMedpipe``; returns the model folder for the predictor."""
    import torch
    from batchgenerators.utilities.file_and_folder_operations import load_json
    from nnunetv2.paths import nnUNet_preprocessed
    from nnunetv2.utilities.find_objects import recursive_find_trainer_class_by_name

    os.environ["MEDPIPE_NNUNET_EPOCHS"] = str(schedule["epochs"])
    os.environ["MEDPIPE_NNUNET_ITERATIONS"] = str(schedule["iterations_per_epoch"])
    os.environ["MEDPIPE_NNUNET_VAL_ITERATIONS"] = str(schedule["val_iterations_per_epoch"])
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)
    trainer_class = recursive_find_trainer_class_by_name(TRAINER)  # the nnUNet_extTrainer lookup
    folder = Path(nnUNet_preprocessed) / next(
        p.name for p in Path(nnUNet_preprocessed).iterdir() if p.name.startswith(f"Dataset{dataset_id:03d}_"))
    plans = load_json(str(folder / f"{plans_identifier}.json"))
    plans["continue_training"] = False  # the trainer pops this key; we continue below ourselves
    dataset_json = load_json(str(folder / "dataset.json"))
    trainer = trainer_class(plans=plans, configuration=configuration, fold=0, dataset_json=dataset_json,
                            device=torch.device(device))
    previous = resume_checkpoint(trainer.output_folder)
    if previous is not None:  # a rerun after a time limit or preemption: nnU-Net's own checkpoint
        log.info("nnU-Net continues from %s", previous)
        load_checkpoint_weights_only(trainer, previous)
    trainer.run_training()
    return Path(trainer.output_folder_base)


def resume_checkpoint(output_folder) -> Path | None:
    """The checkpoint a rerun continues from, as ``nnUNetv2_train --c`` picks it: final, else latest."""
    for name in ("checkpoint_final.pth", "checkpoint_latest.pth"):
        path = Path(output_folder) / name
        if path.is_file():
            return path
    return None


def load_checkpoint_weights_only(trainer, path: Path) -> None:
    """``trainer.load_checkpoint(path)`` with medpipe's weights-only read instead of its ``torch.load``."""
    import torch

    from medpipe.files import load_torch

    original = torch.load

    def read(file, map_location=None, weights_only=None):
        torch.load = original  # load_torch's own torch.load
        try:
            return load_torch(file, map_location=map_location or "cpu", numpy_scalars=True)
        finally:
            torch.load = read

    torch.load = read
    try:
        trainer.load_checkpoint(str(path))
    finally:
        torch.load = original


def augmentation_processes(cpus: int | None = None) -> int:
    """nnU-Net's augmentation workers (``nnUNet_n_proc_DA``) from the job's CPUs: one CPU stays with
    the training process; with 2 CPUs or fewer augmentation runs in the main process (fastest there)."""
    cpus = len(os.sched_getaffinity(0)) if cpus is None else cpus
    return 0 if cpus <= 2 else cpus - 1


def load_trained_model(predictor, model_folder, fold: int = 0, checkpoint_name: str = "checkpoint_final.pth"):
    """``predictor.initialize_from_trained_model_folder`` (nnU-Net 2.x) with a weights-only checkpoint read.

    The checkpoint holds numpy scalars (nnU-Net's training log), which the loader admits and which
    rebuild values only; anything else that needs unpickling is refused and named.
    """
    from batchgenerators.utilities.file_and_folder_operations import load_json
    from nnunetv2.utilities.find_objects import recursive_find_trainer_class_by_name
    from nnunetv2.utilities.label_handling.label_handling import determine_num_input_channels
    from nnunetv2.utilities.plans_handling.plans_handler import PlansManager

    from medpipe.files import TorchFileError, load_torch

    model_folder = Path(model_folder)
    try:
        checkpoint = load_torch(model_folder / f"fold_{fold}" / checkpoint_name, numpy_scalars=True)
    except TorchFileError as exc:
        raise NnUNetError(str(exc)) from exc
    dataset_json = load_json(str(model_folder / "dataset.json"))
    plans_manager = PlansManager(load_json(str(model_folder / "plans.json")))
    configuration_manager = plans_manager.get_configuration(checkpoint["init_args"]["configuration"])
    trainer_class = recursive_find_trainer_class_by_name(checkpoint["trainer_name"])
    network = trainer_class.build_network_architecture(
        plans_manager, configuration_manager,
        determine_num_input_channels(plans_manager, configuration_manager, dataset_json),
        plans_manager.get_label_manager(dataset_json).num_segmentation_heads, enable_deep_supervision=False)
    network.load_state_dict(checkpoint["network_weights"])
    predictor.manual_initialization(network, plans_manager, configuration_manager, [checkpoint["network_weights"]],
                                    dataset_json, checkpoint["trainer_name"],
                                    checkpoint.get("inference_allowed_mirroring_axes"))
    return predictor


def predict(model_folder, image_files: dict[str, list[Path]], out_folder, device,
            use_mirroring: bool) -> dict[str, Path]:
    """Predict every case (``case_id -> channel files``) without worker pools; returns the files."""
    import torch
    from nnunetv2.inference.predict_from_raw_data import nnUNetPredictor

    device = torch.device(device)
    predictor = nnUNetPredictor(tile_step_size=0.5, use_gaussian=True, use_mirroring=use_mirroring,
                                perform_everything_on_device=device.type == "cuda", device=device,
                                allow_tqdm=False)
    load_trained_model(predictor, model_folder)
    out_folder = Path(out_folder)
    out_folder.mkdir(parents=True, exist_ok=True)
    cases = sorted(image_files)
    predictor.predict_from_files_sequential([[str(p) for p in image_files[c]] for c in cases],
                                            [str(out_folder / c) for c in cases], save_probabilities=False,
                                            overwrite=True)
    return {c: out_folder / f"{c}{FILE_ENDING}" for c in cases}


def read_prediction(path, ndim: int, mapping: dict[int, int]) -> np.ndarray:
    """An nnU-Net prediction file -> our label map (our class ids, our axis order)."""
    import SimpleITK as sitk

    if not Path(path).is_file():
        raise NnUNetError(f"{path}: nnU-Net wrote no prediction")
    array = sitk.GetArrayFromImage(sitk.ReadImage(str(path)))
    if ndim == 2:
        array = array[0]
    inverse = np.zeros(max(mapping.values()) + 1, dtype=np.uint16)
    for ours, theirs in mapping.items():
        inverse[theirs] = ours
    return inverse[array]


def run_nnunet(store: DatasetStore, split: dict, settings: dict, work_dir, seed: int,
               device: str) -> dict[str, np.ndarray]:
    """The whole nnU-Net pipeline for one dataset; returns test predictions by case id."""
    configure_environment(work_dir, n_proc_da=augmentation_processes())
    raw = convert_to_raw(store, split, Path(work_dir) / "raw")
    configuration = configuration_for(store)
    plans_identifier = plan_and_preprocess(DATASET_ID, settings["planner"], configuration,
                                           settings.get("gpu_memory_target_gb"))
    write_splits_final(Path(work_dir) / "preprocessed" / raw.name, split)
    model_folder = train(DATASET_ID, configuration, plans_identifier, settings, seed, device)
    n_channels = len(json.loads((raw / "dataset.json").read_text())["channel_names"])
    files = {c: [raw / "imagesTs" / f"{c}_{i:04d}{FILE_ENDING}" for i in range(n_channels)] for c in split["test"]}
    written = predict(model_folder, files, Path(work_dir) / "predictions", device, settings.get("use_mirroring", True))
    mapping = label_mapping(store.classes)
    return {c: read_prediction(p, store.ndim, mapping) for c, p in written.items()}

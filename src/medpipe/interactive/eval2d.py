"""Interactive 2D evaluation: a first prompt, then iterative correction (docs/fidelity.md, "Interactive 2D").

Per image (resized and normalised per ``interactive.preprocess``) the objects are the 8-connected
components of each class, >= 20 px; all objects of the image are prompted together (up to 32 per
decoder call; prompts are independent per object, so this equals the reference's one call per class):

- start ``point``: one positive point at the object's centre (micro-sam's rule, computed per class
  image), 3-mask head, best output by predicted IoU; start ``box``: the tight bbox;
- ``n_iterations`` predictions in all: the first prompt's, then one per correction round, each
  adding one positive point from the false negatives and one negative from the false positives
  (the training rule, ``medpipe.prompts``); with ``masks`` on, the previous prediction's low-res
  logits are fed as mask prompt. The paper's "final" is prediction ``n_iterations - 1``.

Two Dice tables come out of every prediction: the paper's number, one **union** Dice per image and
class (every predicted object of the class merged, against the full class mask, including the
pieces the size filter dropped; medico-sam ``evaluation.py``), and the Dice of every object on its
own (for NoC). The image embedding comes from the on-disk cache, so the encoder runs once per image
and model, whatever the number of settings, seeds and iterations. A 3D dataset is evaluated slice by
slice: each slice with an object is an image of its own (the paper's 2D evaluation of CT/MRI data).
"""

from __future__ import annotations

import logging
import zlib
from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np
import pandas as pd
from tqdm import tqdm

from medpipe import prompts
from medpipe.interactive import preprocess
from medpipe.interactive.embeddings import case_embeddings, slice_embeddings, slice_entry
from medpipe.interactive.objects import MIN_OBJECT_PX, Obj, connected_objects
from medpipe.interactive.predictor import BatchedPredictor
from medpipe.metrics import dice
from medpipe.tables import COLUMNS_2D, COLUMNS_2D_OBJECTS, KEYS_2D, KEYS_2D_OBJECTS, check_complete

log = logging.getLogger(__name__)

STARTS = ("point", "box")
MASKS = ("off", "on")


@dataclass
class Image2D:
    """One image of the 2D protocol: its id, embedding, frame size, objects and label map (same frame)."""

    image_id: str
    embedding: np.ndarray
    original_size: tuple[int, int]
    objects: list[Obj]
    label: np.ndarray


def prompt_rng(seed: int, case_id: str, start: str, masks: str) -> np.random.Generator:
    """The generator of one (seed, case, setting): independent of the order cases are processed in."""
    return np.random.default_rng([seed, zlib.crc32(case_id.encode()), STARTS.index(start), MASKS.index(masks)])


def object_centres(objects: list[Obj]) -> np.ndarray:
    """The point start's centre of every object (N, 1, 2), computed per class image as the reference does."""
    centres = {}
    for class_id in sorted({o.class_id for o in objects}):
        members = [o for o in objects if o.class_id == class_id]
        label = np.zeros(members[0].mask.shape, dtype=np.int64)
        for number, obj in enumerate(members, start=1):
            label[obj.mask] = number
        for number, point in prompts.center_points(label).items():
            centres[(class_id, members[number - 1].index)] = point
    return np.stack([centres[(o.class_id, o.index)] for o in objects])[:, None, :]


def predictions(
    predictor: BatchedPredictor,
    embedding: np.ndarray,
    original_size: tuple[int, int],
    objects: list[Obj],
    start: str,
    masks: str,
    n_iterations: int,
    rng: np.random.Generator,
) -> Iterator[np.ndarray]:
    """Yield the masks (N, H, W) of the ``n_iterations`` predictions of the protocol for one image.

    Correction points for the next prediction are drawn only when there is one (the reference also
    draws after the last prediction; those points are never used).
    """
    if start not in STARTS or masks not in MASKS:
        raise ValueError(f"unknown setting start={start!r} masks={masks!r} (expected {STARTS} x {MASKS})")
    if n_iterations < 1:
        raise ValueError(f"n_iterations counts the predictions and must be >= 1, got {n_iterations}")
    gt = np.stack([o.mask for o in objects])
    if start == "box":
        current = prompts.initial_prompts(gt, rng, use_box=True)
    else:
        current = {"boxes": None, "points": object_centres(objects), "labels": np.ones((len(gt), 1), dtype=np.int64)}
    pred = predictor.predict(
        embedding, original_size, current["points"], current["labels"], current["boxes"],
        multimask=prompts.uses_multimask(current),
    )
    yield pred.masks
    for _ in range(1, n_iterations):
        current = prompts.add_correction_points(current, gt, pred.masks, rng)
        mask_input = prompts.mask_prompt_from(pred.low_res) if masks == "on" else None
        pred = predictor.predict(
            embedding, original_size, current["points"], current["labels"], current["boxes"],
            mask_input=mask_input, multimask=False,
        )
        yield pred.masks


def evaluate_objects(predictor, embedding, original_size, objects, start, masks, n_iterations, rng,
                     label: np.ndarray | None = None) -> tuple[np.ndarray, dict[int, np.ndarray]]:
    """Per-object Dice (N, n_iterations) and, when ``label`` is given, union Dice per class {id: (n_iterations,)}.

    The union of a class is every predicted object of that class merged, scored against
    ``label == class_id`` (which holds the pieces the size filter dropped as well).
    """
    gt = np.stack([o.mask for o in objects])
    classes = sorted({o.class_id for o in objects})
    per_object = np.zeros((len(objects), n_iterations))
    union = {c: np.zeros(n_iterations) for c in classes} if label is not None else {}
    members = {c: np.array([o.class_id == c for o in objects]) for c in classes}
    truth = {c: label == c for c in union}
    for iteration, masks_ in enumerate(predictions(predictor, embedding, original_size, objects, start, masks,
                                                   n_iterations, rng)):
        per_object[:, iteration] = [dice(p, g) for p, g in zip(masks_, gt)]
        for class_id in union:
            union[class_id][iteration] = dice(masks_[members[class_id]].any(axis=0), truth[class_id])
    return per_object, union


def images_of_case(predictor: BatchedPredictor, cache, store, case_id: str,
                   min_object_px: int = MIN_OBJECT_PX) -> Iterator[Image2D]:
    """Yield the 2D images of a case with their objects, in the frame ``cache.preprocess`` gives them.

    A 2D case is one image. A volume is split into separate images, as the paper does for its 3D
    datasets in the 2D evaluation: every slice with an object is one image, ``<case>@z<z>``.
    Images without an object >= ``min_object_px`` are skipped (and never encoded).
    """
    label = store.label(case_id)
    mode = cache.preprocess
    if store.ndim == 2:
        label = preprocess.label_2d(label, mode)
        objects = connected_objects(label, store.classes, min_object_px)
        if not objects:
            log.info("%s: %s has no object >= %d px; skipped", store.name, case_id, min_object_px)
            return
        embeddings, original_size = case_embeddings(cache, predictor, store, case_id)
        yield Image2D(case_id, embeddings[0], original_size, objects, label)
        return
    per_slice = {}
    for z in np.flatnonzero(label.reshape(len(label), -1).any(axis=1)):
        slice_label = preprocess.label_2d(label[z], mode)
        objects = connected_objects(slice_label, store.classes, min_object_px)
        if objects:
            per_slice[int(z)] = (objects, slice_label)
    for z, embedding, original_size in slice_embeddings(cache, predictor, store, case_id, list(per_slice)):
        objects, slice_label = per_slice[z]
        yield Image2D(slice_entry(case_id, z), embedding, original_size, objects, slice_label)


def evaluate_dataset(
    predictor: BatchedPredictor,
    cache,
    store,
    case_ids: list[str],
    model: str,
    starts=STARTS,
    masks_settings=MASKS,
    seeds=(0,),
    n_iterations: int = 8,
    min_object_px: int = MIN_OBJECT_PX,
) -> tuple[pd.DataFrame, pd.DataFrame]:
    """``(union, per_object)``: the tidy per-(image, class) and per-object tables of one model and store.

    The ``case`` column names the image: the case id, or ``<case>@z<z>`` for a slice of a volume;
    ``iteration`` numbers the predictions 0 .. ``n_iterations`` - 1.
    """
    union_rows, object_rows, union_expected, object_expected = [], [], [], []
    for case_id in tqdm(case_ids, desc=f"2D {model}/{store.name}", unit="case"):
        for image in images_of_case(predictor, cache, store, case_id, min_object_px):
            names = {o.class_id: o.class_name for o in image.objects}
            counts = {c: sum(o.class_id == c for o in image.objects) for c in names}
            for seed in seeds:
                for start in starts:
                    for masks in masks_settings:
                        rng = prompt_rng(seed, image.image_id, start, masks)
                        scores, union = evaluate_objects(predictor, image.embedding, image.original_size,
                                                         image.objects, start, masks, n_iterations, rng, image.label)
                        setting = dict(start=start, masks=masks)
                        for iteration in range(n_iterations):
                            for class_id, values in union.items():
                                key = dict(dataset=store.name, case=image.image_id, class_id=class_id, **setting,
                                           iteration=iteration, seed=seed)
                                union_expected.append(key)
                                union_rows.append({**key, "class": names[class_id],
                                                   "dice": float(values[iteration]),
                                                   "n_objects": counts[class_id], "model": model})
                            for obj, obj_scores in zip(image.objects, scores):
                                key = dict(dataset=store.name, case=image.image_id, class_id=obj.class_id,
                                           object=obj.index, **setting, iteration=iteration, seed=seed)
                                object_expected.append(key)
                                object_rows.append({**key, "class": obj.class_name,
                                                    "dice": float(obj_scores[iteration]), "model": model})
    where = f"2D {model}/{store.name}"
    union_table = pd.DataFrame(union_rows, columns=COLUMNS_2D)
    check_complete(union_table, pd.DataFrame(union_expected, columns=KEYS_2D), KEYS_2D, where)
    object_table = pd.DataFrame(object_rows, columns=COLUMNS_2D_OBJECTS)
    check_complete(object_table, pd.DataFrame(object_expected, columns=KEYS_2D_OBJECTS), KEYS_2D_OBJECTS, where)
    return union_table, object_table

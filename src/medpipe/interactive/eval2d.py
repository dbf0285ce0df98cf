"""Interactive 2D evaluation (SPEC 3.4): a first prompt, then iterative correction, per object.

For every image of the evaluated split and every object (connected component of a class, >= 20
px), all objects of the image are prompted together (up to 32 per decoder call):

- start ``point``: one positive point at the object's centre (distance-transform maximum), 3-mask
  head, best output by predicted IoU; start ``box``: the tight bbox;
- then ``n_iterations`` correction rounds, each adding one positive point from the false
  negatives and one negative from the false positives (the training rule, ``medpipe.prompts``);
  with ``masks`` on, the previous round's low-res logits are fed as mask prompt.

Dice is recorded per object after the first prompt (iteration 0) and after every round. The
image embedding comes from the on-disk cache, so the encoder runs once per image and model,
whatever the number of settings, seeds and iterations. A 3D dataset is evaluated slice by slice:
each slice with an object is an image of its own (the paper's 2D evaluation of CT/MRI datasets).
"""

from __future__ import annotations

import logging
import zlib

import numpy as np
import pandas as pd
from tqdm import tqdm

from medpipe import prompts
from medpipe.interactive.embeddings import case_embeddings, slice_embeddings, slice_entry
from medpipe.interactive.objects import MIN_OBJECT_PX, Obj, connected_objects, objects_per_slice
from medpipe.interactive.predictor import BatchedPredictor
from medpipe.metrics import dice
from medpipe.tables import COLUMNS_2D, KEYS_2D, check_complete

log = logging.getLogger(__name__)

STARTS = ("point", "box")
MASKS = ("off", "on")


def prompt_rng(seed: int, case_id: str, start: str, masks: str) -> np.random.Generator:
    """The generator of one (seed, case, setting): independent of the order cases are processed in."""
    return np.random.default_rng([seed, zlib.crc32(case_id.encode()), STARTS.index(start), MASKS.index(masks)])


def evaluate_objects(
    predictor: BatchedPredictor,
    embedding: np.ndarray,
    original_size: tuple[int, int],
    objects: list[Obj],
    start: str,
    masks: str,
    n_iterations: int,
    rng: np.random.Generator,
) -> np.ndarray:
    """Dice (n_objects, n_iterations + 1) of the iterative protocol for the objects of one image."""
    if start not in STARTS or masks not in MASKS:
        raise ValueError(f"unknown setting start={start!r} masks={masks!r} (expected {STARTS} x {MASKS})")
    gt = np.stack([o.mask for o in objects])
    current = prompts.initial_prompts(gt, rng, use_box=start == "box", center=True)
    pred = predictor.predict(
        embedding, original_size, current["points"], current["labels"], current["boxes"],
        multimask=prompts.uses_multimask(current),
    )
    scores = np.zeros((len(objects), n_iterations + 1))
    scores[:, 0] = [dice(p, g) for p, g in zip(pred.masks, gt)]
    for iteration in range(1, n_iterations + 1):
        current = prompts.add_correction_points(current, gt, pred.masks, rng)
        mask_input = prompts.mask_prompt_from(pred.low_res) if masks == "on" else None
        pred = predictor.predict(
            embedding, original_size, current["points"], current["labels"], current["boxes"],
            mask_input=mask_input, multimask=False,
        )
        scores[:, iteration] = [dice(p, g) for p, g in zip(pred.masks, gt)]
    return scores


def images_of_case(predictor: BatchedPredictor, cache, store, case_id: str, min_object_px: int = MIN_OBJECT_PX):
    """Yield ``(image_id, embedding (C, h, w), original_size, objects)`` for each 2D image of a case.

    A 2D case is one image. A volume is split into separate images, as the paper does for its 3D
    datasets in the 2D evaluation: every slice with an object is one image, ``<case>@z<z>``.
    Images without an object >= ``min_object_px`` are skipped (and never encoded).
    """
    label = store.label(case_id)
    if store.ndim == 2:
        objects = connected_objects(label, store.classes, min_object_px)
        if not objects:
            log.info("%s: %s has no object >= %d px; skipped", store.name, case_id, min_object_px)
            return
        embeddings, original_size = case_embeddings(cache, predictor, store, case_id)
        yield case_id, embeddings[0], original_size, objects
        return
    per_slice = objects_per_slice(label, store.classes, min_object_px)
    for z, embedding in slice_embeddings(cache, predictor, store, case_id, list(per_slice)):
        yield slice_entry(case_id, z), embedding, label.shape[1:], per_slice[z]


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
) -> pd.DataFrame:
    """The tidy per-object, per-iteration table of one model on the given cases of one store.

    The ``case`` column names the image: the case id, or ``<case>@z<z>`` for a slice of a volume.
    """
    rows, expected = [], []
    for case_id in tqdm(case_ids, desc=f"2D {model}/{store.name}", unit="case"):
        for image_id, embedding, original_size, objects in images_of_case(predictor, cache, store, case_id,
                                                                          min_object_px):
            for seed in seeds:
                for start in starts:
                    for masks in masks_settings:
                        rng = prompt_rng(seed, image_id, start, masks)
                        scores = evaluate_objects(predictor, embedding, original_size, objects, start, masks,
                                                  n_iterations, rng)
                        for obj, obj_scores in zip(objects, scores):
                            for iteration in range(n_iterations + 1):
                                key = dict(dataset=store.name, case=image_id, class_id=obj.class_id, object=obj.index,
                                           start=start, masks=masks, iteration=iteration, seed=seed)
                                expected.append(key)
                                rows.append({**key, "class": obj.class_name, "dice": float(obj_scores[iteration]),
                                             "model": model})
    table = pd.DataFrame(rows, columns=COLUMNS_2D)
    check_complete(table, pd.DataFrame(expected, columns=KEYS_2D), KEYS_2D, f"2D {model}/{store.name}")
    return table

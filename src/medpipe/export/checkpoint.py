"""SAM-compatible export of a training checkpoint.

``export`` writes a flat state dict holding only ``image_encoder.*``, ``prompt_encoder.*`` and
``mask_decoder.*`` (what ``segment_anything`` and every tool built on it load with strict keys),
the joint semantic decoder in a separate ``OUT.decoder.pth`` (extra keys in the SAM file break
those tools), the sha256 of both in ``OUT.sha256`` and what the model is in ``OUT.export.json``
(model type, base checkpoint label, preset, frozen parts, iteration, hashes). Files are written
reproducibly, so equal weights give equal hashes.
"""

from __future__ import annotations

import logging
from pathlib import Path

from medpipe.errors import MedpipeError
from medpipe.files import TorchFileError, load_torch, save_torch, sha256_of, write_json, write_text

log = logging.getLogger(__name__)

SAM_PREFIXES = ("image_encoder.", "prompt_encoder.", "mask_decoder.")
WRAPPER_PREFIXES = ("module.", "sam.")  # DDP / our FinetuneModel container
DECODER_PREFIX = "sem_decoder."


class ExportError(MedpipeError, RuntimeError):
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


def _beside(out: Path, suffix: str) -> Path:
    return out.with_name(out.name.removesuffix(".pth") + suffix)


def decoder_path_for(out: Path) -> Path:
    """``<run>.decoder.pth`` beside ``<run>.pth``."""
    return _beside(out, ".decoder.pth")


def sha_path_for(out: Path) -> Path:
    """``<run>.sha256`` beside ``<run>.pth``."""
    return _beside(out, ".sha256")


def meta_path_for(out: Path) -> Path:
    """``<run>.export.json`` beside ``<run>.pth``."""
    return _beside(out, ".export.json")


def export(training_ckpt, out) -> dict:
    """Export ``training_ckpt`` to ``out`` (+ decoder file when present, + sha256 file); returns a summary."""
    training_ckpt, out = Path(training_ckpt), Path(out)
    try:
        blob = load_torch(training_ckpt)
    except TorchFileError as exc:
        raise ExportError(f"{exc} (a training checkpoint)") from exc
    if not isinstance(blob, dict) or "model_state" not in blob:
        raise ExportError(f"{training_ckpt}: not a medpipe training checkpoint (no 'model_state')")
    try:
        sam_state, decoder_state = split_training_state(blob["model_state"])
    except ExportError as exc:
        raise ExportError(f"{training_ckpt}: {exc}") from exc
    if not sam_state:
        raise ExportError(f"{training_ckpt}: no SAM weights in model_state")
    save_torch(sam_state, out)
    hashes = {out.name: sha256_of(out)}
    decoder_out = decoder_path_for(out)
    if decoder_state:
        config = blob.get("sem_decoder_config")
        if config is None:
            raise ExportError(f"{training_ckpt}: has semantic decoder weights but no 'sem_decoder_config'")
        save_torch({"config": config, "state_dict": decoder_state}, decoder_out)
        hashes[decoder_out.name] = sha256_of(decoder_out)
    elif decoder_out.exists():
        decoder_out.unlink()  # a stale decoder of an earlier export must not travel with this model
    write_text(sha_path_for(out), "".join(f"{h}  {name}\n" for name, h in hashes.items()))
    settings = blob.get("settings") or {}
    summary = {"out": out.name, "source": training_ckpt.name, "tensors": len(sam_state), "decoder": bool(decoder_state),
               "sha256": hashes, "model_type": blob.get("model_type"), "model_label": blob.get("model_label"),
               "run": settings.get("run"), "preset": settings.get("preset"), "iteration": blob.get("iteration"),
               "freeze": list(blob.get("freeze", settings.get("freeze", [])))}
    write_json(meta_path_for(out), summary)
    log.info("exported %s -> %s (%d tensors, decoder: %s, frozen: %s)", training_ckpt, out, len(sam_state),
             bool(decoder_state), ", ".join(summary["freeze"]) or "nothing")
    return summary

"""Which models the interactive evaluation runs, and how one is loaded reproducibly.

Models are the config's base models (``models.<name>: {type, checkpoint}``) and every finetune run
(``finetune.runs.<run>``, exported to ``<results>/models/<run>.pth`` with its base's type). A
random-init model (checkpoint ``null``) is built under ``torch.manual_seed(seed)``, so every job
of the study evaluates the same weights and embeddings cached by one job fit the decoder of the
next.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from medpipe.sam.names import RANDOM_INIT, checkpoint_label


@dataclass(frozen=True)
class ModelSpec:
    name: str
    type: str
    checkpoint: str | None


def model_specs(config: dict) -> dict[str, ModelSpec]:
    """Every model to evaluate, base models first (the first one is the reference of Fig. 3b)."""
    results = config.get("results_dir", "results")
    specs = {name: ModelSpec(name, m["type"], m.get("checkpoint")) for name, m in config.get("models", {}).items()}
    for run, spec in config.get("finetune", {}).get("runs", {}).items():
        base = config["models"].get(spec["base"])
        if base is None:
            raise ValueError(f"finetune.runs.{run}: base model {spec['base']!r} is not in models")
        specs[run] = ModelSpec(run, base["type"], str(Path(results) / "models" / f"{run}.pth"))
    return specs


def model_key(spec: ModelSpec, seed: int) -> str:
    """What identifies the weights: the checkpoint's content hash, or type + seed for random init."""
    if checkpoint_label(spec.checkpoint) == RANDOM_INIT:
        return f"{spec.type}:{RANDOM_INIT}:seed{seed}"
    from medpipe.io.checksum import sha256_of  # lazily: workflow files import this module

    return f"{spec.type}:sha256:{sha256_of(spec.checkpoint)}"


def load_model(spec: ModelSpec, seed: int, device="cpu"):
    """The ``segment_anything.Sam`` of ``spec`` in eval mode (random init seeded with ``seed``)."""
    import torch  # here, not at module level: workflow files import this module and must parse fast

    from medpipe.sam import build_sam

    torch.manual_seed(seed)
    return build_sam(spec.type, spec.checkpoint, device=device)


def pick_device(requested: str = "auto") -> str:
    """``cuda`` when asked for (or ``auto`` and a GPU is present), else ``cpu``."""
    import torch

    if requested == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    return requested

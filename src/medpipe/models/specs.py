"""Which models a study evaluates, and what identifies their weights (torch-free).

Models are the config's base models (``models.<name>: {type, checkpoint}``) and every finetune run
(``finetune.runs.<run>``, exported to ``<results>/models/<run>.pth`` with its base's type). The
workflow reads this at parse time, so it imports nothing heavy.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from medpipe.models.names import RANDOM_INIT, checkpoint_label


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
    from medpipe.files import sha256_of

    return f"{spec.type}:sha256:{sha256_of(spec.checkpoint)}"

"""Which models a study evaluates, and whose image embeddings each one reads (torch-free).

Models are the config's base models (``models.<name>: {type, checkpoint}``) and every finetune run
(``finetune.runs.<run>``, exported to ``<results>/models/<run>.pth`` with its base's type). The
workflow reads this at parse time, so it imports nothing heavy.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from medpipe.run_settings import resolve_run


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


def embedding_owner(config: dict, name: str) -> str:
    """Whose image embeddings the model ``name`` uses: a finetune run with a frozen image encoder
    (``freeze: [image_encoder]``) has exactly its base model's encoder, so it shares the base's
    embedding caches; any other model owns its own. (The evaluation still checks that the cache was
    made by an encoder with the model's weights: :func:`medpipe.models.sam.encoder_digest`.)"""
    runs = config.get("finetune", {}).get("runs", {})
    if name not in runs:
        return name
    settings = resolve_run(config, name)
    return settings.base if settings.encoder_frozen else name

"""The knobs of Alg. 1 and how a finetune run's settings are resolved from the config.

A run's settings are ``finetune.defaults`` <- ``finetune.presets[<preset>]`` <- the run's own
keys, so a preset names a training strategy of the paper and a run may still override any knob.
"""

from __future__ import annotations

import hashlib
import json

from medpipe.sam import MODEL_TYPES, checkpoint_label

#: every knob and its default (mirrors ``finetune.defaults`` in the config schema)
KNOB_DEFAULTS: dict = {
    "n_obj": 5,
    "n_steps": 8,
    "p_box": 0.5,
    "p_mask": 0.0,
    "e_sem": False,
    "box_distortion": 0.025,
    "lr": 1e-5,
    "weight_decay": 0.01,
    "lr_decay": 0.9,
    "lr_decay_every": None,
    "iterations": 300000,
    "batch_size": 7,
    "patch_size": 512,
    "input_size": None,
    "flips": True,
    "min_object_px": 10,
    "num_workers": 4,
    "val_every": 1000,
    "val_batches": 25,
    "checkpoint_every": 1000,
    "activation_checkpointing": False,
    "bf16": True,
    "corpus_variant": "full",
    "export_checkpoint": "best",
}

#: the paper's strategies (SPEC 3.1; the paper trains MedSAM*, SimpleFT* and MedicoSAM* on the 60%
#: corpus, the full MedicoSAM* on all of it); also the schema default of ``finetune.presets``
PRESETS: dict = {
    "medsam": {"n_steps": 0, "p_box": 1.0, "p_mask": 0.0, "e_sem": False, "lr": 5e-5, "corpus_variant": "p60"},
    "simpleft": {"n_steps": 0, "p_box": 0.5, "p_mask": 0.0, "e_sem": False, "lr": 5e-5, "corpus_variant": "p60"},
    "medicosam_p60": {"n_steps": 8, "p_box": 0.5, "p_mask": 0.0, "e_sem": False, "lr": 1e-5, "corpus_variant": "p60"},
    "medicosam_full": {"n_steps": 8, "p_box": 0.5, "p_mask": 0.5, "e_sem": True, "lr": 1e-5, "corpus_variant": "full"},
}

# Keys of a run entry that are not knobs.
RUN_KEYS = ("base", "preset")


class SettingsError(ValueError):
    """A finetune run refers to an unknown base model or preset, or has an invalid knob."""


def resolve_run(config: dict, run: str) -> dict:
    """All settings of finetune run ``run``: knobs plus ``run``, ``base``, ``model_type``, ``checkpoint``."""
    section = config.get("finetune", {})
    runs = section.get("runs", {})
    if run not in runs:
        raise SettingsError(f"finetune run {run!r} is not configured (finetune.runs has {sorted(runs)})")
    spec = runs[run]
    presets = section.get("presets") or PRESETS
    if spec["preset"] not in presets:
        raise SettingsError(f"finetune.runs.{run}: unknown preset {spec['preset']!r} (known: {sorted(presets)})")
    models = config.get("models", {})
    if spec["base"] not in models:
        raise SettingsError(f"finetune.runs.{run}: unknown base model {spec['base']!r} (models has {sorted(models)})")
    settings = {**KNOB_DEFAULTS, **(section.get("defaults") or {}), **presets[spec["preset"]]}
    settings.update({k: v for k, v in spec.items() if k not in RUN_KEYS})
    base = models[spec["base"]]
    settings.update(run=run, preset=spec["preset"], base=spec["base"], model_type=base["type"],
                    checkpoint=base.get("checkpoint"))
    validate_settings(settings, f"finetune.runs.{run}")
    return settings


def validate_settings(settings: dict, where: str) -> None:
    """Cross-field checks the schema cannot express."""
    if settings["model_type"] not in MODEL_TYPES:
        raise SettingsError(f"{where}: unknown model type {settings['model_type']!r}")
    for key in ("p_box", "p_mask"):
        if not 0.0 <= float(settings[key]) <= 1.0:
            raise SettingsError(f"{where}: {key} must be within [0, 1], got {settings[key]}")
    if int(settings["n_obj"]) < 1 or int(settings["batch_size"]) < 1:
        raise SettingsError(f"{where}: n_obj and batch_size must be >= 1")


def model_label(settings: dict) -> str:
    """``<model_type>:<base checkpoint or random-init>``, written into every output of the run."""
    return f"{settings['model_type']}:{checkpoint_label(settings.get('checkpoint'))}"


#: knobs that may change between a run and its resumption without invalidating the checkpoint
RESUMABLE_CHANGES = ("iterations", "num_workers", "val_every", "checkpoint_every", "export_checkpoint")


def fingerprint(settings: dict) -> str:
    """A hash of the settings that define the training trajectory (checked when resuming)."""
    core = {k: v for k, v in sorted(settings.items()) if k not in RESUMABLE_CHANGES}
    return hashlib.sha256(json.dumps(core, sort_keys=True, default=str).encode()).hexdigest()[:16]

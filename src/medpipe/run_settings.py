"""The settings of one finetune run, typed, and how they are resolved from the config.

A run's settings are the schema's knob defaults <- ``finetune.defaults`` <- the run's preset <- the
run's own keys, so a preset names a training strategy of the paper and a run may still override any
knob. The config schema is the one definition of every knob's default and of the presets: this
module reads them from it (torch-free, so the workflow can resolve runs while it parses).
It sits below the stages: the finetune stage trains with these settings, and the model list
(``medpipe.models.specs``), the config check and the workflow resolve run names with them.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from functools import cache

from medpipe.errors import MedpipeError
from medpipe.models.names import MODEL_TYPES, checkpoint_label

#: ``image_prep`` values: resize each whole image (the reference) or crop at native resolution
IMAGE_PREPS = ("resize", "crop")
#: ``lr_decay`` value of a constant learning rate (what the reference code ran)
NO_DECAY = "none"
#: the parts of SAM that ``freeze`` may name (micro-sam's trainer option of the same name)
FREEZABLE = ("image_encoder", "prompt_encoder", "mask_decoder")


class SettingsError(MedpipeError, ValueError):
    """A finetune run refers to an unknown base model or preset, or has an invalid knob."""


@cache
def _schema_finetune() -> dict:
    from medpipe.config import schema

    return schema()["properties"]["finetune"]["properties"]


def knob_defaults() -> dict:
    """Every knob and its default, as the schema's ``finetune.defaults`` states them."""
    return dict(_schema_finetune()["defaults"]["default"])


def preset_defaults() -> dict:
    """The paper's strategies (MedSAM*, SimpleFT*, MedicoSAM* on 60 % / all data), from the schema."""
    return {name: dict(knobs) for name, knobs in _schema_finetune()["presets"]["default"].items()}


@dataclass(frozen=True)
class FinetuneSettings(Mapping):
    """Every setting of one finetune run (Alg. 1 knobs plus which run and base model).

    There are no defaults here on purpose: build it with :func:`resolve_run` (or
    :meth:`from_mapping`). It reads like a mapping too (``settings["lr"]``, ``dict(settings)``),
    which is how it is written to ``training.json`` and compared when resuming.
    """

    run: str
    preset: str
    base: str
    model_type: str
    checkpoint: str | None
    n_obj: int
    n_steps: int
    p_box: float
    p_mask: float
    e_sem: bool
    sem_upsampling: str
    box_distortion: float
    lr: float
    weight_decay: float
    lr_decay: float | str  # a factor in (0, 1], or "none" for a constant learning rate
    lr_decay_every: int | None
    iterations: int
    batch_size: int
    global_batch: int | None  # images per optimiser step over all processes (medpipe.finetune.batching)
    image_prep: str
    patch_size: int
    input_size: int | None
    flips: bool
    min_object_px: int
    num_workers: int
    val_every: int
    val_batches: int
    checkpoint_every: int
    activation_checkpointing: bool
    attention: str  # image-encoder attention while training: fused or reference
    bf16: bool
    corpus_variant: str
    export_checkpoint: str
    freeze: tuple[str, ...]  # parts of SAM left untrained, in FREEZABLE order

    def __post_init__(self):
        where = f"finetune.runs.{self.run}"
        freeze = [self.freeze] if isinstance(self.freeze, str) else list(self.freeze or ())
        unknown = sorted(set(freeze) - set(FREEZABLE))
        if unknown:
            raise SettingsError(f"{where}: freeze names {unknown}; only {list(FREEZABLE)} can be frozen")
        object.__setattr__(self, "freeze", tuple(part for part in FREEZABLE if part in freeze))
        if len(self.freeze) == len(FREEZABLE):
            raise SettingsError(f"{where}: freeze names every part of SAM; nothing would be trained")
        if self.model_type not in MODEL_TYPES:
            raise SettingsError(f"{where}: unknown model type {self.model_type!r}")
        for key in ("p_box", "p_mask"):
            if not 0.0 <= float(self[key]) <= 1.0:
                raise SettingsError(f"{where}: {key} must be within [0, 1], got {self[key]}")
        if int(self.n_obj) < 1 or int(self.batch_size) < 1:
            raise SettingsError(f"{where}: n_obj and batch_size must be >= 1")
        if self.global_batch is not None and int(self.global_batch) % int(self.batch_size):
            raise SettingsError(f"{where}: global_batch {self.global_batch} is not a multiple of batch_size "
                                f"{self.batch_size}")
        if self.image_prep not in IMAGE_PREPS:
            raise SettingsError(f"{where}: image_prep must be one of {IMAGE_PREPS}, got {self.image_prep!r}")
        if self.lr_decay != NO_DECAY and not (isinstance(self.lr_decay, int | float) and 0 < self.lr_decay <= 1):
            raise SettingsError(f"{where}: lr_decay must be a factor in (0, 1] or {NO_DECAY!r}, got {self.lr_decay!r}")

    @property
    def decoder_passes(self) -> int:
        """Mask-decoder passes per iteration: the initial prompt and ``n_steps`` corrections."""
        return int(self.n_steps) + 1

    @property
    def encoder_frozen(self) -> bool:
        return "image_encoder" in self.freeze

    @property
    def caches_embeddings(self) -> bool:
        """Whether a training image always reaches the encoder as the same input, so a frozen encoder's
        embedding can be computed once and reused: no flips, whole images resized (no random crop)."""
        return self.encoder_frozen and not self.flips and self.image_prep == "resize"

    @property
    def decay_factor(self) -> float:
        """The learning-rate factor per decay period (1.0 for ``lr_decay: none``)."""
        return 1.0 if self.lr_decay == NO_DECAY else float(self.lr_decay)

    # -- read access as a mapping
    def __getitem__(self, key: str):
        if key not in _FIELDS:
            raise KeyError(key)
        return getattr(self, key)

    def __iter__(self) -> Iterator[str]:
        return iter(_FIELDS)

    def __len__(self) -> int:
        return len(_FIELDS)

    @classmethod
    def from_mapping(cls, values: Mapping) -> FinetuneSettings:
        """Settings from a mapping with exactly the fields (unknown or missing keys are an error)."""
        if isinstance(values, cls):
            return values
        unknown = sorted(set(values) - set(_FIELDS))
        missing = sorted(set(_FIELDS) - set(values))
        if unknown or missing:
            raise SettingsError(f"finetune settings: unknown keys {unknown}, missing keys {missing}")
        return cls(**{key: values[key] for key in _FIELDS})

    def replace(self, **changes) -> FinetuneSettings:
        """A copy with some settings changed (checked like the original)."""
        unknown = sorted(set(changes) - set(_FIELDS))
        if unknown:
            raise SettingsError(f"finetune run {self.run}: unknown knobs {unknown}")
        return dataclasses.replace(self, **changes)


_FIELDS = tuple(field.name for field in dataclasses.fields(FinetuneSettings))
#: keys of a run entry that are not knobs
RUN_KEYS = ("base", "preset")
#: the schema's knob defaults and presets (the module's names for them)
KNOB_DEFAULTS = knob_defaults()
PRESETS = preset_defaults()


def resolve_run(config: dict, run: str) -> FinetuneSettings:
    """All settings of finetune run ``run`` of a validated config."""
    section = config.get("finetune", {})
    runs = section.get("runs", {})
    if run not in runs:
        raise SettingsError(f"finetune run {run!r} is not configured (finetune.runs has {sorted(runs)})")
    spec = runs[run]
    presets = section.get("presets") or preset_defaults()
    if spec["preset"] not in presets:
        raise SettingsError(f"finetune.runs.{run}: unknown preset {spec['preset']!r} (known: {sorted(presets)})")
    models = config.get("models", {})
    if spec["base"] not in models:
        raise SettingsError(f"finetune.runs.{run}: unknown base model {spec['base']!r} (models has {sorted(models)})")
    knobs = {**knob_defaults(), **(section.get("defaults") or {}), **presets[spec["preset"]]}
    knobs.update({k: v for k, v in spec.items() if k not in RUN_KEYS})
    base = models[spec["base"]]
    return FinetuneSettings.from_mapping({**knobs, "run": run, "preset": spec["preset"], "base": spec["base"],
                                          "model_type": base["type"], "checkpoint": base.get("checkpoint")})


def model_label(settings: Mapping) -> str:
    """``<model_type>:<base checkpoint or random-init>``, written into every output of the run."""
    return f"{settings['model_type']}:{checkpoint_label(settings.get('checkpoint'))}"


#: knobs that may change between a run and its resumption without invalidating the checkpoint
RESUMABLE_CHANGES = ("iterations", "num_workers", "val_every", "checkpoint_every", "export_checkpoint")


def fingerprint(settings: Mapping) -> str:
    """A hash of the settings that define the training trajectory (checked when resuming)."""
    core = {k: v for k, v in sorted(settings.items()) if k not in RESUMABLE_CHANGES}
    if core.get("global_batch", 0) is None:  # the default: fingerprints of runs from before the knob stay valid
        del core["global_batch"]
    return hashlib.sha256(json.dumps(core, sort_keys=True, default=str).encode()).hexdigest()[:16]

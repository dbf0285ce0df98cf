"""What the Snakemake workflow needs to know about a study while it parses, without importing torch.

The rule files import only this module of the library: parsing the workflow (every dry run, every
cluster job's start) must stay fast, so nothing here may import torch, nnU-Net or the models.
``tests/test_workflow_parse.py`` holds that line.
"""

from __future__ import annotations

import hashlib
import json

from medpipe.config import (
    ConfigError,
    check_files,
    datasets_with_role,
    read_config_file,
    resolved_yaml,
    validate_config,
    write_resolved,
)
from medpipe.models.names import RANDOM_INIT, checkpoint_file, checkpoint_label
from medpipe.models.specs import ModelSpec, embedding_owner, model_specs
from medpipe.run_settings import resolve_run

__all__ = [
    "RANDOM_INIT",
    "ConfigError",
    "ModelSpec",
    "check_files",
    "checkpoint_file",
    "checkpoint_label",
    "config_snapshot_path",
    "datasets_with_role",
    "embedding_owner",
    "finetune_base_checkpoint",
    "finetune_export_checkpoint",
    "finetune_has_decoder",
    "finetune_model_type",
    "finetune_settings_json",
    "model_specs",
    "read_config_file",
    "validate_config",
    "write_resolved",
]


def finetune_settings_json(config: dict, run: str) -> str:
    """The run's resolved settings as canonical JSON (sorted keys): a rule's ``params`` value."""
    return json.dumps(dict(resolve_run(config, run)), sort_keys=True, default=str)


def finetune_model_type(config: dict, run: str) -> str:
    """The model type of a finetune run (its base model's type)."""
    return resolve_run(config, run).model_type


def finetune_base_checkpoint(config: dict, run: str) -> str | None:
    """The base model's checkpoint of a finetune run: a path, ``bundled`` or ``None`` for random init."""
    return resolve_run(config, run).checkpoint


def finetune_has_decoder(config: dict, run: str) -> bool:
    """Whether the run trains the joint semantic decoder (its export then has a decoder file)."""
    return resolve_run(config, run).e_sem


def finetune_export_checkpoint(config: dict, run: str) -> str:
    """Which training checkpoint of the run is exported: ``best`` or ``latest``."""
    return resolve_run(config, run).export_checkpoint


def config_snapshot_path(config: dict) -> str:
    """Where the jobs of a run read the validated ``config``: ``<results_dir>/.medpipe/config-<hash>.yaml``.

    The name holds the first 12 hex digits of the SHA-256 of the snapshot's text, so a job always
    reads the config it was scheduled under, even while another run with an edited config starts.
    """
    digest = hashlib.sha256(resolved_yaml(config).encode()).hexdigest()[:12]
    return f"{config['results_dir'].rstrip('/')}/.medpipe/config-{digest}.yaml"


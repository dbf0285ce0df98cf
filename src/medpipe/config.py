"""Load and validate a study configuration.

The JSON schema ``medpipe/schemas/config.schema.yaml`` (packaged with medpipe; the workflow's
``workflow/schemas/config.schema.yaml`` links to it) is the single definition of every key and its
default; the Snakefile and every ``medpipe`` subcommand validate against it, so a bad key is
reported before any job runs, naming the key.
"""

from __future__ import annotations

import copy
import json
import os
from importlib import resources
from pathlib import Path

import jsonschema
import yaml

from medpipe.files import write_text


class ConfigError(ValueError):
    """The configuration is invalid; the message names the file and the key."""


def schema() -> dict:
    with resources.files("medpipe").joinpath("schemas/config.schema.yaml").open() as handle:
        return yaml.safe_load(handle)


def _validator_with_defaults():
    """A Draft 2020-12 validator that also fills in ``default`` values while it validates."""
    base = jsonschema.Draft202012Validator
    validate_properties = base.VALIDATORS["properties"]

    def set_defaults(validator, properties, instance, subschema):
        if isinstance(instance, dict):
            for name, prop in properties.items():
                if "default" in prop and name not in instance:
                    instance[name] = copy.deepcopy(prop["default"])
        yield from validate_properties(validator, properties, instance, subschema)

    return jsonschema.validators.extend(base, {"properties": set_defaults})


def _key_path(error: jsonschema.ValidationError) -> str:
    return ".".join(str(part) for part in error.absolute_path) or "(top level)"


def _check_results_dir(config: dict, source: str) -> None:
    """``results_dir`` must name a folder of its own: never empty, never the file system root, and
    free of ``{``/``}`` (every output path is a Snakemake pattern that starts with it)."""
    value = config.get("results_dir")
    if not isinstance(value, str):
        return  # the schema reports a missing or non-string value
    if not value.strip() or os.path.normpath(value).strip("/") == "":  # "", "  ", "/", "//", "/./", "/.."
        raise ConfigError(f"{source}: results_dir: must be a non-empty path other than '/', got {value!r}")
    if "{" in value or "}" in value:
        raise ConfigError(f"{source}: results_dir: must not contain '{{' or '}}' (Snakemake patterns), got {value!r}")


def validate_config(config: dict, source: str = "config") -> dict:
    """Validate ``config`` in place, fill defaults, normalise class ids to int; return it."""
    _check_results_dir(config, source)
    for dataset in (config.get("datasets") or {}).values():
        if isinstance(dataset, dict) and isinstance(dataset.get("classes"), dict):
            dataset["classes"] = {str(k): v for k, v in dataset["classes"].items()}
    validator = _validator_with_defaults()(schema())
    errors = sorted(validator.iter_errors(config), key=lambda e: list(e.absolute_path))
    if errors:
        lines = [f"{source}: {_key_path(e)}: {e.message}" for e in errors]
        raise ConfigError("invalid configuration:\n  " + "\n  ".join(lines))
    for name, dataset in config["datasets"].items():
        dataset["classes"] = {int(k): v for k, v in dataset["classes"].items()}
        names = set(dataset["classes"].values())
        for key, listed in dataset.get("interactive3d", {}).items():
            unknown = sorted(set(listed) - names)
            if unknown:
                raise ConfigError(f"{source}: datasets.{name}.interactive3d.{key}: {unknown} are not class names "
                                  f"of the dataset ({sorted(names)})")
    return config


def load_config(path: str | os.PathLike) -> dict:
    """Read a YAML config file, validate it and fill defaults."""
    path = Path(path)
    try:
        text = path.read_text()
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read config ({exc.strerror})") from exc
    try:
        config = yaml.safe_load(text) or {}
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path}: not valid YAML ({exc})") from exc
    if not isinstance(config, dict):
        raise ConfigError(f"{path}: top level must be a mapping")
    return validate_config(config, source=str(path))


def resolved_yaml(config: dict) -> str:
    """The YAML text of a validated config, as :func:`write_resolved` writes it."""
    return yaml.safe_dump(json.loads(json.dumps(config)), sort_keys=False)


def write_resolved(config: dict, path: str | os.PathLike) -> Path:
    """Write a validated config as YAML, atomically and only when its content changed.

    Jobs read this snapshot (so overrides given on the Snakemake command line reach them); keeping
    the file untouched when nothing changed keeps its mtime stable.
    """
    path = Path(path)
    text = resolved_yaml(config)
    if path.exists() and path.read_text() == text:
        return path
    return write_text(path, text)


def datasets_with_role(config: dict, role: str) -> list[str]:
    return [name for name, spec in config["datasets"].items() if role in spec.get("roles", [])]

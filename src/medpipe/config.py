"""Load and validate a study configuration.

The JSON schema ``medpipe/schemas/config.schema.yaml`` (packaged with medpipe; the workflow's
``workflow/schemas/config.schema.yaml`` links to it) is the single definition of every key and its
default; the Snakefile and every ``medpipe`` subcommand validate against it, so a bad key is
reported before any job runs, naming the key. What a schema cannot say is checked here too:
references between sections (a run's base model and preset, semantic backbones), regexes, class
ids, fractions, files that must exist, and keys given twice (YAML would keep the last). Every
problem is one line ``<file>: <key>: <problem>`` (docs/reliability.md).
"""

from __future__ import annotations

import copy
import importlib.util
import json
import math
import os
import re
from importlib import resources
from pathlib import Path

import jsonschema
import yaml

from medpipe.errors import MedpipeError
from medpipe.files import write_text
from medpipe.models.names import BUNDLED, BUNDLED_TYPES, VIT_TYPES


class ConfigError(MedpipeError, ValueError):
    """The configuration is invalid; the message names the file and the key."""


MAX_CLASS_ID = 65535  # labels are stored as uint8/uint16 (docs/data-format.md)


def duplicate_keys(text: str) -> list[str]:
    """``<key path>: ... given twice`` for every key given twice in one mapping of a YAML text.

    PyYAML (and Snakemake's config reader) silently keep the last of two equal keys, so
    ``classes: {1: liver, 1: kidney}`` would lose a class. Keys are compared as YAML values.
    """
    loader = yaml.SafeLoader(text)
    problems: list[str] = []
    visited: set[int] = set()

    def walk(node, keys: list[str]) -> None:
        if id(node) in visited:  # an alias: already walked where its anchor is
            return
        visited.add(id(node))
        if isinstance(node, yaml.SequenceNode):
            for index, item in enumerate(node.value):
                walk(item, [*keys, str(index)])
        if not isinstance(node, yaml.MappingNode):
            return
        seen: dict = {}
        for key_node, value_node in node.value:
            if key_node.tag == "tag:yaml.org,2002:merge":
                continue
            key = loader.construct_object(key_node, deep=True) if isinstance(key_node, yaml.ScalarNode) else None
            try:
                first = seen.setdefault(key, key_node)
            except TypeError:  # an unhashable key: not ours to judge
                first = key_node
            if first is not key_node and key is not None:
                a, b = first.start_mark.line + 1, key_node.start_mark.line + 1
                lines = f"lines {a} and {b}" if a != b else f"line {a}"
                problems.append(f"{'.'.join([*keys, str(key)])}: given twice ({lines}); YAML would keep only the last")
            walk(value_node, [*keys, str(key)])

    try:
        root = loader.get_single_node()
        if root is not None:
            walk(root, [])
    finally:
        loader.dispose()
    return problems


#: values a config may hold once its YAML aliases are expanded (the study's config has a few thousand);
#: an alias bomb (a list of ten aliases of a list of ten aliases ...) is refused before it is walked
MAX_CONFIG_VALUES = 200_000


def _expanded_size(config) -> int:
    """How many values ``config`` holds with every shared (aliased) part counted each time it is used.

    Linear in the distinct objects (sizes are memoised), so the count itself is cheap even for a
    bomb; a recursive alias (a list holding itself) counts as too large.
    """
    sizes: dict[int, int] = {}
    open_: set[int] = set()

    def size(node) -> int:
        if not isinstance(node, (dict, list)):
            return 1
        if id(node) in sizes:
            return sizes[id(node)]
        if id(node) in open_:
            return MAX_CONFIG_VALUES + 1
        open_.add(id(node))
        children = node.values() if isinstance(node, dict) else node
        total = 1 + sum(size(child) for child in children) + (len(node) if isinstance(node, dict) else 0)
        sizes[id(node)] = min(total, MAX_CONFIG_VALUES + 1)
        open_.discard(id(node))
        return sizes[id(node)]

    return size(config)


def _check_size(config, source: str) -> None:
    if _expanded_size(config) > MAX_CONFIG_VALUES:
        raise ConfigError(f"{source}: (top level): more than {MAX_CONFIG_VALUES} values once its YAML aliases are "
                          "expanded (an alias bomb, or an alias of itself); write the values out")


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


def _message(error: jsonschema.ValidationError) -> str:
    """The validator's message, with a long value shortened (never a dump of a whole section)."""
    message = error.message
    text = repr(error.instance)
    if len(text) > 60 and text in message:
        kind = {dict: "a mapping", list: "a list"}.get(type(error.instance), type(error.instance).__name__)
        message = message.replace(text, f"{kind} ({text[:40]}...)")
    return message.splitlines()[0]


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
    problem = _results_dir_problem(Path(value).expanduser())
    if problem:
        raise ConfigError(f"{source}: results_dir: {value!r} {problem}; give a folder of its own (e.g. results)")


#: folders of the operating system: results_dir may be neither one of them nor inside one
SYSTEM_TREES = ("/bin", "/boot", "/dev", "/etc", "/lib", "/lib32", "/lib64", "/proc", "/sbin", "/sys", "/usr")
#: folders that hold other things: results_dir may be inside one, never the folder itself
SHARED_FOLDERS = ("/home", "/opt", "/root", "/run", "/srv", "/tmp", "/var", "/mnt", "/media")


def _results_dir_problem(path: Path) -> str | None:
    """Why ``path`` cannot hold the results (every stage writes and replaces folders under it), or None."""
    try:
        resolved = path.resolve()
    except (RuntimeError, OSError) as exc:  # a symlink loop (RuntimeError before Python 3.13)
        return f"cannot be resolved ({exc})"
    if resolved == Path.cwd().resolve() or resolved == Path.home().resolve():
        return "is the working directory or the home folder"
    if any(resolved == Path(tree) or resolved.is_relative_to(tree) for tree in SYSTEM_TREES) \
            or str(resolved) in SHARED_FOLDERS:
        return "is a system folder"
    project = Path(__file__).resolve().parents[2]  # the checkout's root when medpipe runs from its sources
    for root in {Path.cwd().resolve(), project}:
        if resolved == root and (root / "src").is_dir():
            return "is the project's folder"
        for part in ("src", "workflow"):
            if resolved.is_relative_to(root / part) and (root / part).is_dir():
                return f"is inside the source tree ({root / part})"
    return None


def _non_finite_numbers(node, keys=()) -> list[str]:
    """``<key>: ...`` for every NaN or inf in the config: YAML's ``.nan`` is a number to the schema,
    and would switch off every comparison made with it (a fraction, a threshold, a learning rate)."""
    if isinstance(node, float) and not math.isfinite(node):
        return [f"{'.'.join(map(str, keys)) or '(top level)'}: {node} is not a finite number"]
    items = node.items() if isinstance(node, dict) else enumerate(node) if isinstance(node, list) else ()
    return [problem for key, value in items for problem in _non_finite_numbers(value, (*keys, key))]


def _classes_as_text(config: dict, source: str) -> list[str]:
    """Class ids as text for the schema; a class id given twice (``1`` and ``'1'``) is an error."""
    problems = []
    for name, dataset in (config.get("datasets") or {}).items():
        if isinstance(dataset, dict) and isinstance(dataset.get("classes"), dict):
            classes = {}
            for key, value in dataset["classes"].items():
                if str(key) in classes:
                    problems.append(f"{source}: datasets.{name}.classes: class id {key} is given twice "
                                    f"({classes[str(key)][0]!r}: {classes[str(key)][1]!r} and {key!r}: {value!r})")
                classes.setdefault(str(key), (key, value))
            dataset["classes"] = {key: value for key, (_, value) in classes.items()}
    return problems


def _check_regex(spec: dict, key: str, group: str | None, where: str) -> str | None:
    if spec.get(key) is None:
        return None
    try:
        pattern = re.compile(spec[key])
    except re.error as exc:
        return f"{where}.{key}: invalid regex {spec[key]!r} ({exc})"
    if group is not None and group not in pattern.groupindex:
        return f"{where}.{key}: regex {spec[key]!r} has no group named {group!r} (write (?P<{group}>...))"
    return None


def sam2_package_dir() -> Path | None:
    """The installed ``sam2`` package's folder, found without importing it (that loads torch)."""
    spec = importlib.util.find_spec("sam2")
    return Path(spec.origin).parent if spec is not None and spec.origin else None


def sam2_config_path(name: str, trusted=()) -> Path:
    """The YAML file that ``interactive.sam2.<m>.config`` names, or :class:`ValueError` saying why not.

    A name is resolved inside the installed ``sam2`` package, and must land in its ``configs``
    folder (``configs/sam2.1/sam2.1_hiera_b+.yaml``); another file only when it is listed verbatim
    in ``interactive.trusted_sam2_configs``. A hydra config instantiates whatever its ``_target_``
    keys name, so an arbitrary YAML file would run arbitrary code.
    """
    if name in trusted:
        path = Path(name)
        if not path.is_file():
            raise ValueError(f"{name!r} is listed in interactive.trusted_sam2_configs but is not a file")
        return path
    package = sam2_package_dir()
    if package is None:
        raise ValueError("the sam2 package is not installed (pip install sam2)")
    package = package.resolve()
    folder = (package / "configs").resolve()
    path = (package / name).resolve()
    if path.suffix != ".yaml" or not path.is_relative_to(folder):
        raise ValueError(f"{name!r} is not a config of the sam2 package (configs/...yaml inside {package}); list "
                         "a config file of your own under interactive.trusted_sam2_configs")
    if not path.is_file():
        available = sorted(str(p.relative_to(package)) for p in folder.rglob("*.yaml"))
        raise ValueError(f"{name!r}: no such config in the sam2 package (available: {', '.join(available)})")
    return path


def _schema_knob_defaults() -> dict:
    return schema()["properties"]["finetune"]["properties"]["defaults"]["default"]


def _references(config: dict) -> list[str]:
    """Problems a schema cannot see, as ``<key>: <problem>`` lines (the caller adds the file)."""
    problems = []
    for name, spec in config["datasets"].items():
        where = f"datasets.{name}"
        problems += _dataset_problems(name, spec)
        names = set(spec["classes"].values())
        for key, listed in spec.get("interactive3d", {}).items():
            unknown = sorted(set(listed) - names)
            if unknown:
                problems.append(f"{where}.interactive3d.{key}: {unknown} are not class names of the dataset "
                                f"({sorted(names)})")
        case_group = None if spec.get("case_format") else "case"  # case_format names its own groups
        problems += filter(None, [_check_regex(spec, "case_id", case_group, where),
                                  _check_regex(spec, "patient_id", "patient", where)])
        too_big = sorted(int(k) for k in spec["classes"] if int(k) > MAX_CLASS_ID)
        if too_big:
            problems.append(f"{where}.classes: class id {too_big[0]} is larger than {MAX_CLASS_ID} "
                            "(labels are stored as uint16)")
    for key, fractions in (("splits.fractions", config["splits"]["fractions"]),
                           ("corpus.fractions", config["corpus"]["fractions"])):
        total = sum(float(v) for v in fractions.values())
        if abs(total - 1.0) > 1e-6:
            problems.append(f"{key}: train + val + test must be 1, got {total:g}")
    corpus = config["corpus"]
    for name, variant in corpus["variants"].items():
        for part in ("train", "val"):
            if float(variant[part]) > float(corpus["fractions"][part]) + 1e-9:
                problems.append(f"corpus.variants.{name}.{part}: {variant[part]} is more than the corpus has "
                                f"(corpus.fractions.{part} = {corpus['fractions'][part]})")
    models, finetune = config["models"], config["finetune"]
    for name, model in models.items():
        if model.get("checkpoint") == BUNDLED and model["type"] not in BUNDLED_TYPES:
            problems.append(f"models.{name}.checkpoint: {BUNDLED!r} names the weights inside a model's package, which "
                            f"only {', '.join(BUNDLED_TYPES)} has; give a {model['type']} model a file or null")
    runs, presets = finetune["runs"], finetune["presets"]
    knob_defaults = {**_schema_knob_defaults(), **finetune["defaults"]}
    for name, run in runs.items():
        where = f"finetune.runs.{name}"
        if run["base"] not in models:
            problems.append(f"{where}.base: unknown base model {run['base']!r} (models: {', '.join(sorted(models))})")
        if run["preset"] not in presets:
            problems.append(f"{where}.preset: unknown preset {run['preset']!r} "
                            f"(finetune.presets: {', '.join(sorted(presets))})")
            continue
        knobs = {**knob_defaults, **presets[run["preset"]], **run}
        variant = knobs["corpus_variant"]
        if variant not in corpus["variants"]:
            problems.append(f"{where}: corpus_variant {variant!r} is not one of corpus.variants "
                            f"({', '.join(sorted(corpus['variants']))})")
        base_type = models.get(run["base"], {}).get("type")
        if knobs["activation_checkpointing"] and base_type not in (None, *VIT_TYPES):
            problems.append(f"{where}: activation_checkpointing wraps ViT blocks; a {base_type} model has none")
        if len(set(knobs.get("freeze") or ())) == 3:
            problems.append(f"{where}.freeze: every part of SAM is frozen; nothing would be trained")
    known = sorted({*models, *runs})
    for backbone in config["semantic"]["backbones"] or []:
        if backbone not in known:
            problems.append(f"semantic.backbones: {backbone!r} is neither a key of models nor of finetune.runs "
                            f"({', '.join(known)})")
    problems += _ma_sam_backbones(config)
    for name, spec in config["aggregate"]["comparisons"].items():
        for side in ("a", "b"):
            if side in spec and spec[side]["model"] not in known:
                problems.append(f"aggregate.comparisons.{name}.{side}.model: {spec[side]['model']!r} is neither a key "
                                "of models nor of finetune.runs")
    reference = config["aggregate"]["reference_model"]
    if reference is not None and reference not in known:
        problems.append(f"aggregate.reference_model: {reference!r} is neither a key of models nor of finetune.runs")
    interactive = config["interactive"]
    for name, model in interactive["sam2"].items():
        try:
            sam2_config_path(model["config"], interactive["trusted_sam2_configs"])
        except ValueError as exc:
            problems.append(f"interactive.sam2.{name}.config: {exc}")
    return problems


def _ma_sam_backbones(config: dict) -> list[str]:
    """MA-SAM puts adapters into ViT blocks: every backbone it would run on must be a ViT SAM."""
    semantic, models, runs = config["semantic"], config["models"], config["finetune"]["runs"]
    if "ma_sam" not in semantic["methods"]:
        return []
    given = semantic["backbones"] is not None
    backbones = semantic["backbones"] if given else [*models, *runs]

    def model_type(name):
        base = runs[name]["base"] if name in runs else name
        return models.get(base, {}).get("type")

    bad = [name for name in backbones if model_type(name) not in (None, *VIT_TYPES)]
    if not bad:
        return []
    key = "semantic.backbones" if given else "semantic.backbones (null: every model and run)"
    listed = ", ".join(f"{name} ({model_type(name)})" for name in bad)
    return [f"{key}: ma_sam (in semantic.methods) puts adapters into ViT blocks, which {listed} has not; "
            "remove ma_sam from semantic.methods or list only ViT backbones"]


def check_files(config: dict, source: str = "config") -> None:
    """Every checkpoint file a validated config names must exist (``ConfigError``, one line each).

    Run by ``medpipe validate-config`` and by the workflow before any job; not by each job's
    :func:`load_config`, so a config can be read where the files are not (a laptop, a login node
    with placeholder paths), and a job that needs a file names it when it opens it.
    """
    problems = []
    for section, models, empty in (("models", config["models"], "random init"),
                                   ("interactive.sam2", config["interactive"]["sam2"], "random weights")):
        for name, model in models.items():
            if model.get("checkpoint") in (None, BUNDLED) and section == "models":
                continue  # random init, or the verified file inside the model's package (checked when read)
            if model.get("checkpoint") is not None and not Path(model["checkpoint"]).is_file():
                problems.append(f"{source}: {section}.{name}.checkpoint: {model['checkpoint']!r} is not a file "
                                f"(relative to {Path.cwd()}; null = {empty})")
    if problems:
        raise ConfigError("\n".join(problems))


def validate_config(config: dict, source: str = "config") -> dict:
    """Validate ``config`` in place, fill defaults, normalise class ids to int; return it.

    Raises :class:`ConfigError` with one line ``<source>: <key>: <problem>`` per problem.
    """
    _check_size(config, source)
    _check_results_dir(config, source)
    problems = [f"{source}: {line}" for line in _non_finite_numbers(config)] + _classes_as_text(config, source)
    for dataset in (config.get("datasets") or {}).values():
        if isinstance(dataset, dict) and isinstance(dataset.get("label_map"), dict):
            dataset["label_map"] = {str(k): v for k, v in dataset["label_map"].items()}
    validator = _validator_with_defaults()(schema())
    errors = sorted(validator.iter_errors(config), key=lambda e: list(e.absolute_path))
    problems += [f"{source}: {_key_path(e)}: {_message(e)}" for e in errors]
    if problems:
        raise ConfigError("\n".join(problems))
    problems = [f"{source}: {line}" for line in _references(config)]
    if problems:
        raise ConfigError("\n".join(problems))
    for dataset in config["datasets"].values():
        dataset["classes"] = {int(k): v for k, v in dataset["classes"].items()}
    return config


def _dataset_problems(name: str, spec: dict) -> list[str]:
    """Combinations of dataset keys the schema cannot express (docs/data-format.md)."""
    problems = []
    ndim = spec["ndim"]
    labels = spec.get("labels")
    merge = labels.get("merge", "single") if isinstance(labels, dict) else "single"
    instances = spec.get("label_kind") == "instances"
    if instances and set(spec.get("roles", [])) - {"finetune"}:
        problems.append("label_kind: instances (object ids, not classes) is only for role finetune")
    if (merge == "instance_per_file" or spec.get("layout") == "sa_med2d") and not instances:
        problems.append("instance labels (labels.merge: instance_per_file, layout: sa_med2d) need "
                        "label_kind: instances")
    if merge == "class_per_file" and not labels.get("class_name"):
        problems.append("labels.merge: class_per_file needs labels.class_name")
    if spec.get("layout") == "sa_med2d" and ndim != 2:
        problems.append("layout: sa_med2d is a 2D corpus (ndim: 2)")
    if spec.get("stack") and ndim != 3:
        problems.append("stack: true builds volumes (ndim: 3)")
    for key in ("crop", "channel_axis"):
        if spec.get(key) and ndim != 2:
            problems.append(f"{key} is for 2D datasets (ndim: 2)")
    if spec.get("axes") and ndim != 3:
        problems.append("axes is for volumes (ndim: 3)")
    return [f"datasets.{name}: {problem}" for problem in problems]


def read_config_file(path: str | os.PathLike) -> dict:
    """The mapping of a YAML config file; a key given twice in one mapping is an error (``ConfigError``)."""
    path = Path(path)
    try:
        text = path.read_text()
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read config ({exc.strerror})") from exc
    try:
        config = yaml.safe_load(text) or {}
        _check_size(config, str(path))
        duplicates = duplicate_keys(text)
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path}: not valid YAML ({' '.join(str(exc).split())})") from exc
    if duplicates:
        raise ConfigError("\n".join(f"{path}: {line}" for line in duplicates))
    if not isinstance(config, dict):
        raise ConfigError(f"{path}: top level must be a mapping")
    return config


def load_config(path: str | os.PathLike) -> dict:
    """Read a YAML config file, validate it and fill defaults."""
    return validate_config(read_config_file(path), source=str(Path(path)))


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

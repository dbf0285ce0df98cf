"""A placeholder raw tree for a study config: see the whole study's DAG before the data is there.

Every dataset's `images`/`labels` glob gets a few empty files that match it (an `sa_med2d` corpus a
small index), every base checkpoint an empty file; a copy of the config points at them. Then
``snakemake -n --configfile <root>/study.yaml`` builds the whole DAG of the study (README
"Running the paper's study on a SLURM cluster"; ``medpipe placeholder-tree``). Also used by
tests/test_dag.py and benchmarks/dryrun.py.
"""

from __future__ import annotations

import re
from pathlib import Path

import yaml

REPO_ROOT = Path(__file__).resolve().parents[2]
STUDY = REPO_ROOT / "config" / "study.yaml"
DATA_PLACEHOLDER = "/path/to/data"
CHECKPOINT_PLACEHOLDER = "/path/to/checkpoints"


def case_names(n: int) -> list[str]:
    """Names that satisfy the study's case/patient regexes (`P_00001_..`, `TCGA_..`, `patient0001_..`)."""
    return [f"{i:04d}_c{i}" for i in range(n)]


def _fill(pattern: str, name: str) -> str:
    """A path matching ``pattern``: every `*` becomes ``name``, `?` an `x`, `[..]` its first
    character, `**` one folder level."""
    if "[!" in pattern or "[^" in pattern:
        raise ValueError(f"{pattern}: placeholder trees do not support negated character classes")
    path = pattern.replace("**", "d")
    path = re.sub(r"\[(.)[^\]]*\]", r"\1", path)
    return path.replace("?", "x").replace("*", name)


def label_glob(spec: dict) -> str:
    labels = spec["labels"]
    return labels if isinstance(labels, str) else labels["glob"]


def write_index(path: Path, entries: int, prefix: str = "ct_00") -> None:
    """A SAMed2D_v1.json-like index with ``entries`` images, 4 masks each (written as a stream)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w") as handle:
        handle.write("{")
        for i in range(entries):
            name = f"{prefix}--Source{i % 91}--case_{i // 100:06d}--z_{i % 100:04d}"
            masks = ", ".join(f'"masks/{name}--{k:04d}_000.png"' for k in range(4))
            handle.write(f'{"," if i else ""}\n"images/{name}.png": [{masks}]')
        handle.write("\n}\n")


def placeholder_config(root: Path, cases_per_dataset: int = 2, study: Path = STUDY,
                       index_entries: int | None = None) -> tuple[Path, dict]:
    """Write a copy of ``study`` under ``root`` whose paths point at a generated placeholder tree.

    Returns the config path and the (unvalidated) config. Each dataset gets ``cases_per_dataset``
    empty image and label files matching its globs (a `layout: sa_med2d` corpus an index of
    ``index_entries`` entries, default ``cases_per_dataset``, and no image files: a dry run reads
    neither); each model checkpoint an empty file.
    """
    from medpipe.io.cases import find

    text = study.read_text()
    data_root, ckpt_root = root / "data", root / "checkpoints"
    text = text.replace(DATA_PLACEHOLDER, str(data_root)).replace(CHECKPOINT_PLACEHOLDER, str(ckpt_root))
    config = yaml.safe_load(text)
    names = case_names(cases_per_dataset)
    for dataset, spec in config["datasets"].items():
        if spec.get("layout") == "sa_med2d":
            index = Path(spec["index"]) if "index" in spec else Path(spec["root"]) / "SAMed2Dv1" / "SAMed2D_v1.json"
            if not index.exists():
                write_index(index, cases_per_dataset if index_entries is None else index_entries)
            for folder in ("images", "masks"):  # beside the index, as in the published archive
                (index.parent / folder).mkdir(parents=True, exist_ok=True)
            continue
        for key, pattern in (("images", spec["images"]), ("labels", label_glob(spec))):
            for name in names:
                path = Path(_fill(pattern, name))
                path.parent.mkdir(parents=True, exist_ok=True)
                path.touch()
            found = find(pattern)
            if len(found) != cases_per_dataset:
                raise AssertionError(f"{dataset}.{key}: {pattern} matches {len(found)} placeholder files, "
                                     f"expected {cases_per_dataset}")
    sam2_models = (config.get("interactive") or {}).get("sam2") or {}
    for model in [*(config.get("models") or {}).values(), *sam2_models.values()]:
        if model.get("checkpoint") and model["checkpoint"] != "bundled":  # bundled: inside an installed package
            path = Path(model["checkpoint"])
            path.parent.mkdir(parents=True, exist_ok=True)
            path.touch()
    path = root / "study.yaml"
    path.write_text(yaml.safe_dump(config, sort_keys=False))
    return path, config

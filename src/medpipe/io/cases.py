"""Find a dataset's cases: glob image and label files, derive case and patient ids, pair them.

Pairing problems (an image without label, a label without image, two files claiming one case id,
a file name the configured regex does not match) are decided here, before any pixel is read, and
returned as quarantine rows; only cleanly paired cases go on to be read.
"""

from __future__ import annotations

import glob
import re
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path

from medpipe.io.quarantine import QuarantineRow
from medpipe.io.readers import base_name


class DatasetConfigError(ValueError):
    """The dataset entry of the config cannot be used (e.g. a regex without its named group)."""


@dataclass(frozen=True)
class CaseFiles:
    case_id: str
    patient_id: str
    image: Path
    label: Path


def _compile(spec: dict, key: str, group: str, dataset: str) -> re.Pattern | None:
    if spec.get(key) is None:
        return None
    try:
        pattern = re.compile(spec[key])
    except re.error as exc:
        raise DatasetConfigError(f"datasets.{dataset}.{key}: invalid regex {spec[key]!r} ({exc})") from exc
    if group not in pattern.groupindex:
        raise DatasetConfigError(f"datasets.{dataset}.{key}: regex {spec[key]!r} has no group named '{group}'")
    return pattern


def _glob(pattern: str) -> list[Path]:
    """Files (or folders, for DICOM series) matching a glob relative to the working directory."""
    return sorted(Path(p) for p in glob.glob(pattern, recursive=True))


def discover_cases(dataset: str, spec: dict) -> tuple[list[CaseFiles], list[QuarantineRow]]:
    """Pair the dataset's image and label files by case id.

    The case id is the ``case`` group of ``spec['case_id']`` searched in the file name (default:
    the name without its extension, see :func:`base_name`); the patient id is the ``patient`` group
    of ``spec['patient_id']`` searched in the image file name (default: the case id). Returns the
    good cases sorted by case id and one quarantine row per refused case or file.
    """
    case_re = _compile(spec, "case_id", "case", dataset)
    patient_re = _compile(spec, "patient_id", "patient", dataset)
    rows: list[QuarantineRow] = []

    def grouped(paths: list[Path], role: str) -> dict[str, list[Path]]:
        by_id: dict[str, list[Path]] = defaultdict(list)
        for path in paths:
            if case_re is None:
                by_id[base_name(path)].append(path)
                continue
            match = case_re.search(path.name)
            if match and match.group("case"):
                by_id[match.group("case")].append(path)
                continue
            problem = f"{path}: file name does not match the case_id regex {case_re.pattern!r}"
            rows.append(QuarantineRow(dataset, "", str(path) if role == "image" else "",
                                      str(path) if role == "label" else "", problem))
        return by_id

    images = grouped(_glob(spec["images"]), "image")
    labels = grouped(_glob(spec["labels"]), "label")
    cases: list[CaseFiles] = []
    for case_id in sorted(set(images) | set(labels)):
        image_paths, label_paths = images.get(case_id, []), labels.get(case_id, [])
        image_text = ";".join(map(str, image_paths))
        label_text = ";".join(map(str, label_paths))

        def refuse(problem: str, case_id=case_id, image_text=image_text, label_text=label_text) -> None:
            rows.append(QuarantineRow(dataset, case_id, image_text, label_text, problem))

        if len(image_paths) > 1:
            refuse(f"duplicate case id {case_id!r}: {len(image_paths)} image files "
                   f"({', '.join(map(str, image_paths))})")
        elif len(label_paths) > 1:
            refuse(f"duplicate case id {case_id!r}: {len(label_paths)} label files "
                   f"({', '.join(map(str, label_paths))})")
        elif not label_paths:
            refuse(f"{image_text}: image without label (no file of the labels glob has case id {case_id!r})")
        elif not image_paths:
            refuse(f"{label_text}: label without image (no file of the images glob has case id {case_id!r})")
        else:
            image, label = image_paths[0], label_paths[0]
            patient_id = case_id
            if patient_re is not None:
                match = patient_re.search(image.name)
                if not (match and match.group("patient")):
                    refuse(f"{image}: file name does not match the patient_id regex {patient_re.pattern!r}")
                    continue
                patient_id = match.group("patient")
            cases.append(CaseFiles(case_id, patient_id, image, label))
    return cases, rows

"""Find a dataset's cases: glob image and label files, derive case and patient ids, pair them.

Pairing problems (an image without label, a label without image, two files claiming one case id,
a file name the configured regex does not match, a case id that cannot name a zarr group, the
wrong number of label files, slices missing from a stack) are decided here, before any pixel is
read, and returned as quarantine rows; only cleanly paired cases go on to be read.

Ids come from the file name or, with ``ids_from: relpath``, from the path relative to the glob's
root (the folder part before the first wildcard), because many datasets name every case's files
alike (``case_00000/imaging.nii.gz``). Globs are expanded here, not by :mod:`glob`: a recursive
``**`` never walks a directory twice (a symlink ``loopdir -> ..`` would otherwise repeat the tree
until the path is too long), and a file reached through two paths counts once.
"""

from __future__ import annotations

import fnmatch
import glob as _glob
import logging
import os
import re
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath

from medpipe.errors import MedpipeError
from medpipe.io.quarantine import QuarantineRow
from medpipe.io.readers import base_name

log = logging.getLogger("medpipe.ingest")

MERGE_RULES = ("single", "union", "class_per_file", "instance_per_file")
MAX_ID_BYTES = 255  # one file-system name (a case is a folder of the store)
_CONTROL = re.compile(r"[\x00-\x1f\x7f]")


class DatasetConfigError(MedpipeError, ValueError):
    """The dataset entry of the config cannot be used (e.g. a regex without its named group)."""


@dataclass(frozen=True)
class CaseFiles:
    """The files of one case: ``images`` holds one file (or DICOM folder) or the slices of a stack
    in slice order; ``labels`` one file, the files of a multi-file label in sorted path order, or
    the label slices of a stack. ``extra`` carries what a named layout needs later."""

    case_id: str
    patient_id: str
    images: tuple[Path, ...]
    labels: tuple[Path, ...]
    extra: dict = field(default_factory=dict, compare=False, hash=False)

    @property
    def image(self) -> Path:
        return self.images[0]

    @property
    def label(self) -> Path:
        return self.labels[0]

    @property
    def image_text(self) -> str:
        return ";".join(map(str, self.images))

    @property
    def label_text(self) -> str:
        return ";".join(map(str, self.labels))


# ----------------------------------------------------------------------------------- the spec


def label_spec(spec: dict) -> dict:
    """``labels`` as a mapping with every default filled in (a plain glob is ``merge: single``)."""
    labels = spec.get("labels")
    labels = {"glob": labels} if isinstance(labels, str) else dict(labels or {})
    labels.setdefault("merge", "single")
    labels.setdefault("value", 1)
    labels.setdefault("format", "image")
    labels.setdefault("class_name", None)
    labels.setdefault("files_per_case", None)
    return labels


def compile_regex(spec: dict, key: str, groups: tuple[str, ...], dataset: str, value=None) -> re.Pattern | None:
    value = spec.get(key) if value is None else value
    if value is None:
        return None
    try:
        pattern = re.compile(value)
    except re.error as exc:
        raise DatasetConfigError(f"datasets.{dataset}.{key}: invalid regex {value!r} ({exc})") from exc
    for group in groups:
        if group not in pattern.groupindex:
            raise DatasetConfigError(f"datasets.{dataset}.{key}: regex {value!r} has no group named '{group}'")
    return pattern


@dataclass(frozen=True)
class IdRules:
    """How a file's id text becomes a case id, a patient id and (for stacks) a slice number."""

    dataset: str
    case_re: re.Pattern | None
    case_format: str | None
    patient_re: re.Pattern | None
    include_re: re.Pattern | None
    relpath: bool
    stack: bool

    @classmethod
    def from_spec(cls, dataset: str, spec: dict) -> IdRules:
        case_format = spec.get("case_format")
        stack = bool(spec.get("stack"))
        case_re = compile_regex(spec, "case_id", () if case_format else ("case",), dataset)
        relpath = spec.get("ids_from", "name") == "relpath"
        if relpath and case_re is None:
            raise DatasetConfigError(f"datasets.{dataset}: ids_from: relpath needs a case_id regex")
        if case_format is not None:
            if case_re is None:
                raise DatasetConfigError(f"datasets.{dataset}.case_format: needs a case_id regex with named groups")
            names = _format_fields(case_format, dataset)
            missing = sorted(names - set(case_re.groupindex))
            if missing:
                raise DatasetConfigError(f"datasets.{dataset}.case_format: {case_format!r} names groups {missing} "
                                         f"that the case_id regex does not have")
        if stack and (case_re is None or "slice" not in case_re.groupindex):
            raise DatasetConfigError(f"datasets.{dataset}.stack: the case_id regex needs a group named 'slice'")
        return cls(dataset, case_re, case_format, compile_regex(spec, "patient_id", ("patient",), dataset),
                   compile_regex(spec, "include", (), dataset), relpath, stack)

    def text(self, path: Path, root: Path) -> str:
        """What the regexes are searched in: the name, or the path relative to the glob root."""
        if not self.relpath:
            return path.name
        try:
            return path.relative_to(root).as_posix()
        except ValueError:  # pragma: no cover - find() only returns paths under the root
            return path.as_posix()

    def case_of(self, path: Path, text: str) -> tuple[str, int | None]:
        """``(case id, slice number or None)``; raises ``ValueError`` with the problem."""
        if self.case_re is None:
            return base_name(path), None
        match = self.case_re.search(text)
        if match is None:
            raise ValueError(f"{path}: {'path' if self.relpath else 'file name'} {text!r} does not match the "
                             f"case_id regex {self.case_re.pattern!r}")
        groups = {k: (v or "") for k, v in match.groupdict().items()}
        case_id = self.case_format.format(**groups) if self.case_format else groups["case"]
        if not case_id:
            raise ValueError(f"{path}: the case_id regex {self.case_re.pattern!r} gives an empty case id")
        slice_number = None
        if self.stack:
            if not groups.get("slice", "").isdigit():
                raise ValueError(f"{path}: no slice number (group 'slice' of the case_id regex) in {text!r}")
            slice_number = int(groups["slice"])
        return case_id, slice_number

    def patient_of(self, path: Path, text: str, case_id: str) -> str:
        if self.patient_re is None:
            return case_id
        match = self.patient_re.search(text)
        if not (match and match.group("patient")):
            raise ValueError(f"{path}: {'path' if self.relpath else 'file name'} {text!r} does not match the "
                             f"patient_id regex {self.patient_re.pattern!r}")
        return match.group("patient")

    def included(self, text: str) -> bool:
        return self.include_re is None or self.include_re.search(text) is not None


def _format_fields(template: str, dataset: str) -> set[str]:
    import string

    try:
        fields = {name for _, name, _, _ in string.Formatter().parse(template) if name is not None}
    except ValueError as exc:
        raise DatasetConfigError(
            f"datasets.{dataset}.case_format: {template!r} is not a format string ({exc})") from exc
    if not fields or any(not name.isidentifier() for name in fields):
        raise DatasetConfigError(f"datasets.{dataset}.case_format: {template!r} must name groups like '{{case}}'")
    return fields


def case_id_problem(case_id: str) -> str | None:
    """Why ``case_id`` cannot name a case (a zarr group, a folder, a TSV field), or None.

    Refused: empty, ``.``/``..``, a path separator, a control character (tabs and newlines would
    also break the TSV tables), a leading ``__`` (reserved by zarr), ``zarr.json`` (the group's own
    metadata file) and names longer than one file-system name.
    """
    if case_id in ("", ".", ".."):
        return f"invalid case id {case_id!r}: empty or a relative folder name"
    if "/" in case_id or "\\" in case_id:
        return f"invalid case id {case_id!r}: contains a path separator"
    if _CONTROL.search(case_id):
        return f"invalid case id {case_id!r}: contains a control character"
    if case_id.startswith("__") or case_id == "zarr.json":
        return f"invalid case id {case_id!r}: reserved by zarr"
    if len(case_id.encode()) > MAX_ID_BYTES:
        return f"invalid case id {case_id[:40]!r}...: longer than {MAX_ID_BYTES} bytes"
    return None


# ----------------------------------------------------------------------------------------- glob


def glob_root(pattern: str) -> Path:
    """The folder part of a glob before its first wildcard component (``/d/x/*/a*.nii`` -> ``/d/x``);
    for a pattern without wildcards, its parent folder."""
    parts = PurePosixPath(pattern).parts
    fixed = []
    for part in parts:
        if _glob.has_magic(part):
            break
        fixed.append(part)
    if len(fixed) == len(parts):
        fixed = fixed[:-1]
    return Path(*fixed) if fixed else Path(".")


def _hidden(name: str) -> bool:
    return name.startswith(".")


def find(pattern: str) -> list[Path]:
    """Files and folders matching ``pattern`` (glob syntax, ``**`` = any number of folders).

    Like :func:`glob.glob` with ``recursive=True`` (hidden names only match a pattern part that
    starts with a dot), except that ``**`` enters each real folder once, and paths that resolve to
    one real path are reported once (the shortest, then the first in sorted order).
    """
    root = glob_root(pattern)
    parts = PurePosixPath(pattern).parts[len(root.parts) if str(root) != "." else 0:]
    if not any(_glob.has_magic(p) for p in parts):
        return [Path(pattern)] if os.path.lexists(pattern) else []
    found: list[str] = []
    entered: set[tuple[str, int]] = set()

    def subdirs(folder: str) -> list[os.DirEntry]:
        try:
            with os.scandir(folder) as entries:
                return sorted((e for e in entries if not _hidden(e.name) and e.is_dir()), key=lambda e: e.name)
        except OSError:
            return []

    def walk(folder: str, index: int) -> None:
        part, last = parts[index], index == len(parts) - 1
        if part == "**":
            key = (os.path.realpath(folder), index)
            if key in entered:
                return
            entered.add(key)
            if last:
                for entry in subdirs(folder):
                    found.append(entry.path)
                found.extend(p for p in _matching(folder, "*", want_dir=False))
            else:
                walk(folder, index + 1)
            for entry in subdirs(folder):
                walk(entry.path, index)
            return
        if _glob.has_magic(part):
            for path in _matching(folder, part, want_dir=not last):
                walk(path, index + 1) if not last else found.append(path)
            return
        path = os.path.join(folder, part)
        if last:
            if os.path.lexists(path):
                found.append(path)
        elif os.path.isdir(path):
            walk(path, index + 1)

    walk(str(root), 0)
    best: dict[str, str] = {}
    for path in found:
        real = os.path.realpath(path)
        if real not in best or (path.count(os.sep), path) < (best[real].count(os.sep), best[real]):
            best[real] = path
    return sorted(Path(p) for p in best.values())


def _matching(folder: str, part: str, want_dir: bool) -> list[str]:
    try:
        with os.scandir(folder) as entries:
            names = [(e.name, e.is_dir()) for e in entries]
    except OSError:
        return []
    pattern_hidden = _hidden(part)
    return [os.path.join(folder, name) for name, is_dir in sorted(names)
            if (pattern_hidden or not _hidden(name)) and fnmatch.fnmatchcase(name, part) and (is_dir or not want_dir)]


# ------------------------------------------------------------------------------------ discovery


def discover_cases(dataset: str, spec: dict) -> tuple[list[CaseFiles], list[QuarantineRow]]:
    """Pair the dataset's image and label files by case id (``layout: files``).

    Returns the good cases sorted by case id and one quarantine row per refused case or file.
    See ``docs/data-format.md`` for the keys (``ids_from``, ``case_id``, ``case_format``,
    ``patient_id``, ``include``, ``stack``, ``labels.merge``, ``labels.files_per_case``).
    """
    rules = IdRules.from_spec(dataset, spec)
    labels_spec = label_spec(spec)
    merge = labels_spec["merge"]
    if merge not in MERGE_RULES:
        raise DatasetConfigError(f"datasets.{dataset}.labels.merge: {merge!r} is not one of {MERGE_RULES}")
    if rules.stack and merge != "single":
        raise DatasetConfigError(f"datasets.{dataset}: stack: true needs one label file per slice (merge: single)")
    rows: list[QuarantineRow] = []
    skipped = 0

    def grouped(pattern: str, role: str) -> dict[str, list[tuple[Path, int | None, str]]]:
        nonlocal skipped
        root = glob_root(pattern)
        by_id: dict[str, list[tuple[Path, int | None, str]]] = defaultdict(list)
        for path in find(pattern):
            text = rules.text(path, root)
            if not rules.included(text):
                skipped += 1
                continue
            try:
                case_id, slice_number = rules.case_of(path, text)
            except ValueError as exc:
                rows.append(QuarantineRow(dataset, "", str(path) if role == "image" else "",
                                          str(path) if role == "label" else "", str(exc)))
                continue
            by_id[case_id].append((path, slice_number, text))
        return by_id

    images = grouped(spec["images"], "image")
    labels = grouped(labels_spec["glob"], "label")
    if skipped:
        log.info("%s: %d files left out by the include regex %r", dataset, skipped, spec.get("include"))
    cases: list[CaseFiles] = []
    for case_id in sorted(set(images) | set(labels)):
        image_entries, label_entries = images.get(case_id, []), labels.get(case_id, [])
        image_text = ";".join(str(p) for p, _, _ in image_entries)
        label_text = ";".join(str(p) for p, _, _ in label_entries)
        problem = case_id_problem(case_id) or _pairing_problem(case_id, image_entries, label_entries, image_text,
                                                               label_text, rules.stack, labels_spec)
        patient_id = None
        if problem is None:
            first = min(image_entries, key=lambda e: (e[1] or 0, str(e[0])))
            try:
                patient_id = rules.patient_of(first[0], first[2], case_id)
            except ValueError as exc:
                problem = str(exc)
        if problem is not None:
            rows.append(QuarantineRow(dataset, case_id, image_text, label_text, problem))
            continue
        if rules.stack:
            image_paths = tuple(p for p, _, _ in sorted(image_entries, key=lambda e: e[1]))
            label_paths = tuple(p for p, _, _ in sorted(label_entries, key=lambda e: e[1]))
        else:
            image_paths = (image_entries[0][0],)
            label_paths = tuple(sorted(p for p, _, _ in label_entries))
        cases.append(CaseFiles(case_id, patient_id, image_paths, label_paths))
    return cases, rows


def _pairing_problem(case_id, image_entries, label_entries, image_text, label_text, stack, labels_spec) -> str | None:
    if not label_entries:
        return f"{image_text}: image without label (no file of the labels glob has case id {case_id!r})"
    if not image_entries:
        return f"{label_text}: label without image (no file of the images glob has case id {case_id!r})"
    if stack:
        for role, entries in (("image", image_entries), ("label", label_entries)):
            numbers = [n for _, n, _ in entries]
            repeated = sorted({n for n in numbers if numbers.count(n) > 1})
            if repeated:
                return f"case {case_id!r}: several {role} files for slice(s) {repeated}"
        image_slices = {n for _, n, _ in image_entries}
        label_slices = {n for _, n, _ in label_entries}
        if image_slices != label_slices:
            return (f"case {case_id!r}: image and label slices differ: slices without label "
                    f"{sorted(image_slices - label_slices)}, without image {sorted(label_slices - image_slices)}")
        return None
    if len(image_entries) > 1:
        return (f"duplicate case id {case_id!r}: {len(image_entries)} image files "
                f"({', '.join(str(p) for p, _, _ in image_entries)})")
    if labels_spec["merge"] == "single" and len(label_entries) > 1:
        return (f"duplicate case id {case_id!r}: {len(label_entries)} label files "
                f"({', '.join(str(p) for p, _, _ in label_entries)})")
    expected = labels_spec.get("files_per_case")
    if expected is not None and len(label_entries) != int(expected):
        return (f"{image_text}: expected {expected} label files for case {case_id!r}, found "
                f"{len(label_entries)} ({label_text or 'none'})")
    return None

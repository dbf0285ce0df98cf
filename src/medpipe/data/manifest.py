"""The raw-file manifest of a dataset: what its ingest read, so that any change reruns it.

Snakemake reruns a job when an input is newer than its output or when a param changed. A
dataset's raw files are too many to be inputs one by one (a dry run would stat millions), and the
folders that hold them do not change when a file is edited in place, or when a file is added in a
subfolder of a ``**`` glob. So the ``ingest`` rule has a param ``raw``: the digest of the manifest
of the raw files, one line per file (path, size, mtime in ns). It changes exactly when a raw file
changed, was added or was removed, and then the ingest (and all that follows) reruns; nothing is
written, so a dry run stays a dry run.

What is listed: every file under the fixed folder of each of the dataset's globs (``raw/x`` for
``raw/x/**/*.png``), matched or not, so detached data files of MHD/NRRD headers and sidecars
count too; the results folder and hidden folders (``.snakemake``) are never listed.
``layout: sa_med2d``: the index file, the files beside it (zip parts) and the folders
``images/``, ``masks/`` themselves (adding or removing a file changes them; a mask edited in
place in an unpacked corpus is not seen: touch the index, or keep the corpus zipped).
Cost: one ``scandir`` per folder and one ``stat`` per file, about 3 s per 100,000 files on the
2-core CI machine, paid by the workflow's main process when it builds the DAG.
"""

from __future__ import annotations

import glob
import hashlib
import itertools
import os
from pathlib import Path, PurePosixPath


def glob_root(pattern: str) -> str:
    """The folder part of a glob before its first wildcard (``/data/x/*/img*.nii`` -> ``/data/x``)."""
    parts = PurePosixPath(pattern).parts
    fixed = list(itertools.takewhile(lambda part: not glob.has_magic(part), parts))
    if len(fixed) == len(parts):  # no wildcard: the file's folder
        fixed = fixed[:-1]
    return str(PurePosixPath(*fixed)) if fixed else "."


def _tree(folder: str, skip: str | None) -> tuple[str, ...]:
    """``path, size, mtime_ns`` of every file under ``folder`` (one scandir per folder, no glob
    matching: several times faster than expanding the dataset's globs), ``skip`` left out."""
    lines: list[str] = []

    def walk(path: str) -> None:
        try:
            entries = sorted(os.scandir(path), key=lambda e: e.name)
        except OSError:  # unreadable or vanished: what is missing changes the manifest anyway
            return
        for entry in entries:
            if entry.is_dir(follow_symlinks=False):  # hidden folders (.snakemake, .git) are not raw data
                if not entry.name.startswith(".") and (skip is None or os.path.abspath(entry.path) != skip):
                    walk(entry.path)
                continue
            try:
                info = entry.stat()
            except OSError:
                continue
            lines.append(f"{entry.path}\t{info.st_size}\t{info.st_mtime_ns}")

    walk(folder)
    return tuple(lines)


def _stat_line(path: str) -> str | None:
    try:
        info = os.stat(path)
    except OSError:
        return None
    return f"{path}\t{info.st_size}\t{info.st_mtime_ns}"


def _globs(spec: dict) -> list[str]:
    labels = spec.get("labels")
    label_glob = labels if isinstance(labels, str) else (labels or {}).get("glob")
    return [pattern for pattern in (spec.get("images"), label_glob) if pattern]


def manifest_lines(spec: dict, skip: str | os.PathLike | None = None) -> list[str]:
    """``path, size, mtime_ns`` of every raw file an ingest of ``spec`` may read (sorted, unique).

    Every file under each glob's fixed folder (matched or not: detached MHD/NRRD data files and
    sidecars are covered too); ``skip`` (the results folder) is never listed. ``layout: sa_med2d``:
    the index, the files beside it (zip parts), the files in ``root`` (``data.zip``) and its
    subfolders themselves.
    """
    skip = os.path.abspath(skip) if skip is not None else None
    if spec.get("layout") == "sa_med2d":
        index = Path(spec["index"]) if "index" in spec else Path(spec["root"]) / "SAMed2Dv1" / "SAMed2D_v1.json"
        paths = {str(index)}
        for folder in {index.parent, Path(spec.get("root", index.parent))}:  # data.zip sits in `root`
            if folder.is_dir():
                paths.update(entry.path for entry in os.scandir(folder))
        return sorted(filter(None, map(_stat_line, paths)))
    lines: set[str] = set()
    for root in {glob_root(pattern) for pattern in _globs(spec)}:
        lines.update(_tree(root, skip))
    return sorted(lines)


def manifest_text(spec: dict, skip: str | os.PathLike | None = None) -> str:
    return "path\tsize\tmtime_ns\n" + "".join(f"{line}\n" for line in manifest_lines(spec, skip))


def manifest_digest(spec: dict, skip: str | os.PathLike | None = None) -> str:
    """A short digest of the manifest: equal exactly when no raw file changed (a param of ``ingest``)."""
    return hashlib.sha256(manifest_text(spec, skip).encode()).hexdigest()[:16]

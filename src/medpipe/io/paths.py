"""Paths named *inside data files* stay inside their dataset's folder.

An index key, a mask path, a zip member name or a header's detached-data file name comes from a
file medpipe did not write. Resolved naively, ``../../etc/passwd`` or ``/home/x/secret.nii`` would
be read and ingested bit-exact. Every such name goes through :func:`member_name` (a string check,
for zip members and index entries) or :func:`inside` (a filesystem check that also follows
symlinks) and is refused by name when it escapes.
"""

from __future__ import annotations

import os
from pathlib import Path, PurePosixPath

from medpipe.errors import MedpipeError


class PathEscapeError(MedpipeError, ValueError):
    """A path taken from a data file points outside the dataset's folder."""


def _shown(name: str, limit: int = 120) -> str:
    return repr(name if len(name) <= limit else name[:limit] + "...")


def member_name(name: str, source: str | os.PathLike) -> str:
    """``name`` (a relative POSIX path from ``source``) normalised, or :class:`PathEscapeError` when
    it is absolute, has a drive, a backslash, a NUL, or a ``..`` component."""
    if not name or "\x00" in name or "\\" in name or name.startswith("/") or (len(name) > 1 and name[1] == ":"):
        raise PathEscapeError(f"{source}: path {_shown(name)} is not a relative path inside the dataset")
    parts = PurePosixPath(name).parts
    if ".." in parts:
        raise PathEscapeError(f"{source}: path {_shown(name)} leaves the dataset folder ('..')")
    return "/".join(part for part in parts if part != ".")


def inside(root: str | os.PathLike, name: str, source: str | os.PathLike) -> Path:
    """``root / name`` after :func:`member_name`, with symlinks resolved, refused when the real path
    is not under the real ``root`` (a symlink in ``masks/`` pointing elsewhere, say)."""
    relative = member_name(name, source)
    real_root = Path(root).resolve()
    path = (real_root / relative).resolve()
    if path != real_root and real_root not in path.parents:
        raise PathEscapeError(f"{source}: path {_shown(name)} resolves to {path}, outside {real_root}")
    return path

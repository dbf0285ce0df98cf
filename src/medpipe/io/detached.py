"""Detached data files of MetaImage (``.mhd``) and NRRD (``.nhdr``/``.nrrd``) headers.

A header may name its pixel data as another file (``ElementDataFile = x.raw``, ``data file: x.raw``).
That name comes from a file medpipe did not write: it must stay in the header's folder (or below;
an absolute path, ``..`` or a symlink out of it is refused by name, :mod:`medpipe.io.paths`), and
the data file is part of the case's recorded sha256, since a changed ``.raw`` changes the image.
Lists and patterns of data files (``LIST``, ``slice%03d.raw 1 10 1``) are refused as unsupported.
"""

from __future__ import annotations

import re
from pathlib import Path

from medpipe.errors import MedpipeError
from medpipe.io.paths import PathEscapeError, inside

HEADER_EXTENSIONS = (".mhd", ".nhdr", ".nrrd")
_MHD = re.compile(r"^\s*ElementDataFile\s*=\s*(.*?)\s*$")
_NRRD = re.compile(r"^\s*data ?file\s*:\s*(.*?)\s*$", re.IGNORECASE)
_HEADER_BYTES = 1 << 16  # a header is text at the start of the file; the pixel data may follow


class DetachedDataError(MedpipeError, ValueError):
    """A header names a data file outside its folder, or a list of data files."""


def _declared(path: Path) -> str | None:
    with open(path, "rb") as handle:
        head = handle.read(_HEADER_BYTES)
    pattern = _MHD if path.name.lower().endswith(".mhd") else _NRRD
    for raw in head.split(b"\n"):
        line = raw.decode("latin-1")
        if pattern is _NRRD and not line.strip():  # the blank line that ends an NRRD header
            return None
        match = pattern.match(line)
        if match:
            return match.group(1)
    return None


def detached_files(path: str | Path) -> list[Path]:
    """The data file a header names (resolved, inside the header's folder), or [] for none/other formats.

    Raises :class:`DetachedDataError` naming the header for a path outside its folder or a file list.
    """
    path = Path(path)
    if not path.name.lower().endswith(HEADER_EXTENSIONS) or not path.is_file():
        return []
    name = _declared(path)
    if name is None or name.upper() == "LOCAL":
        return []
    if name.upper().startswith("LIST") or len(name.split()) > 1:
        raise DetachedDataError(f"{path}: names a list of data files ({name[:80]!r}); only one data file is supported")
    try:
        return [inside(path.parent, name, path)]
    except PathEscapeError as exc:
        raise DetachedDataError(str(exc)) from exc

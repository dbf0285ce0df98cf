"""SHA-256 of source files, streamed in blocks so a multi-GB volume never sits in memory."""

from __future__ import annotations

import hashlib
from pathlib import Path

BLOCK_BYTES = 4 * 1024 * 1024


def _file_digest(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        while block := handle.read(BLOCK_BYTES):
            digest.update(block)
    return digest.hexdigest()


def sha256_of(path: str | Path) -> str:
    """Hex SHA-256 of a file; for a folder (a DICOM series) of its files in name order.

    A folder's digest is the SHA-256 of the lines ``<relative path>\\t<file sha256>\\n`` over all
    files below it sorted by relative path, so renaming, adding, removing or changing any slice
    changes the digest.
    """
    path = Path(path)
    if not path.is_dir():
        return _file_digest(path)
    digest = hashlib.sha256()
    for member in sorted(p for p in path.rglob("*") if p.is_file()):
        digest.update(f"{member.relative_to(path).as_posix()}\t{_file_digest(member)}\n".encode())
    return digest.hexdigest()

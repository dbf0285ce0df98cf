"""Writing outputs atomically and hashing files: the file utilities every stage uses.

Snakemake (and a user looking at ``results/``) must never see half a file: a killed job leaves
either the previous complete file or none. So every output is written to a temporary name in the
same folder and renamed into place (``os.replace`` is atomic within a filesystem); a failure removes
the temporary file. Checkpoints are written so that their bytes depend only on their content, so
two runs that reach bit-identical weights publish the same sha256.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from medpipe.errors import MedpipeError

BLOCK_BYTES = 4 * 1024 * 1024
#: columns that hold names and ids in the project's tables: always read as text, because pandas
#: would read a case, patient, dataset, model or class called ``NA``, ``null``, ``None`` or ``nan``
#: as a missing value (and ``007`` as the number 7)
TEXT_COLUMNS = frozenset({
    "dataset", "case", "case_id", "patient_id", "modality", "split", "model", "class", "class_name", "start",
    "masks", "projection", "result", "method", "backbone", "decoder_init", "setting", "setting_a", "setting_b",
    "library", "version", "status", "base", "model_type", "sha256", "key", "value", "image", "label", "problem",
})
#: compound extensions kept at the end of a temporary name (writers choose the format by extension)
_COMPOUND_EXTENSIONS = (".nii.gz", ".tar.gz")


def _extension(path: Path) -> str:
    name = path.name.lower()
    return next((ext for ext in _COMPOUND_EXTENSIONS if name.endswith(ext)), path.suffix)


def temporary_sibling(path: str | os.PathLike) -> Path:
    """``.<name>.<pid>.tmp<ext>`` beside ``path``: hidden, per process, same format extension."""
    path = Path(path)
    return path.with_name(f".{path.name}.{os.getpid()}.tmp{_extension(path)}")


@contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary path to write; on success it replaces ``path``, on failure it is removed.

    The parent folder is created. Use it for writers that take a file name (``savefig``,
    ``nibabel.save``, ``imageio.imwrite``); the ``write_*`` helpers below use it too.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = temporary_sibling(path)
    try:
        yield tmp
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()


def write_bytes(path: str | os.PathLike, data: bytes) -> Path:
    with atomic_path(path) as tmp:
        tmp.write_bytes(data)
    return Path(path)


def write_text(path: str | os.PathLike, text: str) -> Path:
    with atomic_path(path) as tmp:
        tmp.write_text(text)
    return Path(path)


def write_json(path: str | os.PathLike, data) -> Path:
    """Pretty, key-sorted JSON with a final newline (values JSON cannot hold are written as text)."""
    return write_text(path, json.dumps(data, indent=2, sort_keys=True, default=str) + "\n")


def write_tsv(frame, path: str | os.PathLike, **to_csv) -> Path:
    """A pandas frame as a tab-separated table without index; ``to_csv`` options pass through."""
    with atomic_path(path) as tmp:
        frame.to_csv(tmp, sep="\t", index=False, **to_csv)
    return Path(path)


def read_tsv(path: str | os.PathLike, text_columns=TEXT_COLUMNS):
    """Read a table written by :func:`write_tsv`: names and ids (``text_columns``) stay text.

    Every reader of the project's TSV tables goes through here (split tables through
    :func:`medpipe.splits.read_split_table`, which reads every column as text). In the other
    columns an empty cell (how pandas writes NaN) or ``nan`` is a missing value; in text columns
    nothing is, so a case named ``NA`` stays that case.
    """
    import pandas as pd

    header = pd.read_csv(path, sep="\t", nrows=0).columns
    text = [column for column in header if column in text_columns]
    missing = {column: ["", "nan", "NaN"] for column in header if column not in text_columns}
    return pd.read_csv(path, sep="\t", dtype={column: str for column in text}, keep_default_na=False,
                       na_values=missing)


def save_torch(obj, path: str | os.PathLike) -> Path:
    """``torch.save`` atomically and reproducibly.

    Saving to a file object (not a file name) makes torch name the records inside the zip
    ``archive/...`` instead of after the (temporary) file name, so equal content gives equal bytes.
    """
    import torch

    with atomic_path(path) as tmp, open(tmp, "wb") as handle:
        torch.save(obj, handle)
    return Path(path)


class TorchFileError(MedpipeError, ValueError):
    """A torch file is missing, truncated or corrupt, or holds more than weights; names the file."""


def _why_unreadable(exc: BaseException) -> str:
    """One line for what went wrong in ``torch.load`` (its own messages run to a screen of advice)."""
    text = str(exc)
    refused = re.search(r"WeightsUnpickler error:\s*([^\n]+)", text)
    if refused:
        return (f"refused: it holds more than tensors and plain values ({refused.group(1).strip()}); loading "
                "it would run code stored in the file")
    if isinstance(exc, PermissionError):
        return f"not readable ({exc.strerror})"
    detail = text.split(". ")[0].strip() or type(exc).__name__  # a cut zip: EINVAL, no central directory, EOF
    return f"truncated or corrupt ({detail})"


def load_torch(path: str | os.PathLike, *, map_location="cpu", numpy_scalars: bool = False):
    """Read a torch file with ``weights_only=True``: the one ``torch.load`` of the project.

    A checkpoint is a pickle; unpickled freely it can run any code it names. ``weights_only=True``
    is passed explicitly, which ``TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD=1`` cannot override (it only
    changes the default). ``numpy_scalars`` also admits numpy scalars and dtypes (nnU-Net's
    training log in its checkpoints), which rebuild values and never call anything else. Errors
    name the file and the problem in one line (:class:`TorchFileError`).
    """
    import torch

    path = Path(path)
    if not path.is_file():
        raise TorchFileError(f"{path}: file does not exist")
    allowed = []
    if numpy_scalars:
        import numpy as np

        core = getattr(np, "_core", None) or np.core  # numpy 2 / numpy 1
        allowed = [core.multiarray.scalar, np.dtype, *{type(np.dtype(code)) for code in "?bBhHiIlLqQefdgFDG"}]
    try:
        with torch.serialization.safe_globals(allowed):
            loaded = torch.load(path, map_location=map_location, weights_only=True)
    except Exception as exc:
        raise TorchFileError(f"{path}: cannot be read as a weights-only torch file: {_why_unreadable(exc)}") from exc
    bad = _non_finite(loaded)
    if bad is not None:
        raise TorchFileError(f"{path}: refused: {bad[1]} NaN or inf values in {bad[0]!r} (weights of a diverged "
                             "run?); every number of a model must be finite")
    return loaded


def _non_finite(obj, key: str = "") -> tuple[str, int] | None:
    """The first floating tensor in a loaded torch file holding NaN or inf: ``(key, count)``."""
    import torch

    if isinstance(obj, torch.Tensor):
        if (obj.is_floating_point() or obj.is_complex()) and not bool(torch.isfinite(obj).all()):
            return key or "(the tensor)", int((~torch.isfinite(obj)).sum())
        return None
    items = obj.items() if isinstance(obj, dict) else enumerate(obj) if isinstance(obj, (list, tuple)) else ()
    for name, value in items:
        found = _non_finite(value, f"{key}.{name}" if key else str(name))
        if found is not None:
            return found
    return None


def _file_digest(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        while block := handle.read(BLOCK_BYTES):
            digest.update(block)
    return digest.hexdigest()


def sha256_of(path: str | os.PathLike) -> str:
    """Hex SHA-256 of a file, streamed in blocks; for a folder (a DICOM series) of its files.

    A folder's digest is the SHA-256 of the lines ``<relative path>\\t<file sha256>\\n`` over all
    files below it sorted by relative path, so renaming, adding, removing or changing any file
    changes the digest.
    """
    path = Path(path)
    if not path.is_dir():
        return _file_digest(path)
    digest = hashlib.sha256()
    for member in sorted(p for p in path.rglob("*") if p.is_file()):
        digest.update(f"{member.relative_to(path).as_posix()}\t{_file_digest(member)}\n".encode())
    return digest.hexdigest()


def sha256_of_files(paths, root: str | os.PathLike) -> str:
    """Hex SHA-256 of several files that form one source (the slices of a stack, the mask files of
    one label): of the lines ``<path relative to root>\\t<sha256_of(path)>\\n`` in the given order."""
    digest = hashlib.sha256()
    for path in paths:
        relative = os.path.relpath(path, root).replace(os.sep, "/")
        digest.update(f"{relative}\t{sha256_of(path)}\n".encode())
    return digest.hexdigest()

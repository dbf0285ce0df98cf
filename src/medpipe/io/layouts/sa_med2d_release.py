"""The SA-Med2D-20M release as distributed: the joined ``data.zip`` or the unpacked ``SAMed2Dv1/``.

A dataset entry names a ``root`` folder holding ``data.zip`` (the joined archive, read in place:
nothing is extracted) and/or the unpacked ``SAMed2Dv1/`` folder; ``data.zip`` wins when both are
there (an unpacked copy may be incomplete: unpacking 19.5 M files fails on inode quotas). The older
``index`` key (the unpacked ``SAMed2D_v1.json``) still reads the folder beside it.

Why the zip is read this way: ``zipfile.ZipFile`` reads the whole central directory when it opens
(one ``ZipInfo`` per member: several GB and minutes at 19.5 M members, docs/benchmarks.md). Only the
planning step opens it so; it records, for each image and mask of a part, where the member's data
is (:class:`Member`), and a part job reads exactly those bytes from the archive (local header
checked against the name, deflate or stored, CRC-32 verified) without the member table.

Every name taken from the index (image keys, mask paths) goes through
:func:`medpipe.io.paths.member_name` (zip) or :func:`medpipe.io.paths.inside` (folder, symlinks
resolved): a name that leaves the release folder is refused by name.
"""

from __future__ import annotations

import io
import os
import struct
import zipfile
import zlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from medpipe.io.assemble import CaseProblem
from medpipe.io.cases import DatasetConfigError
from medpipe.io.paths import PathEscapeError, inside, member_name

BASE = "SAMed2Dv1"
INDEX = "SAMed2D_v1.json"
ZIP_NAME = "data.zip"
_LOCAL = struct.Struct("<4s5H3L2H")  # local file header (30 bytes)
PLAIN_MODES = ("L", "RGB", "1")  # PNG modes decoded by Pillow directly (decode_png)


@dataclass(frozen=True)
class Source:
    """Where a release is: ``kind`` ``zip`` (``path`` = the archive, ``base`` = the folder of the
    index inside it, e.g. ``SAMed2Dv1``) or ``folder`` (``path`` = the folder holding the index)."""

    kind: str
    path: str
    base: str = ""

    @property
    def index_name(self) -> str:
        """The index as named in messages."""
        return f"{self.path}:{self.base}/{INDEX}" if self.kind == "zip" else str(Path(self.path) / INDEX)


def find_source(spec: dict, dataset: str) -> Source:
    """The release an entry names (module docstring), or a configuration error saying what is missing."""
    if spec.get("root"):
        root = Path(spec["root"])
        if (root / ZIP_NAME).is_file():
            return Source("zip", str(root / ZIP_NAME))  # base: found by ZipIndex (one read of the member table)
        if (root / BASE / INDEX).is_file():
            return Source("folder", str(root / BASE))
        raise DatasetConfigError(f"datasets.{dataset}.root: neither {root / ZIP_NAME} nor {root / BASE / INDEX} "
                                 f"exists (relative to {Path.cwd()})")
    index = Path(spec.get("index") or "")
    if not spec.get("index") or not index.is_file():
        raise DatasetConfigError(f"datasets.{dataset}.index: {index} is not a file (relative to {Path.cwd()})")
    return Source("folder", str(index.parent))


def _zip_base(archive: zipfile.ZipFile, path: str, dataset: str) -> str:
    """The folder of ``SAMed2D_v1.json`` inside the archive (``SAMed2Dv1`` in the release)."""
    if f"{BASE}/{INDEX}" in archive.NameToInfo:
        return BASE
    names = [n for n in archive.namelist() if n == INDEX or n.endswith("/" + INDEX)]
    if not names:
        raise DatasetConfigError(f"datasets.{dataset}.root: {path} holds no {INDEX}")
    name = sorted(names)[0]
    return member_name(name.rsplit("/", 1)[0], path) if "/" in name else ""


@dataclass(frozen=True)
class Member:
    """Where a zip member's data is: the offset of its local header and its sizes, method, CRC."""

    offset: int
    compressed: int
    size: int
    method: int
    crc: int

    def to_list(self) -> list[int]:
        return [self.offset, self.compressed, self.size, self.method, self.crc]


class ZipIndex:
    """The planning step's view of the archive: the member table (read once) and the index stream."""

    def __init__(self, source: Source, dataset: str):
        try:
            self.archive = zipfile.ZipFile(source.path)
        except (OSError, zipfile.BadZipFile) as exc:
            raise DatasetConfigError(f"datasets.{dataset}.root: {source.path} is not a readable zip ({exc})") from exc
        self.source = Source("zip", source.path, _zip_base(self.archive, source.path, dataset))

    def close(self) -> None:
        self.archive.close()

    def index_handle(self):
        return io.TextIOWrapper(self.archive.open(self._full(INDEX)), encoding="utf-8")

    def _full(self, name: str) -> str:
        return f"{self.source.base}/{name}" if self.source.base else name

    def member(self, name: str) -> Member | None:
        """Where ``name`` (relative to the index's folder, already checked) is; None when absent."""
        try:
            info = self.archive.getinfo(self._full(name))
        except KeyError:
            return None
        return Member(info.header_offset, info.compress_size, info.file_size, info.compress_type, info.CRC)


class Reader:
    """Reads the bytes of index names in a part job: from the archive at the recorded places, or
    from the folder (names checked with :func:`inside`)."""

    def __init__(self, source: Source):
        self.source = source
        self._handle = open(source.path, "rb") if source.kind == "zip" else None

    def close(self) -> None:
        if self._handle is not None:
            self._handle.close()

    def where(self, name: str) -> str:
        """``name`` as shown in messages and in the quarantine table."""
        return f"{self.source.path}:{self.source.base}/{name}" if self.source.kind == "zip" else \
            os.path.join(self.source.path, name)

    def read(self, name: str, member: list[int] | None, what: str = "file") -> bytes:
        """The bytes of ``name``; :class:`CaseProblem` naming it when it is absent or corrupt,
        :class:`~medpipe.io.paths.PathEscapeError` when it leaves the release folder."""
        if self.source.kind == "folder":
            path = inside(self.source.path, name, Path(self.source.path) / INDEX)
            try:
                return path.read_bytes()
            except FileNotFoundError:
                raise CaseProblem(f"{self.where(name)}: {what} listed in the index does not exist") from None
            except OSError as exc:
                raise CaseProblem(f"{self.where(name)}: not readable ({exc})") from exc
        if member is None:
            raise CaseProblem(f"{self.where(name)}: {what} listed in the index does not exist in the archive")
        return self._read_member(name, Member(*member))

    def _read_member(self, name: str, member: Member) -> bytes:
        where = self.where(name)
        self._handle.seek(member.offset)
        header = self._handle.read(_LOCAL.size)
        if len(header) != _LOCAL.size or header[:4] != b"PK\x03\x04":
            raise CaseProblem(f"{where}: no local file header at offset {member.offset} (corrupt archive)")
        fields = _LOCAL.unpack(header)
        flags, name_length, extra_length = fields[2], fields[9], fields[10]
        stored_name = self._handle.read(name_length).decode("utf-8" if flags & 0x800 else "cp437")
        if stored_name != f"{self.source.base}/{name}".lstrip("/"):
            raise CaseProblem(f"{where}: the archive holds {stored_name!r} at this offset (corrupt archive)")
        if flags & 0x1:
            raise CaseProblem(f"{where}: encrypted member")
        self._handle.seek(extra_length, os.SEEK_CUR)
        data = self._handle.read(member.compressed)
        if member.method == zipfile.ZIP_DEFLATED:
            try:
                data = zlib.decompress(data, -15)
            except zlib.error as exc:
                raise CaseProblem(f"{where}: corrupt deflate data ({exc})") from exc
        elif member.method != zipfile.ZIP_STORED:
            raise CaseProblem(f"{where}: compression method {member.method} (only stored and deflate are read)")
        if len(data) != member.size or zlib.crc32(data) != member.crc:
            raise CaseProblem(f"{where}: CRC or size mismatch (truncated or corrupt archive)")
        return data


def check_name(name: str, index_name: str) -> str:
    """An index name normalised, or :class:`PathEscapeError` (absolute, ``..``, ...)."""
    return member_name(name, index_name)


def decode_png(data: bytes, where: str) -> np.ndarray:
    """A PNG's pixels exactly as ingest reads PNG files (``medpipe.io.readers``: imageio, a
    constant alpha dropped, 1-bit as uint8), so the zip, the folder and the per-case path agree."""
    import imageio.v3 as iio
    from PIL import Image

    from medpipe.io.readers import _drop_constant_alpha, _no_bool

    try:
        with Image.open(io.BytesIO(data)) as image:
            # grey, RGB and 1-bit: the pixels as imageio's pillow plugin gives them, without its ~1 ms of
            # plugin lookup per file (a third of the ingest time); other modes go through imageio itself
            if image.format == "PNG" and image.mode in PLAIN_MODES:
                array = np.asarray(image)
            else:
                array = np.asarray(iio.imread(io.BytesIO(data), extension=".png"))
    except Exception as exc:
        raise CaseProblem(f"{where}: not a readable image ({type(exc).__name__}: {exc})") from exc
    array = _no_bool(_drop_constant_alpha(array))
    if array.ndim not in (2, 3):
        raise CaseProblem(f"{where}: image with shape {array.shape} is neither grey (Y, X) nor colour (Y, X, C)")
    return array


__all__ = ["BASE", "INDEX", "Member", "PathEscapeError", "Reader", "Source", "ZipIndex", "check_name",
           "decode_png", "find_source"]

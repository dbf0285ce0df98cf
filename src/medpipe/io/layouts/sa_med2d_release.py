"""The SA-Med2D-20M release as distributed: the joined ``data.zip`` or the unpacked ``SAMed2Dv1/``.

A dataset entry names a ``root`` folder holding ``data.zip`` (the joined archive, read in place:
nothing is extracted) and/or the unpacked ``SAMed2Dv1/`` folder; ``data.zip`` wins when both are
there (an unpacked copy may be incomplete: unpacking 19.5 M files fails on inode quotas). The older
``index`` key (the unpacked ``SAMed2D_v1.json``) still reads the folder beside it.

Why the zip is read this way: ``zipfile.ZipFile`` reads the whole central directory into one
``ZipInfo`` per member when it opens (11 GiB and minutes at 19.5 M members, docs/benchmarks.md).
The planning step instead streams the central directory once (:func:`iter_members`, one block in
memory) and writes where each image's and mask's bytes are (:class:`Member`) into the member file
of the image's part; a part job loads only its own file and reads exactly those bytes from the
archive (local header checked against the name, deflate or stored, CRC-32 verified). The index
itself is streamed out of the archive (:func:`open_member_text`), never extracted.

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


_EOCD = struct.Struct("<4s4H2LH")          # end of central directory record (22 bytes)
_EOCD64_LOCATOR = struct.Struct("<4sLQL")  # zip64 end of central directory locator (20 bytes)
_EOCD64 = struct.Struct("<4sQ2H2L4Q")      # zip64 end of central directory record (56 bytes)
_CENTRAL = struct.Struct("<4s4B4HL2L5H2L")  # central directory file header (46 bytes)
_MAX32, _MAX16 = 0xFFFFFFFF, 0xFFFF


def _central_directory(handle, where: str) -> tuple[int, int, int]:
    """``(offset, size, entries)`` of the central directory (zip64 aware)."""
    handle.seek(0, os.SEEK_END)
    length = handle.tell()
    tail_start = max(0, length - (_EOCD.size + 65535))
    handle.seek(tail_start)
    tail = handle.read()
    at = tail.rfind(b"PK\x05\x06")
    if at < 0:
        raise CaseProblem(f"{where}: not a zip file (no end of central directory record)")
    _, disk, _, _, entries, size, offset, _ = _EOCD.unpack_from(tail, at)
    if disk != 0:
        raise CaseProblem(f"{where}: a split archive; join it first (zip ... -s=0 --out data.zip)")
    if entries == _MAX16 or size == _MAX32 or offset == _MAX32:
        locator = tail_start + at - _EOCD64_LOCATOR.size
        handle.seek(locator)
        signature, _, record, _ = _EOCD64_LOCATOR.unpack(handle.read(_EOCD64_LOCATOR.size))
        if signature != b"PK\x06\x07":
            raise CaseProblem(f"{where}: zip64 end of central directory locator missing")
        handle.seek(record)
        fields = _EOCD64.unpack(handle.read(_EOCD64.size))
        if fields[0] != b"PK\x06\x06":
            raise CaseProblem(f"{where}: zip64 end of central directory record missing")
        entries, size, offset = fields[7], fields[8], fields[9]
    return offset, size, entries


def zip64_extra(extra: bytes, size: int, compressed: int, offset: int) -> tuple[int, int, int]:
    """``size, compressed, offset`` with the values a zip64 extra field (id 1) holds for those stored
    as 0xFFFFFFFF, in that order (APPNOTE 4.5.3)."""
    at = 0
    while at + 4 <= len(extra):
        kind, length = struct.unpack_from("<2H", extra, at)
        if kind == 1:
            values = list(struct.unpack_from(f"<{length // 8}Q", extra, at + 4))
            if size == _MAX32:
                size = values.pop(0)
            if compressed == _MAX32:
                compressed = values.pop(0)
            if offset == _MAX32:
                offset = values.pop(0)
            break
        at += 4 + length
    return size, compressed, offset


def iter_members(path: str | os.PathLike, block: int = 1 << 22):
    """``(name, (offset, compressed, size, method, crc))`` of every member of a zip (the fields of a
    :class:`Member`; a tuple, for speed), read from its central directory as a stream:
    memory is one block, whatever the number of members (``zipfile.ZipFile`` holds a ``ZipInfo``
    per member: ~600 bytes each, 11 GiB at 19.5 M members; docs/benchmarks.md)."""
    with open(path, "rb") as handle:
        offset, size, _ = _central_directory(handle, str(path))
        handle.seek(offset)
        remaining, buffer, at = size, b"", 0
        while True:
            if len(buffer) - at < _CENTRAL.size + 3 * 65535 and remaining:
                chunk = handle.read(min(block, remaining))
                remaining -= len(chunk)
                buffer, at = buffer[at:] + chunk, 0
            if len(buffer) - at < _CENTRAL.size:
                return
            fields = _CENTRAL.unpack_from(buffer, at)
            if fields[0] != b"PK\x01\x02":
                raise CaseProblem(f"{path}: corrupt central directory (bad signature at member record)")
            flags, method, crc, compressed, size_, name_len, extra_len, comment_len = (
                fields[5], fields[6], fields[9], fields[10], fields[11], fields[12], fields[13], fields[14])
            header = fields[18]
            start = at + _CENTRAL.size
            raw_name = buffer[start:start + name_len]
            name = raw_name.decode("utf-8" if flags & 0x800 else "cp437")
            extra = buffer[start + name_len:start + name_len + extra_len]
            if _MAX32 in (size_, compressed, header):
                size_, compressed, header = zip64_extra(extra, size_, compressed, header)
            at = start + name_len + extra_len + comment_len
            yield name, (header, compressed, size_, method, crc)


class _MemberStream(io.RawIOBase):
    """The uncompressed bytes of one zip member as a stream (for the 1 GB index: never held whole)."""

    def __init__(self, path: str, name: str, member: Member, block: int = 1 << 20):
        self._handle = open(path, "rb")
        self._where = f"{path}:{name}"
        self._data_start(name, member)
        self._left = member.compressed
        self._inflate = zlib.decompressobj(-15) if member.method == zipfile.ZIP_DEFLATED else None
        if member.method not in (zipfile.ZIP_STORED, zipfile.ZIP_DEFLATED):
            raise CaseProblem(f"{self._where}: compression method {member.method} (only stored and deflate)")
        self._pending, self._at, self._block, self._member, self._crc = memoryview(b""), 0, block, member, 0

    def _data_start(self, name: str, member: Member) -> None:
        self._handle.seek(member.offset)
        fields = _LOCAL.unpack(self._handle.read(_LOCAL.size))
        if fields[0] != b"PK\x03\x04":
            raise CaseProblem(f"{self._where}: no local file header at offset {member.offset}")
        self._handle.seek(fields[9] + fields[10], os.SEEK_CUR)

    def readable(self) -> bool:
        return True

    def readinto(self, target) -> int:
        while self._at >= len(self._pending):
            if self._left:
                chunk = self._handle.read(min(self._block, self._left))
                if not chunk:
                    raise CaseProblem(f"{self._where}: truncated archive")
                self._left -= len(chunk)
                data = self._inflate.decompress(chunk) if self._inflate is not None else chunk
            elif self._inflate is not None:
                data, self._inflate = self._inflate.flush(), None
            else:
                if self._crc != self._member.crc:
                    raise CaseProblem(f"{self._where}: CRC mismatch (truncated or corrupt archive)")
                return 0
            self._crc = zlib.crc32(data, self._crc)
            self._pending, self._at = memoryview(data), 0
        n = min(len(target), len(self._pending) - self._at)
        target[:n] = self._pending[self._at:self._at + n]
        self._at += n
        return n

    def close(self) -> None:
        self._handle.close()
        super().close()


def open_member_text(path: str, name: str, member: Member) -> io.TextIOWrapper:
    return io.TextIOWrapper(io.BufferedReader(_MemberStream(path, name, member)), encoding="utf-8")


def owner_of(name: str) -> str | None:
    """The image (case id) a release member belongs to, from its name alone: ``.../images/<id>.png``
    or ``.../masks/<id>--<class>_<instance>.png``; None for other members."""
    folder, _, base = name.rpartition("/")
    if folder == "images" or folder.endswith("/images"):
        return base[:-4] if base.lower().endswith(".png") else base.rsplit(".", 1)[0]
    if folder == "masks" or folder.endswith("/masks"):
        return base.rsplit("--", 1)[0] if "--" in base else None
    return None


class Reader:
    """Reads the bytes of index names in a part job: from the archive at the recorded places, or
    from the folder (names checked with :func:`inside`)."""

    def __init__(self, source: Source, members: dict[str, list[int]] | None = None):
        self.source = source
        self._members = members or {}
        self._handle = open(source.path, "rb") if source.kind == "zip" else None

    def close(self) -> None:
        if self._handle is not None:
            self._handle.close()

    def where(self, name: str) -> str:
        """``name`` as shown in messages and in the quarantine table."""
        return f"{self.source.path}:{self.source.base}/{name}" if self.source.kind == "zip" else \
            os.path.join(self.source.path, name)

    def read(self, name: str, what: str = "file") -> bytes:
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
        member = self._members.get(f"{self.source.base}/{name}".lstrip("/"))
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


__all__ = ["BASE", "INDEX", "Member", "PathEscapeError", "Reader", "Source", "check_name", "decode_png",
           "find_source", "iter_members", "open_member_text", "owner_of"]

"""The medpipe dataset store (zarr v3): the interface between ingest and every later stage.

The layout is documented in ``docs/data-format.md``. ``DatasetStore`` reads it and ``StoreWriter``
writes it; every stage (and every test fixture) goes through these two, so the on-disk layout can
evolve in one place.
"""

from __future__ import annotations

import logging
import os
import re
import shutil
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import zarr

from medpipe.errors import MedpipeError

log = logging.getLogger(__name__)

FORMAT_VERSION = 2  # 2: case ids in the `index` arrays (1: a JSON list in attrs.case_ids; still read)
PACKED_VERSION = 3  # the packed layout (many 2D cases in sharded flat arrays; medpipe.data.packed writes it)
READABLE_VERSIONS = (1, 2, PACKED_VERSION)
COMPLETE_FLAG = "complete"
INDEX_ROWS = 65536  # rows per chunk of the index arrays


class StoreError(MedpipeError, RuntimeError):
    """A store is missing, incomplete or has an unexpected layout."""


def chunk_compressors() -> list:
    """The compressors of every array medpipe writes (stores, embedding caches): zarr's default zstd,
    then a crc32c checksum of each compressed chunk, which zarr checks on every read, so one flipped
    bit is an error instead of a wrong number (the one place this choice is made)."""
    from zarr.codecs import Crc32cCodec, ZstdCodec

    return [ZstdCodec(level=0, checksum=False), Crc32cCodec()]


class CheckedArray:
    """A store's zarr array whose reads name the store and the case when a chunk fails its checksum."""

    def __init__(self, array, store: Path, case_id: str, kind: str):
        self._array, self._store, self._case_id, self._kind = array, store, case_id, kind

    def __getattr__(self, name):
        return getattr(self._array, name)

    def __len__(self) -> int:
        return len(self._array)

    def __getitem__(self, key):
        try:
            return self._array[key]
        except ValueError as exc:
            if "checksum" not in str(exc):
                raise
            raise StoreError(f"{self._store}: case {self._case_id!r}: a chunk of its {self._kind} fails "
                             "its checksum (the store is damaged; ingest the dataset again)") from exc


def array_codecs() -> dict:
    """The codec arguments of every array medpipe creates in a store (both layouts, the object
    table, the index): :func:`chunk_compressors`."""
    return {"compressors": chunk_compressors()}


OBJECTS_GROUP = "objects"


def write_object_table(group: zarr.Group, table) -> None:
    """The object table as one 1D (``bbox``: (n, 4)) array per column under ``group/objects``."""
    objects = group.create_group(OBJECTS_GROUP)
    for name, values in table.to_arrays().items():
        rows = max(1, min(INDEX_ROWS * 4, len(values)))
        objects.create_array(name, data=values, chunks=(rows,) + values.shape[1:], **array_codecs())


def read_object_table(group: zarr.Group):
    from medpipe.data.objects import IMAGE_COLUMNS, OBJECT_COLUMNS, ObjectTable

    objects = group[OBJECTS_GROUP]
    return ObjectTable.from_arrays({name: objects[name][...] for name in (*IMAGE_COLUMNS, *OBJECT_COLUMNS)})


@dataclass(frozen=True)
class CaseInfo:
    """Per-case metadata as stored in the case group's attributes."""

    case_id: str
    patient_id: str
    modality: str
    spacing: tuple[float, ...]
    attrs: dict


class DatasetStore:
    """A read-only view on one ingested dataset.

    Images are (Y, X), (Y, X, C) for RGB, or (Z, Y, X) for volumes; labels share the spatial
    shape and hold semantic class ids (0 = background), or object ids when ``label_kind`` is
    ``instances``. Opening refuses stores whose ingest did not finish, so a killed ingest can
    never be mistaken for a complete dataset. The case list lives in the ``index`` arrays, read
    only when asked for: a corpus of millions of images opens as fast as a small dataset.
    """

    def __init__(self, path: str | Path):
        self.path = Path(path)
        if not self.path.exists():
            raise StoreError(f"{self.path}: dataset store does not exist")
        try:
            self._root = zarr.open_group(str(self.path), mode="r")
        except Exception as exc:  # zarr raises several types for a broken store
            raise StoreError(f"{self.path}: not a readable zarr group ({exc})") from exc
        meta = self._root.attrs.get("medpipe", {})
        if meta.get("format_version") not in READABLE_VERSIONS:
            raise StoreError(f"{self.path}: unknown medpipe format version {meta.get('format_version')!r}")
        if not meta.get(COMPLETE_FLAG, False):
            raise StoreError(f"{self.path}: ingest did not complete (store is not marked complete)")
        self._attrs = dict(self._root.attrs)
        self._packed = PackedCases(self._root, self.path) if meta.get("layout") == "packed" else None
        self._ids_cache: np.ndarray | None = None  # case ids by row, for image_at/label_at on the per-case layout

    @property
    def layout(self) -> str:
        """``cases`` (a group per case) or ``packed`` (many 2D cases in sharded flat arrays)."""
        return "packed" if self._packed is not None else "cases"

    def object_table(self):
        """The store's :class:`~medpipe.data.objects.ObjectTable` (``case`` = row of
        :meth:`case_index`), or None for a store written before ingest wrote one."""
        if OBJECTS_GROUP not in self._root:
            return None
        return read_object_table(self._root)

    def case_modalities(self) -> np.ndarray:
        """The modality of each row of :meth:`case_index` (byte strings): a corpus entry's per-case
        column (SA-Med2D: from the name prefix), else the dataset's modality for every case."""
        index = self._root["index"] if self._attrs["medpipe"]["format_version"] != 1 else None
        if index is not None and "modality" in index:
            return _unpack(index["modality"][...])
        return np.full(self.case_count, self.modality.encode(), dtype=f"S{max(1, len(self.modality.encode()))}")

    @property
    def name(self) -> str:
        return self._attrs["dataset"]["name"]

    @property
    def modality(self) -> str:
        return self._attrs["dataset"]["modality"]

    @property
    def ndim(self) -> int:
        return int(self._attrs["dataset"]["ndim"])

    @property
    def classes(self) -> dict[int, str]:
        return {int(k): v for k, v in self._attrs["dataset"]["classes"].items()}

    @property
    def label_kind(self) -> str:
        """``classes`` (label values are class ids) or ``instances`` (object ids 1..N per image)."""
        return self._attrs["dataset"].get("label_kind", "classes")

    def case_index(self) -> tuple[np.ndarray, np.ndarray]:
        """``(case ids, patient ids)`` as numpy byte-string arrays (UTF-8), sorted by case id.

        No Python object per case: this is how stages that must scale to millions of cases
        (splits) read the case list.
        """
        if self._attrs["medpipe"]["format_version"] == 1:
            ids = list(self._attrs["case_ids"])
            patients = [self.info(case_id).patient_id for case_id in ids]
            return (np.array([i.encode() for i in ids], dtype=bytes if ids else "S1"),
                    np.array([p.encode() for p in patients], dtype=bytes if ids else "S1"))
        index = self._root["index"]
        return _unpack(index["case_id"][...]), _unpack(index["patient_id"][...])

    @property
    def case_count(self) -> int:
        if self._attrs["medpipe"]["format_version"] == 1:
            return len(self._attrs["case_ids"])
        return int(self._root["index"]["case_id"].shape[0])

    @property
    def case_ids(self) -> list[str]:
        """Sorted case ids as a list (convenient for datasets; a corpus should use :meth:`case_index`)."""
        if self._attrs["medpipe"]["format_version"] == 1:
            return list(self._attrs["case_ids"])
        return [value.decode() for value in self.case_index()[0].tolist()]

    def _case(self, case_id: str) -> zarr.Group:
        try:
            return self._root["cases"][case_id]
        except KeyError as exc:
            raise StoreError(f"{self.path}: no case {case_id!r}") from exc

    def image_array(self, case_id: str) -> zarr.Array:
        """The lazily readable image array (slice it to read a part of a volume)."""
        if self._packed is not None:
            return CheckedArray(self._packed.array(case_id, "image"), self.path, case_id, "image")
        return CheckedArray(self._case(case_id)["image"], self.path, case_id, "image")

    def label_array(self, case_id: str) -> zarr.Array:
        if self._packed is not None:
            return CheckedArray(self._packed.array(case_id, "label"), self.path, case_id, "label")
        return CheckedArray(self._case(case_id)["label"], self.path, case_id, "label")

    def image(self, case_id: str) -> np.ndarray:
        return self.image_array(case_id)[...]

    def label(self, case_id: str) -> np.ndarray:
        return self.label_array(case_id)[...]

    def image_at(self, row: int, grey: bool = False) -> np.ndarray:
        """The image of row ``row`` of :meth:`case_index` (the object table's ``case``), without a
        lookup by id. ``grey``: an image whose identical channels the packed layout stored once is
        returned as stored, (Y, X) (a loader then never copies three channels)."""
        if self._packed is not None:
            return self._packed.read(int(row), "image", grey)
        return self.image(self._id_at(row))

    def label_at(self, row: int) -> np.ndarray:
        """The label of row ``row`` of :meth:`case_index`."""
        if self._packed is not None:
            return self._packed.read(int(row), "label")
        return self.label(self._id_at(row))

    def _id_at(self, row: int) -> str:
        if self._ids_cache is None:
            self._ids_cache = self.case_index()[0]
        return self._ids_cache[int(row)].decode()

    def info(self, case_id: str) -> CaseInfo:
        attrs = self._packed.attrs(case_id) if self._packed is not None else dict(self._case(case_id).attrs)
        return CaseInfo(
            case_id=case_id,
            patient_id=attrs["patient_id"],
            modality=attrs["modality"],
            spacing=tuple(attrs["spacing"]),
            attrs=attrs,
        )


class PackedCases:
    """Cases of a packed store (``docs/data-format.md``): per-case columns in index order, the
    pixels in one flat sharded array per ingest part. Columns are read once, on first use."""

    COLUMNS = ("part", "image_offset", "label_offset", "height", "width", "channels", "grey")

    def __init__(self, root: zarr.Group, path: Path):
        self._root, self._path = root, path
        self._ids: np.ndarray | None = None
        self._columns: dict[str, np.ndarray] = {}
        self._parts: dict[tuple[int, str], zarr.Array] = {}

    def columns(self) -> dict[str, np.ndarray]:
        """The numeric per-case columns (~30 bytes a case), read once."""
        if not self._columns:
            self._columns = {name: self._root["columns"][name][...] for name in self.COLUMNS}
        return self._columns

    def row(self, case_id: str) -> int:
        self.columns()
        if self._ids is None:
            self._ids = _unpack(self._root["index"]["case_id"][...])
        key = case_id.encode()
        row = int(np.searchsorted(self._ids, key))
        if row >= len(self._ids) or self._ids[row] != key:
            raise StoreError(f"{self._path}: no case {case_id!r}")
        return row

    def _flat(self, part: int, role: str) -> zarr.Array:
        if (part, role) not in self._parts:
            self._parts[part, role] = self._root["parts"][str(part)][role]
        return self._parts[part, role]

    def read(self, row: int, role: str, grey: bool = False) -> np.ndarray:
        """The pixels of index row ``row`` as ingested: a grey image stored once is given back
        with its identical channels (lossless), or as stored when ``grey``."""
        c = self.columns()
        height, width, channels = int(c["height"][row]), int(c["width"][row]), int(c["channels"][row])
        stored = 1 if role == "label" or c["grey"][row] else channels
        start = int(c[f"{role}_offset"][row])
        flat = self._flat(int(c["part"][row]), role)[start:start + height * width * stored]
        if role == "label" or channels == 1 or (grey and stored == 1):
            return flat.reshape(height, width)
        pixels = flat.reshape(height, width, stored)
        return np.repeat(pixels, channels, axis=2) if stored == 1 else pixels

    def array(self, case_id: str, role: str) -> PackedArray:
        row = self.row(case_id)
        c = self.columns()
        channels = int(c["channels"][row])
        shape = (int(c["height"][row]), int(c["width"][row])) + ((channels,) if role == "image" and channels > 1
                                                                 else ())
        return PackedArray(self, row, role, shape, self._flat(int(c["part"][row]), role).dtype)

    def attrs(self, case_id: str) -> dict:
        row = self.row(case_id)
        index = self._root["index"]
        patient = _unpack(index["patient_id"][row:row + 1])[0].decode()
        modality = _unpack(index["modality"][row:row + 1])[0].decode()
        image = self.array(case_id, "image")
        return {"case_id": case_id, "patient_id": patient, "modality": modality, "spacing": [1.0, 1.0],
                "orientation": None, "shape": list(image.shape), "dtype": str(image.dtype)}


@dataclass(frozen=True)
class PackedArray:
    """The image or label of one packed case, read when sliced (like a zarr array)."""

    cases: PackedCases
    row: int
    role: str
    shape: tuple[int, ...]
    dtype: np.dtype

    @property
    def ndim(self) -> int:
        return len(self.shape)

    def __getitem__(self, key) -> np.ndarray:
        return self.cases.read(self.row, self.role)[key]

    def __array__(self, dtype=None, copy=None) -> np.ndarray:
        array = self.cases.read(self.row, self.role)
        return array if dtype is None else array.astype(dtype)


def _process_alive(pid: int) -> bool:
    """Whether process ``pid`` exists on this machine (one of another user counts as alive)."""
    if pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def remove_stale(out: str | Path) -> list[Path]:
    """Clean up after writers of ``out`` that died (SIGKILL, node failure); returns what was removed.

    ``<out>.partial-<pid>`` of a process that no longer exists is never published: removed.
    ``<out>.old-<pid>`` is a previous complete store a dead writer was replacing: removed when
    ``out`` exists, else moved back to ``out`` (the writer died between its two renames). The
    check sees processes of this machine only; a folder of a live process is left alone.
    """
    out = Path(out)
    if not out.parent.is_dir():
        return []
    pattern = re.compile(re.escape(out.name) + r"\.(partial|old)-(\d+)(\.ids)?")
    removed = []
    for path in sorted(out.parent.iterdir()):
        match = pattern.fullmatch(path.name)
        if not match or _process_alive(int(match.group(2))):
            continue
        if match.group(1) == "old" and not out.exists():
            os.replace(path, out)
            log.warning("%s: restored the previous store from %s (its writer died while replacing it)", out, path)
            continue
        if path.is_dir():
            shutil.rmtree(path, ignore_errors=True)
        else:
            path.unlink(missing_ok=True)
        log.warning("removed %s, left behind by a writer (process %s) that no longer runs", path, match.group(2))
        removed.append(path)
    return removed


class StoreWriter:
    """Writes a dataset store so that no reader ever sees a half store that looks complete.

    The store is built in ``<out>.partial-<pid>`` with ``complete = false``; :meth:`publish` writes
    the case list and ``complete = true`` last, then renames the folder into place (an existing
    store is replaced only then). Used as a context manager, a failure removes the partial folder;
    the folders a killed writer leaves behind are removed by the next one (:func:`remove_stale`).
    Ingest writes each case's arrays into :meth:`case_group` itself (chunked, streamed);
    :meth:`write_case` stores small in-memory cases whole (tests, generated data).
    """

    def __init__(self, out: str | Path, name: str, modality: str, ndim: int, classes: dict,
                 label_kind: str = "classes"):
        self.out = Path(out)
        self.partial = self.out.with_name(f"{self.out.name}.partial-{os.getpid()}")
        remove_stale(self.out)
        self._ids_path = self.out.with_name(f"{self.out.name}.partial-{os.getpid()}.ids")
        if self.partial.exists():
            shutil.rmtree(self.partial)
        self.out.parent.mkdir(parents=True, exist_ok=True)
        self._root = zarr.open_group(str(self.partial), mode="w", zarr_format=3)
        self._root.attrs["medpipe"] = {"format_version": FORMAT_VERSION, COMPLETE_FLAG: False}
        self._root.attrs["dataset"] = {
            "name": name,
            "modality": modality,
            "ndim": int(ndim),
            "classes": {str(k): v for k, v in sorted(classes.items(), key=lambda kv: int(kv[0]))},
            "label_kind": label_kind,
        }
        self._cases = self._root.create_group("cases")
        # written cases go to a side file, one `case_id<TAB>patient_id` line each, not to a Python
        # list: the case list of a corpus of millions of images is never held as Python objects
        self._ids = open(self._ids_path, "w", encoding="utf-8", newline="\n")  # closed in publish/__exit__
        self._count = 0
        self._instances = label_kind == "instances"
        self._objects: dict = {}  # case id -> its ObjectTable (case row filled in at publish)

    def __enter__(self) -> StoreWriter:
        return self

    def __exit__(self, *exc_info) -> None:
        self._ids.close()
        if self._ids_path.exists():
            self._ids_path.unlink()
        if self.partial.exists():  # not published: an error happened
            shutil.rmtree(self.partial, ignore_errors=True)

    def has_case(self, case_id: str) -> bool:
        return case_id in self._cases

    def case_group(self, case_id: str) -> zarr.Group:
        """A new, empty case group; fill it, then call :meth:`case_done` (or :meth:`discard_case`)."""
        return self._cases.create_group(case_id)

    def case_group_of(self, case_id: str) -> zarr.Group:
        """The group of a case being written."""
        return self._cases[case_id]

    def case_done(self, case_id: str, patient_id: str | None = None) -> None:
        """Record a finished case (its patient id is read from its attributes when not given)."""
        if patient_id is None:
            patient_id = self._cases[case_id].attrs["patient_id"]
        for value in (case_id, patient_id):
            if any(ord(c) < 32 for c in value):
                raise ValueError(f"case {case_id!r}: ids must not contain control characters ({value!r})")
        self._ids.write(f"{case_id}\t{patient_id}\n")
        self._count += 1

    def discard_case(self, case_id: str) -> None:
        """Remove a case that failed half-way (it will not be listed)."""
        self._objects.pop(case_id, None)
        if case_id in self._cases:
            del self._cases[case_id]

    def add_objects(self, case_id: str, label) -> None:
        """Record the objects of a case's label (2D, or each z-slice of a volume) for the store's
        object table (``medpipe.data.objects``); a volume is read one slice at a time."""
        from medpipe.data.objects import ObjectTable

        if len(label.shape) == 2:
            images = [(0, -1, np.asarray(label[...]))]
        else:
            images = ((0, z, np.asarray(label[z])) for z in range(label.shape[0]))
        self._objects[case_id] = ObjectTable.build(images, self._instances)

    def write_case(self, case_id: str, image: np.ndarray, label: np.ndarray, *, patient_id: str, modality: str,
                   spacing, orientation: str | None = None, source: dict | None = None,
                   sha256: dict | None = None) -> None:
        """Store one in-memory case whole, with the attributes of the data contract."""
        group = self.case_group(case_id)
        group.create_array("image", data=np.asarray(image), **array_codecs())
        group.create_array("label", data=np.asarray(label), **array_codecs())
        group.attrs.update({"case_id": case_id, "patient_id": patient_id, "modality": modality,
                            "spacing": [float(s) for s in spacing], "orientation": orientation,
                            "source": source or {}, "sha256": sha256 or {},
                            "shape": [int(n) for n in np.shape(image)], "dtype": str(np.asarray(image).dtype)})
        self.add_objects(case_id, np.asarray(label))
        self.case_done(case_id, patient_id)

    @property
    def case_count(self) -> int:
        return self._count

    def _write_index(self) -> None:
        """The ``index`` arrays: case and patient ids (UTF-8, zero-padded rows), sorted by case id."""
        self._ids.close()
        cases, patients = _read_id_lines(self._ids_path)
        order = np.argsort(cases, kind="stable")
        index = self._root.create_group("index")
        for name, values in (("case_id", cases[order]), ("patient_id", patients[order])):
            packed = _pack(values)
            index.create_array(name, data=packed, chunks=(INDEX_ROWS, packed.shape[1]),
                               dimension_names=["case", "byte"], **array_codecs())
        self._root.attrs["case_count"] = int(len(cases))
        self._write_objects([value.decode() for value in cases[order].tolist()])

    def _write_objects(self, ordered_ids: list[str]) -> None:
        """The object table, ``case`` = row in the sorted index (cases without objects have no rows)."""
        from medpipe.data.objects import ObjectTable, concat

        tables = []
        for row, case_id in enumerate(ordered_ids):
            table = self._objects.get(case_id)
            if table is not None and len(table):
                arrays = table.to_arrays()
                arrays["case"] = np.full(len(table), row, dtype=np.int64)
                tables.append(ObjectTable.from_arrays(arrays))
        write_object_table(self._root, concat(tables))

    def publish(self) -> Path:
        """Mark the store complete (the last write) and move it into place."""
        self._write_index()
        self._root.attrs["medpipe"] = {"format_version": FORMAT_VERSION, COMPLETE_FLAG: True}
        if self.out.exists():
            old = self.out.with_name(f"{self.out.name}.old-{os.getpid()}")
            os.replace(self.out, old)
            os.replace(self.partial, self.out)
            shutil.rmtree(old)
        else:
            os.replace(self.partial, self.out)
        return self.out


# ------------------------------------------------------------------------------ the case index


def _pack(values: np.ndarray) -> np.ndarray:
    """A byte-string array as a uint8 matrix (one zero-padded row per string; at least 1 column)."""
    width = max(int(values.dtype.itemsize), 1)
    return np.ascontiguousarray(values.astype(f"S{width}")).view(np.uint8).reshape(len(values), width)


def _unpack(matrix: np.ndarray) -> np.ndarray:
    matrix = np.ascontiguousarray(matrix, dtype=np.uint8)
    return matrix.view(f"S{matrix.shape[1]}").reshape(matrix.shape[0])


def _read_id_lines(path: Path, rows_per_block: int = 200_000) -> tuple[np.ndarray, np.ndarray]:
    """Parse ``case<TAB>patient<NEWLINE>`` lines into two byte-string arrays, block by block with
    numpy (no Python object per line)."""
    raw = np.fromfile(path, dtype=np.uint8)
    ends = np.flatnonzero(raw == 10)
    if len(ends) == 0:
        return np.zeros(0, dtype="S1"), np.zeros(0, dtype="S1")
    starts = np.concatenate(([0], ends[:-1] + 1)).astype(np.int64)
    tabs = np.flatnonzero(raw == 9)
    if len(tabs) != len(ends):
        raise ValueError(f"{path}: malformed case list ({len(ends)} lines, {len(tabs)} tabs)")
    case_len, patient_len = tabs - starts, ends - tabs - 1
    out = []
    for first, length in ((starts, case_len), (tabs + 1, patient_len)):
        width = max(int(length.max()) if len(length) else 1, 1)
        matrix = np.zeros((len(first), width), dtype=np.uint8)
        columns = np.arange(width)
        for lo in range(0, len(first), rows_per_block):
            hi = min(lo + rows_per_block, len(first))
            take = columns[None, :] < length[lo:hi, None]
            positions = first[lo:hi, None] + columns[None, :]
            matrix[lo:hi][take] = raw[positions[take]]
        out.append(matrix.view(f"S{width}").reshape(len(first)))
    return out[0], out[1]

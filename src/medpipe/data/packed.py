"""Writing the packed store layout: many 2D cases in a few sharded flat arrays (docs/data-format.md).

Why: the per-case layout makes a group and two arrays per case (13-24 files and folders per image;
48-89 M inodes for the SA-Med2D corpus). Here an ingest *part* appends each case's pixels to one
flat ``image`` (uint8) and one flat ``label`` (uint16) array and its metadata to column lists; the
arrays are zarr v3 *sharded*, and a shard is written once, whole, when the part's buffer holds it
(no read-modify-write, and no two processes ever write one shard: each part has its own arrays).
The gather step (:func:`gather_parts`) links the parts' arrays into one store (no copy) and writes
the sorted case index, the columns and the object table.
"""

from __future__ import annotations

import logging
import os
import shutil
from pathlib import Path

import numpy as np
import zarr

from medpipe.data.objects import IMAGE_COLUMNS, ObjectTable, objects_in
from medpipe.io.quarantine import QuarantineRow, read_quarantine, write_quarantine
from medpipe.store import (
    COMPLETE_FLAG,
    INDEX_ROWS,
    PACKED_VERSION,
    _pack,
    _unpack,
    array_codecs,
    read_object_table,
    remove_stale,
    write_object_table,
)

log = logging.getLogger(__name__)

IMAGE_CHUNK = 1 << 18   # elements per chunk: the unit a random read decompresses (256 KiB of uint8)
IMAGE_SHARD = 1 << 26   # elements per shard file (64 MiB of uint8 before compression, ~500 images)
NUMERIC_COLUMNS = {"image_offset": np.int64, "label_offset": np.int64, "height": np.int32, "width": np.int32,
                   "channels": np.int8, "grey": np.uint8}
TEXT_COLUMNS = ("case_id", "patient_id", "modality")
QUARANTINE_FILE = "quarantine.tsv"


class FlatWriter:
    """Appends arrays to one flat sharded zarr array, a whole shard at a time."""

    def __init__(self, group: zarr.Group, name: str, dtype, chunk: int, shard: int):
        self.array = group.create_array(name, shape=(0,), dtype=dtype, chunks=(chunk,), shards=(shard,),
                                        fill_value=0, dimension_names=["element"], **array_codecs())
        self.buffer = np.zeros(shard, dtype=dtype)
        self.fill = 0
        self.flushed = 0

    def append(self, values: np.ndarray) -> int:
        """Append ``values`` (flattened); returns their offset in the array."""
        offset = self.flushed + self.fill
        flat = np.ascontiguousarray(values).reshape(-1)
        while len(flat):
            take = min(len(flat), len(self.buffer) - self.fill)
            self.buffer[self.fill:self.fill + take] = flat[:take]
            self.fill += take
            flat = flat[take:]
            if self.fill == len(self.buffer):
                self._flush()
        return offset

    def _flush(self) -> None:
        end = self.flushed + len(self.buffer)
        self.array.resize((end,))
        self.array[self.flushed:end] = self.buffer
        self.flushed, self.fill = end, 0

    def close(self) -> None:
        """Write the last, partly filled shard (the array's length is a whole number of shards)."""
        if self.fill:
            self.buffer[self.fill:] = 0
            self._flush()


class PartWriter:
    """One ingest part: flat image and label arrays, per-case columns, object table, quarantine."""

    def __init__(self, path: Path, part: int, parts: int, image_shard: int = IMAGE_SHARD):
        self.path = path
        self.root = zarr.open_group(str(path), mode="w", zarr_format=3)
        self.root.attrs["medpipe"] = {"part": part, "parts": parts, COMPLETE_FLAG: False}
        self.image = FlatWriter(self.root, "image", np.uint8, min(IMAGE_CHUNK, image_shard), image_shard)
        # labels: uint16, as many elements per chunk and shard as the images (mostly zeros: they compress
        # far better, so a label shard file is smaller than an image shard file, and there are as many)
        self.label = FlatWriter(self.root, "label", np.uint16, min(IMAGE_CHUNK, image_shard), image_shard)
        self.text: dict[str, list[str]] = {name: [] for name in TEXT_COLUMNS}
        self.numbers: dict[str, list[int]] = {name: [] for name in NUMERIC_COLUMNS}
        self.objects = {"rows": [], "counts": [], "heights": [], "widths": [], "ids": [], "areas": [], "boxes": []}

    @property
    def count(self) -> int:
        return len(self.text["case_id"])

    def add(self, case_id: str, patient_id: str, modality: str, image: np.ndarray, label: np.ndarray) -> None:
        """One case: a uint8 grey (Y, X) or colour (Y, X, C) image and its uint16 instance label.
        A colour image whose channels are identical is stored once, as grey."""
        channels = image.shape[2] if image.ndim == 3 else 1
        grey = channels > 1 and all(np.array_equal(image[..., 0], image[..., c]) for c in range(1, channels))
        row = self.count
        for name, value in zip(TEXT_COLUMNS, (case_id, patient_id, modality)):
            self.text[name].append(value)
        values = {"image_offset": self.image.append(image[..., 0] if grey else image),
                  "label_offset": self.label.append(label.astype(np.uint16, copy=False)),
                  "height": image.shape[0], "width": image.shape[1], "channels": channels, "grey": int(grey)}
        for name, value in values.items():
            self.numbers[name].append(int(value))
        ids, areas, boxes = objects_in(label, instances=True)
        if len(ids):
            for key, value in (("rows", row), ("counts", len(ids)), ("heights", label.shape[0]),
                               ("widths", label.shape[1]), ("ids", ids), ("areas", areas), ("boxes", boxes)):
                self.objects[key].append(value)

    def object_table(self) -> ObjectTable:
        o = self.objects
        counts = np.asarray(o["counts"], dtype=np.int64)
        first = np.concatenate([[0], np.cumsum(counts)[:-1]]) if len(counts) else np.zeros(0, np.int64)
        return ObjectTable.from_arrays({
            "case": np.asarray(o["rows"], np.int64), "z": np.full(len(counts), -1, np.int32),
            "height": np.asarray(o["heights"], np.int32), "width": np.asarray(o["widths"], np.int32),
            "first": first, "count": counts,
            "label": np.concatenate(o["ids"]) if o["ids"] else np.zeros(0, np.int32),
            "area": np.concatenate(o["areas"]) if o["areas"] else np.zeros(0, np.int64),
            "bbox": np.concatenate(o["boxes"]) if o["boxes"] else np.zeros((0, 4), np.int32)})

    def finish(self, quarantine: list[QuarantineRow]) -> None:
        """Write the last shards, the columns, the object table and the quarantine rows; mark complete."""
        self.image.close()
        self.label.close()
        write_columns(self.root.create_group("columns"), {
            **{name: _pack(np.array([v.encode() for v in values], dtype=bytes) if values else np.zeros(0, "S1"))
               for name, values in self.text.items()},
            **{name: np.asarray(values, dtype=dtype) for name, (values, dtype) in
               ((n, (self.numbers[n], d)) for n, d in NUMERIC_COLUMNS.items())}})
        write_object_table(self.root, self.object_table())
        write_quarantine(self.path / QUARANTINE_FILE, quarantine)
        self.root.attrs["medpipe"] = {**self.root.attrs["medpipe"], COMPLETE_FLAG: True}


def write_columns(group: zarr.Group, columns: dict[str, np.ndarray]) -> None:
    for name, values in columns.items():
        chunks = (max(1, min(INDEX_ROWS, len(values))),) + values.shape[1:]
        group.create_array(name, data=values, chunks=chunks, **array_codecs())


def publish_folder(partial: Path, out: Path) -> Path:
    """Move a finished folder into place (an existing one is replaced only now)."""
    if out.exists():
        old = out.with_name(f"{out.name}.old-{os.getpid()}")
        os.replace(out, old)
        os.replace(partial, out)
        shutil.rmtree(old)
    else:
        os.replace(partial, out)
    return out


def _link_tree(source: Path, target: Path) -> None:
    """``target`` as hard links to the files of ``source`` (a copy where links are not possible)."""
    for folder, _, files in os.walk(source):
        destination = target / Path(folder).relative_to(source)
        destination.mkdir(parents=True, exist_ok=True)
        for name in files:
            try:
                os.link(Path(folder) / name, destination / name)
            except OSError:
                shutil.copy2(Path(folder) / name, destination / name)


def read_part(path: Path) -> tuple[dict[str, np.ndarray], ObjectTable, list[QuarantineRow]]:
    root = zarr.open_group(str(path), mode="r")
    if not root.attrs.get("medpipe", {}).get(COMPLETE_FLAG):
        raise RuntimeError(f"{path}: ingest part did not complete")
    columns = {name: root["columns"][name][...] for name in (*TEXT_COLUMNS, *NUMERIC_COLUMNS)}
    return columns, read_object_table(root), read_quarantine(path / QUARANTINE_FILE)


def gather_parts(parts: list[Path], out: Path, dataset_attrs: dict) -> tuple[int, list[QuarantineRow]]:
    """One packed store ``out`` from the finished ``parts`` (in part order); returns the case count
    and the quarantined rows. The parts' arrays are linked, not copied."""
    remove_stale(out)
    partial = out.with_name(f"{out.name}.partial-{os.getpid()}")
    if partial.exists():
        shutil.rmtree(partial)
    try:
        root = zarr.open_group(str(partial), mode="w", zarr_format=3)
        root.attrs["medpipe"] = {"format_version": PACKED_VERSION, COMPLETE_FLAG: False, "layout": "packed"}
        root.attrs["dataset"] = dataset_attrs
        texts: dict[str, list[np.ndarray]] = {name: [] for name in TEXT_COLUMNS}
        numbers: dict[str, list[np.ndarray]] = {name: [] for name in (*NUMERIC_COLUMNS, "part")}
        tables, quarantined, base = [], [], 0
        stored = root.create_group("parts")
        for k, path in enumerate(parts):
            columns, table, rows = read_part(Path(path))
            stored.create_group(str(k))
            for role in ("image", "label"):
                _link_tree(Path(path) / role, partial / "parts" / str(k) / role)
            n = len(columns["case_id"])
            for name in TEXT_COLUMNS:
                texts[name].append(_unpack(columns[name]) if n else np.zeros(0, "S1"))
            for name in NUMERIC_COLUMNS:
                numbers[name].append(columns[name])
            numbers["part"].append(np.full(n, k, dtype=np.int32))
            arrays = table.to_arrays()
            arrays["case"] = arrays["case"] + base
            tables.append(arrays)
            quarantined += rows
            base += n
        ids = np.concatenate(texts["case_id"]) if base else np.zeros(0, "S1")
        order = np.argsort(ids, kind="stable")
        if base and np.any(ids[order][1:] == ids[order][:-1]):
            raise RuntimeError(f"{out}: a case id is in two parts (the plan assigns each name to one part)")
        index = root.create_group("index")
        for name in TEXT_COLUMNS:
            values = (np.concatenate(texts[name]) if base else np.zeros(0, "S1"))[order]
            packed = _pack(values)
            index.create_array(name, data=packed, chunks=(INDEX_ROWS, packed.shape[1]),
                               dimension_names=["case", "byte"], **array_codecs())
        write_columns(root.create_group("columns"),
                      {name: np.concatenate(values)[order] for name, values in numbers.items()})
        write_object_table(root, _reorder_objects(tables, order))
        root.attrs["case_count"] = int(base)
        root.attrs["medpipe"] = {"format_version": PACKED_VERSION, COMPLETE_FLAG: True, "layout": "packed"}
        publish_folder(partial, out)
    finally:
        if partial.exists():
            shutil.rmtree(partial, ignore_errors=True)
    return base, quarantined


def _reorder_objects(tables: list[dict], order: np.ndarray) -> ObjectTable:
    """The parts' object tables as one, ``case`` renumbered to the sorted index and images in its order."""
    arrays = {name: np.concatenate([t[name] for t in tables]) if tables else np.zeros(0)
              for name in tables[0]} if tables else ObjectTable.build([], True).to_arrays()
    offsets = np.cumsum([0] + [len(t["area"]) for t in tables[:-1]]) if tables else []
    arrays["first"] = np.concatenate([t["first"] + off for t, off in zip(tables, offsets)]) if tables else \
        arrays["first"]
    rank = np.empty(len(order), dtype=np.int64)
    rank[order] = np.arange(len(order))
    new_case = rank[arrays["case"].astype(np.int64)]
    image_order = np.argsort(new_case, kind="stable")
    counts = arrays["count"][image_order].astype(np.int64)
    starts = arrays["first"][image_order].astype(np.int64)
    new_first = np.concatenate([[0], np.cumsum(counts)[:-1]]) if len(counts) else np.zeros(0, np.int64)
    take = np.repeat(starts - new_first, counts) + np.arange(int(counts.sum()))
    out = {name: arrays[name][image_order] for name in IMAGE_COLUMNS}
    out["case"], out["first"] = new_case[image_order], new_first
    for name in ("label", "area", "bbox"):
        out[name] = arrays[name][take]
    return ObjectTable.from_arrays(out)

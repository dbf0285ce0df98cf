"""Ingest: one raw dataset -> one zarr v3 dataset store (layout: docs/data-format.md).

Why it is built this way:

* **Lossless, one pass.** Each case is streamed through dask once: the same blocks are written to
  zarr and checked (non-finite image voxels, label values), so a multi-GB volume is read once and
  never held in memory whole (NIfTI is read slab by slab through nibabel's proxy).
* **Bad input never stops a dataset.** A case that cannot be read or fails a check is logged with
  the file and the problem, written to the quarantine table, removed from the store, and ingest
  goes on.
* **An empty dataset is an error, not an empty store.** When no case can be ingested (globs that
  match nothing, a labels folder that is empty or not mounted, every case quarantined) ingest fails
  with the reason, writes the quarantine table and leaves any existing store as it was: an empty
  store would empty the split tables downstream. ``ingest.allow_empty`` (``--allow-empty``) lets
  such a dataset have an empty store.
* **Never a half store that looks complete.** The store is built in ``<out>.partial-<pid>`` with
  ``attrs.medpipe.complete = false``; ``complete = true`` is the last write, then the folder is
  renamed into place (an existing store is replaced only now). An interrupted ingest removes its
  partial folder; a killed one leaves a ``.partial-<pid>`` folder that ``DatasetStore`` refuses to
  open and the next ingest of the dataset removes.
"""

from __future__ import annotations

import logging
import os
import re
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from functools import partial
from pathlib import Path

import dask
import dask.array as da
import numpy as np
import zarr
from tqdm import tqdm

from medpipe.data.faults import raise_if_fault
from medpipe.errors import MedpipeError
from medpipe.io.assemble import CaseProblem
from medpipe.io.cases import CaseFiles, DatasetConfigError
from medpipe.io.layouts import Layout, get_layout
from medpipe.io.quarantine import QuarantineRow, shorten, write_quarantine
from medpipe.io.readers import ReadError, set_max_image_bytes
from medpipe.store import DatasetStore, StoreWriter, array_codecs

log = logging.getLogger(__name__)

SPACING_RTOL = 1e-3  # image and label spacing further apart than this is logged
INSTANCE_DTYPE = np.dtype(np.uint16)
_CONTROL = re.compile(r"[\x00-\x1f\x7f]")

__all__ = ["CaseProblem", "IngestReport", "count_non_finite", "ingest_dataset", "label_dtype", "label_summary"]


class NoCasesError(MedpipeError, RuntimeError):
    """No case of a dataset could be ingested (and ``allow_empty`` is off); nothing was published."""


def _no_cases(dataset: str, spec: dict, rows: list[QuarantineRow], out: Path, quarantine: Path) -> NoCasesError:
    reasons = sorted({row.problem for row in rows})
    return NoCasesError(
        f"datasets.{dataset}: no case could be ingested ({len(rows)} quarantined, listed in {quarantine}; e.g. "
        f"{reasons[0] if reasons else '-'}); is every file of {_sources(spec)} reachable? {out} was not written "
        "(an existing store is kept). If the dataset is "
        "meant to be empty, set ingest.allow_empty: true"
    )


@dataclass(frozen=True)
class IngestReport:
    dataset: str
    store: Path
    n_cases: int
    quarantined: list[QuarantineRow]

    @property
    def case_ids(self) -> list[str]:
        """The written case ids (read from the store: a corpus report holds no list of them)."""
        return DatasetStore(self.store).case_ids


def _workers() -> int:
    try:
        return max(1, min(4, len(os.sched_getaffinity(0))))
    except AttributeError:  # pragma: no cover - not Linux
        return max(1, min(4, os.cpu_count() or 1))


def label_dtype(classes: dict[int, str], label_kind: str = "classes") -> np.dtype:
    """uint8 labels, uint16 when a class id does not fit (the contract allows nothing wider);
    instance labels are always uint16."""
    if label_kind == "instances":
        return INSTANCE_DTYPE
    top = max(int(k) for k in classes)
    if top > np.iinfo(np.uint16).max:
        raise DatasetConfigError(f"class id {top} does not fit the uint16 label arrays")
    return np.dtype(np.uint8 if top <= np.iinfo(np.uint8).max else np.uint16)


def _chunks(shape: tuple[int, ...], spatial_chunks: list[int], colour: bool) -> tuple[int, ...]:
    """Config chunks clipped to the shape; a colour axis is never split."""
    spatial = tuple(min(int(c), int(n)) for c, n in zip(spatial_chunks, shape))
    return spatial + ((int(shape[-1]),) if colour else ())


def _as_dask(array, chunks: tuple[int, ...]) -> da.Array:
    """A dask array whose blocks tile the zarr chunks (no two blocks share a chunk)."""
    if not isinstance(array, da.Array):
        return da.from_array(np.asarray(array), chunks=chunks)
    aligned = all(all(c % z == 0 for c in dims[:-1]) for dims, z in zip(array.chunks, chunks))
    return array if aligned else array.rechunk(chunks)


def _ingest_case(group: zarr.Group, case: CaseFiles, spec: dict, chunk_config: dict, hasher: ThreadPoolExecutor,
                 layout: Layout) -> None:
    """Write one case into its (empty) ``group`` or raise ``ReadError``/``CaseProblem`` (caller cleans up)."""
    ndim = int(spec["ndim"])
    spatial_chunks = chunk_config["chunks_3d"] if ndim == 3 else chunk_config["chunks_2d"]
    digests = hasher.submit(layout.sources, case, spec)
    image, imeta = layout.read_image(case, spec, spatial_chunks)
    label, lmeta, extra = layout.read_label(case, spec, image, imeta, spatial_chunks)
    if imeta.spatial_shape != lmeta.spatial_shape:
        raise CaseProblem(
            f"{case.image_text} / {case.label_text}: image/label shape mismatch: image {imeta.spatial_shape}, "
            f"label {lmeta.spatial_shape}"
        )
    if not np.allclose(imeta.spacing, lmeta.spacing, rtol=SPACING_RTOL):
        log.warning("%s: label spacing %s differs from image spacing %s (image spacing is kept)",
                    case.label_text, lmeta.spacing, imeta.spacing)

    image_chunks = _chunks(imeta.shape, spatial_chunks, imeta.colour)
    label_chunks = _chunks(lmeta.shape, spatial_chunks, False)
    instances = spec.get("label_kind") == "instances"
    out_label_dtype = label_dtype(spec["classes"], spec.get("label_kind", "classes"))
    allowed = None if instances else {int(k) for k in spec["classes"]}
    names = ["z", "y", "x"][-len(imeta.spatial_shape):]
    z_image = group.create_array("image", shape=imeta.shape, dtype=imeta.dtype, chunks=image_chunks, fill_value=0,
                                 dimension_names=names + (["c"] if imeta.colour else []), **array_codecs())
    z_label = group.create_array("label", shape=lmeta.shape, dtype=out_label_dtype, chunks=label_chunks,
                                 fill_value=0, dimension_names=names, **array_codecs())

    # one pass: each block is read once, written and checked by the same task, so a volume never
    # sits in memory whole and nothing is read twice
    tasks = _block_tasks(_as_dask(image, image_chunks), z_image,
                         count_non_finite if np.issubdtype(imeta.dtype, np.inexact) else None)
    tasks += _block_tasks(_as_dask(label, label_chunks), z_label,
                          partial(label_summary, classes=allowed, top=int(np.iinfo(out_label_dtype).max)))
    # a gzip stream can only be read front to back: keep its slabs in order on one thread
    gz = any(p.name.lower().endswith(".gz") for p in (*case.images, *case.labels))
    results = dask.compute(*tasks, scheduler="synchronous" if gz else "threads", num_workers=_workers())
    finite_results = [r for kind, r in results if kind == "image" and r is not None]
    label_results = [r for kind, r in results if kind == "label"]

    problems = []
    non_finite = sum(finite_results)
    if non_finite:
        problems.append(f"{case.image_text}: image has {non_finite} non-finite voxels (NaN or inf)")
    foreground = any(has_fg for has_fg, _ in label_results)
    unknown = sorted(set().union(*(bad for _, bad in label_results)), key=lambda v: (v != v, v if v == v else 0))
    if unknown:
        top = np.iinfo(out_label_dtype).max
        what = f"classes {sorted(allowed)}" if allowed is not None else f"instance ids 1..{top}"
        problems.append(f"{case.label_text}: label values not in {what}: {unknown[:10]}")
    elif not foreground:
        problems.append(f"{case.label_text}: empty label (no foreground voxel)")
    if problems:
        raise CaseProblem("; ".join(problems))

    source, sha256 = digests.result()
    group.attrs.update({
        "case_id": case.case_id,
        "patient_id": case.patient_id,
        "modality": spec["modality"],
        "spacing": [float(s) for s in imeta.spacing],
        "orientation": imeta.orientation if ndim == 3 else None,
        "source": source,
        "sha256": sha256,
        "shape": [int(n) for n in imeta.shape],
        "dtype": str(imeta.dtype),
        **extra,
    })


def _write_block(role: str, block: np.ndarray, target: zarr.Array, region: tuple, check) -> tuple:
    target[region] = block.astype(target.dtype, copy=False)
    return role, (check(block) if check is not None else None)


def _block_tasks(array: da.Array, target: zarr.Array, check) -> list:
    """Delayed tasks writing each block of ``array`` to its region of ``target`` (blocks tile the
    zarr chunks, so no two tasks touch one chunk) and returning ``check(block)``."""
    role = target.basename
    regions = da.core.slices_from_chunks(array.chunks)
    blocks = array.to_delayed().ravel()
    return [dask.delayed(_write_block, pure=False)(role, block, target, region, check)
            for block, region in zip(blocks, regions)]


def count_non_finite(block: np.ndarray) -> int:
    return int(block.size - np.count_nonzero(np.isfinite(block)))


def label_summary(block: np.ndarray, classes: set[int] | None, top: int | None = None) -> tuple[bool, set]:
    """``(has foreground, values not in {0} | classes)`` of one label block.

    ``classes=None`` (instance labels) allows every integer from 1 to ``top``.

    Exact, and cheap in the common case: for integral values only min and max are computed, then
    each value between them that is not allowed is looked for (usually none); sorting the block
    (``np.unique``) is the fallback for non-integral values (e.g. float labels with 0.5 or NaN)
    and for very wide value ranges.
    """
    if block.size == 0:
        return False, set()
    if classes is None:
        return _instance_summary(block, top if top is not None else np.iinfo(np.uint16).max)
    if block.dtype.kind == "f" and bool((block != np.trunc(block)).any()):  # non-integral or NaN
        values = np.unique(block)
        return bool((values != 0).any()), {v.item() for v in values if v != 0 and v not in classes}
    lo, hi = block.min().item(), block.max().item()
    if hi - lo > 4096:
        values = np.unique(block)
        return bool((values != 0).any()), {v.item() for v in values if v != 0 and v not in classes}
    suspects = [v for v in range(int(lo), int(hi) + 1) if v != 0 and v not in classes]
    return (lo != 0 or hi != 0), {v for v in suspects if bool((block == v).any())}


def _instance_summary(block: np.ndarray, top: int) -> tuple[bool, set]:
    """Instance ids: any integer in 1..top; anything else (negative, too large, non-integral) is bad."""
    bad = (block < 0) | (block > top)
    if block.dtype.kind == "f":
        bad |= block != np.trunc(block)
    values = set(np.unique(block[bad]).tolist()) if bool(bad.any()) else set()
    return bool((block != 0).any()), values


def ingest_dataset(dataset: str, spec: dict, out: str | Path, quarantine: str | Path,
                   chunk_config: dict | None = None, allow_empty: bool = False) -> IngestReport:
    """Ingest every case of one dataset into the store ``out``; refused cases go to ``quarantine``.

    ``spec`` is the dataset's config entry (globs relative to the working directory),
    ``chunk_config`` the config's ``ingest`` section (``chunks_2d``, ``chunks_3d``). Cases are
    streamed from the dataset's layout (``docs/data-format.md``): the case list is never held.
    Raises :class:`NoCasesError` when no case can be ingested, unless ``allow_empty``; then
    nothing is published (an existing store is kept) and the quarantine table says why.
    """
    chunk_config = chunk_config or {"chunks_2d": [512, 512], "chunks_3d": [32, 256, 256]}
    set_max_image_bytes(chunk_config.get("max_image_bytes"))  # declared sizes are capped before allocation
    out, quarantine = Path(out), Path(quarantine)
    label_kind = spec.get("label_kind", "classes")
    label_dtype(spec["classes"], label_kind)  # a config problem: fail before touching any file
    layout = get_layout(spec, dataset)
    rows: list[QuarantineRow] = []
    seen = 0

    def refuse(row: QuarantineRow) -> None:
        log.warning("%s: quarantined case %r: %s", dataset, shorten(row.case_id), shorten(row.problem))
        rows.append(row)

    with StoreWriter(out, dataset, spec["modality"], int(spec["ndim"]), spec["classes"], label_kind) as writer, \
            ThreadPoolExecutor(max_workers=2, thread_name_prefix="sha256") as hasher:
        for item in tqdm(layout.discover(dataset, spec), desc=f"ingest {dataset}", unit="case"):
            seen += 1
            if isinstance(item, QuarantineRow):
                refuse(item)
                continue
            case = item
            if _CONTROL.search(case.patient_id) or not case.patient_id:
                refuse(QuarantineRow(dataset, case.case_id, case.image_text, case.label_text,
                                     f"{case.image_text}: invalid patient id {case.patient_id!r}: empty or "
                                     "contains a control character"))
                continue
            if writer.has_case(case.case_id):  # a layout listing one image twice (files: refused earlier)
                refuse(QuarantineRow(dataset, case.case_id, case.image_text, case.label_text,
                                     f"duplicate case id {case.case_id!r}: listed again ({case.image_text})"))
                continue
            try:
                _ingest_case(writer.case_group(case.case_id), case, spec, chunk_config, hasher, layout)
            except (ReadError, CaseProblem) as exc:
                raise_if_fault(exc, dataset, case.case_id)  # a full disk, not bad data: end the job
                problem = str(exc)
            except Exception as exc:  # an unforeseen failure of one case must not stop the dataset
                raise_if_fault(exc, dataset, case.case_id)
                log.exception("%s: case %r failed unexpectedly", dataset, case.case_id)
                problem = f"{case.image_text}: unexpected error ({type(exc).__name__}: {exc})"
            else:
                writer.add_objects(case.case_id, writer.case_group_of(case.case_id)["label"])
                writer.case_done(case.case_id, case.patient_id)
                continue
            refuse(QuarantineRow(dataset, case.case_id, case.image_text, case.label_text, problem))
            writer.discard_case(case.case_id)
        if not seen and not allow_empty:
            raise DatasetConfigError(f"datasets.{dataset}: no file matches {_sources(spec)} (relative to "
                                     f"{Path.cwd()}); nothing was written (ingest.allow_empty lets a dataset be empty)")
        rows.sort(key=lambda r: (r.case_id, r.image, r.label))
        write_quarantine(quarantine, rows)
        if not writer.case_count and not allow_empty:  # leaving the block unpublished removes the partial store
            raise _no_cases(dataset, spec, rows, out, quarantine)
        writer.publish()
    written = writer.case_count
    log.info("%s: %d cases written to %s, %d quarantined (listed in %s)",
             dataset, written, out, len(rows), quarantine)
    if not written:
        log.warning("%s: no case could be ingested; the store %s is empty (ingest.allow_empty; see %s)",
                    dataset, out, quarantine)
    return IngestReport(dataset, out, written, rows)


def _sources(spec: dict) -> str:
    """Where a dataset's files come from, for error messages."""
    if spec.get("layout") == "sa_med2d":
        return f"index {spec.get('index')!r}"
    labels = spec.get("labels")
    label_glob = labels if isinstance(labels, str) else (labels or {}).get("glob", "")
    return f"images glob {spec.get('images')!r} and labels glob {label_glob!r}"

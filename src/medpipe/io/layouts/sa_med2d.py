"""``layout: sa_med2d``: the SA-Med2D-20M corpus as distributed (``SAMed2Dv1/``).

The release is ``images/<name>.png``, ``masks/<name>--<class>_<instance>.png`` (one binary mask
per object) and ``SAMed2D_v1.json`` mapping each ``images/<name>.png`` to its mask files. Each
image becomes one case whose label is an *instance* image built with the reference's rules
(torch-em ``sa_med2d._process_each_image``; see docs/fidelity.md):

* the listed masks in sorted order, instance id = position (1, 2, ...; every listed mask counts),
  a later mask overwriting an earlier one;
* skipped: ACDC's whole-cavity mask (``0003_000`` in the name, when the image lists > 1 mask) and
  a mask whose shape differs from the image (logged);
* ``ichallenge_adam_task2`` masks are inverted (the optic disc is stored as 0);
* ids relabelled 1..N; an image with no foreground or a constant image is refused (quarantined).

The source dataset is the second ``--`` field of the name, never a substring test. The index has
millions of entries: it is read as a stream (:func:`iter_index`), one entry at a time, never with
``json.load``.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import re
from collections.abc import Iterator
from pathlib import Path

import numpy as np

from medpipe.errors import MedpipeError
from medpipe.files import sha256_of, sha256_of_files
from medpipe.io.assemble import CaseProblem
from medpipe.io.cases import CaseFiles, DatasetConfigError, case_id_problem, compile_regex
from medpipe.io.labels import paint, relabel_sequential
from medpipe.io.quarantine import QuarantineRow
from medpipe.io.readers import ImageMeta, ReadError, read_image

log = logging.getLogger("medpipe.ingest")

ACDC_CAVITY = "0003_000"  # ACDC's whole-ventricle mask, skipped like the reference does
INVERTED = {"ichallenge_adam_task2"}  # masks stored with the object as 0
_SPACE = re.compile(r"[ \t\n\r]*")
_BLOCK = 1 << 20


class CorpusIndexError(MedpipeError, ValueError):
    """The JSON index is not an object of ``"images/<name>": ["masks/<name>", ...]`` entries."""


def iter_index(path: str | os.PathLike, block: int = _BLOCK, handle=None) -> Iterator[tuple[str, object]]:
    """Stream the entries ``(key, value)`` of a JSON object file, one at a time.

    Each key and value is decoded with :class:`json.JSONDecoder` (C speed) from a rolling buffer,
    so memory is one buffer plus one entry, whatever the size of the file. ``handle`` (a text file
    object, e.g. a zip member wrapped in ``io.TextIOWrapper``) is read instead of opening ``path``,
    which then only names the index in messages.
    """
    decoder = json.JSONDecoder()
    with (contextlib.nullcontext(handle) if handle is not None else open(path, encoding="utf-8")) as handle:
        buffer, pos, eof = "", 0, False

        def more() -> bool:
            nonlocal buffer, pos, eof
            if eof:
                return False
            chunk = handle.read(block)
            eof = not chunk
            buffer, pos = buffer[pos:] + chunk, 0
            return bool(chunk)

        def skip() -> None:
            nonlocal pos
            while True:
                pos = _SPACE.match(buffer, pos).end()
                if pos < len(buffer) or not more():
                    return

        def token():
            nonlocal pos
            while True:
                try:
                    value, end = decoder.raw_decode(buffer, pos)
                except json.JSONDecodeError as exc:
                    # an entry cut by the block end: read on (an entry is far smaller than 64 blocks)
                    if len(buffer) - pos < 64 * block and more():
                        continue
                    raise CorpusIndexError(f"{path}: not valid JSON near character {exc.pos} of the current block "
                                      f"({exc.msg})") from exc
                if end == len(buffer) and not eof and not isinstance(value, (str, list, dict)):
                    more()  # a number could continue in the next block
                    continue
                pos = end
                return value

        def expect(chars: str) -> str:
            nonlocal pos
            skip()
            if pos >= len(buffer) or buffer[pos] not in chars:
                found = buffer[pos:pos + 20] if pos < len(buffer) else "end of file"
                raise CorpusIndexError(f"{path}: expected one of {chars!r}, found {found!r}")
            pos += 1
            return buffer[pos - 1]

        more()
        expect("{")
        skip()
        if pos < len(buffer) and buffer[pos] == "}":
            return
        while True:
            skip()
            key = token()
            if not isinstance(key, str):
                raise CorpusIndexError(f"{path}: object key {key!r} is not a string")
            expect(":")
            skip()
            yield key, token()
            if expect(",}") == "}":
                return


def patient_of(case_id: str) -> str:
    """``<source dataset>--<original case>`` of ``<modality>--<source>--<case>--<axis>_<slice>``:
    all slices and axes of one volume, whatever the modality prefix; the case id when the name
    does not have that form."""
    fields = case_id.split("--")
    return "--".join(fields[1:-1]) if len(fields) >= 4 else case_id


# modality of the name's first field (``ct_00``, ``mr_t1``, ``x_ray``, ...): the corpus split is
# stratified by it. PET has no modality of its own in the schema (``other``).
MODALITY_PREFIXES = (("ct_", "ct"), ("mr_", "mri"), ("pet_", "other"), ("x_ray", "xray"),
                     ("ultrasound_", "ultrasound"), ("endoscopy_", "endoscopy"), ("fundus_", "fundus"),
                     ("dermoscopy_", "dermoscopy"))


def modality_of(case_id: str, default: str) -> str:
    """The modality of an SA-Med2D image from its name prefix; ``default`` (the entry's
    ``modality``) for a prefix not in :data:`MODALITY_PREFIXES`."""
    first = case_id.split("--", 1)[0]
    return next((modality for prefix, modality in MODALITY_PREFIXES if first.startswith(prefix)), default)


def source_dataset(case_id: str) -> str:
    fields = case_id.split("--")
    return fields[1] if len(fields) >= 4 else ""


def discover(dataset: str, spec: dict) -> Iterator[CaseFiles | QuarantineRow]:
    """Cases of the index whose image name matches ``include``, in the index's order."""
    if not spec.get("index"):
        raise DatasetConfigError(f"datasets.{dataset}: layout sa_med2d needs `index` (the SAMed2D_v1.json file)")
    index = Path(spec["index"])
    if not index.is_file():
        raise DatasetConfigError(f"datasets.{dataset}.index: {index} is not a file (relative to {Path.cwd()})")
    folder = index.parent
    base = str(folder)
    include = compile_regex(spec, "include", (), dataset)
    patient_re = compile_regex(spec, "patient_id", ("patient",), dataset)
    skipped = 0
    try:
        for key, masks in iter_index(index):
            name = key.rsplit("/", 1)[-1]
            if include is not None and not include.search(name):
                skipped += 1
                continue
            image = os.path.join(base, key)
            case_id = name[: -len(".png")] if name.lower().endswith(".png") else name.rsplit(".", 1)[0]
            problem = case_id_problem(case_id)
            if problem is None and (not isinstance(masks, list) or not all(isinstance(m, str) for m in masks)):
                problem = f"{index}: entry {key!r} is not a list of mask paths"
            mask_names = sorted(masks) if problem is None else []
            mask_paths = [os.path.join(base, m) for m in mask_names]
            if problem is None and not mask_names:
                problem = f"{image}: the index lists no mask for this image (empty label)"
            if problem is None and not os.path.isfile(image):
                problem = f"{image}: image listed in the index does not exist"
            if problem is None:
                missing = [m for m in mask_paths if not os.path.isfile(m)]
                if missing:
                    problem = f"{missing[0]}: mask listed in the index does not exist" + (
                        f" (and {len(missing) - 1} more)" if len(missing) > 1 else "")
            patient_id = patient_of(case_id)
            if problem is None and patient_re is not None:
                match = patient_re.search(name)
                if not (match and match.group("patient")):
                    problem = f"{image}: file name does not match the patient_id regex {patient_re.pattern!r}"
                else:
                    patient_id = match.group("patient")
            if problem is not None:
                yield QuarantineRow(dataset, case_id, image, ";".join(mask_paths), problem)
                continue
            yield CaseFiles(case_id, patient_id, (Path(image),), tuple(map(Path, mask_paths)),
                            extra={"masks": mask_names})
    except (CorpusIndexError, UnicodeDecodeError) as exc:
        raise DatasetConfigError(f"datasets.{dataset}.index: {exc}") from exc
    if skipped:
        log.info("%s: %d index entries left out by the include regex %r", dataset, skipped, spec.get("include"))


def read_case_image(case: CaseFiles, spec: dict, chunks) -> tuple[np.ndarray, ImageMeta]:
    image, meta = read_image(case.image)
    image = np.asarray(image)
    if len(meta.spatial_shape) != 2:
        raise CaseProblem(f"{case.image}: image has shape {meta.shape}; SA-Med2D images are 2D")
    if image.size == 0 or image.min() == image.max():
        raise CaseProblem(f"{case.image}: constant image (every pixel {image.flat[0] if image.size else '-'})")
    return image, meta


def _mask(path: Path) -> np.ndarray:
    mask, meta = read_image(path)
    return foreground_of(np.asarray(mask), meta.colour)


def foreground_of(mask: np.ndarray, colour: bool) -> np.ndarray:
    """A mask file's object pixels: any non-zero channel."""
    return mask.any(axis=-1) if colour else mask != 0


def merge_masks(case_id: str, names: list[str], shape: tuple[int, int], read_mask, where: str):
    """``(instance label, instance_masks)`` of one image by the reference's rules (module docstring).

    ``names`` are the image's mask names in sorted order, ``read_mask(k)`` returns the boolean
    foreground of mask ``k`` (or raises :class:`CaseProblem`); ``where`` names the image in messages.
    """
    source = source_dataset(case_id)
    if len(names) > np.iinfo(np.uint16).max:
        raise CaseProblem(f"{where}: {len(names)} masks do not fit the uint16 instance ids")
    layers = []
    for k, name in enumerate(names, start=1):
        if source == "ACDC" and ACDC_CAVITY in name and len(names) > 1:
            continue
        foreground = read_mask(k - 1)
        if foreground.shape != tuple(shape):
            log.warning("%s: mask shape %s differs from the image's %s; mask skipped", name, foreground.shape, shape)
            continue
        layers.append((k, ~foreground if source in INVERTED else foreground))
    label = paint(tuple(shape), layers, dtype=np.uint16)
    label, instance_masks = relabel_sequential(label, names)
    if not instance_masks:
        raise CaseProblem(f"{where}: empty label (no foreground in the image's masks after the SA-Med2D rules)")
    return label, instance_masks


def read_case_label(case: CaseFiles, spec: dict, image, image_meta: ImageMeta, chunks):
    """The instance label of one image by the reference's rules (module docstring)."""
    shape = image_meta.spatial_shape

    def read_mask(k: int) -> np.ndarray:
        try:
            return _mask(case.labels[k])
        except ReadError as exc:
            raise CaseProblem(str(exc)) from exc

    label, instance_masks = merge_masks(case.case_id, list(case.extra["masks"]), shape, read_mask, str(case.label))
    meta = ImageMeta(tuple(label.shape), label.dtype, image_meta.spacing, None, False)
    return label, meta, {"instance_masks": instance_masks}


def sources(case: CaseFiles, spec: dict) -> tuple[dict, dict]:
    folder = Path(spec["index"]).parent
    return ({"image": str(case.image), "label": [str(p) for p in case.labels]},
            {"image": sha256_of(case.image), "label": sha256_of_files(case.labels, folder)})


def _layout():
    from medpipe.io.layouts import Layout

    return Layout("sa_med2d", discover, read_case_image, read_case_label, sources)


LAYOUT = _layout()

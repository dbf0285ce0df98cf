"""A discovered case's files -> the image and label arrays the store holds (layout ``files``).

Applies the reading rules of the dataset contract in a fixed order (``docs/data-format.md``):
read -> ``channel_axis`` -> ``crop`` -> ``channel`` -> dimensionality -> ``axes``; for labels then
``format`` (contours), ``label_colors``, the ``labels.merge`` rule and ``label_map``. A single
label file without colour or contour rules stays a lazy dask array (``label_map`` is applied block
by block), so a large volume is still streamed; stacks, multi-file labels, colour labels and
``axes`` permutations are assembled in memory (one case at a time).
"""

from __future__ import annotations

import re
from pathlib import Path

import dask.array as da
import numpy as np

from medpipe.errors import MedpipeError
from medpipe.files import sha256_of, sha256_of_files
from medpipe.io.cases import CaseFiles, IdRules, glob_root, label_spec
from medpipe.io.detached import detached_files
from medpipe.io.labels import (
    apply_label_map,
    decode_colours,
    paint,
    parse_colour_map,
    parse_value_map,
    rasterise_contour,
    relabel_sequential,
)
from medpipe.io.readers import ImageMeta, read_image


class CaseProblem(MedpipeError, ValueError):
    """A case fails a check; the message names the file and the problem."""


# ---------------------------------------------------------------------------------- one file


def conform(array, meta: ImageMeta, ndim: int, path: Path, role: str):
    """Bring an array to the dataset's dimensionality or explain why it cannot be."""
    spatial = meta.spatial_shape
    if ndim == 2 and len(spatial) == 3 and spatial[0] == 1 and not meta.colour:
        # a one-slice volume (e.g. a 2D image saved as NIfTI) is a 2D image
        return array[0], ImageMeta(spatial[1:], meta.dtype, meta.spacing[1:], None, False)
    if len(spatial) != ndim:
        raise CaseProblem(f"{path}: {role} has shape {meta.shape} but the dataset is {ndim}D")
    if meta.colour and ndim == 3:
        raise CaseProblem(f"{path}: {role} has colour channels (shape {meta.shape}); expected one channel")
    return array, meta


def _channels_first(array, meta: ImageMeta, spec: dict, ndim: int):
    """``channel_axis: first``: a (C, Y, X) array with C <= 4 in a 2D dataset is a colour image."""
    if spec.get("channel_axis") != "first" or ndim != 2 or meta.colour or len(meta.shape) != 3:
        return array, meta
    channels = meta.shape[0]
    if channels == 1 or channels > 4:
        return array, meta
    array = np.moveaxis(array, 0, -1) if isinstance(array, np.ndarray) else da.moveaxis(array, 0, -1)
    return array, ImageMeta(tuple(array.shape), meta.dtype, meta.spacing[1:], None, True)


def _crop(array, meta: ImageMeta, window: dict | None):
    """``crop``: half-open ``y``/``x`` pixel ranges of a 2D image (the colour axis is kept)."""
    if not window:
        return array, meta
    spatial = meta.spatial_shape
    if len(spatial) != 2:
        return array, meta
    key = tuple(slice(*window[axis]) if axis in window else slice(None) for axis in ("y", "x"))
    array = array[key]
    shape = tuple(array.shape)
    return array, ImageMeta(shape, meta.dtype, meta.spacing, meta.orientation, meta.colour)


def _channel(array, meta: ImageMeta, channel: int | None, path: Path):
    """``channel: k``: keep channel k of a colour image."""
    if channel is None:
        return array, meta
    if not meta.colour:
        raise CaseProblem(f"{path}: image has no colour channels (shape {meta.shape}) to take channel {channel} from")
    if channel >= meta.shape[-1]:
        raise CaseProblem(f"{path}: image has {meta.shape[-1]} channels; channel {channel} was asked for")
    array = array[..., channel]
    return array, ImageMeta(tuple(array.shape), meta.dtype, meta.spacing, meta.orientation, False)


def _permute(array, meta: ImageMeta, axes: str | None):
    """``axes``: store axis order as a permutation of the reader's ``zyx`` (read whole)."""
    if not axes or axes == "zyx" or len(meta.spatial_shape) != 3:
        return array, meta
    order = tuple("zyx".index(axis) for axis in axes)
    array = np.asarray(array).transpose(order)
    return array, ImageMeta(tuple(array.shape), meta.dtype, tuple(meta.spacing[i] for i in order),
                            meta.orientation, False)


def read_one(path: Path, spec: dict, ndim: int, role: str, chunks, *, image_rules: bool):
    """Read one file and apply the per-file reading rules; returns ``(array, ImageMeta)``."""
    array, meta = read_image(path, chunks=chunks)
    if image_rules:
        array, meta = _channels_first(array, meta, spec, ndim)
    array, meta = _crop(array, meta, (spec.get("crop") or {}).get(role))
    if image_rules:
        array, meta = _channel(array, meta, spec.get("channel"), path)
    colour_label = role == "label" and meta.colour and bool(spec.get("label_colors"))
    if meta.colour and role == "label" and not colour_label:
        raise CaseProblem(f"{path}: label has colour channels (shape {meta.shape}); expected one channel "
                          "(or set label_colors)")
    if colour_label:  # the colour axis stays until label_colors decodes it
        return array, meta
    array, meta = conform(array, meta, ndim, path, role)
    return _permute(array, meta, spec.get("axes"))


def _stack(paths, spec: dict, role: str, image_rules: bool):
    """2D slice files -> one (Z, Y, X) volume (``stack: true``); slices must share one shape."""
    slices, metas = [], []
    for path in paths:
        array, meta = read_one(path, spec, 2, role, None, image_rules=image_rules)
        if role == "label" and meta.colour:
            array, meta = _decode(array, meta, spec, path)
        slices.append(np.asarray(array))
        metas.append(meta)
    shapes = sorted({m.shape for m in metas})
    if len(shapes) > 1:
        raise CaseProblem(f"{paths[0]}: {role} slices of one case have different shapes {shapes}")
    if any(m.colour for m in metas):
        raise CaseProblem(f"{paths[0]}: {role} slices have colour channels (shape {metas[0].shape}); "
                          "a volume needs one channel (set `channel`)")
    volume = np.stack(slices)
    meta = ImageMeta(tuple(volume.shape), volume.dtype, (1.0, *metas[0].spacing), None, False)
    return volume, meta


# ----------------------------------------------------------------------------------- images


def read_case_image(case: CaseFiles, spec: dict, chunks: list[int]):
    """The case's image as ``(array, ImageMeta)`` in store axis order."""
    ndim = int(spec["ndim"])
    if spec.get("stack"):
        return _stack(case.images, spec, "image", image_rules=True)
    read_chunks = (int(chunks[0]), None, None) if ndim == 3 else None
    return read_one(case.image, spec, ndim, "image", read_chunks, image_rules=True)


# ----------------------------------------------------------------------------------- labels


def _decode(array, meta: ImageMeta, spec: dict, path: Path):
    """``label_colors``: colours -> ids; an unlisted colour (no ``other``) refuses the case."""
    colours, other = parse_colour_map(spec["label_colors"])
    try:
        ids, unknown = decode_colours(np.asarray(array), colours, other)
    except ValueError as exc:
        raise CaseProblem(f"{path}: {exc}") from exc
    if unknown:
        raise CaseProblem(f"{path}: label colours not in label_colors: {', '.join(unknown[:10])}")
    meta = ImageMeta(tuple(ids.shape), ids.dtype, meta.spacing, meta.orientation, False)
    return ids, meta


def _label_map(array, spec: dict):
    if not spec.get("label_map"):
        return array
    ranges, other = parse_value_map(spec["label_map"])
    if isinstance(array, da.Array):
        out_dtype = np.float64 if array.dtype.kind == "f" else np.int64
        return array.map_blocks(apply_label_map, ranges, other, dtype=out_dtype)
    return apply_label_map(array, ranges, other)


def _class_ids(spec: dict) -> dict[str, int]:
    return {str(name): int(value) for value, name in spec["classes"].items()}


def read_case_label(case: CaseFiles, spec: dict, image_meta: ImageMeta, chunks: list[int]):
    """The case's label as ``(array, ImageMeta, extra case attributes)`` in store axis order."""
    ndim = int(spec["ndim"])
    labels = label_spec(spec)
    if spec.get("stack"):
        volume, meta = _stack(case.labels, spec, "label", image_rules=False)
        return _label_map(volume, spec), meta, {}
    if labels["merge"] == "single" and labels["format"] == "image":
        read_chunks = (int(chunks[0]), None, None) if ndim == 3 else None
        array, meta = read_one(case.label, spec, ndim, "label", read_chunks, image_rules=False)
        if meta.colour:
            array, meta = _decode(array, meta, spec, case.label)
            array, meta = conform(array, meta, ndim, case.label, "label")
            array, meta = _permute(array, meta, spec.get("axes"))
        return _label_map(array, spec), meta, {}
    return _merged_label(case, spec, labels, image_meta)


def _foreground(path: Path, spec: dict, labels: dict, image_meta: ImageMeta) -> np.ndarray:
    """One label file of a multi-file label (or a contour) as a boolean mask on the image grid."""
    ndim = int(spec["ndim"])
    shape = image_meta.spatial_shape
    if labels["format"] == "contour_xy":
        if len(shape) != 2:
            raise CaseProblem(f"{path}: contour labels need a 2D dataset")
        return rasterise_contour(path, shape).astype(bool)
    array, meta = read_one(path, spec, ndim, "label", None, image_rules=False)
    if meta.colour:
        array, meta = _decode(array, meta, spec, path)
        array, meta = conform(array, meta, ndim, path, "label")
        array, meta = _permute(array, meta, spec.get("axes"))
    if tuple(meta.shape) != tuple(shape):
        raise CaseProblem(f"{path}: image/label shape mismatch: image {tuple(shape)}, label {tuple(meta.shape)}")
    return np.asarray(array) != 0


def _merged_label(case: CaseFiles, spec: dict, labels: dict, image_meta: ImageMeta):
    merge, shape = labels["merge"], image_meta.spatial_shape
    extra: dict = {}
    if merge == "class_per_file":
        rules = IdRules.from_spec("", spec)
        root = glob_root(labels["glob"])
        pattern = re.compile(labels["class_name"])
        ids = _class_ids(spec)
        layers = []
        for path in case.labels:
            text = rules.text(path, root)
            match = pattern.search(text)
            if match is None or match.group("name") is None:
                raise CaseProblem(f"{path}: {text!r} does not match the class_name regex {pattern.pattern!r}")
            name = match.group("name")
            if name not in ids:
                raise CaseProblem(f"{path}: class name {name!r} is not one of the dataset's classes")
            layers.append((ids[name], _foreground(path, spec, labels, image_meta)))
        label = paint(shape, layers)
    elif merge == "union":
        label = paint(shape, ((int(labels["value"]), _foreground(p, spec, labels, image_meta)) for p in case.labels))
    elif merge == "instance_per_file":
        label = paint(shape, ((k, _foreground(p, spec, labels, image_meta)) for k, p in enumerate(case.labels, 1)))
        label, sources = relabel_sequential(label, [str(p) for p in case.labels])
        extra["instance_masks"] = sources
    else:  # single file in another format (contours)
        label = paint(shape, ((1, _foreground(case.label, spec, labels, image_meta)),))
    meta = ImageMeta(tuple(label.shape), label.dtype, image_meta.spacing, image_meta.orientation, False)
    return _label_map(label, spec), meta, extra


# ------------------------------------------------------------------------------------ sources


def source_attrs(case: CaseFiles, spec: dict) -> tuple[dict, dict]:
    """``source`` and ``sha256`` case attributes: one path and its digest, or for several files
    (stacks, multi-file labels) the list of paths and the digest of ``<relpath>\\t<sha256>`` lines."""
    labels = label_spec(spec)

    def describe(paths, pattern):
        files = [file for path in paths for file in (path, *detached_files(path))]  # + MHD/NRRD data files
        if len(files) == 1:
            return str(paths[0]), sha256_of(paths[0])
        source = str(paths[0]) if len(paths) == 1 else [str(p) for p in paths]
        return source, sha256_of_files(files, glob_root(pattern))

    image_source, image_digest = describe(case.images, spec["images"])
    label_source, label_digest = describe(case.labels, labels["glob"])
    return {"image": image_source, "label": label_source}, {"image": image_digest, "label": label_digest}

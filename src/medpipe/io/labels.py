"""Label rules of the dataset contract, as functions on arrays: value maps, colour maps, contours,
and merging several label files of one image into one label map.

Publishers encode labels in many ways (255 for foreground, one colour per class, one file per
organ or per object, a polygon in a text file); these rules turn each into the store's label map
(0 = background, class ids or instance ids) so that no dataset has to be converted by hand first.
The order in which ingest applies them is fixed in ``docs/data-format.md``.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from medpipe.io.readers import ReadError

OTHER = "other"


# ---------------------------------------------------------------------------------- value maps


def parse_value_map(mapping: dict) -> tuple[list[tuple[int, int, int]], int | None]:
    """``label_map`` as ``([(low, high, id), ...], other)``; keys are ``v``, ``"a-b"`` or ``other``."""
    ranges, other = [], None
    for key, target in mapping.items():
        if str(key) == OTHER:
            other = int(target)
            continue
        text = str(key).strip()
        low, _, high = text.partition("-") if "-" in text[1:] else (text, "", text)
        try:
            ranges.append((int(low), int(high), int(target)))
        except ValueError as exc:
            raise ValueError(f"label_map key {key!r} is not a value, a range 'a-b' or 'other'") from exc
    return ranges, other


def _map_values(values: np.ndarray, ranges, other) -> np.ndarray:
    """The mapped value of each entry of the 1D array ``values`` (see :func:`apply_label_map`)."""
    is_float = values.dtype.kind == "f"
    out = values.astype(np.float64 if is_float else np.int64)
    if other is not None:
        out[(values != 0) & ~np.isnan(values)] = other
    integral = (values == np.trunc(values)) if is_float else np.ones(values.shape, bool)
    for low, high, target in ranges:
        out[integral & (values >= low) & (values <= high)] = target
    return out


def apply_label_map(block: np.ndarray, ranges, other) -> np.ndarray:
    """Map every value of ``block`` (0 stays 0 unless listed; ``other`` = unlisted non-zero values).

    Values without a rule pass through unchanged, so the class check still reports them (NaN is
    never mapped). Small integer types go through a lookup table, others through their unique values.
    """
    block = np.asarray(block)
    if block.dtype == bool:
        block = block.astype(np.uint8)
    if block.dtype.kind in "iu" and block.dtype.itemsize <= 2:
        info = np.iinfo(block.dtype)
        lut = _map_values(np.arange(info.min, info.max + 1, dtype=np.int64), ranges, other)
        return lut[block.astype(np.int64) - info.min]
    values, inverse = np.unique(block, return_inverse=True)
    return _map_values(values, ranges, other)[inverse].reshape(block.shape)


# --------------------------------------------------------------------------------- colour maps


def parse_colour_map(mapping: dict) -> tuple[dict[int, int], int | None]:
    """``label_colors`` as ``({packed rgb: id}, other)``; keys are ``"r,g,b"`` or ``other``."""
    colours, other = {}, None
    for key, target in mapping.items():
        if str(key) == OTHER:
            other = int(target)
            continue
        try:
            r, g, b = (int(v) for v in str(key).split(","))
        except ValueError as exc:
            raise ValueError(f"label_colors key {key!r} is not 'r,g,b' or 'other'") from exc
        colours[(r << 16) | (g << 8) | b] = int(target)
    return colours, other


def decode_colours(label: np.ndarray, colours: dict[int, int], other: int | None) -> tuple[np.ndarray, list]:
    """Colour label (Y, X, 3) -> ids by exact RGB match; a grey label is read as (v, v, v).

    Returns ``(ids, unknown)``: ``unknown`` lists the colours that have no entry when there is no
    ``other`` (the caller refuses the case); their pixels are 0 in ``ids``.
    """
    label = np.asarray(label)
    if label.ndim >= 3 and label.shape[-1] == 1:
        label = label[..., 0]
    if label.ndim == 2 or (label.ndim == 3 and label.shape[-1] not in (3, 4)):
        rgb = np.stack([label] * 3, axis=-1)
    else:
        rgb = label[..., :3]
    if rgb.dtype.kind not in "iu" or rgb.size and (rgb.min() < 0 or rgb.max() > 255):
        raise ValueError(f"colour label of dtype {label.dtype} has values outside 0-255")
    packed = (rgb[..., 0].astype(np.int64) << 16) | (rgb[..., 1].astype(np.int64) << 8) | rgb[..., 2].astype(np.int64)
    values, inverse = np.unique(packed, return_inverse=True)
    unknown = [] if other is not None else [v for v in values.tolist() if v not in colours]
    fallback = other if other is not None else 0
    mapped = np.array([colours.get(v, fallback) for v in values.tolist()], dtype=np.int64)
    names = [f"({v >> 16},{(v >> 8) & 255},{v & 255})" for v in unknown]
    return mapped[inverse].reshape(packed.shape), names


# ------------------------------------------------------------------------------------- contours


def rasterise_contour(path: Path, shape: tuple[int, int]) -> np.ndarray:
    """A text file of ``x y`` vertex rows (pixel coordinates; column 0 = x = column index) as a
    filled polygon of 1s on a ``shape`` grid (skimage's polygon rule, clipped to the grid)."""
    from skimage.draw import polygon

    try:
        points = np.loadtxt(path, ndmin=2, dtype=np.float64)
    except Exception as exc:
        raise ReadError(f"{path}: not a contour file of 'x y' rows ({type(exc).__name__}: {exc})") from exc
    if points.shape[1] != 2 or len(points) < 3:
        raise ReadError(f"{path}: a contour needs at least 3 rows of 2 numbers (x y), got shape {points.shape}")
    mask = np.zeros(shape, dtype=np.uint8)
    rows, cols = polygon(points[:, 1], points[:, 0], shape=shape)
    mask[rows, cols] = 1
    return mask


# ---------------------------------------------------------------------------------------- merge


def paint(shape: tuple[int, ...], layers, dtype=np.uint16) -> np.ndarray:
    """Paint ``(value, mask)`` layers in order onto zeros: a later layer overwrites an earlier one."""
    label = np.zeros(shape, dtype=dtype)
    for value, mask in layers:
        label[np.asarray(mask, dtype=bool)] = value
    return label


def relabel_sequential(label: np.ndarray, sources: list[str]) -> tuple[np.ndarray, list[str]]:
    """Instance ids renumbered 1..N in increasing order of the old ids (skimage's
    ``relabel_sequential``); ``sources[k - 1]`` names old id k, the result names the new ids."""
    present = np.unique(label)
    present = present[present != 0]
    lut = np.zeros(int(label.max()) + 1 if label.size else 1, dtype=label.dtype)
    lut[present] = np.arange(1, len(present) + 1, dtype=label.dtype)
    return lut[label], [sources[int(old) - 1] for old in present]

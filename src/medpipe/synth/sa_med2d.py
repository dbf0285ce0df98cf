"""A generated corpus in SA-Med2D-20M's distributed layout (demo data, tests, benchmarks/corpus_scale.py).

``SAMed2Dv1/images/<modality>--<source>--<case>--<axis>_<slice>.png`` (3-channel uint8 PNGs whose
channels are identical, like the release's), one binary 0/255 mask PNG per object
``SAMed2Dv1/masks/<image name>--<class>_<instance>.png`` at the image's size, and
``SAMed2Dv1/SAMed2D_v1.json`` mapping each ``images/<name>.png`` to its masks. Image sizes cycle
through the release's (512², 290×320, 181×258, 155×225, scaled to the largest size asked for);
1-15 objects per image, about 4.3 on average like the release. Written as the joined ``data.zip``
(nothing on disk but the archive) or as the unpacked folder.

Every image depends only on (seed, its number), so a corpus is reproducible. ``pool`` > 0 reuses
that many rendered images (with their masks) per size under new names: a 20 k image corpus is then
generated in seconds; ingest still reads, decodes and stores every image.
"""

from __future__ import annotations

import io
import json
import zipfile
from pathlib import Path

import numpy as np

RELEASE_SIZES = ((512, 512), (290, 320), (181, 258), (155, 225))  # the authors' sample files
SOURCES = (("ct_00", "AbdomenCT1K"), ("mr_t1", "BraTS2021"), ("x_ray", "crass"), ("ultrasound_00", "busi"),
           ("endoscopy_00", "kvasir_seg"), ("fundus_photography", "gamma"), ("dermoscopy_00", "isic2018_task1"),
           ("pet_00", "autoPET"))
MAX_OBJECTS = 15
_OBJECT_WEIGHTS = 0.79 ** np.arange(MAX_OBJECTS)  # 1..15 objects, mean ~4.3


def sizes_for(largest: int) -> list[tuple[int, int]]:
    """The release's image sizes scaled so the largest is ``largest`` pixels (at least 16)."""
    return [(max(16, round(h * largest / 512)), max(16, round(w * largest / 512))) for h, w in RELEASE_SIZES]


def _png(array: np.ndarray) -> bytes:
    from PIL import Image

    buffer = io.BytesIO()
    Image.fromarray(array).save(buffer, format="PNG", compress_level=1)
    return buffer.getvalue()


def render(seed: int, number: int, size: tuple[int, int]) -> tuple[bytes, list[bytes]]:
    """PNG bytes of one image (3 identical channels) and of its object masks (0/255)."""
    rng = np.random.default_rng([seed, number])
    h, w = size
    count = int(rng.choice(np.arange(1, MAX_OBJECTS + 1), p=_OBJECT_WEIGHTS / _OBJECT_WEIGHTS.sum()))
    yy, xx = np.mgrid[0:h, 0:w]
    grey = 40 + 30 * (yy / h) + rng.normal(0, 8, size)
    masks = []
    for _ in range(count):
        cy, cx = rng.uniform(0.1, 0.9) * h, rng.uniform(0.1, 0.9) * w
        ry, rx = rng.uniform(0.04, 0.2) * h, rng.uniform(0.04, 0.2) * w
        mask = ((yy - cy) / ry) ** 2 + ((xx - cx) / rx) ** 2 <= 1
        if not mask.any():
            mask[int(cy), int(cx)] = True
        grey[mask] += rng.uniform(50, 150)
        masks.append(_png(np.where(mask, 255, 0).astype(np.uint8)))
    grey = np.clip(grey, 0, 255).astype(np.uint8)
    return _png(np.repeat(grey[..., None], 3, axis=2)), masks


def image_name(number: int, per_case: int) -> str:
    prefix, source = SOURCES[(number // per_case) % len(SOURCES)]
    return f"{prefix}--{source}--case_{number // per_case:05d}--z_{number % per_case:04d}"


def write_corpus(out: str | Path, images: int, seed: int = 0, largest: int = 512, per_case: int = 5,
                 zipped: bool = True, pool: int = 0, method: int = zipfile.ZIP_DEFLATED) -> dict:
    """Write the corpus into ``out`` (``out/data.zip`` or ``out/SAMed2Dv1/``); returns counts."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    sizes = sizes_for(largest)
    index: dict[str, list[str]] = {}
    archive = zipfile.ZipFile(out / "data.zip.tmp", "w", compression=method, compresslevel=1) if zipped else None
    rendered: dict[tuple[int, int], tuple[bytes, list[bytes]]] = {}

    def put(name: str, data: bytes) -> None:
        if archive is not None:  # a fixed time stamp: the same corpus is the same bytes
            info = zipfile.ZipInfo(f"SAMed2Dv1/{name}", date_time=(1980, 1, 1, 0, 0, 0))
            info.compress_type = method
            archive.writestr(info, data, compresslevel=1 if method == zipfile.ZIP_DEFLATED else None)
        else:
            path = out / "SAMed2Dv1" / name
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_bytes(data)

    masks_total = 0
    for number in range(images):
        size = sizes[number % len(sizes)]
        key = (number % len(sizes), (number // len(sizes)) % pool) if pool else None
        if key is not None and key in rendered:
            image, masks = rendered[key]
        else:
            image, masks = render(seed, number, size)
            if key is not None:
                rendered[key] = (image, masks)
        name = image_name(number, per_case)
        put(f"images/{name}.png", image)
        listed = []
        for k, mask in enumerate(masks):
            mask_name = f"masks/{name}--{k % 7:04d}_{k // 7:03d}.png"
            put(mask_name, mask)
            listed.append(mask_name)
        index[f"images/{name}.png"] = listed
        masks_total += len(listed)
    put("SAMed2D_v1.json", json.dumps(index).encode())
    if archive is not None:
        archive.close()
        (out / "data.zip.tmp").replace(out / "data.zip")
    return {"images": images, "masks": masks_total, "sizes": [list(s) for s in sizes]}

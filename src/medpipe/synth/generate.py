"""Write one synthetic raw dataset: ``images/``, ``labels/`` and ``manifest.json`` under one folder.

File names follow the layout the ingest globs expect (``p000_00.png``; for volumes nnU-Net style
``p000_00_0000.nii.gz`` with label ``p000_00.nii.gz``). Every file has its own generator seeded from
``(seed, kind, patient, idx)``, so a file does not change when more patients are generated.
"""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
from tqdm import tqdm

from medpipe.errors import MedpipeError
from medpipe.files import write_bytes

from . import ct, dermoscopy, mri, ultrasound, writers, xray
from .base import KindSpec, Sample
from .shapes import image_rng, patient_rng

log = logging.getLogger(__name__)

KINDS: dict[str, KindSpec] = {spec.name: spec
                              for spec in (xray.SPEC, dermoscopy.SPEC, ultrasound.SPEC, ct.SPEC, mri.SPEC)}
MANIFEST = "manifest.json"


class SynthError(MedpipeError, ValueError):
    """Arguments that cannot produce a valid dataset (wrong size rank, too small, stale files)."""


def case_id(patient: int, idx: int) -> str:
    """``p000_00``: patient id before the first underscore, as the demo config's regex expects."""
    return f"p{patient:03d}_{idx:02d}"


def resolve_size(spec: KindSpec, size: list[int] | tuple[int, ...] | None) -> tuple[int, ...]:
    """The kind's default size, or ``size`` after checking its rank and lower bounds."""
    if not size:
        return spec.default_size
    size = tuple(int(s) for s in size)
    if len(size) != spec.ndim:
        raise SynthError(f"--size for kind {spec.name!r} needs {spec.ndim} values "
                         f"({'Z Y X' if spec.ndim == 3 else 'Y X'}), got {list(size)}")
    if any(s < m for s, m in zip(size, spec.min_size)):
        raise SynthError(f"--size {list(size)} is too small for kind {spec.name!r}: minimum is {list(spec.min_size)}")
    return size


def render_case(spec: KindSpec, seed: int, patient: int, idx: int, size: tuple[int, ...]) -> Sample:
    """The sample for one file; depends only on its own (seed, kind, patient, idx) and size."""
    anatomy = spec.sample_patient(patient_rng(seed, spec.name, patient), size)
    return spec.render(anatomy, image_rng(seed, spec.name, patient, idx), size)


def encode(spec: KindSpec, sample: Sample) -> tuple[bytes, bytes]:
    """File bytes of image and label in the kind's formats."""
    if spec.ndim == 3:
        return (writers.nifti_gz_bytes(sample.image, sample.spacing),
                writers.nifti_gz_bytes(sample.label, sample.spacing))
    image = writers.jpeg_bytes(sample.image) if spec.image_ext == ".jpg" else writers.png_bytes(sample.image)
    return image, writers.png_bytes(sample.label)


def _check_stale(out: Path, expected: set[str]) -> None:
    """Refuse to mix with files of an earlier, different generation: ingest globs would pick them up."""
    for sub in ("images", "labels"):
        folder = out / sub
        if not folder.is_dir():
            continue
        for path in sorted(folder.iterdir()):
            if f"{sub}/{path.name}" not in expected:
                raise SynthError(
                    f"{path}: not part of this generation (left from an earlier run?); "
                    f"remove {out} or choose another --out"
                )


def generate_dataset(
    out: str | Path,
    kind: str,
    seed: int,
    patients: int,
    images_per_patient: int,
    size: list[int] | tuple[int, ...] | None = None,
) -> dict:
    """Generate all files of one dataset into ``out``; returns the manifest written last."""
    if kind not in KINDS:
        raise SynthError(f"unknown kind {kind!r}; choose one of {sorted(KINDS)}")
    if seed < 0 or patients < 1 or images_per_patient < 1:
        raise SynthError(f"need seed >= 0, patients >= 1, images per patient >= 1; "
                         f"got {seed}, {patients}, {images_per_patient}")
    spec = KINDS[kind]
    size = resolve_size(spec, size)
    out = Path(out)
    cases = [(p, i, case_id(p, i)) for p in range(patients) for i in range(images_per_patient)]
    files = [
        {"case": cid, "patient": f"p{p:03d}", "image": f"images/{spec.image_name(cid)}",
         "label": f"labels/{spec.label_name(cid)}"}
        for p, i, cid in cases
    ]
    _check_stale(out, {f[k] for f in files for k in ("image", "label")})
    log.info("synth %s: %d patients x %d images, size %s -> %s", kind, patients, images_per_patient, size, out)

    counts = np.zeros(max(spec.classes) + 1, np.int64)
    spacing: tuple[float, ...] = ()
    for (p, i, _), entry in tqdm(list(zip(cases, files)), desc=f"synth {kind}", unit="file"):
        sample = render_case(spec, seed, p, i, size)
        image_bytes, label_bytes = encode(spec, sample)
        write_bytes(out / entry["image"], image_bytes)
        write_bytes(out / entry["label"], label_bytes)
        counts += np.bincount(sample.label.ravel(), minlength=len(counts))[: len(counts)]
        spacing = sample.spacing

    manifest = {
        "generator": "medpipe synth",
        "kind": kind,
        "ndim": spec.ndim,
        "seed": seed,
        "patients": patients,
        "images_per_patient": images_per_patient,
        "size": list(size),
        "spacing_mm": list(spacing),
        "image_format": spec.image_ext,
        "label_format": spec.label_ext,
        "classes": {str(k): v for k, v in spec.classes.items()},
        "label_voxels": {str(k): int(counts[k]) for k in range(len(counts))},
        "files": files,
    }
    write_bytes(out / MANIFEST, writers.json_bytes(manifest))
    log.info("synth %s: wrote %d cases and %s", kind, len(files), out / MANIFEST)
    return manifest

"""Named dataset layouts: how a dataset's distribution becomes cases, images and labels.

``files`` (the default) is the generic contract: globs, id regexes and the label rules of
``docs/data-format.md``. A named layout exists where those keys cannot express a distribution
(``sa_med2d``: a JSON index of millions of images, one mask file per object). Every layout offers
the same four functions, so ingest streams any of them into the same zarr stores:

``discover(dataset, spec)`` yields :class:`~medpipe.io.cases.CaseFiles` and
:class:`~medpipe.io.quarantine.QuarantineRow` items (a stream: a layout never needs the whole case
list in memory); ``read_image(case, spec, chunks)`` -> ``(array, ImageMeta)``;
``read_label(case, spec, image, image_meta, chunks)`` -> ``(array, ImageMeta, extra attributes)``;
``sources(case, spec)`` -> the ``source`` and ``sha256`` case attributes.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass

from medpipe.io import assemble
from medpipe.io.cases import CaseFiles, DatasetConfigError, discover_cases
from medpipe.io.quarantine import QuarantineRow


@dataclass(frozen=True)
class Layout:
    name: str
    discover: Callable[[str, dict], Iterator[CaseFiles | QuarantineRow]]
    read_image: Callable
    read_label: Callable
    sources: Callable


def _discover_files(dataset: str, spec: dict) -> Iterator[CaseFiles | QuarantineRow]:
    cases, rows = discover_cases(dataset, spec)
    yield from rows
    yield from cases


def _read_label_files(case, spec, image, image_meta, chunks):
    return assemble.read_case_label(case, spec, image_meta, chunks)


FILES = Layout("files", _discover_files, assemble.read_case_image, _read_label_files, assemble.source_attrs)


def get_layout(spec: dict, dataset: str = "") -> Layout:
    name = spec.get("layout", "files")
    if name == "files":
        return FILES
    if name == "sa_med2d":
        from medpipe.io.layouts import sa_med2d

        return sa_med2d.LAYOUT
    raise DatasetConfigError(f"datasets.{dataset}.layout: unknown layout {name!r} (known: files, sa_med2d)")

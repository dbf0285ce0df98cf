"""Ingest of the SA-Med2D corpus in parallel parts: plan -> parts -> gather (docs/data-format.md).

* **plan** (one job) streams the JSON index once (from ``data.zip`` or the folder) and writes one
  JSON-lines file per part: each image's key, its sorted mask names, its problem found by name (an
  escaping or invalid name, no masks), and for the zip where each member's bytes are. An image goes
  to part ``hash(case id) % parts``: fixed by the name, so the same release gives the same parts
  from the zip and from the folder. Only this job holds the zip's member table.
* **part** (one job per part, Snakemake ``scattergather``) reads its images and masks, merges the
  masks by the reference's rules (``medpipe.io.layouts.sa_med2d``), and writes its own folder
  (sharded flat arrays, columns, object table, quarantine rows), built as ``.partial-<pid>`` and
  renamed into place: a killed part leaves nothing that looks done and reruns alone.
* **gather** (one job) links the parts' arrays into the dataset store and writes the sorted case
  index (with each case's modality), the columns, the object table and the quarantine table.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
from dataclasses import asdict
from pathlib import Path

import numpy as np

from medpipe.data.packed import PartWriter, gather_parts, publish_folder
from medpipe.files import write_text
from medpipe.io.assemble import CaseProblem
from medpipe.io.cases import DatasetConfigError, case_id_problem, compile_regex
from medpipe.io.layouts import sa_med2d
from medpipe.io.layouts.sa_med2d_release import Reader, Source, ZipIndex, check_name, decode_png, find_source
from medpipe.io.paths import PathEscapeError
from medpipe.io.quarantine import QuarantineRow, write_quarantine
from medpipe.store import remove_stale

log = logging.getLogger(__name__)

PLAN_FILE = "plan.json"


def part_file(k: int) -> str:
    return f"part-{k:05d}.jsonl"


def part_of(case_id: str, parts: int) -> int:
    """The part (0-based) of an image: a stable hash of its name (BLAKE2b; CRC-32 is linear, so the
    names of one volume, which differ in a few digits, would share their CRC's low bits)."""
    return int.from_bytes(hashlib.blake2b(case_id.encode(), digest_size=8).digest(), "little") % parts


def plan_corpus(dataset: str, spec: dict, parts: int, out: str | Path) -> dict:
    """Stream the index once and write the plan folder ``out`` (module docstring); returns its summary."""
    if parts < 1:
        raise DatasetConfigError(f"ingest.parts: {parts} (at least 1)")
    out = Path(out)
    source = find_source(spec, dataset)
    include = compile_regex(spec, "include", (), dataset)
    patient_re = compile_regex(spec, "patient_id", ("patient",), dataset)
    archive = ZipIndex(source, dataset) if source.kind == "zip" else None  # the only read of the member table
    source = archive.source if archive is not None else source
    remove_stale(out)
    partial = out.with_name(f"{out.name}.partial-{os.getpid()}")
    if partial.exists():
        shutil.rmtree(partial)
    partial.mkdir(parents=True)
    handles = [open(partial / part_file(k), "w", encoding="utf-8") for k in range(parts)]
    counts, skipped = [0] * parts, 0
    try:
        index_handle = archive.index_handle() if archive is not None else None
        for key, masks in sa_med2d.iter_index(source.index_name, handle=index_handle):
            name = key.rsplit("/", 1)[-1]
            if include is not None and not include.search(name):
                skipped += 1
                continue
            record = _plan_entry(key, masks, name, source, archive, patient_re)
            k = part_of(record["case"], parts)
            handles[k].write(json.dumps(record, separators=(",", ":")) + "\n")
            counts[k] += 1
    except (sa_med2d.IndexError_, UnicodeDecodeError) as exc:
        raise DatasetConfigError(f"datasets.{dataset}: {exc}") from exc
    except BaseException:
        shutil.rmtree(partial, ignore_errors=True)
        raise
    finally:
        for handle in handles:
            handle.close()
        if archive is not None:
            archive.close()
    summary = {"dataset": dataset, "source": asdict(source), "parts": parts, "images": counts, "skipped": skipped}
    write_text(partial / PLAN_FILE, json.dumps(summary, indent=1) + "\n")
    publish_folder(partial, out)
    log.info("%s: planned %d images in %d parts from %s (%d left out by include)", dataset, sum(counts), parts,
             source.index_name, skipped)
    return summary


def _plan_entry(key, masks, name: str, source: Source, archive: ZipIndex | None, patient_re) -> dict:
    """One index entry as a plan record; a problem found by name is recorded, not raised."""
    case_id = name[: -len(".png")] if name.lower().endswith(".png") else name.rsplit(".", 1)[0]
    record = {"case": case_id, "key": key, "masks": [], "patient": sa_med2d.patient_of(case_id), "problem": None}
    try:
        problem = case_id_problem(case_id)
        if problem is None and (not isinstance(masks, list) or not all(isinstance(m, str) for m in masks)):
            problem = f"{source.index_name}: entry {key!r} is not a list of mask paths"
        if problem is None:
            record["key"] = check_name(key, source.index_name)
            record["masks"] = sorted(check_name(m, source.index_name) for m in masks)
            if not masks:
                problem = f"{source.index_name}: {key}: the index lists no mask for this image (empty label)"
        if problem is None and patient_re is not None:
            match = patient_re.search(name)
            if not (match and match.group("patient")):
                problem = f"{key}: file name does not match the patient_id regex {patient_re.pattern!r}"
            else:
                record["patient"] = match.group("patient")
    except PathEscapeError as exc:
        problem = f"refused: {exc}"
    record["problem"] = problem
    if problem is None and archive is not None:
        record["members"] = [m.to_list() if (m := archive.member(n)) is not None else None
                             for n in (record["key"], *record["masks"])]
    return record


def ingest_part(dataset: str, spec: dict, plan: str | Path, part: int, out: str | Path,
                image_shard: int | None = None) -> tuple[int, int]:
    """Ingest part ``part`` (0-based) of a plan into the part folder ``out``; returns (written, quarantined)."""
    plan, out = Path(plan), Path(out)
    summary = json.loads((plan / PLAN_FILE).read_text())
    if not 0 <= part < summary["parts"]:
        raise DatasetConfigError(f"{plan}: part {part + 1} of {summary['parts']} does not exist")
    source = Source(**summary["source"])
    reader = Reader(source)
    remove_stale(out)
    partial = out.with_name(f"{out.name}.partial-{os.getpid()}")
    if partial.exists():
        shutil.rmtree(partial)
    rows: list[QuarantineRow] = []
    seen: set[str] = set()
    try:
        writer = PartWriter(partial, part, summary["parts"], **({"image_shard": image_shard} if image_shard else {}))
        with open(plan / part_file(part), encoding="utf-8") as lines:
            for line in lines:
                record = json.loads(line)
                case_id, where = record["case"], reader.where(record["key"])
                problem = record["problem"]
                if problem is None and case_id in seen:
                    problem = f"duplicate case id {case_id!r}: listed again ({where})"
                if problem is None:
                    try:
                        image, label = _read_case(record, reader)
                    except (CaseProblem, PathEscapeError) as exc:
                        problem = str(exc)
                    except Exception as exc:  # an unforeseen failure of one case must not stop the part
                        log.exception("%s: case %r failed unexpectedly", dataset, case_id)
                        problem = f"{where}: unexpected error ({type(exc).__name__}: {exc})"
                if problem is not None:
                    log.warning("%s: quarantined case %r: %s", dataset, case_id, problem)
                    rows.append(QuarantineRow(dataset, case_id, where,
                                              ";".join(reader.where(m) for m in record["masks"]), problem))
                    continue
                seen.add(case_id)
                writer.add(case_id, record["patient"], sa_med2d.modality_of(case_id, spec["modality"]), image, label)
        rows.sort(key=lambda r: (r.case_id, r.image, r.label))
        writer.finish(rows)
        publish_folder(partial, out)
    finally:
        reader.close()
        if partial.exists():
            shutil.rmtree(partial, ignore_errors=True)
    log.info("%s part %d/%d: %d cases written to %s, %d quarantined", dataset, part + 1, summary["parts"],
             writer.count, out, len(rows))
    return writer.count, len(rows)


def _read_case(record: dict, reader: Reader) -> tuple[np.ndarray, np.ndarray]:
    """The image and instance label of one plan record (``CaseProblem`` when it cannot be ingested)."""
    members = record.get("members") or [None] * (1 + len(record["masks"]))
    where = reader.where(record["key"])
    image = decode_png(reader.read(record["key"], members[0], "image"), where)
    if image.dtype != np.uint8:
        raise CaseProblem(f"{where}: {image.dtype} image; the packed corpus store holds 8-bit images")
    if image.size == 0 or image.min() == image.max():
        raise CaseProblem(f"{where}: constant image (every pixel {image.flat[0] if image.size else '-'})")
    names = record["masks"]

    def read_mask(k: int) -> np.ndarray:
        mask = decode_png(reader.read(names[k], members[k + 1], "mask"), reader.where(names[k]))
        return sa_med2d.foreground_of(mask, mask.ndim == 3)

    label, _ = sa_med2d.merge_masks(record["case"], names, image.shape[:2], read_mask, where)
    return image, label


def gather_corpus(dataset: str, spec: dict, parts: list[str | Path], out: str | Path, quarantine: str | Path,
                  allow_empty: bool = False) -> int:
    """The dataset store ``out`` and quarantine table from the finished part folders; returns the case count."""
    from medpipe.data.ingest import NoCasesError

    attrs = {"name": dataset, "modality": spec["modality"], "ndim": 2,
             "classes": {str(k): v for k, v in sorted(spec["classes"].items(), key=lambda kv: int(kv[0]))},
             "label_kind": spec.get("label_kind", "instances")}
    from medpipe.data.packed import read_part

    total = sum(len(read_part(Path(p))[0]["case_id"]) for p in parts)
    if not total and not allow_empty:
        rows = [row for p in parts for row in read_part(Path(p))[2]]
        write_quarantine(quarantine, sorted(rows, key=lambda r: (r.case_id, r.image, r.label)))
        raise NoCasesError(f"datasets.{dataset}: no case could be ingested ({len(rows)} quarantined, listed in "
                           f"{quarantine}); {out} was not written (an existing store is kept). If the dataset is "
                           "meant to be empty, set ingest.allow_empty: true")
    count, rows = gather_parts([Path(p) for p in parts], Path(out), attrs)
    write_quarantine(quarantine, sorted(rows, key=lambda r: (r.case_id, r.image, r.label)))
    log.info("%s: %d cases in %s from %d parts, %d quarantined (listed in %s)", dataset, count, out, len(parts),
             len(rows), quarantine)
    return count

"""Ingest of the SA-Med2D corpus in parallel parts: plan -> parts -> gather (docs/data-format.md).

* **plan** (one job) streams the JSON index once (from ``data.zip`` or the folder) and writes one
  JSON-lines file per part: each image's key, its sorted mask names, its problem found by name (an
  escaping or invalid name, no masks). For the zip it first streams the central directory once and
  writes where each member's bytes are into the member file of its image's part (constant memory:
  no job ever holds the whole member table). An image goes to part ``hash(case id) % parts``: fixed
  by the name, so the same release gives the same plan from the zip and from the folder.
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

from medpipe.data.faults import raise_if_fault
from medpipe.data.packed import PartWriter, gather_parts, publish_folder
from medpipe.files import write_text
from medpipe.io.assemble import CaseProblem
from medpipe.io.cases import DatasetConfigError, case_id_problem, compile_regex
from medpipe.io.layouts import sa_med2d
from medpipe.io.layouts.sa_med2d_release import (
    BASE,
    INDEX,
    Member,
    Reader,
    Source,
    check_name,
    decode_png,
    find_source,
    iter_members,
    open_member_text,
    owner_of,
)
from medpipe.io.paths import PathEscapeError, member_name
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


def member_file(k: int) -> str:
    """Per part: ``offset, compressed, size, method, crc, name`` of its zip members, tab-separated."""
    return f"members-{k:05d}.tsv"


def plan_corpus(dataset: str, spec: dict, parts: int, out: str | Path) -> dict:
    """Stream the index once and write the plan folder ``out`` (module docstring); returns its summary."""
    if parts < 1:
        raise DatasetConfigError(f"ingest.parts: {parts} (at least 1)")
    out = Path(out)
    source = find_source(spec, dataset)
    include = compile_regex(spec, "include", (), dataset)
    patient_re = compile_regex(spec, "patient_id", ("patient",), dataset)
    remove_stale(out)
    partial = out.with_name(f"{out.name}.partial-{os.getpid()}")
    if partial.exists():
        shutil.rmtree(partial)
    partial.mkdir(parents=True)
    counts, skipped, strays = [0] * parts, 0, {}
    try:
        index_handle = None
        if source.kind == "zip":
            source, index_member = _plan_members(source, parts, partial, dataset)
            index_handle = open_member_text(source.path, f"{source.base}/{INDEX}".lstrip("/"), index_member)
        handles = [open(partial / part_file(k), "w", encoding="utf-8") for k in range(parts)]
        try:
            for key, masks in sa_med2d.iter_index(source.index_name, handle=index_handle):
                name = key.rsplit("/", 1)[-1]
                if include is not None and not include.search(name):
                    skipped += 1
                    continue
                record = _plan_entry(key, masks, name, source, patient_re)
                k = part_of(record["case"], parts)
                handles[k].write(json.dumps(record, separators=(",", ":")) + "\n")
                counts[k] += 1
                for member in (record["key"], *record["masks"]) if record["problem"] is None else ():
                    if owner_of(member) != record["case"]:  # not named after its image: placed by the index
                        strays[f"{source.base}/{member}".lstrip("/")] = k
        finally:
            for handle in handles:
                handle.close()
        if strays:
            _place_strays(source, strays, partial)
    except (sa_med2d.CorpusIndexError, UnicodeDecodeError, CaseProblem) as exc:
        shutil.rmtree(partial, ignore_errors=True)
        raise DatasetConfigError(f"datasets.{dataset}: {exc}") from exc
    except BaseException:
        shutil.rmtree(partial, ignore_errors=True)
        raise
    summary = {"dataset": dataset, "source": asdict(source), "parts": parts, "images": counts, "skipped": skipped,
               "stray_members": len(strays)}
    write_text(partial / PLAN_FILE, json.dumps(summary, indent=1) + "\n")
    publish_folder(partial, out)
    log.info("%s: planned %d images in %d parts from %s (%d left out by include)", dataset, sum(counts), parts,
             source.index_name, skipped)
    return summary


def _plan_members(source: Source, parts: int, folder: Path, dataset: str) -> tuple[Source, Member]:
    """One stream over the zip's central directory: each image or mask member's place goes to the
    member file of its image's part (by name); returns the source with the index's folder, and the
    index member. Memory: one block of the directory, whatever the number of members."""
    handles = [open(folder / member_file(k), "w", encoding="utf-8") for k in range(parts)]
    candidates: dict[str, Member] = {}
    try:
        for name, where in iter_members(source.path):
            owner = owner_of(name)
            if owner is not None:
                if "\n" not in name and "\r" not in name:  # (such a name cannot be a line: not found, quarantined)
                    handles[part_of(owner, parts)].write(_member_line(name, where))
            elif name == INDEX or name.endswith("/" + INDEX):
                candidates[name] = Member(*where)
    finally:
        for handle in handles:
            handle.close()
    if not candidates:
        raise DatasetConfigError(f"datasets.{dataset}.root: {source.path} holds no {INDEX}")
    name = f"{BASE}/{INDEX}" if f"{BASE}/{INDEX}" in candidates else sorted(candidates)[0]
    base = member_name(name.rsplit("/", 1)[0], source.path) if "/" in name else ""
    return Source("zip", source.path, base), candidates[name]


def _place_strays(source: Source, strays: dict[str, int], folder: Path) -> None:
    """Members the index lists under a name that does not name their image: a second pass over the
    directory appends them to the member file of the part the index put them in (none in the release)."""
    handles: dict[int, object] = {}
    try:
        for name, where in iter_members(source.path):
            k = strays.get(name)
            if k is not None and "\n" not in name and "\r" not in name:
                if k not in handles:
                    handles[k] = open(folder / member_file(k), "a", encoding="utf-8")
                handles[k].write(_member_line(name, where))
    finally:
        for handle in handles.values():
            handle.close()


def _member_line(name: str, where: tuple) -> str:
    return "\t".join(map(str, where)) + f"\t{name}\n"


def read_members(plan: Path, part: int) -> dict[str, list[int]]:
    """The zip member places of one part (its images and masks only: a part never holds the member
    table of the whole archive)."""
    members = {}
    with open(plan / member_file(part), encoding="utf-8", newline="\n") as lines:
        for line in lines:
            *where, name = line[:-1].split("\t", 5)
            members[name] = [int(value) for value in where]
    return members


def _plan_entry(key, masks, name: str, source: Source, patient_re) -> dict:
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
    return record


def ingest_part(dataset: str, spec: dict, plan: str | Path, part: int, out: str | Path,
                image_shard: int | None = None) -> tuple[int, int]:
    """Ingest part ``part`` (0-based) of a plan into the part folder ``out``; returns (written, quarantined)."""
    plan, out = Path(plan), Path(out)
    summary = json.loads((plan / PLAN_FILE).read_text())
    if not 0 <= part < summary["parts"]:
        raise DatasetConfigError(f"{plan}: part {part + 1} of {summary['parts']} does not exist")
    source = Source(**summary["source"])
    reader = Reader(source, read_members(plan, part) if source.kind == "zip" else None)
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
                        raise_if_fault(exc, dataset, case_id)  # ... unless it is the machine's (disk, memory)
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
    where = reader.where(record["key"])
    image = decode_png(reader.read(record["key"], "image"), where)
    if image.dtype != np.uint8:
        raise CaseProblem(f"{where}: {image.dtype} image; the packed corpus store holds 8-bit images")
    if image.size == 0 or image.min() == image.max():
        raise CaseProblem(f"{where}: constant image (every pixel {image.flat[0] if image.size else '-'})")
    names = record["masks"]

    def read_mask(k: int) -> np.ndarray:
        mask = decode_png(reader.read(names[k], "mask"), reader.where(names[k]))
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

"""The quarantine table: one row per case that ingest refused, with the reason.

A bad case must not stop a dataset, but it must not disappear silently either: the table is a
pipeline output next to the store, written atomically and with its header even when empty, so a
reviewer (or a test) can see exactly which files were left out and why.
"""

from __future__ import annotations

import csv
from dataclasses import astuple, dataclass, fields
from pathlib import Path

from medpipe.files import atomic_path


@dataclass(frozen=True)
class QuarantineRow:
    dataset: str
    case_id: str
    image: str
    label: str
    problem: str


COLUMNS = tuple(f.name for f in fields(QuarantineRow))


#: the most characters of one name or message in a log line or a table cell (a 50 MB name in an
#: index must not become a 50 MB log line)
MAX_TEXT = 4000


def shorten(value, limit: int = MAX_TEXT) -> str:
    """``value`` as text of at most about ``limit`` characters: head ... (N characters) ... tail."""
    text = str(value)
    if len(text) <= limit:
        return text
    keep = limit // 2 - 20
    return f"{text[:keep]} ...({len(text)} characters)... {text[-keep:]}"


def _clean(value: str) -> str:
    """Tabs and newlines would break the TSV; problems are free text, so flatten them (and shorten them)."""
    return " ".join(shorten(value).split())


def write_quarantine(path: str | Path, rows: list[QuarantineRow]) -> Path:
    """Write ``rows`` as a TSV with header ``dataset case_id image label problem`` (atomically)."""
    path = Path(path)
    with atomic_path(path) as tmp, open(tmp, "w", newline="") as handle:
        writer = csv.writer(handle, delimiter="\t", lineterminator="\n", quoting=csv.QUOTE_MINIMAL)
        writer.writerow(COLUMNS)
        for row in rows:
            writer.writerow([_clean(v) for v in astuple(row)])
    return path


def read_quarantine(path: str | Path) -> list[QuarantineRow]:
    with open(path, newline="") as handle:
        reader = csv.reader(handle, delimiter="\t")
        header = next(reader)
        if tuple(header) != COLUMNS:
            raise ValueError(f"{path}: not a quarantine table (header {header})")
        return [QuarantineRow(*row) for row in reader]

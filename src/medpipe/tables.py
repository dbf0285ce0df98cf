"""Result tables passed from the interactive evaluation to the aggregation: columns, reading, checks.

The columns are the interface between the two stages (neither imports the other). 2D: one row per
image, class and prediction with the union Dice of the class (the paper's number), and one row per
object and prediction with the object's own Dice (for NoC); 3D: one row per object and grid point.
Rows are always keyed by dataset, case id, class (and object), never by position in a list, so two
models' results are paired by what they describe.
"""

from __future__ import annotations

from pathlib import Path

import pandas as pd

from medpipe import files
from medpipe.errors import MedpipeError

#: 2D, per image and class: ``dice`` of the union of the class's predicted objects vs the class mask
COLUMNS_2D = ["dataset", "case", "class_id", "class", "start", "masks", "iteration", "dice", "n_objects", "seed",
              "model"]
KEYS_2D = ["dataset", "case", "class_id", "start", "masks", "iteration", "seed"]
#: 2D, per object: ``dice`` of the object's own prediction vs its mask
COLUMNS_2D_OBJECTS = ["dataset", "case", "class_id", "class", "object", "start", "masks", "iteration", "dice", "seed",
                      "model"]
KEYS_2D_OBJECTS = ["dataset", "case", "class_id", "object", "start", "masks", "iteration", "seed"]
COLUMNS_3D = ["dataset", "split", "case", "class_id", "class", "object", "z_start", "start", "iou_threshold",
              "projection", "box_extension", "dice", "n_slices", "seed", "model"]
GRID = ["iou_threshold", "projection", "box_extension"]


class MissingResultError(MedpipeError, RuntimeError):
    """A result the protocol must have produced is absent (never silently shift a pairing)."""


def read_result_table(path, columns=None) -> pd.DataFrame:
    """Read a result table (ids stay text: :func:`medpipe.files.read_tsv`); ``columns`` that must be
    present are checked, naming the file."""
    path = Path(path)
    if not path.is_file():
        raise MissingResultError(f"{path}: result table does not exist")
    frame = files.read_tsv(path)
    missing = [c for c in (columns or []) if c not in frame.columns]
    if missing:
        raise MissingResultError(f"{path}: result table lacks columns {missing}")
    return frame


def check_complete(frame: pd.DataFrame, expected: pd.DataFrame, keys: list[str], where: str) -> None:
    """Raise unless every key row of ``expected`` appears in ``frame`` exactly once."""
    dup = frame.duplicated(keys)
    if dup.any():
        raise MissingResultError(f"{where}: {int(dup.sum())} duplicated result rows, "
                                 f"e.g. {frame[dup].iloc[0][keys].to_dict()}")
    merged = expected[keys].merge(frame[keys], on=keys, how="left", indicator=True)
    absent = merged[merged["_merge"] == "left_only"]
    if len(absent):
        raise MissingResultError(
            f"{where}: {len(absent)} expected results are missing, e.g. {absent.iloc[0][keys].to_dict()}"
        )

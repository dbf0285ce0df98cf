"""Leakage-free, stable train/val/test splits.

Rules (docs/fidelity.md, "Splits"):
- grouped: all cases of a patient land in one split (the group key is dataset + patient id);
- stratified: modalities are visited one after the other (sorted by name) and each patient group
  goes to the split furthest below its target over all cases assigned so far, so the whole table
  is within one patient group of its fractions and each modality within two (a dataset, one
  modality, within one); many small modalities together still fill a small split;
- seeded and deterministic: patients are visited in the order of a keyed hash of (seed, group),
  which does not depend on Python's hash seed, file order or the other cases present;
- stable: assignments read from an earlier table are kept, so adding cases never moves old ones.
  The split rules keep a *ledger* of every assignment ever made (under the current seed and
  fractions): it only grows, so a case that is absent for a run (a file moved, a share not
  mounted) gets its old split back when it returns. A dataset that lost more than
  ``splits.max_missing`` of its ledger's cases is an error, not a smaller split
  (docs/reliability.md).

The finetuning corpus is the union of every dataset with role ``finetune``. A case that is in the
test split of its own dataset is held out of the corpus (split ``test``) when that dataset is also
evaluated (a role besides ``finetune``), so finetuning never sees an evaluation test image; a
dataset whose only role is ``finetune`` gives every case to the corpus (the paper trains on 90 % of
SA-Med2D-20M). The corpus fractions apply to the other, *free* cases. Paper variants
(full = 90/10, p60 = 50 % train + 10 % val) are nested subsets of the corpus train/val parts,
recorded as ``in_<variant>`` columns.

Scale: the corpus has millions of images (SA-Med2D-20M). Cases are therefore held as numpy
arrays (:class:`CaseTable`: byte strings and integer codes, no Python object per case), read from
the stores' case index, grouped and assigned with numpy (Python loops run over patient groups,
not cases), and tables and ledgers are read and written in blocks. The pandas functions
(:func:`assign_splits`, :func:`select_variant`) are thin wrappers for small tables and tests; both
paths give the same assignment.

Modules: ``common`` (names, errors, hashing), ``table`` (case tables as numpy arrays, block-wise
table IO, the one split-table reader), ``assign`` (groups -> splits, corpus variants), ``make``
(the split tables of a dataset and of the corpus, with the ledger).
"""

from medpipe.splits.assign import assign_codes, assign_splits, fixed_from_table, select_variant, variant_mask
from medpipe.splits.common import COLUMNS, SPLITS, MissingCasesError, SplitError
from medpipe.splits.make import evaluated_datasets, split_corpus, split_dataset
from medpipe.splits.table import (
    CaseTable,
    Fixed,
    cases_of_store,
    read_split_table,
    read_table,
    split_case_ids,
    write_table,
)

__all__ = [
    "COLUMNS",
    "CaseTable",
    "Fixed",
    "MissingCasesError",
    "SPLITS",
    "SplitError",
    "assign_codes",
    "assign_splits",
    "cases_of_store",
    "evaluated_datasets",
    "fixed_from_table",
    "read_split_table",
    "read_table",
    "select_variant",
    "split_case_ids",
    "split_corpus",
    "split_dataset",
    "variant_mask",
    "write_table",
]

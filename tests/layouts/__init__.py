"""Generated miniatures of the study datasets as their publishers distribute them (issue 14).

One module per dataset; each has ``make(root, seed=0, defects=()) -> Expected`` writing the
miniature inside ``root`` (which stands for ``/path/to/data/<FOLDER>/`` of config/study.yaml),
``FOLDER``, ``ENTRIES`` (the study.yaml entries it serves) and ``DEFECTS`` (named bad inputs).
API and per-dataset assumptions: docs in each module and /work/notes/issue14/MINIATURES.md.
"""

from __future__ import annotations

from pathlib import Path
from types import ModuleType

from layouts import (
    camus,
    cbis_ddsm,
    dca1,
    duke_liver,
    han_seg,
    hil_toothseg,
    isic,
    jnu_ifm,
    kits,
    leg_3d_us,
    lgg_mri,
    m2caiseg,
    microusp,
    montgomery,
    oasis,
    oimhs,
    osic_pulmofib,
    papila,
    piccolo,
    sa_med2d,
    sega,
    segthy,
    siim_acr,
    spider,
    toothfairy,
    uwaterloo_skin,
)
from layouts.expected import PROBLEM_KINDS, Case, Entry, Expected, Problem

GENERATORS: dict[str, ModuleType] = {module.NAME: module for module in (
    sa_med2d, camus, uwaterloo_skin, montgomery, sega, duke_liver, piccolo, cbis_ddsm, dca1, papila, jnu_ifm,
    siim_acr, m2caiseg, toothfairy, spider, han_seg, microusp, lgg_mri, kits, segthy, osic_pulmofib, oimhs, isic,
    hil_toothseg, oasis, leg_3d_us,
)}

# study.yaml entry name -> generator module
BY_ENTRY: dict[str, ModuleType] = {entry: module for module in GENERATORS.values() for entry in module.ENTRIES}


def make_all(data_root: str | Path, seed: int = 0) -> dict[str, Expected]:
    """Every miniature at ``data_root/<FOLDER>`` (so ``/path/to/data`` -> ``data_root``)."""
    return {name: module.make(Path(data_root) / module.FOLDER, seed) for name, module in GENERATORS.items()}


__all__ = ["BY_ENTRY", "GENERATORS", "PROBLEM_KINDS", "Case", "Entry", "Expected", "Problem", "make_all"]

"""The layers of ``src/medpipe``, and a check that no module imports upward (the one place this rule lives).

Stages (one per pipeline step) import what lies below them, never each other; the foundation imports no
stage; the entry points on top may import anything. Every module of the package is placed here, so a
new one must be given a layer. Lazy imports inside functions count too.
"""

from __future__ import annotations

import ast
from pathlib import Path

SRC = Path(__file__).resolve().parents[1] / "src"

TOP = "top"  # the command line and the workflow's views: may import anything
STAGE = "stage"
FOUNDATION = "foundation"

LAYERS = {
    # entry points: the `medpipe` command, and what the workflow reads while it parses
    "__main__": TOP, "cli": TOP, "checkdata": TOP, "placeholders": TOP,
    # stages: one package per step of the pipeline
    "synth": STAGE, "data": STAGE, "finetune": STAGE, "export": STAGE, "interactive": STAGE, "semantic": STAGE,
    "aggregate": STAGE,
    # foundation: shared by the stages
    "errors": FOUNDATION, "files": FOUNDATION, "config": FOUNDATION, "schemas": FOUNDATION, "io": FOUNDATION,
    "store": FOUNDATION, "splits": FOUNDATION, "tables": FOUNDATION, "metrics": FOUNDATION, "losses": FOUNDATION,
    "prompts": FOUNDATION, "models": FOUNDATION, "hardware": FOUNDATION, "runlock": FOUNDATION,
    "preemption": FOUNDATION, "run_settings": FOUNDATION, "planning": FOUNDATION,
    # the object-table format: written by ingest, read by the store and by finetuning
    "data.objects": FOUNDATION,
}
MAY_IMPORT = {TOP: {TOP, STAGE, FOUNDATION}, STAGE: {FOUNDATION}, FOUNDATION: {FOUNDATION}}


def unit(dotted: str) -> str | None:
    """The key of LAYERS that places ``medpipe.<dotted>`` (the longest prefix); None for the package itself."""
    parts = dotted.split(".")
    for n in range(len(parts), 0, -1):
        if ".".join(parts[:n]) in LAYERS:
            return ".".join(parts[:n])
    return None


def imported_modules(path: Path, module: str) -> set[str]:
    """``medpipe.*`` names that ``path`` imports (with the names of ``from x import y``), relative imports resolved."""
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    names = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parts = package.split(".")
                base = ".".join(parts[: len(parts) - node.level + 1] + ([node.module] if node.module else []))
            names |= {base} | {f"{base}.{alias.name}" for alias in node.names}
    return {name.removeprefix("medpipe.") for name in names if name.startswith("medpipe.")}


def modules():
    for path in sorted((SRC / "medpipe").rglob("*.py")):
        dotted = ".".join(path.relative_to(SRC).with_suffix("").parts).removesuffix(".__init__")
        yield path, dotted


def test_every_module_has_a_layer():
    unplaced = [dotted for _, dotted in modules()
                if dotted != "medpipe" and unit(dotted.removeprefix("medpipe.")) is None]
    assert not unplaced, f"give these modules a layer in tests/test_layers.py: {unplaced}"


def test_no_module_imports_upward_or_across_stages():
    wrong = []
    for path, dotted in modules():
        own = unit(dotted.removeprefix("medpipe."))
        if own is None:
            continue
        for name in imported_modules(path, dotted):
            other = unit(name)
            if other is None or other == own or other.startswith(f"{own}.") or own.startswith(f"{other}."):
                continue  # the package itself, or within one unit
            if LAYERS[other] not in MAY_IMPORT[LAYERS[own]] or (LAYERS[own] == STAGE and LAYERS[other] == STAGE):
                wrong.append(f"{dotted} ({LAYERS[own]}) imports medpipe.{name} ({LAYERS[other]})")
    assert not wrong, "\n".join(sorted(set(wrong)))


def test_the_check_sees_an_upward_import(tmp_path):
    """The check is not vacuous: a foundation module importing a stage, lazily, is found."""
    path = tmp_path / "specs.py"
    path.write_text("def f():\n    from medpipe.finetune.trainer import train\n")
    names = imported_modules(path, "medpipe.models.specs")
    assert "finetune.trainer" in names and LAYERS[unit("finetune.trainer")] not in MAY_IMPORT[LAYERS["models"]]
    relative = tmp_path / "rel.py"
    relative.write_text("from ..finetune import data\n")
    assert "finetune.data" in imported_modules(relative, "medpipe.models.rel")

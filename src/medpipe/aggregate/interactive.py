"""The interactive results as tables and paper-style figures (``medpipe aggregate-interactive``).

Inputs are the tables of ``eval2d`` (per image and class: the union Dice, the paper's number; per
object: for NoC) and ``eval3d``. Every summary row keeps the keys (model, dataset, start, masks,
iteration / result) of the rows it averages, and the figures are drawn only from the summary tables
written beside them, so each plotted number can be traced to a table row and from there to the rows
of one case.

Tables (``--tables``): ``interactive2d.tsv`` (all union rows), ``interactive2d_objects.tsv`` (all
per-object rows), ``interactive2d_summary.tsv`` (dataset means of the union Dice with 95% bootstrap
CIs per iteration: images -> class -> dataset), ``interactive2d_noc.tsv`` (NoC@85/90 from the
per-object Dice), ``interactive2d_difference.tsv`` (per-dataset difference of the union Dice to the
reference model, paired by case and class), ``interactive2d_comparisons.tsv`` (the configured
comparisons of the union Dice, paired, with CIs: :mod:`medpipe.aggregate.comparisons`),
``interactive3d.tsv`` and ``interactive3d_summary.tsv``.
Figures (``--figures``, PNG + SVG): ``fig3a_dice_per_iteration``, ``fig3b_difference``,
``fig1b_interactive2d``, ``fig1c_interactive3d``, ``fig7b_mask_prompts``.
"""

from __future__ import annotations

import logging
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
from matplotlib.ticker import MaxNLocator  # noqa: E402

from medpipe.aggregate.comparisons import comparison_table  # noqa: E402
from medpipe.files import atomic_path, write_tsv  # noqa: E402
from medpipe.metrics import bootstrap_dataset_mean, noc_per_object  # noqa: E402
from medpipe.models.specs import model_specs  # noqa: E402
from medpipe.tables import COLUMNS_2D, COLUMNS_2D_OBJECTS, KEYS_2D, MissingResultError, read_result_table  # noqa: E402

log = logging.getLogger(__name__)


def summarize_2d(rows: pd.DataFrame, n_boot: int, seed: int) -> pd.DataFrame:
    """Dataset mean of the union Dice (image -> class -> dataset) with a 95% case-bootstrap CI."""
    out = []
    for key, group in rows.groupby(["model", "dataset", "start", "masks", "iteration"], sort=True):
        mean, low, high = bootstrap_dataset_mean(group, n_boot=n_boot, seed=seed)
        out.append({**dict(zip(["model", "dataset", "start", "masks", "iteration"], key)), "dice": mean,
                    "ci_low": low, "ci_high": high, "n_cases": group["case"].nunique(), "n_rows": len(group)})
    return pd.DataFrame(out)


def summarize_noc(rows: pd.DataFrame, thresholds, n_boot: int, seed: int) -> pd.DataFrame:
    """NoC@t from the per-object Dice: per object, then object -> case -> class -> dataset."""
    per_object = noc_per_object(rows, thresholds)
    out = []
    for key, group in per_object.groupby(["model", "dataset", "start", "masks"], sort=True):
        entry = dict(zip(["model", "dataset", "start", "masks"], key))
        for t in thresholds:
            column = f"noc{int(round(t * 100))}"
            mean, low, high = bootstrap_dataset_mean(group, value=column, n_boot=n_boot, seed=seed)
            entry.update({column: mean, f"{column}_ci_low": low, f"{column}_ci_high": high})
        entry.update(cap=int(group["cap"].max()), n_objects=len(group))
        out.append(entry)
    return pd.DataFrame(out)


def paired_difference(rows: pd.DataFrame, reference: str) -> pd.DataFrame:
    """Union Dice minus the reference model's Dice for the same case/class/setting.

    Rows are paired on their keys (dataset, case, class, start, masks, iteration, seed); a key
    present for one model and missing for the other raises, it is never dropped or shifted.
    """
    if reference not in set(rows["model"]):
        raise MissingResultError(f"reference model {reference!r} has no 2D results "
                                 f"(models: {sorted(set(rows['model']))})")
    ref = rows[rows["model"] == reference][KEYS_2D + ["dice"]]
    parts = []
    for model, group in rows.groupby("model", sort=False):
        merged = group.merge(ref, on=KEYS_2D, how="outer", suffixes=("", "_ref"), indicator=True)
        missing = merged[merged["_merge"] != "both"]
        if len(missing):
            side = "model" if (missing["_merge"] == "right_only").any() else "reference"
            example = missing.iloc[0][KEYS_2D].to_dict()
            raise MissingResultError(f"{model} vs {reference}: {len(missing)} results have no partner "
                                     f"({side} lacks e.g. {example})")
        merged["diff"] = merged["dice"] - merged["dice_ref"]
        merged["reference"] = reference
        parts.append(merged.drop(columns="_merge"))
    return pd.concat(parts, ignore_index=True)


def summarize_difference(rows: pd.DataFrame, reference: str) -> pd.DataFrame:
    """Per dataset, start and stage (initial = iteration 0, final = last): mean paired difference."""
    paired = paired_difference(rows, reference)
    last = paired["iteration"].max()
    paired = paired[paired["iteration"].isin([0, last])].copy()
    paired["stage"] = np.where(paired["iteration"] == 0, "initial", "final")
    out = []
    for key, group in paired.groupby(["model", "reference", "dataset", "start", "masks", "stage", "iteration"],
                                     sort=True):
        per_case = group.groupby(["class_id", "case"])["diff"].mean().groupby(level="class_id").mean()
        out.append({**dict(zip(["model", "reference", "dataset", "start", "masks", "stage", "iteration"], key)),
                    "dice_difference": float(per_case.mean()), "n_rows": len(group)})
    return pd.DataFrame(out)


def summarize_3d(rows: pd.DataFrame, n_boot: int, seed: int) -> pd.DataFrame:
    out = []
    keys = ["model", "dataset", "start", "result", "iou_threshold", "projection", "box_extension"]
    if rows.empty:
        return pd.DataFrame(columns=keys + ["dice", "ci_low", "ci_high", "n_cases"])
    selected = rows[~rows["result"].str.startswith("oracle")]
    for key, group in selected.groupby(keys, sort=True):
        mean, low, high = bootstrap_dataset_mean(group, n_boot=n_boot, seed=seed)
        out.append({**dict(zip(keys, key)), "dice": mean, "ci_low": low, "ci_high": high,
                    "n_cases": group["case"].nunique()})
    for key, group in rows[rows["result"].str.startswith("oracle")].groupby(["model", "dataset", "start", "result"],
                                                                            sort=True):
        mean, low, high = bootstrap_dataset_mean(group, n_boot=n_boot, seed=seed)
        out.append({**dict(zip(["model", "dataset", "start", "result"], key)), "iou_threshold": np.nan,
                    "projection": "per-volume", "box_extension": np.nan, "dice": mean, "ci_low": low, "ci_high": high,
                    "n_cases": group["case"].nunique()})
    return pd.DataFrame(out)


# ---- figures --------------------------------------------------------------------------------------


def _save(fig, folder: Path, name: str) -> list[Path]:
    """Save PNG and SVG atomically (temp name in the same folder, then rename)."""
    paths = []
    for ext in ("png", "svg"):
        path = folder / f"{name}.{ext}"
        with atomic_path(path) as tmp:
            fig.savefig(tmp, dpi=150, bbox_inches="tight")
        paths.append(path)
    plt.close(fig)
    return paths


def _overall(summary: pd.DataFrame, keys) -> pd.DataFrame:
    """Mean over datasets of the dataset means (the paper's 'average over datasets')."""
    return summary.groupby(keys, sort=False)["dice"].mean().reset_index()


def fig3a(summary: pd.DataFrame, models, folder: Path, masks: str):
    data = _overall(summary[summary["masks"] == masks], ["model", "start", "iteration"])
    starts = [s for s in ("point", "box") if s in set(data["start"])]
    fig, axes = plt.subplots(1, len(starts), figsize=(5 * len(starts), 3.5), squeeze=False, sharey=True)
    for ax, start in zip(axes[0], starts):
        for model in models:
            part = data[(data["model"] == model) & (data["start"] == start)].sort_values("iteration")
            ax.plot(part["iteration"], part["dice"], marker="o", label=model)
        ax.set(title=f"start: {start} (mask prompts {masks})", xlabel="prediction (0 = first prompt)",
               ylabel="Dice (mean over datasets)")
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))  # predictions are counted, not measured
        ax.grid(alpha=0.3)
    axes[0][-1].legend(fontsize=8)
    return _save(fig, folder, "fig3a_dice_per_iteration")


def fig3b(diff: pd.DataFrame, folder: Path, masks: str):
    data = diff[(diff["masks"] == masks) & (diff["model"] != diff["reference"])]
    datasets = sorted(set(diff["dataset"]))
    models = list(dict.fromkeys(data["model"]))
    panels = [(s, st) for s in ("point", "box") for st in ("initial", "final")
              if ((data["start"] == s) & (data["stage"] == st)).any()]
    fig, axes = plt.subplots(1, max(len(panels), 1), figsize=(4 * max(len(panels), 1), 3.5), squeeze=False, sharey=True)
    width = 0.8 / max(len(models), 1)
    for ax, (start, stage) in zip(axes[0], panels):
        for i, model in enumerate(models):
            part = data[(data["model"] == model) & (data["start"] == start)
                        & (data["stage"] == stage)].set_index("dataset")
            values = [part["dice_difference"].get(d, np.nan) for d in datasets]
            ax.bar(np.arange(len(datasets)) + i * width, values, width, label=model)
        ax.axhline(0, color="black", lw=0.8)
        ax.set_xticks(np.arange(len(datasets)) + 0.4 - width / 2, datasets, rotation=45, ha="right")
        ax.set(title=f"{start}, {stage}", ylabel=f"Dice - {diff['reference'].iloc[0]}")
    if models:
        axes[0][-1].legend(fontsize=8)
    return _save(fig, folder, "fig3b_difference")


def fig1b(summary: pd.DataFrame, models, folder: Path, masks: str):
    data = summary[summary["masks"] == masks]
    last = data["iteration"].max()
    bars = [("point", 0, "point"), ("box", 0, "box"), ("point", last, "point + corrections"),
            ("box", last, "box + corrections")]
    fig, ax = plt.subplots(figsize=(max(4, 1.6 * len(models)), 3.5))
    width = 0.8 / len(bars)
    for i, (start, iteration, label) in enumerate(bars):
        part = _overall(data[(data["start"] == start) & (data["iteration"] == iteration)], ["model"]).set_index("model")
        ax.bar(np.arange(len(models)) + i * width, [part["dice"].get(m, np.nan) for m in models], width, label=label)
    ax.set_xticks(np.arange(len(models)) + 0.4 - width / 2, models, rotation=30, ha="right")
    ax.set(ylabel="Dice (mean over 2D datasets)", title="interactive 2D")
    ax.legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.0, 1.0))  # beside the bars, never over one
    return _save(fig, folder, "fig1b_interactive2d")


def fig1c(summary3d: pd.DataFrame, models, folder: Path):
    data = summary3d[~summary3d["result"].str.startswith("oracle")] if len(summary3d) else summary3d
    fig, ax = plt.subplots(figsize=(max(4, 1.6 * len(models)), 3.5))
    starts = [s for s in ("point", "box") if len(data) and s in set(data["start"])]
    width = 0.8 / max(len(starts), 1)
    for i, start in enumerate(starts):
        part = _overall(data[data["start"] == start], ["model"]).set_index("model")
        ax.bar(np.arange(len(models)) + i * width, [part["dice"].get(m, np.nan) for m in models], width, label=start)
    ax.set_xticks(np.arange(len(models)) + 0.4 - width / 2, models, rotation=30, ha="right")
    ax.set(ylabel="Dice (mean over 3D datasets)", title="interactive 3D (validation-selected setting)")
    if starts:
        ax.legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.0, 1.0))
    return _save(fig, folder, "fig1c_interactive3d")


def fig7b(summary: pd.DataFrame, models, folder: Path):
    data = _overall(summary, ["model", "start", "masks", "iteration"])
    starts = [s for s in ("point", "box") if s in set(data["start"])]
    fig, axes = plt.subplots(1, len(starts), figsize=(5 * len(starts), 3.5), squeeze=False, sharey=True)
    for ax, start in zip(axes[0], starts):
        for i, model in enumerate(models):
            for masks, style in (("off", "-"), ("on", "--")):
                part = data[(data["model"] == model) & (data["start"] == start) & (data["masks"] == masks)]
                if len(part):
                    part = part.sort_values("iteration")
                    ax.plot(part["iteration"], part["dice"], style, color=f"C{i}", label=f"{model}, masks {masks}")
        ax.set(title=f"start: {start}", xlabel="prediction (0 = first prompt)", ylabel="Dice (mean over datasets)")
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.grid(alpha=0.3)
    axes[0][-1].legend(fontsize=7)
    return _save(fig, folder, "fig7b_mask_prompts")


def aggregate(config: dict, tables2d, objects2d, tables3d, tables_dir, figures_dir) -> dict[str, Path]:
    """Write every table and figure; returns their paths by name.

    ``tables2d``: eval2d's union tables (per image and class); ``objects2d``: its per-object tables.
    """
    tables_dir, figures_dir = Path(tables_dir), Path(figures_dir)
    tables_dir.mkdir(parents=True, exist_ok=True)
    figures_dir.mkdir(parents=True, exist_ok=True)
    section, seed = config["aggregate"], int(config["seed"])
    specs = list(model_specs(config))
    rows2d = pd.concat([read_result_table(p, COLUMNS_2D) for p in tables2d], ignore_index=True)
    objects = pd.concat([read_result_table(p, COLUMNS_2D_OBJECTS) for p in objects2d], ignore_index=True)
    models = [m for m in specs if m in set(rows2d["model"])]
    reference = section["reference_model"] or next(iter(config["models"]))
    masks = "off" if "off" in set(rows2d["masks"]) else rows2d["masks"].iloc[0]
    out = {"interactive2d": write_tsv(rows2d, tables_dir / "interactive2d.tsv"),
           "objects2d": write_tsv(objects, tables_dir / "interactive2d_objects.tsv")}
    summary = summarize_2d(rows2d, section["n_boot"], seed)
    out["summary2d"] = write_tsv(summary, tables_dir / "interactive2d_summary.tsv")
    out["noc"] = write_tsv(summarize_noc(objects, section["noc_thresholds"], section["n_boot"], seed),
                           tables_dir / "interactive2d_noc.tsv")
    diff = summarize_difference(rows2d, reference)
    out["difference"] = write_tsv(diff, tables_dir / "interactive2d_difference.tsv")
    out["comparisons"] = write_tsv(comparison_table(rows2d, section["comparisons"], section["n_boot"], seed),
                                   tables_dir / "interactive2d_comparisons.tsv")
    rows3d = (pd.concat([read_result_table(p, ["result"]) for p in tables3d], ignore_index=True) if tables3d
              else pd.DataFrame(columns=["result"]))
    out["interactive3d"] = write_tsv(rows3d, tables_dir / "interactive3d.tsv")
    summary3d = summarize_3d(rows3d, section["n_boot"], seed)
    out["summary3d"] = write_tsv(summary3d, tables_dir / "interactive3d_summary.tsv")
    fig3a(summary, models, figures_dir, masks)
    fig3b(diff, figures_dir, masks)
    fig1b(summary, models, figures_dir, masks)
    fig1c(summary3d, [m for m in specs if len(rows3d) and m in set(rows3d["model"])], figures_dir)
    fig7b(summary, models, figures_dir)
    return out

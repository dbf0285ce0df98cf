"""Semantic results -> summary tables, seed statistics, paired tests and the paper-style figures.

Inputs are the per-job Dice tables of ``medpipe semantic-run`` (one row per test case and class;
Dice NaN where the case has no ground truth for the class: such rows are not scores and every mean
skips them). A *setting* is one method with its backbone and decoder init (e.g. "SAM-UNETR
sam_tiny, pretrained decoder"). Per dataset, as in the reference evaluation (docs/fidelity.md): a
seed's score is the mean over classes of each class's mean over the cases that have it; a setting's
score is the mean over seeds, reported with the seeds' standard deviation and a t-based 95% CI
(Fig. 6 style). Settings are compared with a two-sided Wilcoxon signed-rank test on case scores
(a case's mean over its scored classes, averaged over seeds) paired by case id, Holm-corrected per
dataset.
Figures: Fig. 1d (2D) and 1e (3D) grouped bars per dataset; Fig. 8 one panel per dataset with the
SAM-based settings as bars and the reference methods (nnU-Net, Swin UNETR) as horizontal lines.
"""

from __future__ import annotations

import itertools
import logging
import warnings
from pathlib import Path

import numpy as np
import pandas as pd
from scipy import stats

from medpipe import files
from medpipe.files import atomic_path

log = logging.getLogger(__name__)

METHOD_NAMES = {"sam_unetr": "SAM-UNETR", "ma_sam": "MA-SAM", "nnunet": "nnU-Net", "swin_unetr": "Swin UNETR"}
FIGURES = {"fig1d": "fig1d_semantic2d", "fig1e": "fig1e_semantic3d", "fig8": "fig8_semantic",
           "seeds": "fig6_semantic_seeds"}


def setting_label(method: str, backbone: str, decoder_init: str) -> str:
    """A readable, unique name of a method configuration."""
    name = METHOD_NAMES.get(method, method)
    if method == "sam_unetr":
        return f"{name} {backbone}, {decoder_init} decoder"
    if method == "ma_sam":
        return f"{name} {backbone}"
    return name


def load_results(paths) -> pd.DataFrame:
    """Concatenate result tables and add the ``setting`` column; errors name an unreadable file."""
    frames = []
    for path in paths:
        try:
            frames.append(files.read_tsv(path))  # ids stay text: a case or model called NA is one
        except Exception as exc:
            raise ValueError(f"{path}: cannot read semantic result table ({exc})") from exc
    if not frames:
        raise ValueError("no semantic result tables given")
    frame = pd.concat(frames, ignore_index=True)
    frame["setting"] = [setting_label(m, b, d) for m, b, d in zip(frame.method, frame.backbone, frame.decoder_init)]
    return frame


def case_scores(frame: pd.DataFrame) -> pd.DataFrame:
    """Mean Dice over the scored classes per dataset, setting, seed and case (NaN if none is scored)."""
    keys = ["dataset", "method", "setting", "seed", "case_id"]
    return frame.groupby(keys, as_index=False)["dice"].mean()


def seed_scores(frame: pd.DataFrame) -> pd.DataFrame:
    """The dataset number of each seed: mean over classes of the class's mean over scored cases."""
    keys = ["dataset", "method", "setting", "seed"]
    per_class = frame.groupby(keys + ["class_id"], as_index=False)["dice"].mean()  # skips NaN rows
    return per_class.groupby(keys, as_index=False)["dice"].mean()


def seed_statistics(frame: pd.DataFrame) -> pd.DataFrame:
    """Per dataset and setting: mean over seeds of the seed scores, std over seeds and a 95% t-CI."""
    per_seed = seed_scores(frame)
    rows = []
    for (dataset, method, setting), group in per_seed.groupby(["dataset", "method", "setting"]):
        values = group["dice"].to_numpy(dtype=float)
        n = len(values)
        mean = float(values.mean())
        std = float(values.std(ddof=1)) if n > 1 else 0.0
        half = float(stats.t.ppf(0.975, n - 1) * std / np.sqrt(n)) if n > 1 else 0.0
        rows.append({"dataset": dataset, "method": method, "setting": setting, "n_seeds": n, "mean_dice": mean,
                     "std_dice": std, "ci_low": mean - half, "ci_high": mean + half})
    return pd.DataFrame(rows)


def class_summary(frame: pd.DataFrame) -> pd.DataFrame:
    """Mean Dice per dataset, setting and class over the scored cases and seeds (the per-class table);
    ``n_rows`` counts the scored rows (cases x seeds with ground truth for the class)."""
    keys = ["dataset", "method", "backbone", "decoder_init", "setting", "class_id", "class_name"]
    out = frame.groupby(keys, as_index=False).agg(mean_dice=("dice", "mean"), n_rows=("dice", "count"))
    return out


def holm(p_values) -> np.ndarray:
    """Holm-Bonferroni adjusted p-values (NaNs stay NaN and do not count as tests)."""
    p = np.asarray(p_values, dtype=float)
    adjusted = np.full_like(p, np.nan)
    valid = np.flatnonzero(~np.isnan(p))
    order = valid[np.argsort(p[valid])]
    m, running = len(order), 0.0
    for rank, index in enumerate(order):
        running = max(running, min(1.0, (m - rank) * p[index]))
        adjusted[index] = running
    return adjusted


def paired_tests(frame: pd.DataFrame) -> pd.DataFrame:
    """Wilcoxon signed-rank test for every pair of settings per dataset, paired by case id."""
    scores = case_scores(frame).groupby(["dataset", "setting", "case_id"])["dice"].mean()
    rows = []
    for dataset in sorted(scores.index.get_level_values("dataset").unique()):
        table = scores.loc[dataset].unstack("setting")
        dataset_rows = []
        for a, b in itertools.combinations(sorted(table.columns), 2):
            pair = table[[a, b]].dropna()
            diff = (pair[a] - pair[b]).to_numpy()
            statistic, p_value = np.nan, np.nan
            if len(diff) and np.any(diff != 0):
                with warnings.catch_warnings():
                    warnings.simplefilter("ignore")
                    result = stats.wilcoxon(pair[a], pair[b], alternative="two-sided")
                statistic, p_value = float(result.statistic), float(result.pvalue)
            dataset_rows.append({"dataset": dataset, "setting_a": a, "setting_b": b, "n_cases": len(diff),
                                 "mean_difference": float(diff.mean()) if len(diff) else np.nan,
                                 "statistic": statistic, "p_value": p_value})
        adjusted = holm([r["p_value"] for r in dataset_rows])
        for row, p_holm in zip(dataset_rows, adjusted):
            row["p_holm"] = p_holm
        rows.extend(dataset_rows)
    columns = ["dataset", "setting_a", "setting_b", "n_cases", "mean_difference", "statistic", "p_value", "p_holm"]
    return pd.DataFrame(rows, columns=columns)


def _atomic_savefig(fig, path: Path) -> None:
    with atomic_path(path) as tmp:
        fig.savefig(tmp, dpi=120, bbox_inches="tight")


def _empty_figure(path: Path, text: str) -> None:
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(5, 2))
    ax.text(0.5, 0.5, text, ha="center", va="center")
    ax.axis("off")
    _atomic_savefig(fig, path)
    plt.close(fig)


def grouped_bars(summary: pd.DataFrame, datasets: list[str], path: Path, title: str) -> None:
    """Fig. 1d/e: mean Dice (+- seed std) per dataset, one bar per setting."""
    import matplotlib.pyplot as plt

    data = summary[summary.dataset.isin(datasets)]
    if data.empty:
        _empty_figure(path, f"{title}: no results")
        return
    settings = sorted(data.setting.unique())
    datasets = [d for d in datasets if d in set(data.dataset)]
    width = 0.8 / len(settings)
    fig, ax = plt.subplots(figsize=(1.5 + 1.6 * len(datasets) + 0.1 * len(settings), 4))
    for i, setting in enumerate(settings):
        rows = data[data.setting == setting].set_index("dataset").reindex(datasets)
        x = np.arange(len(datasets)) + (i - (len(settings) - 1) / 2) * width
        ax.bar(x, rows.mean_dice, width, yerr=rows.std_dice, capsize=2, label=setting)
    ax.set_xticks(np.arange(len(datasets)), datasets)
    ax.set_ylim(0, 1)
    ax.set_ylabel("Dice (test, mean over seeds)")
    ax.set_title(title)
    ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.0, 1.0))
    _atomic_savefig(fig, path)
    plt.close(fig)


def reference_panels(summary: pd.DataFrame, reference_methods, path: Path) -> None:
    """Fig. 8: per dataset, SAM-based settings as bars, reference methods as horizontal lines."""
    import matplotlib.pyplot as plt

    datasets = sorted(summary.dataset.unique())
    if not datasets:
        _empty_figure(path, "semantic segmentation: no results")
        return
    fig, axes = plt.subplots(1, len(datasets), figsize=(3.2 * len(datasets), 4), squeeze=False)
    colours = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    for ax, dataset in zip(axes[0], datasets):
        rows = summary[summary.dataset == dataset]
        bars = rows[~rows.method.isin(reference_methods)].sort_values("setting")
        ax.bar(np.arange(len(bars)), bars.mean_dice, yerr=bars.std_dice, capsize=2, color="tab:blue")
        ax.set_xticks(np.arange(len(bars)), bars.setting, rotation=60, ha="right", fontsize=7)
        for i, (_, ref) in enumerate(rows[rows.method.isin(reference_methods)].sort_values("setting").iterrows()):
            ax.axhline(ref.mean_dice, color=colours[(i + 1) % len(colours)], linestyle="--", label=ref.setting)
        ax.set_ylim(0, 1)
        ax.set_title(dataset)
        if ax.get_legend_handles_labels()[0]:
            ax.legend(fontsize=7)
    axes[0][0].set_ylabel("Dice (test)")
    _atomic_savefig(fig, path)
    plt.close(fig)


def seed_points(frame: pd.DataFrame, summary: pd.DataFrame, path: Path) -> None:
    """Fig. 6 style: every seed's mean Dice as a point, the mean and its 95% CI as a bar per setting."""
    import matplotlib.pyplot as plt

    per_seed = seed_scores(frame)
    datasets = sorted(per_seed.dataset.unique())
    fig, axes = plt.subplots(1, len(datasets), figsize=(3.2 * len(datasets), 4), squeeze=False)
    for ax, dataset in zip(axes[0], datasets):
        rows = summary[summary.dataset == dataset].sort_values("setting").reset_index(drop=True)
        for i, row in rows.iterrows():
            seeds = per_seed[(per_seed.dataset == dataset) & (per_seed.setting == row.setting)]
            ax.scatter(np.full(len(seeds), i), seeds.dice, s=12, color="grey", zorder=3)
            ax.errorbar(i, row.mean_dice, yerr=[[row.mean_dice - row.ci_low], [row.ci_high - row.mean_dice]],
                        fmt="o", color="black", capsize=3)
        ax.set_xticks(np.arange(len(rows)), rows.setting, rotation=60, ha="right", fontsize=7)
        ax.set_ylim(0, 1)
        ax.set_title(dataset)
    axes[0][0].set_ylabel("Dice per seed (mean, 95% CI)")
    _atomic_savefig(fig, path)
    plt.close(fig)


def write_tsv(frame: pd.DataFrame, path: Path) -> None:
    files.write_tsv(frame, path, na_rep="nan", float_format="%.6g")


def aggregate(paths, datasets_2d, datasets_3d, tables_dir, figures_dir, reference_methods=("nnunet", "swin_unetr")):
    """Write results.tsv, class_summary.tsv, seed_stats.tsv, paired_tests.tsv and the four figures."""
    import matplotlib

    matplotlib.use("Agg")
    tables_dir, figures_dir = Path(tables_dir), Path(figures_dir)
    figures_dir.mkdir(parents=True, exist_ok=True)
    frame = load_results(paths)
    summary = seed_statistics(frame)
    write_tsv(frame, tables_dir / "results.tsv")
    write_tsv(class_summary(frame), tables_dir / "class_summary.tsv")
    write_tsv(summary, tables_dir / "seed_stats.tsv")
    write_tsv(paired_tests(frame), tables_dir / "paired_tests.tsv")
    grouped_bars(summary, list(datasets_2d), figures_dir / f"{FIGURES['fig1d']}.png", "Semantic 2D (Fig. 1d)")
    grouped_bars(summary, list(datasets_3d), figures_dir / f"{FIGURES['fig1e']}.png", "Semantic 3D (Fig. 1e)")
    reference_panels(summary, list(reference_methods), figures_dir / f"{FIGURES['fig8']}.png")
    seed_points(frame, summary, figures_dir / f"{FIGURES['seeds']}.png")
    log.info("aggregated %d semantic tables (%d rows) into %s and %s", len(paths), len(frame), tables_dir, figures_dir)
    return summary

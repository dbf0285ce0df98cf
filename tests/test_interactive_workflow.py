"""The interactive stage through Snakemake (slow): embed once, one job per setting, a grid point alone."""

import shutil

import pandas as pd
import pytest
import yaml

from conftest import REPO_ROOT
from dag_fixtures import job_counts, params_changed_outputs
from demo_fixtures import tiny_demo_config
from test_semantic_workflow import _job_counts, snakemake

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def interactive_run(tmp_path_factory):
    """demo_xray (2D) and demo_mr (3D, and its slices in 2D) with the tiny SAM, no finetuning."""
    repo_root = REPO_ROOT
    workdir = tmp_path_factory.mktemp("interactive")
    config = tiny_demo_config()
    config["datasets"] = {name: config["datasets"][name] for name in ("demo_xray", "demo_mr")}
    config["datasets"]["demo_xray"]["roles"] = ["interactive2d"]
    config["datasets"]["demo_mr"]["roles"] = ["interactive2d", "interactive3d"]
    for spec in config["datasets"].values():
        spec["synth"].update(patients=4, images_per_patient=1)
    config["finetune"]["runs"] = {}
    config["aggregate"]["comparisons"] = {"box": {"a": {"model": "sam_tiny", "start": "box"}}}
    config["semantic"]["backbones"] = ["sam_tiny"]
    config["interactive"].update(n_iterations=2, masks=["off", "on"])
    (workdir / "config.yaml").write_text(yaml.safe_dump(config))
    target = "results/tables/interactive2d_summary.tsv"
    run = snakemake(workdir, repo_root, target)
    assert run.returncode == 0, run.stderr[-4000:]
    return workdir, target, run.stdout + run.stderr, config


def test_one_embedding_job_per_dataset_and_one_job_per_setting(interactive_run):
    workdir, _, output, _ = interactive_run
    counts = _job_counts(output)
    assert counts["interactive_embed"] == 2  # 1 model x 2 datasets: the only jobs that run the encoder
    assert counts["interactive2d"] == 2 * 2 * 2  # 2 datasets x start point/box x mask prompts off/on
    assert counts["interactive3d"] == 2  # demo_mr x first prompt box/point
    results = workdir / "results"
    for dataset in ("demo_xray", "demo_mr"):
        for start in ("point", "box"):
            for masks in ("off", "on"):
                for suffix in (".tsv", ".objects.tsv"):  # union Dice per image and class; per-object Dice
                    table = pd.read_csv(
                        results / f"interactive2d/sam_tiny/{dataset}/start~{start}/masks~{masks}{suffix}", sep="\t")
                    assert set(table["start"]) == {start} and set(table["masks"]) == {masks} and len(table) > 0
    # the volume's slices are images of their own in the 2D tables
    slices = pd.read_csv(results / "interactive2d/sam_tiny/demo_mr/start~box/masks~off.tsv", sep="\t")
    assert slices["case"].str.contains("@z").all()
    # every evaluation job found its embeddings cached: the encoder ran in the embed jobs only
    for log in (results / "logs/interactive2d").rglob("*.log"):
        assert "0 encoder passes" in log.read_text(), log
    summary = pd.read_csv(results / "tables/interactive2d_summary.tsv", sep="\t")
    assert {"demo_xray", "demo_mr"} <= set(summary["dataset"])
    selected = pd.concat(pd.read_csv(results / f"interactive3d/sam_tiny/demo_mr/start~{s}/selected.tsv", sep="\t")
                         for s in ("box", "point"))
    assert sorted(selected["start"]) == ["box", "point"]


def test_nothing_reruns_and_a_grid_point_runs_alone(interactive_run, repo_root):
    workdir, target, _, _ = interactive_run
    dry = snakemake(workdir, repo_root, "-n", target)
    assert dry.returncode == 0 and "Nothing to be done" in dry.stdout + dry.stderr, (dry.stdout + dry.stderr)[-3000:]
    point = ("results/interactive3d/sam_tiny/demo_mr/start~box/points/"
             "iou_threshold~0.8/projection~mask/box_extension~0.0.tsv")
    run = snakemake(workdir, repo_root, point)
    assert run.returncode == 0, run.stderr[-3000:]
    counts = _job_counts(run.stdout + run.stderr)
    assert counts["interactive3d_grid_point"] == 1 and counts["total"] == 1  # the cache is reused, not rebuilt
    alone = pd.read_csv(workdir / point, sep="\t")
    grid = pd.read_csv(workdir / "results/interactive3d/sam_tiny/demo_mr/start~box/grid.tsv", sep="\t")
    in_grid = grid[(grid["split"] == "val") & (grid["projection"] == "mask") & (grid["iou_threshold"] == 0.8)]
    assert sorted(alone["dice"]) == pytest.approx(sorted(in_grid["dice"]))  # same numbers as within the grid


def test_an_edited_config_value_reruns_exactly_the_jobs_that_use_it(interactive_run, repo_root, tmp_path):
    """interactive.n_iterations is read by the 2D evaluation only: its jobs and the aggregation rerun,
    not the embeddings, not the 3D jobs, not the data stage. interactive.preprocess changes what the
    encoder sees: the embeddings and every evaluation rerun."""
    source, target, _, config = interactive_run
    workdir = tmp_path / "copy"  # the other tests keep the fixture's results as they are
    shutil.copytree(source, workdir, symlinks=True)
    config["interactive"]["n_iterations"] += 1
    (workdir / "config.yaml").write_text(yaml.safe_dump(config))
    summary = snakemake(workdir, repo_root, "--summary", target)
    assert summary.returncode == 0, summary.stderr[-3000:]
    tables = {str(p.relative_to(workdir)) for p in (workdir / "results/interactive2d").rglob("*.tsv")}
    assert len(tables) == 16 and params_changed_outputs(summary.stdout) == tables  # 8 jobs x (union, per object)
    run = snakemake(workdir, repo_root, target)
    assert run.returncode == 0, run.stderr[-3000:]
    counts = job_counts(run.stdout + run.stderr)
    assert counts == {"interactive2d": 8, "aggregate_interactive": 1}, counts
    rows = pd.read_csv(workdir / "results/interactive2d/sam_tiny/demo_xray/start~box/masks~off.tsv", sep="\t")
    # the new value reached the job: n_iterations predictions, numbered 0 .. n_iterations - 1
    assert rows["iteration"].max() == config["interactive"]["n_iterations"] - 1
    again = snakemake(workdir, repo_root, "-n", target)
    assert again.returncode == 0 and "Nothing to be done" in again.stdout + again.stderr
    config["interactive"]["preprocess"] = "aspect"
    (workdir / "config.yaml").write_text(yaml.safe_dump(config))
    dry = snakemake(workdir, repo_root, "-n", target)
    assert dry.returncode == 0, dry.stderr[-3000:]
    counts = job_counts(dry.stdout + dry.stderr)
    assert counts["interactive_embed"] == 2 and counts["interactive2d"] == 8 and counts["interactive3d"] == 2, counts

"""The paper's study config and the cluster profiles, checked through dry runs of the workflow.

A placeholder raw tree is generated for every dataset of config/study.yaml (its real globs), and
`snakemake -n` must list exactly the jobs the config implies, per rule. The profiles must cover
every rule of the workflow, comment every key, and grow resources with the retry attempt.
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import yaml

from dag_fixtures import REPO_ROOT, STUDY, job_counts, label_glob, placeholder_config, snakemake, timed_dry_run

PROFILES = REPO_ROOT / "profiles"
A100 = PROFILES / "slurm-a100" / "config.yaml"
TEST_PROFILE = REPO_ROOT / "tests" / "slurm" / "profile" / "config.yaml"

# the paper's dataset lists; `micro_usp` of the semantic 3D list is the same data as `microusp`
PAPER_DATASETS = {
    # papila as two entries: its disc and cup overlap, and the paper evaluated them separately
    "interactive2d": {"camus", "uwaterloo_skin", "montgomery", "sega", "duke_liver", "piccolo", "cbis_ddsm", "dca1",
                      "papila_disc", "papila_cup", "jnu-ifm", "siim_acr", "m2caiseg", "toothfairy", "spider", "han-seg",
                      "microusp"},
    "interactive3d": {"lgg_mri", "microusp", "kits", "duke_liver", "segthy", "osic_pulmofib"},
    "semantic2d": {"oimhs", "isic", "dca1", "cbis_ddsm", "piccolo", "hil_toothseg"},
    "semantic3d": {"osic_pulmofib", "duke_liver", "oasis", "lgg_mri", "leg_3d_us", "microusp"},
}


def resolved(config_path: Path) -> dict:
    from medpipe.config import load_config

    return load_config(config_path)


def expected_counts(config: dict) -> dict[str, int]:
    """Jobs per rule that `rule all` of the study implies, stage by stage."""
    from medpipe.config import datasets_with_role

    datasets = list(config["datasets"])
    finetune_datasets = datasets_with_role(config, "finetune")
    corpora = [name for name, spec in config["datasets"].items() if spec.get("layout") == "sa_med2d"]
    counts = {
        "synth": sum("synth" in spec for spec in config["datasets"].values()),
        "ingest": len(datasets) - len(corpora),
        "split": len(datasets),
        "split_corpus": int(bool(finetune_datasets)),
        "all": 1,
    }
    if corpora:  # plan -> one job per ingest part -> gather
        counts.update(ingest_plan=len(corpora), ingest_part=len(corpora) * config["ingest"]["parts"],
                      ingest_gather=len(corpora))
    runs = list(config["finetune"]["runs"])
    esem = []
    if runs:
        from medpipe.run_settings import resolve_run

        esem = [run for run in runs if resolve_run(config, run)["e_sem"]]
        counts.update(finetune=len(runs), export_model=len(runs) - len(esem), export_model_with_decoder=len(esem),
                      check_compat=len(runs), compat_table=1)
    models = list(config["models"]) + runs  # every base model and every finetune export is evaluated
    section = config["interactive"]
    interactive2d = datasets_with_role(config, "interactive2d")
    interactive3d = datasets_with_role(config, "interactive3d")
    from medpipe.models.specs import embedding_owner

    owners = {embedding_owner(config, model) for model in models}  # a frozen-encoder run reads its base's
    counts["interactive_embed"] = len(owners) * len(set(interactive2d) | set(interactive3d))
    counts["interactive2d"] = len(models) * len(interactive2d) * len(section["starts"]) * len(section["masks"])
    counts["interactive3d"] = len(models) * len(interactive3d) * len(section["starts3d"])
    counts["interactive3d_sam2"] = len(config["interactive"]["sam2"]) * len(datasets_with_role(config, "interactive3d"))
    counts["aggregate_interactive"] = int(bool(counts["interactive2d"]))
    sem = config["semantic"]
    backbones = sem["backbones"] if sem["backbones"] is not None else models
    sem2d, sem3d = len(datasets_with_role(config, "semantic2d")), len(datasets_with_role(config, "semantic3d"))
    with_decoder = [b for b in backbones if b in esem]
    per_method = {
        "sam_unetr": sem2d * (len(backbones) * ("random" in sem["sam_unetr"]["decoder_inits"])
                              + len(with_decoder) * ("pretrained" in sem["sam_unetr"]["decoder_inits"])),
        "ma_sam": sem3d * len(backbones),
        "nnunet": sem2d + sem3d,
        "swin_unetr": sem2d + sem3d,
    }
    counts["semantic_run"] = len(sem["seeds"]) * sum(per_method[m] for m in sem["methods"])
    counts["semantic_aggregate"] = int(bool(counts["semantic_run"]))
    return {rule: n for rule, n in counts.items() if n}


def workflow_rules(workdir: Path, configfile: Path) -> set[str]:
    result = snakemake(workdir, configfile, "--list-rules")
    assert result.returncode == 0, result.stderr[-2000:]
    return set(result.stdout.split())


@pytest.fixture(scope="module")
def study_tree(tmp_path_factory):
    root = tmp_path_factory.mktemp("study")
    configfile, _ = placeholder_config(root, cases_per_dataset=2)
    return root, configfile


@pytest.fixture(scope="module")
def study_rules(study_tree):
    return workflow_rules(*study_tree)


def test_study_config_is_valid_and_holds_the_papers_datasets():
    config = resolved(STUDY)
    for role, names in PAPER_DATASETS.items():
        have = {name for name, spec in config["datasets"].items() if role in spec["roles"]}
        assert have == names, role
    corpus = [name for name, spec in config["datasets"].items() if "finetune" in spec["roles"]]
    assert corpus == ["sa_med2d"]  # one entry; stratified by the modality of each image's name prefix
    assert config["datasets"]["sa_med2d"]["root"] == "/path/to/data/sa_med2d/"
    assert config["corpus"]["variants"] == {"full": {"train": 0.9, "val": 0.1}, "p60": {"train": 0.5, "val": 0.1}}
    assert config["models"]["sam"]["type"] == "vit_b"
    assert config["finetune"]["gpus"] == 8
    assert {run["preset"] for run in config["finetune"]["runs"].values()} == {
        "medsam", "simpleft", "medicosam_p60", "medicosam_full"}
    # every path is a placeholder the user fills in, never a path of this machine
    for spec in config["datasets"].values():
        paths = [spec["root"]] if spec.get("layout") == "sa_med2d" else [spec["images"], label_glob(spec)]
        assert all(path.startswith("/path/to/data/") for path in paths), paths
        assert not any("convert" in str(value).lower() for value in spec.values())
    assert "converted" not in STUDY.read_text() and "renamed" not in STUDY.read_text()


def test_placeholder_tree_matches_every_glob(study_tree):
    root, configfile = study_tree
    from medpipe.io.cases import find

    config = yaml.safe_load(configfile.read_text())
    assert "/path/to" not in configfile.read_text()
    for name, spec in config["datasets"].items():
        if spec.get("layout") == "sa_med2d":
            assert (Path(spec["root"]) / "SAMed2Dv1" / "SAMed2D_v1.json").is_file(), name
            continue
        assert len(find(spec["images"])) == 2 and len(find(label_glob(spec))) == 2, name


@pytest.mark.slow
def test_dry_run_job_counts_match_the_config(study_tree, study_rules):
    root, configfile = study_tree
    seconds, result = timed_dry_run(root, configfile)
    output = result.stdout + result.stderr
    assert result.returncode == 0, output[-4000:]
    counts = job_counts(output)
    expected = {rule: n for rule, n in expected_counts(resolved(configfile)).items() if rule in study_rules}
    unexplained = set(counts) - set(expected)
    assert not unexplained, f"rules {sorted(unexplained)} have no expected job count in tests/test_dag.py"
    assert counts == expected
    assert seconds < 60, f"dry run of the study took {seconds:.1f} s"


def test_expected_counts_of_the_paper_study_by_hand():
    """7 models (sam, medsam, lite_medsam + 4 finetune runs) x 17 / 6 datasets; semantic (6 ViT
    backbones: lite_medsam is not one): SAM-UNETR 6 datasets x (6 random + 1 pretrained decoder),
    MA-SAM 6 x 6, nnU-Net and Swin UNETR 12 datasets each. 27 entries: SA-Med2D (one entry, ingested in
    64 parts) + 25 evaluation datasets, papila as two (disc, cup)."""
    counts = expected_counts(resolved(STUDY))
    assert counts["ingest"] == 26 and counts["split"] == 27
    assert counts["ingest_plan"] == counts["ingest_gather"] == 1 and counts["ingest_part"] == 64
    assert counts["finetune"] == 4 and counts["export_model"] == 3 and counts["export_model_with_decoder"] == 1
    # one job per setting: 2D point/box x mask prompts off/on, 3D box/point; one embedding job per
    # model and dataset (duke_liver and microusp have both roles: 17 + 6 - 2 = 21 datasets)
    assert counts["interactive2d"] == 7 * 17 * 4 and counts["interactive3d"] == 7 * 6 * 2
    assert counts["interactive_embed"] == 7 * 21
    assert counts["semantic_run"] == 42 + 36 + 12 + 12
    assert "synth" not in counts


@pytest.mark.slow
def test_study_config_replaces_the_demo_config(study_tree, tmp_path):
    """Run from a checkout (config/config.yaml present), `--configfile config/study.yaml` must give the
    study alone: Snakemake merges a `configfile:` directive's file with --configfile otherwise, and the
    demo datasets, models and runs would join the paper's study (also inside every cluster job)."""
    root, configfile = study_tree
    checkout = tmp_path / "checkout"
    (checkout / "config").mkdir(parents=True)
    (checkout / "config" / "config.yaml").write_text((REPO_ROOT / "config" / "config.yaml").read_text())
    result = snakemake(checkout, configfile, "-n", "--quiet", "rules")
    output = result.stdout + result.stderr
    assert result.returncode == 0, output[-3000:]
    counts = job_counts(output)
    assert "synth" not in counts, "the demo datasets were merged into the study config"
    assert counts["ingest"] == 26


@pytest.mark.slow
def test_dry_run_with_the_a100_profile_requests_what_the_rules_need(study_tree, study_rules):
    root, configfile = study_tree
    result = snakemake(root, configfile, "-n", "-p", "--profile", str(PROFILES / "slurm-a100"))
    output = result.stdout + result.stderr
    assert result.returncode == 0, output[-4000:]
    if "finetune" in study_rules:
        blocks = [b for b in output.split("\n\n") if re.search(r"^rule finetune:", b, re.M)]
        assert len(blocks) == len(resolved(configfile)["finetune"]["runs"])
        for block in blocks:
            assert "gpu=8" in block and "gpu_model=a100" in block and "nodes=1" in block, block
            assert "torchrun --standalone --nproc_per_node=8" in block, block


def _profile(path: Path) -> dict:
    return yaml.safe_load(path.read_text())


@pytest.mark.parametrize("path", [A100, PROFILES / "local" / "config.yaml", TEST_PROFILE,
                                  PROFILES / "slurm-smoke" / "config.yaml"],
                         ids=["slurm-a100", "local", "test", "slurm-smoke"])
def test_every_profile_key_is_commented(path):
    """Top-level keys and rule names carry an inline comment; set-resources' leaves are explained above it."""
    lines = path.read_text().splitlines()
    for number, line in enumerate(lines, 1):
        match = re.match(r"^( {0,2})([A-Za-z_][\w-]*):", line)
        if match and "#" not in line:
            previous = lines[number - 2].strip() if number > 1 else ""
            assert previous.startswith("#"), f"{path}:{number}: key `{match.group(2)}` has no comment"


@pytest.mark.slow
def test_a100_profile_sizes_every_rule_and_grows_resources_with_the_attempt(study_rules):
    profile = _profile(A100)
    rules = study_rules - {"all"}
    missing = rules - set(profile["set-resources"])
    assert not missing, f"profiles/slurm-a100 has no set-resources for {sorted(missing)}"
    for rule, resources in profile["set-resources"].items():
        assert {"mem_mb", "runtime", "cpus_per_task"} <= set(resources), rule
        if rule == "finetune":  # a whole node for its time limit; a rerun resumes from latest.pt instead
            assert resources["gpu"] == 8 and resources["gpu_model"] == "a100" and resources["nodes"] == 1
            continue
        for key in ("mem_mb", "runtime"):
            first, second = (eval(str(resources[key]), {"attempt": a}) for a in (1, 2))  # noqa: S307
            assert second > first, f"{rule}.{key} does not grow with the attempt"
    assert profile["retries"] >= 1
    assert profile["slurm-partition-config"] == "partitions.yaml"
    partitions = _profile(A100.parent / "partitions.yaml")["partitions"]
    assert any(p["max_gpu"] == 0 for p in partitions.values())
    assert any(p["max_gpu"] >= 8 and "a100" in p["available_gpu_models"] for p in partitions.values())


def test_test_profile_differs_from_the_a100_profile_only_where_the_test_cluster_does():
    a100, test = _profile(A100), _profile(TEST_PROFILE)
    assert test["executor"] == a100["executor"] == "slurm"
    assert test["slurm-status-command"] == "squeue"  # no slurmdbd on the test cluster
    assert test["slurm-partition-config"] == a100["slurm-partition-config"]
    assert set(a100["groups"]) & set(test["groups"])  # the grouped submission path is exercised
    a100_parts = _profile(A100.parent / "partitions.yaml")["partitions"]
    test_parts = _profile(TEST_PROFILE.parent / "partitions.yaml")["partitions"]
    assert set(test_parts) == set(a100_parts)


def test_snakemake_plugin_is_recent_enough():
    """Versions before 2.7.1 add --ntasks-per-gpu and run a multi-GPU job once per GPU."""
    from importlib.metadata import version

    parts = tuple(int(p) for p in re.findall(r"\d+", version("snakemake-executor-plugin-slurm"))[:3])
    assert parts >= (2, 7, 1)
    requirement = [d for d in (REPO_ROOT / "pyproject.toml").read_text().splitlines()
                   if "snakemake-executor-plugin-slurm" in d]
    assert requirement and ">=2.7.1" in requirement[0]

"""Every config error is one line naming the file and the key, before any job runs.

Issue 13: `validate-config` accepted unknown finetune bases and presets, unknown semantic backbones,
split fractions that do not sum to 1, invalid or group-less regexes, class ids > 65535, missing
checkpoint files, and silently merged `classes: {1: a, '1': b}`; several surfaced only inside a job
as a traceback. Each case below goes through `medpipe validate-config` and, slow, through a dry run
of the workflow: both must print exactly the expected line, no traceback, and write nothing.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from medpipe.cli import main

REPO_ROOT = Path(__file__).resolve().parents[1]
DEMO = (REPO_ROOT / "config" / "config.yaml").read_text()


def runs(c):
    return c["finetune"]["runs"]


# (id, edit of the demo config (or of its text), the key the line names, words the line holds)
CASES = [
    ("unknown base", lambda c: runs(c)["medsam_demo"].update(base="sam_huge"),
     "finetune.runs.medsam_demo.base", "unknown base model 'sam_huge'"),
    ("unknown preset", lambda c: runs(c)["medsam_demo"].update(preset="medsam2"),
     "finetune.runs.medsam_demo.preset", "unknown preset 'medsam2'"),
    ("unknown corpus variant", lambda c: runs(c)["medsam_demo"].update(corpus_variant="p70"),
     "finetune.runs.medsam_demo", "corpus_variant 'p70' is not one of corpus.variants"),
    ("unknown backbone", lambda c: c["semantic"].update(backbones=["lite_medsam", "medsam_dem"]),
     "semantic.backbones", "'medsam_dem' is neither a key of models nor of finetune.runs"),
    ("unknown reference model", lambda c: c["aggregate"].update(reference_model="sam_huge"),
     "aggregate.reference_model", "'sam_huge' is neither"),
    ("split fractions", lambda c: c["splits"].update(fractions={"train": 0.5, "val": 0.25, "test": 0.15}),
     "splits.fractions", "train + val + test must be 1, got 0.9"),
    ("corpus fractions", lambda c: c["corpus"].update(fractions={"train": 0.9, "val": 0.2, "test": 0.0}),
     "corpus.fractions", "train + val + test must be 1, got 1.1"),
    ("variant beyond the corpus", lambda c: c["corpus"]["variants"]["p60"].update(val=0.2),
     "corpus.variants.p60.val", "0.2 is more than the corpus has"),
    ("invalid regex", lambda c: c["datasets"]["demo_ct"].update(case_id="^(?P<case>.+?(_0000)?\\.nii\\.gz$"),
     "datasets.demo_ct.case_id", "invalid regex"),
    ("group-less regex", lambda c: c["datasets"]["demo_ct"].update(patient_id="^([^_]+)_"),
     "datasets.demo_ct.patient_id", "has no group named 'patient'"),
    ("class id too big", lambda c: c["datasets"]["demo_ct"]["classes"].update({70000: "huge"}),
     "datasets.demo_ct.classes", "class id 70000 is larger than 65535"),
    ("missing checkpoint", lambda c: c["models"]["lite_medsam"].update(checkpoint="weights/sam_vit_b.pth"),
     "models.lite_medsam.checkpoint", "'weights/sam_vit_b.pth' is not a file"),
    ("bundled weights of a tiny model", lambda c: c["models"].update(t={"type": "tiny", "checkpoint": "bundled"}),
     "models.t.checkpoint", "'bundled' names the weights inside a model's package, which only lite_medsam has"),
    ("ma_sam on a lite_medsam backbone", lambda c: c["semantic"].update(methods=["sam_unetr", "ma_sam"]),
     "semantic.backbones", "puts adapters into ViT blocks, which lite_medsam (lite_medsam) has not"),
    ("class id as number and text", lambda c: c["datasets"]["demo_xray"]["classes"].update({"1": "lung again"}),
     "datasets.demo_xray.classes", "class id 1 is given twice (1: 'lung' and '1': 'lung again')"),
    ("class id twice in the file", "classes: {1: lung, 2: heart, 3: nodule}|classes: {1: lung, 2: heart, 1: nodule}",
     "datasets.demo_xray.classes.1", "given twice (line 15); YAML would keep only the last"),
    ("sam2 config outside the package", lambda c: c["interactive"].update(sam2={"s": {"config": "/tmp/evil.yaml"}}),
     "interactive.sam2.s.config", "'/tmp/evil.yaml' is not a config of the sam2 package"),
    ("sam2 config climbing out", lambda c: c["interactive"].update(
        sam2={"s": {"config": "configs/../../../../../../tmp/evil.yaml"}}),
     "interactive.sam2.s.config", "is not a config of the sam2 package"),
    ("sam2 config that does not exist", lambda c: c["interactive"].update(
        sam2={"s": {"config": "configs/sam2.1/sam2.1_hiera_x.yaml"}}),
     "interactive.sam2.s.config", "no such config in the sam2 package (available: configs/sam2.1/sam2.1_hiera_b+.yaml"),
    ("a whole section of the wrong type", lambda c: c.update(interactive=[{"starts": ["box"]}] * 10),
     "interactive", "a list ([{'starts': ['box']}, {'starts': ['box']...) is not of type 'object'"),
]


def write_case(tmp_path: Path, edit) -> Path:
    if isinstance(edit, str):
        old, new = edit.split("|")
        assert DEMO.count(old) == 1
        text = DEMO.replace(old, new)
    else:
        config = yaml.safe_load(DEMO)
        edit(config)
        text = yaml.safe_dump(config, sort_keys=False)
    path = tmp_path / "my config.yaml"
    path.write_text(text)
    return path


@pytest.mark.parametrize("name, edit, key, words", CASES, ids=[case[0] for case in CASES])
def test_validate_config_names_file_and_key_in_one_line(tmp_path, monkeypatch, capsys, name, edit, key, words):
    monkeypatch.chdir(tmp_path)
    path = write_case(tmp_path, edit)
    assert main(["validate-config", str(path)]) == 2
    output = capsys.readouterr()
    lines = (output.out + output.err).strip().splitlines()
    assert lines == [lines[0]] and lines[0].startswith(f"{path}: {key}: "), lines
    assert words in lines[0]


@pytest.mark.slow
@pytest.mark.parametrize("name, edit, key, words", CASES, ids=[case[0] for case in CASES])
def test_the_workflow_stops_with_the_same_line_before_any_job(tmp_path, name, edit, key, words):
    workdir = tmp_path / "work"
    workdir.mkdir()
    path = write_case(tmp_path, edit)
    command = [sys.executable, "-m", "snakemake", "-s", str(REPO_ROOT / "Snakefile"), "--directory", str(workdir),
               "--configfile", str(path), "--cores", "1"]
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}"}
    result = subprocess.run(command, capture_output=True, text=True, env=env, timeout=300)
    output = (result.stdout + result.stderr).strip()
    assert result.returncode != 0
    assert output.splitlines() == [f"{path}: {key}: {output.split(f'{key}: ', 1)[1]}"], output
    assert words in output and "Traceback" not in output
    assert [p.name for p in workdir.iterdir()] in ([], [".snakemake"])

"""`medpipe check-data`: every dataset's globs at once; `medpipe placeholder-tree` for the study's dry run."""

import pytest
import yaml

from medpipe.cli import main

from dag_fixtures import STUDY


@pytest.fixture(scope="module")
def tree(tmp_path_factory):
    root = tmp_path_factory.mktemp("study")
    assert main(["placeholder-tree", str(STUDY), "--root", str(root)]) == 0
    return root


def test_placeholder_tree_makes_every_dataset_present(tree, capsys):
    capsys.readouterr()
    assert main(["check-data", str(tree / "study.yaml")]) == 0
    out, err = capsys.readouterr()
    config = yaml.safe_load((tree / "study.yaml").read_text())
    rows = out.splitlines()[1:]
    assert len(rows) == len(config["datasets"]) == 27
    assert err.startswith("27 datasets: ") and err.strip().endswith("0 missing")  # every glob matches files
    assert all(row.split()[5] in ("ok", "unpaired") for row in rows)  # placeholder names need not pair


def test_check_data_reports_every_missing_dataset_at_once(tree, tmp_path, capsys):
    config = yaml.safe_load((tree / "study.yaml").read_text())
    plain = [name for name, spec in config["datasets"].items() if spec.get("layout") != "sa_med2d"]
    corpus = next(name for name, spec in config["datasets"].items() if spec.get("layout") == "sa_med2d")
    config["datasets"][plain[0]]["images"] = str(tmp_path / "nowhere" / "*.nii.gz")
    config["datasets"][plain[1]]["labels"] = str(tmp_path / "nowhere" / "*.png")
    config["datasets"][corpus]["root"] = str(tmp_path / "none")  # neither data.zip nor SAMed2Dv1/ there
    path = tmp_path / "study.yaml"
    path.write_text(yaml.safe_dump(config, sort_keys=False))
    capsys.readouterr()
    assert main(["check-data", str(path)]) == 1
    out, err = capsys.readouterr()
    lines = {line.split()[0]: line for line in out.splitlines()[1:]}
    assert "MISSING" in lines[plain[0]] and "images" in lines[plain[0]] and "matches nothing" in lines[plain[0]]
    assert "MISSING" in lines[plain[1]] and "labels" in lines[plain[1]]
    assert "MISSING" in lines[corpus] and "SAMed2D_v1.json" in lines[corpus]
    assert "3 missing" in err and plain[0] in err and corpus in err
    assert sum("MISSING" in line for line in lines.values()) == 3  # the others are still reported ok


def test_check_data_pairs_cases_as_ingest_does(tmp_path, capsys):
    for folder, names in (("img", ["a", "b", "c"]), ("lab", ["a", "b"])):
        (tmp_path / folder).mkdir()
        for name in names:
            (tmp_path / folder / f"{name}.png").write_bytes(b"")
    config = {"seed": 0, "results_dir": str(tmp_path / "results"), "models": {"sam_tiny": {"type": "tiny"}},
              "datasets": {"d2": {"modality": "xray", "ndim": 2, "images": str(tmp_path / "img" / "*.png"),
                                  "labels": str(tmp_path / "lab" / "*.png"), "classes": {1: "a"}}}}
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump(config))
    assert main(["check-data", str(path)]) == 0
    row = capsys.readouterr().out.splitlines()[1].split(None, 6)
    assert row[:6] == ["d2", "3", "2", "2", "1", "partial"] and row[6].startswith("c:")  # c has no label

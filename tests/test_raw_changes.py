"""A changed raw file reruns its ingest (issue 19, item 2): the raw-file manifest."""

import os
import subprocess
import sys
import time
from pathlib import Path

import imageio.v3 as iio
import numpy as np
import pytest
import yaml

from medpipe.data.manifest import manifest_digest, manifest_text

REPO_ROOT = Path(__file__).resolve().parents[1]


def write_case(root: Path, sub: str, name: str, value: int = 1):
    image = np.random.default_rng(len(name)).integers(0, 60000, (16, 16)).astype(np.uint16)
    label = np.zeros((16, 16), np.uint8)
    label[4:9, 4:9] = value
    for kind, array in (("images", image), ("labels", label)):
        (root / kind / sub).mkdir(parents=True, exist_ok=True)
        iio.imwrite(root / kind / sub / f"{name}.png", array)


SPEC = {"modality": "xray", "ndim": 2, "images": "raw/images/**/*.png", "labels": "raw/labels/**/*.png",
        "classes": {1: "a", 2: "b"}}


def rewritten(spec, manifest) -> bool:
    """The digest changed since the last call with ``manifest`` (a dict keeping the last digest)."""
    time.sleep(0.01)
    before, manifest["digest"] = manifest.get("digest"), manifest_digest(spec)
    return manifest["digest"] != before


def test_the_manifest_changes_exactly_when_a_raw_file_does(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    write_case(tmp_path / "raw", "a", "p0_x")
    manifest = {}
    assert rewritten(SPEC, manifest) and "raw/labels/a/p0_x.png" in manifest_text(SPEC)
    assert not rewritten(SPEC, manifest)  # nothing changed: the file (and its mtime) stays
    write_case(tmp_path / "raw", "a", "p0_x", value=2)  # a label edited in place
    assert rewritten(SPEC, manifest)
    write_case(tmp_path / "raw", "a/b/c", "p1_x")  # a case added three folders deep in the ** glob
    assert rewritten(SPEC, manifest) and "raw/images/a/b/c/p1_x.png" in manifest_text(SPEC)
    (tmp_path / "raw/images/a/b/c/p1_x.png").unlink()
    assert rewritten(SPEC, manifest)
    # a detached data file beside a matched header (MHD ElementDataFile)
    spec = {**SPEC, "images": "raw/vol/*.mhd"}
    (tmp_path / "raw/vol").mkdir()
    (tmp_path / "raw/vol/v.mhd").write_text("ElementDataFile = v.raw\n")
    (tmp_path / "raw/vol/v.raw").write_bytes(b"\0" * 8)
    assert rewritten(spec, manifest) and "raw/vol/v.raw" in manifest_text(spec)
    (tmp_path / "raw/vol/v.raw").write_bytes(b"\1" * 8)
    os.utime(tmp_path / "raw/vol/v.raw", ns=(1, 1))
    assert rewritten(spec, manifest)


def test_a_changed_sa_med2d_index_zip_or_mask_folder_changes_the_manifest(tmp_path):
    root = tmp_path / "SAMed2Dv1"
    (root / "masks").mkdir(parents=True)
    (root / "SAMed2D_v1.json").write_text("{}")
    spec = {"layout": "sa_med2d", "index": str(root / "SAMed2D_v1.json")}
    manifest = {}
    assert rewritten(spec, manifest) and not rewritten(spec, manifest)
    (root / "SAMed2D_v1.json").write_text('{"images/a.png": ["masks/a--x_000.png"]}')
    assert rewritten(spec, manifest)
    (root / "part1.zip").write_bytes(b"PK")
    assert rewritten(spec, manifest)
    (root / "part1.zip").write_bytes(b"PK\5\6")
    assert rewritten(spec, manifest)
    time.sleep(0.01)
    (root / "masks" / "a--x_000.png").write_bytes(b"")  # a mask added: the folder changes
    assert rewritten(spec, manifest)


def snakemake(workdir, *args):
    command = [sys.executable, "-m", "snakemake", "-s", str(REPO_ROOT / "Snakefile"), "--directory", str(workdir),
               "--configfile", str(workdir / "config.yaml"), "--cores", "1", "results/data/ds.zarr", *args]
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}"}
    result = subprocess.run(command, capture_output=True, text=True, env=env, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    return result.stdout + result.stderr


@pytest.mark.slow
def test_an_edited_label_and_a_case_added_deep_in_a_glob_rerun_the_ingest(tmp_path):
    write_case(tmp_path / "raw", "a", "p0_x")
    write_case(tmp_path / "raw", "b", "p1_x")
    (tmp_path / "config.yaml").write_text(yaml.safe_dump({"datasets": {"ds": SPEC}}))
    snakemake(tmp_path)
    assert "Nothing to be done" in snakemake(tmp_path, "-n")
    write_case(tmp_path / "raw", "a", "p0_x", value=2)  # edited in place: the folders' mtimes stay
    assert "rule ingest" in snakemake(tmp_path, "-n")
    snakemake(tmp_path)
    from medpipe.store import DatasetStore

    assert DatasetStore(tmp_path / "results/data/ds.zarr").label("p0_x").max() == 2
    write_case(tmp_path / "raw", "b/deeper/still", "p2_x")
    assert "rule ingest" in snakemake(tmp_path, "-n")

"""The built wheel is complete: installed without `-e`, `medpipe validate-config` finds its schema.

The wheel is built from a copy of the sources (no build folders in the checkout) and installed into
a fresh venv that reuses this venv's dependencies through a `.pth` line; the editable medpipe of
this venv is not on that path (its own `.pth` is not processed there), so the wheel's medpipe is
the one imported, which the test checks.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import sysconfig
import zipfile
from pathlib import Path

import pytest

from conftest import REPO_ROOT

pytestmark = pytest.mark.slow


def run(*command, **kwargs) -> subprocess.CompletedProcess:
    result = subprocess.run([str(c) for c in command], capture_output=True, text=True, timeout=600, **kwargs)
    assert result.returncode == 0, f"{command}:\n{result.stdout[-3000:]}\n{result.stderr[-3000:]}"
    return result


@pytest.fixture(scope="module")
def wheel(tmp_path_factory) -> Path:
    source = tmp_path_factory.mktemp("source")
    for name in ("pyproject.toml", "README.md"):
        shutil.copy2(REPO_ROOT / name, source / name)
    shutil.copytree(REPO_ROOT / "src", source / "src", ignore=shutil.ignore_patterns("__pycache__", "*.egg-info"))
    out = tmp_path_factory.mktemp("wheel")
    run(sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "--disable-pip-version-check",
        "-w", out, source)
    (path,) = out.glob("medpipe-*.whl")
    return path


def test_wheel_holds_the_schema(wheel):
    names = zipfile.ZipFile(wheel).namelist()
    assert "medpipe/schemas/config.schema.yaml" in names
    assert "medpipe/planning.py" in names and "medpipe/semantic/nnunet_trainers/__init__.py" in names
    schema = zipfile.ZipFile(wheel).read("medpipe/schemas/config.schema.yaml").decode()
    assert schema == (REPO_ROOT / "src/medpipe/schemas/config.schema.yaml").read_text()  # the file, not a link


def test_installed_wheel_validates_a_config(wheel, tmp_path):
    venv = tmp_path / "venv"
    run(sys.executable, "-m", "venv", venv)
    python = venv / "bin" / "python"
    run(python, "-m", "pip", "install", "--no-deps", "--no-index", "--disable-pip-version-check", wheel)
    site = Path(run(python, "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])").stdout.strip())
    # after the venv's own site-packages on sys.path: the dependencies come from this venv, medpipe from the wheel
    (site / "zz_shared_dependencies.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
    env = {key: value for key, value in os.environ.items() if key not in ("PYTHONPATH", "PYTHONHOME")}
    where = run(python, "-c", "import medpipe, yaml, jsonschema; print(medpipe.__file__)", env=env, cwd=tmp_path)
    assert Path(where.stdout.strip()).is_relative_to(site), where.stdout
    result = run(venv / "bin" / "medpipe", "validate-config", REPO_ROOT / "config" / "config.yaml", env=env,
                 cwd=tmp_path)
    assert "results_dir: results" in result.stdout and "chunks_3d:" in result.stdout  # defaults from the schema

"""The semantic stage through Snakemake: the demo DAG (dry run) and, slow, a tiny study + HTML report."""

import base64
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from imageio import v3 as iio

from debian import ensure_debian_packages
from demo_fixtures import tiny_demo_config


def snakemake(workdir: Path, repo_root: Path, *args: str, timeout=900) -> subprocess.CompletedProcess:
    command = [sys.executable, "-m", "snakemake", "-s", str(repo_root / "Snakefile"), "--directory", str(workdir),
               "--configfile", str(workdir / "config.yaml"), "--cores", "2", *args]
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}"}
    return subprocess.run(command, capture_output=True, text=True, env=env, timeout=timeout)


def _job_counts(output: str) -> dict[str, int]:
    counts = {}
    for line in output.splitlines():
        parts = line.split()
        if len(parts) == 2 and parts[1].isdigit():
            counts[parts[0]] = int(parts[1])
    return counts


def test_demo_dag_has_one_job_per_method_backbone_init_dataset_seed(tmp_path, repo_root):
    config = yaml.safe_load((repo_root / "config/config.yaml").read_text())
    config["semantic"]["seeds"] = [0, 1]
    (tmp_path / "config.yaml").write_text(yaml.safe_dump(config))
    target = "results/tables/semantic/seed_stats.tsv"
    dry = snakemake(tmp_path, repo_root, "-n", "-p", target)
    assert dry.returncode == 0, dry.stderr[-3000:]
    out = dry.stdout + dry.stderr
    # 2D: demo_xray; 3D: demo_ct; backbone lite_medsam (its bundled weights; no e_sem decoder in the demo)
    # sam_unetr: 1 dataset x lite_medsam.random = 1; no ma_sam (LiteMedSAM has no ViT blocks);
    # nnunet: 2 datasets; swin_unetr: 2 datasets -> 5 per seed, 2 seeds
    assert _job_counts(out)["semantic_run"] == 10
    assert _job_counts(out)["semantic_aggregate"] == 1
    assert "--decoder-init random --model-type lite_medsam --checkpoint bundled" in out
    assert "--method nnunet --dataset demo_ct" in out and "--method ma_sam" not in out
    assert "lite_medsam.pretrained" not in out  # base models have no decoder


def test_dag_with_an_esem_run_initialises_sam_unetr_from_its_decoder(tmp_path, repo_root):
    config = tiny_demo_config()
    config["finetune"]["runs"]["medicosam_demo"].update(preset="medicosam_full")  # e_sem: a decoder file
    config["semantic"].update(backbones=["sam_tiny", "medicosam_demo"], methods=["sam_unetr", "ma_sam"])
    (tmp_path / "config.yaml").write_text(yaml.safe_dump(config))
    dry = snakemake(tmp_path, repo_root, "-n", "-p", "results/tables/semantic/seed_stats.tsv")
    assert dry.returncode == 0, dry.stderr[-3000:]
    out = dry.stdout + dry.stderr
    # sam_unetr: sam_tiny.random, medicosam_demo.random, medicosam_demo.pretrained; ma_sam: 2 backbones
    assert _job_counts(out)["semantic_run"] == 5
    assert "--decoder-init pretrained --model-type tiny --checkpoint results/models/medicosam_demo.pth " \
           "--decoder-file results/models/medicosam_demo.decoder.pth" in out
    assert "--method ma_sam --dataset demo_xray" not in out and "sam_tiny.pretrained" not in out


def _chromium():
    return shutil.which("chromium") or shutil.which("chromium-browser")


@pytest.mark.slow
def test_tiny_semantic_study_and_report_render_in_headless_chromium(tmp_path, repo_root):
    """Synth -> ingest -> split -> SAM-UNETR (2D) + MA-SAM (3D) -> aggregate -> report -> headless Chromium."""
    ensure_debian_packages(["chromium"], ["chromium"])
    config = tiny_demo_config()
    keep = {"demo_xray", "demo_ct"}
    for name, spec in config["datasets"].items():  # --configfile merges into the demo config: clear, do not drop
        spec["synth"].update(patients=4, images_per_patient=1)
        spec["roles"] = [r for r in spec["roles"] if r.startswith("semantic")] if name in keep else []
    config["semantic"].update(backbones=["sam_tiny"], methods=["sam_unetr", "ma_sam"])
    config["semantic"]["sam_unetr"].update(iterations=2, val_every=2)
    config["semantic"]["ma_sam"] = {"iterations": 2, "val_every": 2, "batch_size": 1, "patch_size": [8, 96, 96],
                                    "input_size": 64, "halo": 2, "val_batches": 1}
    (tmp_path / "config.yaml").write_text(yaml.safe_dump(config))
    target = "results/tables/semantic/seed_stats.tsv"
    run = snakemake(tmp_path, repo_root, target)
    assert run.returncode == 0, run.stderr[-4000:]
    report = tmp_path / "report.html"
    built = snakemake(tmp_path, repo_root, target, "--report", str(report))
    assert built.returncode == 0 and report.is_file(), built.stderr[-3000:]
    profile = tmp_path / "chromium-profile"
    flags = [_chromium(), "--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
             "--disable-component-update", "--no-first-run", "--disable-sync", f"--user-data-dir={profile}"]
    # 1. the report app runs (it is a single-page app that builds its pages in JavaScript)
    dom = subprocess.run([*flags, "--virtual-time-budget=10000", "--dump-dom", report.as_uri()], capture_output=True,
                         text=True, timeout=180)
    assert dom.returncode == 0, dom.stderr[-2000:]
    assert "Snakemake" in dom.stdout and "Results" in dom.stdout
    # 2. every figure is embedded with its caption and is byte-identical to the file the job wrote
    html = report.read_text()
    figures = {}
    for name in ("fig1d_semantic2d", "fig1e_semantic3d", "fig8_semantic", "fig6_semantic_seeds"):
        match = re.search(r'"data:image/png;charset=utf8;filename=' + name + r'\.png;base64,([A-Za-z0-9+/=]+)"', html)
        assert match, f"{name}.png is not embedded in the report"
        written = (tmp_path / f"results/figures/semantic/{name}.png").read_bytes()
        assert base64.b64decode(match.group(1)) == written
        figures[name] = match.group(0).strip('"')
    assert "Per-dataset comparison (paper Fig. 8)" in html and "Seed statistics of semantic segmentation" in html
    # 3. Chromium draws every embedded figure: a page stacks them in 600x300 boxes; each box of the
    #    screenshot must hold the figure's dark pixels (axes, text, bars), not a blank or broken image
    page = tmp_path / "figures.html"
    names = list(figures)
    page.write_text('<html><body style="margin:0;background:#fff">' + "".join(
        f'<img style="display:block;width:600px;height:300px" src="{figures[n]}">' for n in names) + "</body></html>")
    shot = tmp_path / "figures.png"
    drawn = subprocess.run([*flags, f"--window-size=600,{300 * len(names)}", f"--screenshot={shot}", page.as_uri()],
                           capture_output=True, text=True, timeout=180)
    assert drawn.returncode == 0 and shot.is_file(), drawn.stderr[-2000:]
    pixels = iio.imread(shot)[..., :3].min(axis=-1)
    for k, name in enumerate(names):
        box = pixels[300 * k : 300 * (k + 1)]
        assert (box < 128).mean() > 0.005, f"{name} is not drawn in the report's embedded image"

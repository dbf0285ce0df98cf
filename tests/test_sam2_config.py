"""SAM2 configs come only from the sam2 package (or an explicit allow-list), and name sam2 modules only.

Issue 13: `interactive.sam2.<m>.config` could name any YAML on disk, and hydra instantiated its
`_target_` (a `shutil.copyfile` payload wrote a file). Now the name must resolve inside the installed
package's `configs/` folder or be listed in `interactive.trusted_sam2_configs`, and every `_target_`
must be a torch module class defined in sam2.
"""

from __future__ import annotations

import os

import numpy as np
import pytest
import yaml

pytest.importorskip("sam2")

from medpipe.cli import main  # noqa: E402
from medpipe.config import sam2_config_path, sam2_package_dir  # noqa: E402
from medpipe.interactive.sam2_baseline import Sam2ConfigError, build_video_predictor  # noqa: E402

from interactive_fixtures import volume_3d, write_splits, write_store  # noqa: E402

TINY = "configs/sam2.1/sam2.1_hiera_t.yaml"


def evil_config(tmp_path, target="shutil.copyfile"):
    (tmp_path / "source.txt").write_text("payload ran")
    path = tmp_path / "evil.yaml"
    payload = {"_target_": target, "src": str(tmp_path / "source.txt"), "dst": str(tmp_path / "PWNED")}
    path.write_text("# @package _global_\n" + yaml.safe_dump(  # placed at the top, as sam2's own configs are
        {"model": {"_target_": "sam2.modeling.sam2_base.SAM2Base", "image_encoder": payload}}))
    return path


def test_a_yaml_outside_the_package_is_refused_by_eval3d_sam2(tmp_path, capsys):
    """The issue's probe, through the command: by absolute path and by climbing out of the package."""
    evil = evil_config(tmp_path)
    write_store(tmp_path / "d3.zarr", "d3", 3, {1: "ball"}, {"v0": volume_3d(0, shape=(5, 48, 48))})
    write_splits(tmp_path / "d3.tsv", "d3", {"v0": "test"})
    climbing = os.path.relpath(evil, sam2_package_dir().resolve())
    for name in (str(evil), climbing, f"configs/{os.path.relpath(evil, sam2_package_dir().resolve() / 'configs')}"):
        config = {"datasets": {"d3": {"modality": "ct", "ndim": 3, "images": "x", "labels": "y", "classes": {1: "a"}}},
                  "interactive": {"sam2": {"evil": {"config": name}}}}
        (tmp_path / "c.yaml").write_text(yaml.safe_dump(config))
        code = main(["eval3d-sam2", "--config", str(tmp_path / "c.yaml"), "--model", "evil", "--dataset", "d3",
                     "--store", str(tmp_path / "d3.zarr"), "--splits", str(tmp_path / "d3.tsv"), "--device", "cpu",
                     "--out", str(tmp_path / "o.tsv")])
        assert code != 0 and not (tmp_path / "PWNED").exists(), name
        with pytest.raises(ValueError, match="is not a config of the sam2 package"):
            sam2_config_path(name)


@pytest.mark.parametrize("target", ["shutil.copyfile", "sam2.build_sam.os.system", "sam2.build_sam.shutil.copyfile",
                                    "sam2.build_sam._load_checkpoint", "sam2.modeling.sam2_base.torch.nn.Linear"])
def test_even_a_trusted_config_may_only_build_sam2_modules(tmp_path, target):
    evil = evil_config(tmp_path, target)
    with pytest.raises(Sam2ConfigError, match=r"evil\.yaml: model\.image_encoder\._target_"):
        build_video_predictor(str(evil), None, "cpu", 0, trusted=[str(evil)])
    assert not (tmp_path / "PWNED").exists()


def test_package_configs_resolve_inside_the_package():
    path = sam2_config_path(TINY)
    assert path.is_file() and path.is_relative_to(sam2_package_dir().resolve() / "configs")
    with pytest.raises(ValueError, match="no such config"):
        sam2_config_path("configs/sam2.1/sam2.1_hiera_q.yaml")
    with pytest.raises(ValueError, match="is not a config"):
        sam2_config_path("sam2_hiera_t.yaml")  # beside configs/, not in it


@pytest.mark.slow
def test_the_builder_matches_sam2s_own_and_a_trusted_copy_with_a_checkpoint_loads(tmp_path):
    import torch
    from sam2.build_sam import build_sam2_video_predictor  # noqa: F401 - the reference we reproduce

    ours = build_video_predictor(TINY, None, "cpu", seed=0)
    torch.manual_seed(0)
    theirs = build_sam2_video_predictor(TINY, None, device="cpu")
    assert type(ours) is type(theirs)
    a, b = ours.state_dict(), theirs.state_dict()
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    for attr in ("binarize_mask_from_pts_for_mem_enc", "fill_hole_area"):
        assert getattr(ours, attr) == getattr(theirs, attr)
    copy = tmp_path / "my_sam2.yaml"  # e.g. a MedSAM2 release's own config, listed as trusted
    copy.write_text(sam2_config_path(TINY).read_text())
    torch.save({"model": {k: torch.full_like(v, 0.5) if v.is_floating_point() else v for k, v in a.items()}},
               tmp_path / "w.pt")
    loaded = build_video_predictor(str(copy), str(tmp_path / "w.pt"), "cpu", seed=1, trusted=[str(copy)])
    weights = loaded.state_dict()
    assert all(np.allclose(weights[k].numpy(), 0.5) for k in weights if weights[k].is_floating_point())
    torch.save({"model": {"nope": torch.ones(1)}}, tmp_path / "bad.pt")
    with pytest.raises(Sam2ConfigError, match="bad.pt: does not match"):
        build_video_predictor(TINY, str(tmp_path / "bad.pt"), "cpu", 0)

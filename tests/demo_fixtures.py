"""The demo config for tests of the workflow's mechanics, with the tiny random-init SAM in place of LiteMedSAM.

The demo (config/config.yaml) finetunes and evaluates LiteMedSAM; tests that exercise the workflow
itself (jobs, params, quoting, the cluster) do not need a real model, and the tiny SAM keeps them fast.
"""

from __future__ import annotations

import yaml

from conftest import REPO_ROOT

TINY = "sam_tiny"


def tiny_demo_config() -> dict:
    """config/config.yaml with ``sam_tiny`` (random init) as the base model of every run and backbone."""
    config = yaml.safe_load((REPO_ROOT / "config" / "config.yaml").read_text())
    bases = set(config["models"])
    config["models"] = {TINY: {"type": "tiny", "checkpoint": None}}
    for run in config["finetune"]["runs"].values():
        run["base"] = TINY
    semantic = config["semantic"]
    semantic["backbones"] = [TINY if name in bases else name for name in semantic["backbones"] or []] or None
    for comparison in config.get("aggregate", {}).get("comparisons", {}).values():
        for side in comparison.values():
            side["model"] = TINY if side["model"] in bases else side["model"]
    return config

"""Install Debian packages a test needs (test setup installs its own services and tools)."""

import os
import shutil
import subprocess
from pathlib import Path

import pytest


def ensure_debian_packages(packages: list[str], binaries: list[str]) -> None:
    """apt-get install ``packages`` unless every one of ``binaries`` is already there.

    Skips the calling test, with the reason, when installing is impossible (not root, no apt-get,
    or the install fails); `apt-get update` runs once first, as Debian needs.
    """
    def present(binary):
        return shutil.which(binary) or Path("/usr/sbin", binary).exists()

    if all(present(b) for b in binaries):
        return
    if os.geteuid() != 0 or shutil.which("apt-get") is None:
        pytest.skip(f"{', '.join(packages)} not installed and cannot be installed (needs root and apt-get)")
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    for command in (["apt-get", "update", "-qq"], ["apt-get", "install", "-y", "-qq", *packages]):
        result = subprocess.run(command, capture_output=True, text=True, env=env, timeout=900)
        if result.returncode != 0:
            pytest.skip(f"`{' '.join(command)}` failed: {result.stderr[-500:]}")

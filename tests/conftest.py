"""Shared test setup: one torch thread (the CI machine has 2 cores) and the repository root."""

from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parents[1]

try:  # torch is heavy; only pin threads when a test session imports it anyway
    import torch

    torch.set_num_threads(1)
except ImportError:  # pragma: no cover - torch is a hard dependency
    pass


@pytest.fixture
def repo_root() -> Path:
    return REPO_ROOT

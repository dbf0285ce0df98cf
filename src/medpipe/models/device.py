"""The one rule for choosing where a job's model runs."""

from __future__ import annotations


def pick_device(requested: str = "auto") -> str:
    """``cuda`` when asked for (or ``auto`` and a GPU is present), else what was asked for."""
    import torch

    if requested == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    return requested

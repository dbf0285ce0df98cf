"""Finite numbers only: a training step with a non-finite loss or gradient stops the run.

A NaN or inf in a loss or a gradient would, once stepped, turn every weight into NaN and every
later loss with it, while the run goes on, writes checkpoints and exits 0. The check runs after
the gradients are averaged over ranks and before the optimiser steps, so the weights (and
``latest.pt`` on disk) stay those of the last good iteration; one collective keeps every rank
stopping at the same iteration. It costs one device sync per step (the loss row syncs anyway).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping

import torch

from medpipe.errors import MedpipeError


class NonFiniteError(MedpipeError, RuntimeError):
    """A loss or gradient is NaN or inf; the message names the iteration and what was non-finite."""

    exit_code = 1  # the run diverged; its checkpoints keep the last good weights


def _problem(losses: Mapping[str, torch.Tensor], named_parameters: Iterable) -> str | None:
    for name, value in losses.items():
        value = value.detach()
        if not bool(torch.isfinite(value).all()):
            return f"loss {name!r} is {float(value.float().reshape(-1)[0])}"
    for name, parameter in named_parameters:
        if parameter.grad is not None and not bool(torch.isfinite(parameter.grad).all()):
            bad = int((~torch.isfinite(parameter.grad)).sum())
            return f"the gradient of {name} has {bad} non-finite values"
    return "the total gradient norm overflows"


def check_step(iteration: int, losses: Mapping[str, torch.Tensor], named_parameters: Iterable, any_rank) -> None:
    """Raise :class:`NonFiniteError` unless every loss and every gradient is finite on every rank.

    ``any_rank(flag)`` is true on all ranks when ``flag`` is true on one (a no-op on one process).
    Cheap when all is well: one fused norm over the gradients, one sync; the culprit is looked up
    only after something was found.
    """
    named_parameters = list(named_parameters)
    grads = [p.grad for _, p in named_parameters if p.grad is not None]
    values = [v.detach().float().reshape(-1) for v in losses.values()]
    if grads:
        values.append(torch.nn.utils.get_total_norm(grads, norm_type=2.0).float().reshape(-1).to(values[0].device))
    bad = not bool(torch.isfinite(torch.cat(values)).all()) if values else False
    if any_rank(bad):
        where = _problem(losses, named_parameters) if bad else "another rank's loss or gradient"
        raise NonFiniteError(f"iteration {iteration + 1}: {where}; stopped before the optimiser step, "
                             "so the checkpoints hold the weights of the last good iteration")

"""Count the operations that make the host wait for a CUDA device, on any device (a CPU test too).

A training iteration on a GPU is fast only when the host keeps queueing kernels ahead of the
device; every operation whose result the host needs (a scalar, a data-dependent shape, a copy to
host memory) drains the queue. :class:`HostSyncCounter` is a ``TorchDispatchMode`` that counts the
ATen operations that do that on CUDA, so a CPU test can hold the count of an iteration down:

- ``_local_scalar_dense`` (``.item()``, ``float(t)``, ``.tolist()``, ``if t:``), ``is_nonzero``, ``equal``;
- data-dependent shapes: ``nonzero``, ``masked_select``, boolean-mask indexing, ``unique``,
  ``repeat_interleave`` without ``output_size``;
- host <-> device traffic: a copy to the CPU from another device, a CPU index tensor indexing a
  tensor on another device, and ``lift_fresh`` (a tensor made from host data, i.e. a pageable
  host-to-device copy when it lands on a GPU).

On CPU the device-crossing cases cannot occur; run the code on the ``meta`` device to see them.

On a GPU, ``torch.cuda.set_sync_debug_mode`` reports the real ones (``benchmarks/gpu``).
"""

from __future__ import annotations

from collections import Counter

import torch
from torch.utils._python_dispatch import TorchDispatchMode

aten = torch.ops.aten

_ALWAYS = {
    aten._local_scalar_dense.default, aten.is_nonzero.default, aten.equal.default,
    aten.nonzero.default, aten.nonzero.out, aten.masked_select.default, aten.lift_fresh.default,
    aten._unique2.default, aten.unique_dim.default, aten.unique_consecutive.default,
    aten.repeat_interleave.Tensor, aten.repeat_interleave.self_Tensor,
}
_INDEXING = {aten.index.Tensor, aten.index_put.default, aten.index_put_.default, aten._index_put_impl_.default}
_COPIES = {aten._to_copy.default, aten.copy_.default}


def _bool_or_host_index(tensor, indices) -> bool:
    """Boolean-mask indexing (a ``nonzero``), or a CPU index into a tensor on another device (a copy)."""
    for index in indices or ():
        if isinstance(index, torch.Tensor):
            if index.dtype in (torch.bool, torch.uint8):
                return True
            if index.device.type == "cpu" and tensor.device.type != "cpu" and index.dim() > 0:
                return True
    return False


def _syncs(func, args, kwargs) -> bool:
    if func in _ALWAYS:
        if func in (aten.repeat_interleave.Tensor, aten.repeat_interleave.self_Tensor):
            return kwargs.get("output_size") is None
        return True
    if func in _INDEXING:
        return _bool_or_host_index(args[0], args[1] if len(args) > 1 else kwargs.get("indices"))
    if func in _COPIES:
        if func is aten._to_copy.default:
            source, target = args[0], kwargs.get("device")
            return target is not None and torch.device(target).type == "cpu" and source.device.type != "cpu"
        target, source = args[0], args[1]
        return target.device.type == "cpu" and source.device.type != "cpu"
    return False


class HostSyncCounter(TorchDispatchMode):
    """``with HostSyncCounter() as syncs: ...``; then ``syncs.total`` and ``syncs.ops`` (a Counter by op)."""

    def __init__(self):
        super().__init__()
        self.ops: Counter = Counter()

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if _syncs(func, args, kwargs):
            self.ops[str(func.overloadpacket.__name__)] += 1
        return func(*args, **kwargs)

    @property
    def total(self) -> int:
        return sum(self.ops.values())

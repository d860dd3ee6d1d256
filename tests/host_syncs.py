"""Finds host syncs: the aten ops that make the host wait for the device.

On a GPU, reading a value (``.item()``, ``bool(t)``, ``int(t)``), data-dependent shapes
(``nonzero``, boolean-mask indexing, ``masked_select``) and ``.any()`` in Python control flow
all block the host until the device has caught up (``.tolist()`` bypasses dispatch and is
not seen). On a CPU nothing waits, so the tests look
for the ops themselves: every one of them ends in one of the aten ops below.
"""

from __future__ import annotations

import torch
from torch.utils._python_dispatch import TorchDispatchMode

SYNC_OPS = {"aten::_local_scalar_dense", "aten::nonzero", "aten::masked_select",
            "aten::is_nonzero", "aten::equal", "aten::unique", "aten::_unique2",
            "aten::unique_consecutive", "aten::repeat_interleave"}


class HostSyncs(TorchDispatchMode):
    """Records the host-syncing ops run inside the block: ``with HostSyncs() as s: ...``;
    ``s.ops`` lists them in order. Boolean-mask indexing counts (it runs ``nonzero``)."""

    def __init__(self):
        super().__init__()
        self.ops: list[str] = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        name = func._schema.name
        if name in SYNC_OPS:
            self.ops.append(name)
        elif name in ("aten::index", "aten::index_put_", "aten::index_put", "aten::_index_put_impl_"):
            indices = args[1] if len(args) > 1 else ()
            if any(i is not None and i.dtype == torch.bool for i in indices):
                self.ops.append(f"{name} (boolean mask)")
        return func(*args, **(kwargs or {}))

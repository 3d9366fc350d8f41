"""Peak bytes a callable allocates, counted per tensor storage (works on CPU, where torch keeps no allocator
statistics): every storage an operation creates is counted until it is freed."""
from __future__ import annotations

import weakref

import torch
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_leaves


class _LiveStorages(TorchDispatchMode):
    def __init__(self):
        super().__init__()
        self.live: dict[int, int] = {}
        self.current = self.peak = 0

    def _freed(self, key: int) -> None:
        self.current -= self.live.pop(key, 0)

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        given = {t.untyped_storage().data_ptr() for t in tree_leaves((args, kwargs)) if isinstance(t, torch.Tensor)}
        out = func(*args, **kwargs)
        for t in tree_leaves(out):
            if not isinstance(t, torch.Tensor):
                continue
            storage = t.untyped_storage()
            key = id(storage)
            # an in-place or out= operation returns storage it was given: not an allocation
            if key in self.live or storage.nbytes() == 0 or storage.data_ptr() in given:
                continue
            self.live[key] = storage.nbytes()
            self.current += storage.nbytes()
            self.peak = max(self.peak, self.current)
            weakref.finalize(storage, self._freed, key)
        return out


def peak_bytes(fn) -> int:
    """The most bytes of storages created by ``fn`` alive at once (storages that existed before are not counted)."""
    mode = _LiveStorages()
    with mode:
        fn()
    return mode.peak

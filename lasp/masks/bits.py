"""Bit packing of boolean masks: 8 mask entries per uint8, packed along the last dimension.

Layout (shared by the on-disk mask format and the GPU kernels): a bool tensor of
shape ``(*lead, n)`` becomes uint8 of shape ``(*lead, ceil(n / 8))``; bit ``b``
(least significant first) of byte ``j`` holds element ``8 * j + b``. Rows are
padded with zero bits, so a weight ``[out, in]`` packs row by row and a kernel
can load the bits of a ``K`` tile without decoding anything else. For the
Transformer Linear layers of every wav2vec2-family model ``in`` is a multiple of
8, so the cost is exactly one bit per weight.
"""
from __future__ import annotations

import torch

_SHIFTS_CACHE: dict[torch.device, torch.Tensor] = {}


def _shifts(device: torch.device) -> torch.Tensor:
    if device not in _SHIFTS_CACHE:
        _SHIFTS_CACHE[device] = torch.arange(8, dtype=torch.uint8, device=device)
    return _SHIFTS_CACHE[device]


def packed_shape(shape: tuple[int, ...] | torch.Size) -> tuple[int, ...]:
    shape = tuple(shape)
    if not shape:
        return (1,)
    return (*shape[:-1], (shape[-1] + 7) // 8)


def pack_bits(mask: torch.Tensor) -> torch.Tensor:
    """Pack a bool tensor into uint8 along its last dimension (see module docstring)."""
    if mask.dtype != torch.bool:
        raise TypeError(f"pack_bits expects a bool tensor, got {mask.dtype}")
    if mask.dim() == 0:
        mask = mask.reshape(1)
    n = mask.shape[-1]
    pad = (-n) % 8
    if pad:
        mask = torch.nn.functional.pad(mask, (0, pad), value=False)
    grouped = mask.reshape(*mask.shape[:-1], -1, 8).to(torch.uint8)
    return (grouped << _shifts(mask.device)).sum(dim=-1, dtype=torch.uint8)


def unpack_bits(packed: torch.Tensor, shape: tuple[int, ...] | torch.Size) -> torch.Tensor:
    """Inverse of :func:`pack_bits`: uint8 ``(*lead, ceil(n/8))`` → bool ``shape``."""
    shape = tuple(shape)
    if packed.dtype != torch.uint8:
        raise TypeError(f"unpack_bits expects uint8, got {packed.dtype}")
    expected = packed_shape(shape)
    if tuple(packed.shape) != expected:
        raise ValueError(f"packed shape {tuple(packed.shape)} does not match {expected} for mask shape {shape}")
    bits = (packed.unsqueeze(-1) >> _shifts(packed.device)) & 1
    bits = bits.reshape(*packed.shape[:-1], -1)
    n = shape[-1] if shape else 1
    return bits[..., :n].to(torch.bool).reshape(shape)


_POPCOUNT_CACHE: dict[torch.device, torch.Tensor] = {}


def popcount(packed: torch.Tensor) -> int:
    """Number of set bits (kept weights) in a packed mask; padding bits are always zero."""
    if packed.device not in _POPCOUNT_CACHE:
        _POPCOUNT_CACHE[packed.device] = torch.tensor([bin(i).count("1") for i in range(256)], dtype=torch.int64,
                                                      device=packed.device)
    return int(_POPCOUNT_CACHE[packed.device][packed.long()].sum())


def _fold_packed(stacked: torch.Tensor | list[torch.Tensor], op: str, what: str) -> torch.Tensor:
    if isinstance(stacked, (list, tuple)):
        if not stacked:
            raise ValueError(f"{what} of an empty list of masks")
        stacked = torch.stack(list(stacked))
    acc = stacked[0].clone()
    for extra in stacked[1:]:
        getattr(acc, op)(extra)
    return acc


def union_packed(stacked: torch.Tensor | list[torch.Tensor]) -> torch.Tensor:
    """Bitwise OR of packed masks (``uint8[L, ...]`` or a list of equal-shape packed tensors): the packed union."""
    return _fold_packed(stacked, "bitwise_or_", "union")


def intersection_packed(stacked: torch.Tensor | list[torch.Tensor]) -> torch.Tensor:
    """Bitwise AND of packed masks: the packed intersection."""
    return _fold_packed(stacked, "bitwise_and_", "intersection")


def iou_packed(a: list[torch.Tensor], b: list[torch.Tensor]) -> float:
    """|A ∩ B| / |A ∪ B| over several tensors' packed masks (NaN when both are empty: the ratio is undefined)."""
    inter = sum(popcount(x & y) for x, y in zip(a, b))
    union = sum(popcount(x | y) for x, y in zip(a, b))
    return inter / union if union else float("nan")

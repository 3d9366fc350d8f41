"""2:4 export: a language's sub-network as torch semi-structured sparse weights (sparse tensor cores).

A mask made with ``pattern="2:4"`` keeps at most 2 of every 4 consecutive weights along
the input dimension — the layout NVIDIA sparse tensor cores (Ampere and later) execute
at up to twice the dense math rate. Export merges ``W ⊙ M_lang`` into a plain copy of
the model and swaps each targeted Linear weight for ``to_sparse_semi_structured`` (fp16 /
bf16 on CUDA); the model then runs inference through cuSPARSELt/CUTLASS sparse GEMMs.
"""
from __future__ import annotations

import torch
import torch.nn as nn

from lasp.errors import ConfigError, MaskError
from lasp.masks.targets import owner_module

# Shape constraints of torch's semi-structured kernels (CUTLASS is the stricter of the two backends).
MIN_ROWS = 32
MIN_COLS = 64


def check_2to4(mask: torch.Tensor, name: str) -> None:
    """Raise :class:`MaskError` naming ``name`` and the first bad group unless ≤ 2 of every 4 are kept."""
    if mask.dim() != 2:
        raise MaskError(f"{name}: a 2:4 mask must be 2-D [out, in], got shape {tuple(mask.shape)}")
    if mask.shape[1] % 4:
        raise MaskError(f"{name}: in-features {mask.shape[1]} is not a multiple of 4; no 2:4 layout")
    kept = mask.reshape(mask.shape[0], -1, 4).sum(-1)
    bad = (kept > 2).nonzero()
    if bad.numel():
        row, group = bad[0].tolist()
        raise MaskError(f"{name}: row {row}, columns {4 * group}..{4 * group + 3} keep {int(kept[row, group])} "
                        f"of 4 weights; not a 2:4 mask ({bad.shape[0]} such groups)")


def is_2to4(mask: torch.Tensor) -> bool:
    try:
        check_2to4(mask, "mask")
    except MaskError:
        return False
    return True


def semi_structured_supported(device: torch.device | str = "cuda") -> bool:
    device = torch.device(device)
    return (device.type == "cuda" and torch.cuda.is_available()
            and torch.cuda.get_device_capability(device) >= (8, 0))


def _require_support(device: torch.device) -> None:
    if not semi_structured_supported(device):
        raise ConfigError(f"2:4 semi-structured export needs a CUDA GPU with sparse tensor cores "
                          f"(compute capability ≥ 8.0); device {device} has none")


def sparsify_linear(linear: nn.Linear, name: str = "linear") -> nn.Linear:
    """Swap ``linear.weight`` (already ``W ⊙ M``, fp16/bf16, on CUDA) for its semi-structured form, in place."""
    from torch.sparse import to_sparse_semi_structured

    weight = linear.weight.detach()
    _require_support(weight.device)
    if weight.dtype not in (torch.float16, torch.bfloat16):
        raise ConfigError(f"{name}: 2:4 sparse tensor cores need fp16 or bf16 weights, got {weight.dtype}")
    out_f, in_f = weight.shape
    if out_f < MIN_ROWS or in_f < MIN_COLS or out_f % MIN_ROWS or in_f % MIN_COLS:
        raise ConfigError(f"{name}: weight {tuple(weight.shape)} does not fit the semi-structured kernels "
                          f"(rows a multiple of {MIN_ROWS}, columns of {MIN_COLS})")
    check_2to4(weight != 0, name)
    linear.weight = nn.Parameter(to_sparse_semi_structured(weight), requires_grad=False)
    return linear


def export_semi_structured(masked_model, lang: str, dtype: torch.dtype = torch.float16,
                           device: torch.device | str = "cuda") -> nn.Module:
    """An inference copy of ``masked_model``'s HF model for ``lang`` with 2:4 sparse targeted Linears.

    Every targeted weight's mask must be 2:4 (``lasp prune --pattern 2:4``); a mask that is
    not names its parameter. Non-Linear targets are left merged but dense.
    """
    device = torch.device(device)
    _require_support(device)
    masks = masked_model.masks[lang]
    for name in masked_model.targets:
        check_2to4(masks[name], name)
    merged = masked_model.merge_and_unload(lang).to(device=device, dtype=dtype).eval()
    for name in masked_model.targets:
        module, attr = owner_module(merged, name)
        if isinstance(module, nn.Linear) and attr == "weight":
            sparsify_linear(module, name)
    return merged

"""What ``precision`` means on a device: the autocast dtype, whether a gradient scaler runs, and where the model
recomputes activations instead of keeping them (activation checkpointing).

``auto`` is bf16 on a GPU and fp32 on CPU (a CPU without bf16 matrix units runs bf16 slower than fp32).
``bf16`` and ``fp16`` mean autocast on either device, so the dtype logic a GPU runs (masked bf16 weight copies,
fp32 master weights and optimizer, the fp16 gradient scaler with its skipped steps) also runs, and is tested, on
CPU.
"""
from __future__ import annotations

import contextlib

import torch

from lasp.errors import ConfigError

DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16}


def autocast_dtype(device: torch.device, precision: str) -> torch.dtype | None:
    """The autocast dtype of ``precision`` on ``device`` (None: no autocast, fp32)."""
    if precision == "auto":
        precision = "bf16" if device.type == "cuda" else "fp32"
    if precision == "fp32":
        return None
    if precision not in DTYPES:
        raise ConfigError(f"precision must be auto, fp32, bf16 or fp16, got {precision!r}")
    return DTYPES[precision]


def autocast(device: torch.device, dtype: torch.dtype | None):
    """``torch.autocast`` on ``device`` in ``dtype``; a no-op for None."""
    if dtype is None:
        return contextlib.nullcontext()
    return torch.autocast(device.type, dtype=dtype)


def grad_scaler(device: torch.device, dtype: torch.dtype | None) -> torch.amp.GradScaler:
    """A gradient scaler for fp16 (disabled, i.e. pass-through, for every other dtype)."""
    return torch.amp.GradScaler(device.type, enabled=dtype == torch.float16)


def enable_activation_checkpointing(model: torch.nn.Module) -> None:
    """transformers' gradient checkpointing of the encoder layers, non-reentrant (the variant that works with
    DistributedDataParallel, unused parameters and the masked layers' cached weight copies)."""
    if not getattr(model, "supports_gradient_checkpointing", False):
        raise ConfigError(f"activation_checkpointing: {type(model).__name__} does not support gradient "
                          "checkpointing")
    kwargs = {"use_reentrant": False}
    if hasattr(model, "activation_checkpointing_enable"):  # the name from transformers 5.2x on
        model.activation_checkpointing_enable(activation_checkpointing_kwargs=kwargs)
    else:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs=kwargs)


def activation_checkpointing(model: torch.nn.Module) -> bool:
    """Whether ``model`` recomputes its layers' activations in backward."""
    return bool(getattr(model, "is_activation_checkpointing", None) if hasattr(model, "activation_checkpointing_enable")
                else getattr(model, "is_gradient_checkpointing", False))

"""What training adds to a precision (the autocast dtype itself: :func:`lasp.device.autocast_dtype`): whether a
gradient scaler runs, and where the model recomputes activations instead of keeping them (activation
checkpointing). The fp16 gradient scaler with its skipped steps runs, and is tested, on CPU too.
"""
from __future__ import annotations

import torch

from lasp.errors import ConfigError


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

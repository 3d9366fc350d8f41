"""Which parameters carry language masks, and how their names are read.

Names are *canonical*: the backbone prefix (``wav2vec2.``, ``hubert.``, …) is
stripped, so a mask set made on a pre-training model applies unchanged to the
CTC model fine-tuned from it, and to a bare encoder.
"""
from __future__ import annotations

import re

import torch.nn as nn

from lasp.errors import MaskError

# Linear weights of the Transformer encoder layers (attention q/k/v/out, both FFN projections).
DEFAULT_TARGETS: tuple[str, ...] = (
    r"^encoder\.layers\.\d+\.attention\.(q_proj|k_proj|v_proj|out_proj)\.weight$",
    r"^encoder\.layers\.\d+\.feed_forward\.(intermediate_dense|output_dense)\.weight$",
)

# Opt-in groups, usable by name in ``target_modules`` (PARP and LaSS leave these shared).
TARGET_GROUPS: dict[str, tuple[str, ...]] = {
    "default": DEFAULT_TARGETS,
    "feature-encoder": (r"^feature_extractor\.conv_layers\.\d+\.conv\.weight$",),
    "positional-conv": (r"^encoder\.pos_conv_embed\.conv\.",),
    "layer-norms": (r"^encoder\.layers\.\d+\.(layer_norm|final_layer_norm)\.weight$",),
    "biases": (r"^encoder\.layers\.\d+\.(attention\.(q_proj|k_proj|v_proj|out_proj)|"
               r"feed_forward\.(intermediate_dense|output_dense))\.bias$",),
    "quantizer": (r"^quantizer\.",),
}

_BACKBONES = ("wav2vec2.", "hubert.", "wavlm.", "data2vec_audio.", "wav2vec2_conformer.")

_KINDS = {
    "q_proj": "q", "k_proj": "k", "v_proj": "v", "out_proj": "out",
    "intermediate_dense": "ffn-in", "output_dense": "ffn-out",
}


def canonical_name(name: str) -> str:
    for prefix in _BACKBONES:
        if name.startswith(prefix):
            return name[len(prefix):]
    return name


def canonical_parameters(model: nn.Module) -> dict[str, nn.Parameter]:
    """All parameters of ``model`` keyed by canonical name (backbone prefix stripped)."""
    return {canonical_name(name): p for name, p in model.named_parameters()}


def expand_patterns(patterns: str | list[str] | tuple[str, ...] | None) -> list[str]:
    if patterns is None:
        return list(DEFAULT_TARGETS)
    if isinstance(patterns, str):
        patterns = [patterns]
    out: list[str] = []
    for pattern in patterns:
        out.extend(TARGET_GROUPS.get(pattern, (pattern,)))
    return out


def select_targets(model: nn.Module, patterns=None) -> dict[str, nn.Parameter]:
    """Targeted parameters by canonical name, in model order.

    ``patterns``: regexes (searched in canonical names) or group names from
    :data:`TARGET_GROUPS`; ``None`` means the default Linear weights. A pattern
    that matches no parameter is an error, as in PEFT.
    """
    params = canonical_parameters(model)
    selected: dict[str, nn.Parameter] = {}
    for pattern in expand_patterns(patterns):
        try:
            regex = re.compile(pattern)
        except re.error as err:
            raise MaskError(f"target pattern {pattern!r} is not a valid regex: {err}") from None
        hits = [name for name in params if regex.search(name)]
        if not hits:
            raise MaskError(f"target pattern {pattern!r} matches no parameter of {type(model).__name__}")
        for name in hits:
            selected[name] = params[name]
    order = list(params)
    return dict(sorted(selected.items(), key=lambda kv: order.index(kv[0])))


def module_kind(name: str) -> str:
    """``q``, ``k``, ``v``, ``out``, ``ffn-in``, ``ffn-out`` or ``other`` for a parameter name."""
    for part in name.split("."):
        if part in _KINDS:
            return _KINDS[part]
    return "other"


def layer_index(name: str) -> int | None:
    match = re.search(r"(?:^|\.)layers\.(\d+)\.", name)
    return int(match.group(1)) if match else None


def owner_module(model: nn.Module, canonical: str) -> tuple[nn.Module, str]:
    """The module that owns parameter ``canonical`` and the attribute name on it."""
    full = {canonical_name(n): n for n, _ in model.named_parameters()}[canonical]
    module_path, _, attr = full.rpartition(".")
    module = model.get_submodule(module_path) if module_path else model
    return module, attr

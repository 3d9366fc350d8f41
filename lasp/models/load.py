"""Load a local wav2vec2-family checkpoint or build a named preset with random weights.

lasp never downloads anything: ``name_or_path`` is either a directory holding a
Hugging Face checkpoint (``config.json`` + weights) or one of :data:`PRESETS`.
Presets reproduce the shapes of real models so that code paths, memory and
timings can be checked without their weights.
"""
from __future__ import annotations

import difflib
import logging
import os
from pathlib import Path
from typing import Any

import torch
import transformers
from safetensors import SafetensorError
from transformers import Wav2Vec2Config

from lasp.errors import ConfigError
from lasp.io import read_json_object
from lasp.models.layout import model_dir
from lasp.models.objective import use_finite_perplexity

log = logging.getLogger(__name__)

HEADS = ("pretraining", "ctc", "base")
# what transformers' from_pretrained reads; lasp never loads TF/Flax weights
WEIGHT_FILES = ("model.safetensors", "model.safetensors.index.json", "pytorch_model.bin",
                "pytorch_model.bin.index.json")
# heads that one wav2vec2 class has and another lacks: loading one into the other leaves them out or new
_PRETRAINING_HEAD = ("project_hid.", "project_q.", "quantizer.")
_CTC_HEAD = ("lm_head.",)

_CONV_7 = dict(
    conv_kernel=(10, 3, 3, 3, 3, 2, 2),
    conv_stride=(5, 2, 2, 2, 2, 2, 2),
    num_feat_extract_layers=7,
)

PRESETS: dict[str, dict[str, Any]] = {
    # Demo/test scale (~0.6M parameters): trains on 2 CPU cores in minutes.
    "tiny": dict(
        hidden_size=144, num_hidden_layers=2, num_attention_heads=4, intermediate_size=384,
        conv_dim=(48,) * 7, conv_bias=False, feat_extract_norm="group", do_stable_layer_norm=False,
        codevector_dim=64, proj_codevector_dim=64, num_codevector_groups=2, num_codevectors_per_group=32,
        num_negatives=20,
        hidden_dropout=0.0, attention_dropout=0.0, activation_dropout=0.0, feat_proj_dropout=0.0,
        final_dropout=0.0, layerdrop=0.0, **_CONV_7,
    ),
    # Scaling-study scale (~4M parameters): the tiny preset's design, wider and twice as deep; still trains on
    # a CPU core, a few times slower per step than tiny.
    "small": dict(
        hidden_size=256, num_hidden_layers=4, num_attention_heads=4, intermediate_size=1024,
        conv_dim=(64,) * 7, conv_bias=False, feat_extract_norm="group", do_stable_layer_norm=False,
        codevector_dim=128, proj_codevector_dim=128, num_codevector_groups=2, num_codevectors_per_group=64,
        num_negatives=20,
        hidden_dropout=0.0, attention_dropout=0.0, activation_dropout=0.0, feat_proj_dropout=0.0,
        final_dropout=0.0, layerdrop=0.0, **_CONV_7,
    ),
    # wav2vec 2.0 BASE shapes (~95M parameters).
    "base": dict(
        hidden_size=768, num_hidden_layers=12, num_attention_heads=12, intermediate_size=3072,
        conv_dim=(512,) * 7, conv_bias=False, feat_extract_norm="group", do_stable_layer_norm=False,
        codevector_dim=256, proj_codevector_dim=256, num_codevector_groups=2, num_codevectors_per_group=320,
        **_CONV_7,
    ),
    # XLSR-53 shapes (~315M parameters): 24 layers, hidden 1024, FFN 4096, 16 heads, stable layer norm.
    "xlsr-53": dict(
        hidden_size=1024, num_hidden_layers=24, num_attention_heads=16, intermediate_size=4096,
        conv_dim=(512,) * 7, conv_bias=True, feat_extract_norm="layer", do_stable_layer_norm=True,
        codevector_dim=768, proj_codevector_dim=768, num_codevector_groups=2, num_codevectors_per_group=320,
        feat_quantizer_dropout=0.0, **_CONV_7,
    ),
}

# model_type in config.json → (pre-training class, CTC class, bare encoder class)
_FAMILIES = {
    "wav2vec2": ("Wav2Vec2ForPreTraining", "Wav2Vec2ForCTC", "Wav2Vec2Model"),
    "hubert": (None, "HubertForCTC", "HubertModel"),
    "wavlm": (None, "WavLMForCTC", "WavLMModel"),
    "data2vec-audio": (None, "Data2VecAudioForCTC", "Data2VecAudioModel"),
    "wav2vec2-conformer": ("Wav2Vec2ConformerForPreTraining", "Wav2Vec2ConformerForCTC", "Wav2Vec2ConformerModel"),
}


def check_overrides(config, overrides: dict[str, Any], where: str) -> None:
    """Every override must name a field of the model config: transformers would store a typo (``hiden_size``)
    as a new attribute and silently ignore it."""
    known = set(config.to_dict())
    for key in overrides:
        if key not in known and not hasattr(config, key):
            close = difflib.get_close_matches(key, sorted(known), n=1)
            hint = f"; did you mean {close[0]!r}?" if close else ""
            raise ConfigError(f"model.overrides: {key!r} is not a field of {type(config).__name__} ({where}){hint}")


def preset_config(name: str, **overrides: Any) -> Wav2Vec2Config:
    """The :class:`Wav2Vec2Config` of preset ``name`` with ``overrides`` applied."""
    if name not in PRESETS:
        raise ConfigError(f"unknown model preset {name!r}; presets: {', '.join(PRESETS)}")
    check_overrides(Wav2Vec2Config(), overrides, f"preset {name!r}")
    kwargs = dict(PRESETS[name])
    kwargs.update(overrides)
    return Wav2Vec2Config(**kwargs)


def _model_class(model_type: str, head: str, where: str):
    if head not in HEADS:
        raise ConfigError(f"unknown head {head!r}; choose one of {', '.join(HEADS)}")
    if not isinstance(model_type, str) or model_type not in _FAMILIES:
        raise ConfigError(
            f"{where}: model_type {model_type!r} is not a wav2vec2-family model "
            f"(supported: {', '.join(_FAMILIES)})"
        )
    name = _FAMILIES[model_type][HEADS.index(head)]
    if name is None:
        raise ConfigError(f"{where}: transformers has no pre-training head for {model_type!r}; use head='ctc'")
    return getattr(transformers, name)


def is_preset(name_or_path: str) -> bool:
    return name_or_path in PRESETS and not os.path.isdir(name_or_path)


def read_model_config(name_or_path: str) -> dict:
    """A checkpoint folder's config.json, which must describe a wav2vec2-family model (else one line naming
    the file and what it holds)."""
    path = os.path.join(model_dir(name_or_path), "config.json")
    config = read_json_object(path, "model config", ConfigError)
    _model_class(config.get("model_type"), "base", path)  # a speech model of a family lasp knows
    return config


def checkpoint_heads(name_or_path: str) -> list[str]:
    """The heads a checkpoint directory was saved with (from ``architectures`` in its config.json)."""
    config = read_model_config(name_or_path)
    family = _FAMILIES.get(config.get("model_type"), ())
    archs = config.get("architectures") or []
    return [head for head, cls in zip(HEADS, family) if cls in archs]


def check_head(name_or_path: str, head: str) -> None:
    """A checkpoint directory must have been saved with ``head`` (else that head would be random weights)."""
    if os.path.isdir(name_or_path):
        check_model_source("model", name_or_path)  # no weights at all says so, before any head is judged
        name_or_path = str(model_dir(name_or_path))
    if head == "base" or is_preset(name_or_path) or not os.path.isfile(os.path.join(name_or_path, "config.json")):
        return  # load_model itself reports a path that is not a checkpoint
    if head not in checkpoint_heads(name_or_path):
        saved = ", ".join(checkpoint_heads(name_or_path)) or "none"
        raise ConfigError(f"{name_or_path}: the checkpoint has no trained {head!r} head (saved heads: {saved}); "
                          f"a {head} head would be randomly initialised")


def load_model(name_or_path: str, head: str = "pretraining", *, require_head: bool = False, **overrides: Any):
    """A wav2vec2-family model with the requested head.

    ``name_or_path``: a preset name (random weights) or a local checkpoint
    directory. ``overrides`` are config fields (e.g. ``vocab_size=40`` for a
    CTC head, ``mask_time_prob=0.0``); an unknown field is an error. A CTC head on a
    pre-training checkpoint is freshly initialised, as in every wav2vec 2.0
    fine-tuning recipe; ``require_head=True`` (scoring through the head) makes a
    checkpoint without a trained ``head`` an error instead.
    """
    name_or_path = str(name_or_path)
    if os.path.isdir(name_or_path):  # a trained system's final/ holds its shared model in a subfolder
        name_or_path = str(model_dir(name_or_path))
    if is_preset(name_or_path):
        config = preset_config(name_or_path, **overrides)
        cls = _model_class("wav2vec2", head, f"preset {name_or_path!r}")
        return use_finite_perplexity(cls(config))
    if not os.path.isdir(name_or_path):
        raise ConfigError(
            f"model {name_or_path!r} is neither a local checkpoint directory nor a preset "
            f"({', '.join(PRESETS)}); lasp loads checkpoints from disk only"
        )
    config_path = os.path.join(name_or_path, "config.json")
    if not os.path.isfile(config_path):
        raise ConfigError(f"{name_or_path}: no config.json; not a Hugging Face checkpoint directory")
    read_model_config(name_or_path)  # a malformed or foreign config.json is one line, not a traceback
    config = transformers.AutoConfig.from_pretrained(name_or_path, local_files_only=True)
    cls = _model_class(config.model_type, head, name_or_path)
    if require_head:
        check_head(name_or_path, head)
    check_overrides(config, overrides, name_or_path)
    for key, value in overrides.items():
        setattr(config, key, value)
    return use_finite_perplexity(_from_pretrained(cls, name_or_path, config=config))


def _from_pretrained(cls, path: str, **kwargs):
    """``cls.from_pretrained`` with transformers' multi-line load report replaced by one line of lasp's own.

    Every pretrain -> finetune hand-over loads a pre-training checkpoint into a CTC model: the pre-training head
    is left out and a fresh CTC head initialised, as every wav2vec 2.0 fine-tuning recipe does, which
    transformers reports as a table. lasp reads the same facts from ``output_loading_info`` and says them in
    one line; any other difference (a missing encoder weight, a size mismatch) is a warning naming the tensors.
    """
    verbosity = transformers.logging.get_verbosity()
    transformers.logging.set_verbosity_error()
    try:
        model, info = cls.from_pretrained(path, output_loading_info=True, local_files_only=True, **kwargs)
    except (OSError, ValueError, RuntimeError, OverflowError, MemoryError, SafetensorError) as err:
        # a truncated, corrupt or crafted weights file: transformers and safetensors raise many types for it
        files = ", ".join(w for w in WEIGHT_FILES if os.path.isfile(os.path.join(path, w))) or "its weights"
        raise ConfigError(f"{path}: cannot load {files} ({type(err).__name__}: {' '.join(str(err).split())[:300]})"
                          ) from None
    finally:
        transformers.logging.set_verbosity(verbosity)
    missing, unexpected = sorted(info.get("missing_keys") or ()), sorted(info.get("unexpected_keys") or ())
    mismatched = list(info.get("mismatched_keys") or ())
    if (not mismatched and all(k.startswith(_CTC_HEAD) for k in missing)
            and all(k.startswith(_PRETRAINING_HEAD + _CTC_HEAD) for k in unexpected)):
        if missing or unexpected:
            print(_head_switch_line(path, missing, unexpected))
    else:
        mismatched = [str(m[0] if isinstance(m, (tuple, list)) else m) for m in mismatched]
        parts = [f"{len(names)} {what} ({_modules(names)})" for names, what in (
            (missing, "weights not in the checkpoint, randomly initialised"), (unexpected, "checkpoint tensors not used"),
            (mismatched, "tensors of another shape, randomly initialised")) if names]
        log.warning("loaded %s with differences: %s", path, "; ".join(parts))
    return model


def _modules(names: list[str]) -> str:
    """Tensor names shortened to their top-level modules (``quantizer.codevectors`` -> ``quantizer``)."""
    return ", ".join(sorted({k.split(".")[0] for k in names}))


def _head_switch_line(path: str, missing: list[str], unexpected: list[str]) -> str:
    parts = []
    if unexpected:
        parts.append(f"{len(unexpected)} head tensors not used ({_modules(unexpected)})")
    if missing:
        parts.append(f"new CTC head initialised ({', '.join(missing)})")
    return f"loaded {path}: " + "; ".join(parts)


def check_model_source(key: str, name: str) -> None:
    """A model folder holds config.json and weights (presets and missing folders are load_model's to judge)."""
    p = Path(name)
    if is_preset(name) or not p.is_dir():
        return
    p = model_dir(p)  # a trained system directory keeps its checkpoint in shared/
    if not (p / "config.json").is_file():
        raise ConfigError(f"{key}: {p} has no config.json; give a Hugging Face model folder or a preset")
    if not any((p / w).is_file() for w in WEIGHT_FILES):
        raise ConfigError(f"{key}: {p} has config.json but no weights (model.safetensors or pytorch_model.bin); "
                          "copy the whole Hugging Face model folder (README, 'Models'), or convert a fairseq .pt")


def count_parameters(model) -> int:
    return sum(p.numel() for p in model.parameters())


def encoder_layers(model) -> torch.nn.ModuleList:
    """The Transformer layers of a wav2vec2-family model, with or without a head."""
    base = getattr(model, getattr(model, "base_model_prefix", ""), model)
    try:
        return base.encoder.layers
    except AttributeError:
        raise ConfigError(f"{type(model).__name__} has no encoder.layers; lasp needs a wav2vec2-family model") from None

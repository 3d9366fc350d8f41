"""MMS-style language adapters: a small bottleneck block per language after every encoder layer.

The block is transformers' own ``Wav2Vec2AttnAdapterLayer`` (the module that
``Wav2Vec2Config.adapter_attn_dim`` adds to MMS models: LayerNorm → Linear(d→a)
→ ReLU → Linear(a→d), added residually to the layer's output). transformers
builds only one adapter per layer, and only for stable-layer-norm encoders; we
keep one set per language and attach the active language's blocks with forward
hooks, so the same code serves post-norm encoders (the ``tiny`` preset) and
the batch's language selects its adapters in O(1).

What trains: with ``freeze_base=True`` (MMS's recipe, the default) only the
adapters and the shared CTC head (``lm_head``) get gradients; with
``freeze_base=False`` the whole model trains as well. The adapters live
outside the model's ``state_dict`` and are saved to ``adapters.safetensors``
(+ ``adapters.json``) next to the model.
"""
from __future__ import annotations

import copy
import json
import os
from typing import Sequence

import torch.nn as nn
from safetensors.torch import load_file, save_file
from transformers.models.wav2vec2.modeling_wav2vec2 import Wav2Vec2AttnAdapterLayer

from lasp.errors import ConfigError
from lasp.io import atomic_write_json
from lasp.models.load import encoder_layers

ADAPTERS_FILE = "adapters.safetensors"
ADAPTERS_CONFIG = "adapters.json"


class LanguageAdapters(nn.Module):
    """Per-language adapters attached to ``model`` (in place); ``set_language`` picks the active set."""

    def __init__(self, model: nn.Module, languages: Sequence[str], dim: int = 16, freeze_base: bool = True):
        super().__init__()
        if not languages:
            raise ConfigError("adapters need at least one language")
        self.model = model
        self.dim = int(dim)
        self.freeze_base = bool(freeze_base)
        layers = encoder_layers(model)
        cfg = copy.deepcopy(model.config)
        cfg.adapter_attn_dim = self.dim
        self.adapters = nn.ModuleDict({
            lang: nn.ModuleList(Wav2Vec2AttnAdapterLayer(cfg) for _ in layers) for lang in languages
        })
        for blocks in self.adapters.values():
            for block in blocks:
                # start as the identity: the pre-trained model's behaviour is unchanged at step 0
                nn.init.zeros_(block.linear_2.weight)
                nn.init.zeros_(block.linear_2.bias)
        self.adapters.to(next(model.parameters()).device)
        self._active: str | None = None
        self._hooks = [layer.register_forward_hook(self._hook(i)) for i, layer in enumerate(layers)]
        if self.freeze_base:
            for name, p in model.named_parameters():
                p.requires_grad_(name.startswith("lm_head."))

    @property
    def languages(self) -> list[str]:
        return list(self.adapters)

    def _hook(self, index: int):
        def hook(module, args, output):
            if self._active is None:
                return output
            hidden = output[0] if isinstance(output, tuple) else output
            hidden = hidden + self.adapters[self._active][index](hidden)
            return (hidden, *output[1:]) if isinstance(output, tuple) else hidden

        return hook

    def set_language(self, lang: str | Sequence[str] | None) -> None:
        if lang is not None and not isinstance(lang, str):
            langs = set(lang)
            if len(langs) != 1:
                raise ConfigError(f"adapters run one language per batch; this batch mixes {sorted(langs)} "
                                  "(set data.mixed=false)")
            lang = langs.pop()
        if lang is not None and lang not in self.adapters:
            raise ConfigError(f"no adapter for language {lang!r}; trained: {', '.join(self.adapters)}")
        self._active = lang

    def forward(self, *args, **kwargs):
        return self.model(*args, **kwargs)

    def remove(self) -> None:
        for h in self._hooks:
            h.remove()
        self._hooks = []

    def save(self, directory: str | os.PathLike) -> None:
        directory = os.fspath(directory)
        os.makedirs(directory, exist_ok=True)
        save_file({k: v.detach().cpu().contiguous() for k, v in self.adapters.state_dict().items()},
                  os.path.join(directory, ADAPTERS_FILE))
        atomic_write_json(os.path.join(directory, ADAPTERS_CONFIG),
                          {"languages": self.languages, "dim": self.dim, "freeze_base": self.freeze_base})

    @classmethod
    def load(cls, model: nn.Module, directory: str | os.PathLike) -> "LanguageAdapters":
        directory = os.fspath(directory)
        try:
            with open(os.path.join(directory, ADAPTERS_CONFIG)) as fh:
                meta = json.load(fh)
            tensors = load_file(os.path.join(directory, ADAPTERS_FILE))
        except (OSError, json.JSONDecodeError) as err:
            raise ConfigError(f"{directory}: cannot read adapters ({err})") from None
        adapters = cls(model, meta["languages"], dim=meta["dim"], freeze_base=meta.get("freeze_base", True))
        missing, unexpected = adapters.adapters.load_state_dict(tensors, strict=False)
        if missing or unexpected:
            raise ConfigError(f"{directory}/{ADAPTERS_FILE}: adapter tensors do not fit "
                              f"(missing {missing[:1]}, unexpected {unexpected[:1]})")
        return adapters

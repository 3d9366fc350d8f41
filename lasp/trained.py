"""A trained system read back for inference (evaluation), next to the masked model and the adapters.

``lasp.train.systems.System.save`` writes a model directory: a HF checkpoint plus, for masked systems, the
MaskedModel wrapper config and mask set, or, for adapters, the adapter weights; ``lasp_system.json`` names the
system. :func:`load_trained` reads any of them (or a plain HF checkpoint, as the shared system) without the
training machinery: evaluation imports nothing from :mod:`lasp.train`.
"""
from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Sequence

import torch

from lasp.errors import ConfigError

SYSTEM_FILE = "lasp_system.json"


class TrainedSystem:
    """``set_language`` then call it like the HF model; ``model`` is the HF model underneath."""

    def __init__(self, name: str, model: torch.nn.Module, wrapper: torch.nn.Module | None = None):
        self.name, self.model, self.wrapper = name, model, wrapper

    def set_language(self, langs: str | Sequence[str] | None) -> None:
        if self.wrapper is not None:
            self.wrapper.set_language(langs)

    def __call__(self, **inputs):
        return (self.wrapper or self.model)(**inputs)

    def train(self, mode: bool = True) -> None:
        self.model.train(mode)
        if self.wrapper is not None:
            self.wrapper.train(mode)


def pick_device(pref: str) -> torch.device:
    """``auto`` is the first GPU when there is one; ``cuda`` without a GPU is an error."""
    if pref == "cpu" or (pref == "auto" and not torch.cuda.is_available()):
        return torch.device("cpu")
    if not torch.cuda.is_available():
        raise ConfigError("key 'device' is 'cuda' but no CUDA device is available")
    return torch.device("cuda", 0)


def load_trained(directory: str | os.PathLike, head: str = "ctc", device: torch.device | str = "cpu") -> TrainedSystem:
    from lasp.baselines.adapters import ADAPTERS_CONFIG, LanguageAdapters
    from lasp.masked import WRAPPER_CONFIG, MaskedModel
    from lasp.models import load_model

    directory = Path(directory)
    if not (directory / "config.json").is_file():
        raise ConfigError(f"{directory}: not a model directory (no config.json)")
    name = "shared"
    if (directory / SYSTEM_FILE).is_file():
        name = json.loads((directory / SYSTEM_FILE).read_text())["system"]
    if (directory / WRAPPER_CONFIG).is_file():
        mm = MaskedModel.from_pretrained(directory, head=head)
        mm.model.to(device)
        return TrainedSystem(name, mm.model, mm)
    model = load_model(str(directory), head=head).to(device)
    if (directory / ADAPTERS_CONFIG).is_file():
        return TrainedSystem(name, model, LanguageAdapters.load(model, directory))
    return TrainedSystem(name, model)

"""A trained system read back for inference (evaluation), next to the masked model and the adapters.

``lasp.models.system.System.save`` writes a system directory (:mod:`lasp.models.layout`): the shared HF
checkpoint in ``shared/``, the mask set or the adapter weights beside it, and ``lasp_system.json`` naming them.
:func:`load_trained` reads any of them (or a plain HF checkpoint, as the shared system) without the training
machinery: evaluation imports nothing from :mod:`lasp.train`.
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Sequence

import torch

from lasp.errors import ConfigError
from lasp.models.layout import LAYOUT_VERSION, SHARED_SUBDIR, SYSTEM_FILE, read_marker


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


def pick_device(pref: str, local_rank: int = 0) -> torch.device:
    """``auto`` is this rank's GPU when there is one; ``cuda`` without a GPU is an error."""
    if pref == "cpu" or (pref == "auto" and not torch.cuda.is_available()):
        return torch.device("cpu")
    if not torch.cuda.is_available():
        raise ConfigError("key 'device' is 'cuda' but no CUDA device is available")
    return torch.device("cuda", local_rank)


def load_trained(directory: str | os.PathLike, head: str = "ctc", device: torch.device | str = "cpu") -> TrainedSystem:
    """Read back what ``System.save`` wrote (layout: :mod:`lasp.models.layout`), or a plain HF checkpoint
    directory as the shared system."""
    from lasp.models.adapters import LanguageAdapters
    from lasp.masked.model import MaskedModel
    from lasp.masks.language_masks import LanguageMasks
    from lasp.models.load import load_model

    directory = Path(directory)
    marker = read_marker(directory)
    if marker is None or int(marker.get("layout", 1)) < LAYOUT_VERSION:
        return _load_legacy(directory, head, device, marker)
    name = marker["system"]
    model = load_model(str(directory / marker.get("model", SHARED_SUBDIR)), head=head).to(device)
    if marker.get("masks"):
        masks = LanguageMasks.load(directory / marker["masks"], marker.get("languages"))
        targets = [f"^{n.replace('.', '[.]')}$" for n in marker["targets"]] if marker.get("targets") else None
        mm = MaskedModel(model, masks, target_modules=targets, mode=marker.get("mode", "auto"))
        return TrainedSystem(name, mm.model, mm)
    if marker.get("adapters"):
        return TrainedSystem(name, model, LanguageAdapters.load(model, directory))
    return TrainedSystem(name, model)


def _load_legacy(directory: Path, head: str, device, marker: dict | None) -> TrainedSystem:
    """Directories written before the ``shared/`` layout: the HF checkpoint at the top level."""
    from lasp.models.adapters import ADAPTERS_CONFIG, LanguageAdapters
    from lasp.masked.model import WRAPPER_CONFIG, MaskedModel
    from lasp.models.load import load_model

    if not (directory / "config.json").is_file():
        raise ConfigError(f"{directory}: not a trained system or model directory (no {SYSTEM_FILE}, no config.json)")
    name = marker["system"] if marker else "shared"
    if (directory / WRAPPER_CONFIG).is_file():
        mm = MaskedModel.from_pretrained(directory, head=head)
        mm.model.to(device)
        return TrainedSystem(name, mm.model, mm)
    model = load_model(str(directory), head=head).to(device)
    if (directory / ADAPTERS_CONFIG).is_file():
        return TrainedSystem(name, model, LanguageAdapters.load(model, directory))
    return TrainedSystem(name, model)

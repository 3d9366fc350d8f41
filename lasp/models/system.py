"""A system: the one thing every stage trains, saves, loads back, evaluates and exports.

  shared    the plain model, every batch updates every weight (no masks)
  lasp      importance masks: each language runs through and updates only its sub-network
  random    random masks with exactly the lasp masks' per-tensor density (the LaSS control)
  adapters  MMS-style per-language adapters (:mod:`lasp.models.adapters`)

A System exposes ``set_language(langs)``, calling it like the Hugging Face model, the parameters to optimise, a
wrapped optimizer (confined for masked systems), the tensors a checkpoint holds, and
``save_pretrained(dir)`` / ``System.from_pretrained(dir)`` for the folder layout of :mod:`lasp.models.layout`.
Languages added to a masked system after its training (``lasp add-language``) bring their own output layer and
vocabulary: ``added`` (:mod:`lasp.models.continual`).
"""
from __future__ import annotations

import json
import logging
import os
from pathlib import Path
from typing import Sequence

import torch
import torch.nn as nn

from lasp.errors import ConfigError
from lasp.io import atomic_write_json, ordinary_modes
from lasp.masked.confine import ConfinedOptimizer
from lasp.masked.model import MaskedModel
from lasp.masks.language_masks import LanguageMasks
from lasp.data.text import Vocabulary
from lasp.models.adapters import ADAPTERS_CONFIG, LanguageAdapters
from lasp.models.continual import AddedLanguages
from lasp.models.layout import ADDED_SUBDIR, LAYOUT_VERSION, MASKS_SUBDIR, SHARED_SUBDIR, SYSTEM_FILE, read_marker
from lasp.models.load import load_model

log = logging.getLogger(__name__)

# folders written before the shared/ layout: the HF checkpoint at the top, and for a masked model this file
LEGACY_WRAPPER_CONFIG = "masked_model.json"


def exact_patterns(names: Sequence[str]) -> list[str]:
    """Target regexes matching exactly these parameter names."""
    return [f"^{n.replace('.', '[.]')}$" for n in names]


class System:
    """``set_language`` then call it like the HF model; ``model`` is the HF model underneath, ``wrapper`` the
    :class:`MaskedModel` or :class:`LanguageAdapters` around it (None for the shared system)."""

    def __init__(self, name: str, model: nn.Module, wrapper: nn.Module | None = None,
                 added: AddedLanguages | None = None):
        self.name = name
        self.model = model
        self.wrapper = wrapper
        self.added = added
        self.replica: nn.Module | None = None  # what forward runs through when training distributes it (DDP)
        # packed bits per target of weights no optimizer step may change (the earlier languages' weights while a
        # language is added); None: the masks alone confine the steps
        self.keep_fixed: dict[str, torch.Tensor] | None = None

    # -- running
    @property
    def languages(self) -> list[str] | None:
        """The languages the system serves (None for the shared system: any)."""
        return list(self.wrapper.languages) if self.wrapper is not None else None

    @property
    def module(self) -> nn.Module:
        """The outermost module: the wrapper holding the model and its masks or adapters, else the model."""
        return self.wrapper if self.wrapper is not None else self.model

    def set_language(self, langs: str | Sequence[str] | None) -> None:
        if self.wrapper is not None:
            self.wrapper.set_language(langs)
        if self.added is not None:
            self.added.set_language(langs)

    def __call__(self, **inputs):
        runner = self.replica or self.module
        if self.added is not None and self.added.active is not None:
            return self.added.forward_ctc(runner, inputs)
        return runner(**inputs)

    def vocabulary(self, lang: str, joint: Vocabulary) -> Vocabulary:
        """The vocabulary ``lang`` decodes with: its own for an added language, else ``joint`` (vocab.json)."""
        return self.added.vocabulary(lang) if self.added is not None and lang in self.added else joint

    def train(self, mode: bool = True) -> None:
        self.model.train(mode)
        if self.wrapper is not None:
            self.wrapper.train(mode)

    # -- optimisation
    def named_trainable(self) -> list[tuple[str, nn.Parameter]]:
        out = [(n, p) for n, p in self.model.named_parameters() if p.requires_grad]
        if isinstance(self.wrapper, LanguageAdapters):
            out += [(f"adapters.{n}", p) for n, p in self.wrapper.adapters.named_parameters()]
        if self.added is not None:
            out += [(f"added.{n}", p) for n, p in self.added.tensors().items() if p.requires_grad]
        return out

    def wrap_optimizer(self, optimizer: torch.optim.Optimizer):
        if isinstance(self.wrapper, MaskedModel):
            return ConfinedOptimizer(optimizer, self.wrapper, fixed=self.keep_fixed)
        return optimizer

    # -- checkpoint tensors (everything that trains; masks are fixed and saved once)
    def state_tensors(self) -> dict[str, torch.Tensor]:
        out = {f"model.{k}": v for k, v in self.model.state_dict().items()}
        if isinstance(self.wrapper, LanguageAdapters):
            out.update({f"adapters.{k}": v for k, v in self.wrapper.adapters.state_dict().items()})
        if self.added is not None:
            out.update({f"added.{k}": v.detach() for k, v in self.added.tensors().items()})
        return out

    def load_state_tensors(self, tensors: dict[str, torch.Tensor]) -> None:
        model_sd = {k[len("model."):]: v for k, v in tensors.items() if k.startswith("model.")}
        missing, unexpected = self.model.load_state_dict(model_sd, strict=False)
        if missing or unexpected:
            raise ConfigError(f"checkpoint does not fit the model: missing {missing[:3]}, unexpected {unexpected[:3]}")
        if isinstance(self.wrapper, LanguageAdapters):
            ad = {k[len("adapters."):]: v for k, v in tensors.items() if k.startswith("adapters.")}
            self.wrapper.adapters.load_state_dict(ad)
        if self.added is not None:
            self.added.load_tensors({k[len("added."):]: v for k, v in tensors.items() if k.startswith("added.")})

    # -- the folder
    def save_pretrained(self, directory: str | os.PathLike) -> Path:
        """Write the system in the layout of :mod:`lasp.models.layout` (never a loadable top-level checkpoint).

        The shared model goes to ``shared/`` as a Hugging Face checkpoint (for a masked system: the weights before
        any mask), the mask set to ``masks/`` or the adapters beside it, and ``lasp_system.json`` names them.
        """
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        self.model.save_pretrained(directory / SHARED_SUBDIR)  # masks are non-persistent buffers: not saved here
        ordinary_modes(directory / SHARED_SUBDIR)
        marker = {"system": self.name, "layout": LAYOUT_VERSION, "model": SHARED_SUBDIR}
        if isinstance(self.wrapper, MaskedModel):
            self.wrapper.masks.subset(self.wrapper.languages).save(directory / MASKS_SUBDIR)
            marker.update(masks=MASKS_SUBDIR, targets=list(self.wrapper.targets), mode=self.wrapper.mode,
                          languages=self.wrapper.languages)
        elif isinstance(self.wrapper, LanguageAdapters):
            self.wrapper.save(directory)
            marker.update(adapters=ADAPTERS_CONFIG, languages=self.wrapper.languages)
        if self.added is not None and self.added.languages:
            self.added.save(directory / ADDED_SUBDIR)
            marker.update(added=ADDED_SUBDIR)
        atomic_write_json(directory / SYSTEM_FILE, marker)  # written last: a folder without it is incomplete
        return directory

    @classmethod
    def from_pretrained(cls, directory: str | os.PathLike, head: str = "ctc",
                        device: torch.device | str = "cpu") -> "System":
        """Read back what :meth:`save_pretrained` wrote, a folder of the earlier layout (the HF checkpoint at the
        top level, with ``masked_model.json`` or adapters beside it), or a plain HF checkpoint (the shared system)."""
        directory = Path(directory)
        marker = read_marker(directory)
        if marker is None or int(marker.get("layout", 1)) < LAYOUT_VERSION:
            return cls._from_earlier_layout(directory, head, device, marker)
        name = marker["system"]
        # the model is on its device before the wrapper is built: the masked layers pick their kernels by device
        model = load_model(str(directory / marker.get("model", SHARED_SUBDIR)), head=head).to(device)
        if marker.get("masks"):
            masks = LanguageMasks.load(directory / marker["masks"], marker.get("languages"))
            targets = exact_patterns(marker["targets"]) if marker.get("targets") else None
            wrapper = MaskedModel(model, masks, target_modules=targets, mode=marker.get("mode", "auto"))
            added = AddedLanguages.load(model, directory / marker["added"]) if marker.get("added") else None
            return cls(name, model, wrapper, added)
        if marker.get("adapters"):
            return cls(name, model, LanguageAdapters.load(model, directory))
        return cls(name, model)

    @classmethod
    def _from_earlier_layout(cls, directory: Path, head: str, device, marker: dict | None) -> "System":
        if not (directory / "config.json").is_file():
            raise ConfigError(f"{directory}: not a trained system or model directory (no {SYSTEM_FILE}, no "
                              "config.json)")
        name = marker["system"] if marker else "shared"
        model = load_model(str(directory), head=head).to(device)
        wrapper_config = directory / LEGACY_WRAPPER_CONFIG
        if wrapper_config.is_file():
            log.warning("%s: a masked model in the earlier folder layout (%s at the top); it loads as it is, and "
                        "System.save_pretrained writes the current one", directory, LEGACY_WRAPPER_CONFIG)
            saved = json.loads(wrapper_config.read_text(encoding="utf-8"))
            mode = saved.get("mode", "auto")
            masks = LanguageMasks.load(directory / MASKS_SUBDIR, saved.get("languages"))
            wrapper = MaskedModel(model, masks, target_modules=exact_patterns(saved["targets"]),
                                  mode=mode if mode in ("auto", "cast", "reference") else "auto")
            return cls(marker["system"] if marker else "lasp", model, wrapper)
        if (directory / ADAPTERS_CONFIG).is_file():
            return cls(name, model, LanguageAdapters.load(model, directory))
        return cls(name, model)

    def summary(self) -> str:
        total = sum(p.numel() for p in self.model.parameters())
        trainable = sum(p.numel() for _, p in self.named_trainable())
        line = f"system {self.name}: {trainable:,} trainable parameters (model: {total:,})"
        if isinstance(self.wrapper, MaskedModel):
            m = self.wrapper.masks
            line += " | density " + ", ".join(f"{l} {m.density(l):.2f}" for l in self.wrapper.languages)
        return line


def build_system(name: str, model: nn.Module, languages: Sequence[str], *, masks: LanguageMasks | None = None,
                 adapter_dim: int = 16, freeze_base: bool = True) -> System:
    """A fresh system ``name`` around ``model`` for ``languages`` (masks for lasp/random, new adapters)."""
    if name == "shared":
        return System(name, model)
    if name in ("lasp", "random"):
        if masks is None:
            raise ConfigError(f"system {name!r} needs a mask set (masks.dir)")
        missing = [l for l in languages if l not in masks.languages]
        if missing:
            raise ConfigError(f"mask set has no mask for language {missing[0]!r} (it has {', '.join(masks.languages)})")
        return System(name, model, MaskedModel(model, masks.subset(list(languages))))
    if name == "adapters":
        return System(name, model, LanguageAdapters(model, list(languages), dim=adapter_dim, freeze_base=freeze_base))
    raise ConfigError(f"unknown system {name!r}")

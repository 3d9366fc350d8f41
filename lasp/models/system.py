"""The systems one runner trains and compares, behind one small interface.

  shared    the plain model, every batch updates every weight (no masks)
  lasp      importance masks: each language runs through and updates only its sub-network
  random    random masks with exactly the lasp masks' per-tensor density (the LaSS control)
  adapters  MMS-style per-language adapters (lasp.models.adapters)

A System exposes ``set_language(langs)``, ``forward``, the parameters to
optimise, a wrapped optimizer (confined for masked systems), the tensors a
checkpoint holds, and ``save(dir)`` for the final model (layout: :mod:`lasp.models.layout`).
``lasp.models.trained.load_trained(dir)`` reads any of them back for inference.
"""
from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Sequence

import torch
import torch.nn as nn

from lasp.models.adapters import ADAPTERS_CONFIG, LanguageAdapters
from lasp.masked.confine import ConfinedOptimizer
from lasp.errors import ConfigError
from lasp.masked.model import MASKS_SUBDIR as WRAPPER_MASKS_SUBDIR
from lasp.masked.model import MaskedModel
from lasp.masks.language_masks import LanguageMasks
from lasp.models.layout import LAYOUT_VERSION, MASKS_SUBDIR, SHARED_SUBDIR, SYSTEM_FILE


class System:
    def __init__(self, name: str, model: nn.Module, wrapper: nn.Module | None = None):
        self.name = name
        self.model = model  # the Hugging Face model
        self.wrapper = wrapper  # MaskedModel / LanguageAdapters / None
        self.replica: nn.Module | None = None  # the DistributedDataParallel module under torchrun

    # -- running
    def set_language(self, langs: str | Sequence[str] | None) -> None:
        if self.wrapper is not None:
            self.wrapper.set_language(langs)

    def __call__(self, **inputs):
        return (self.replica or self.wrapper or self.model)(**inputs)

    def distribute(self, info) -> None:
        """Run forward/backward through DistributedDataParallel when ``info`` has several ranks.

        DDP wraps the outermost module (the HF model, or the wrapper that holds it together with the masks or
        adapters), so it sees every trainable parameter, adapters included, and the wrapper's forward is unchanged.
        """
        from lasp.train.distributed import wrap_module

        module = self.wrapper if self.wrapper is not None else self.model
        wrapped = wrap_module(module, info)
        self.replica = wrapped if wrapped is not module else None

    def train(self, mode: bool = True) -> None:
        self.model.train(mode)
        if self.wrapper is not None:
            self.wrapper.train(mode)

    # -- optimisation
    def named_trainable(self) -> list[tuple[str, nn.Parameter]]:
        out = [(n, p) for n, p in self.model.named_parameters() if p.requires_grad]
        if isinstance(self.wrapper, LanguageAdapters):
            out += [(f"adapters.{n}", p) for n, p in self.wrapper.adapters.named_parameters()]
        return out

    def wrap_optimizer(self, optimizer: torch.optim.Optimizer):
        if isinstance(self.wrapper, MaskedModel):
            return ConfinedOptimizer(optimizer, self.wrapper)
        return optimizer

    # -- checkpoint tensors (everything that trains; masks are fixed and saved once)
    def state_tensors(self) -> dict[str, torch.Tensor]:
        out = {f"model.{k}": v for k, v in self.model.state_dict().items()}
        if isinstance(self.wrapper, LanguageAdapters):
            out.update({f"adapters.{k}": v for k, v in self.wrapper.adapters.state_dict().items()})
        return out

    def load_state_tensors(self, tensors: dict[str, torch.Tensor]) -> None:
        model_sd = {k[len("model."):]: v for k, v in tensors.items() if k.startswith("model.")}
        missing, unexpected = self.model.load_state_dict(model_sd, strict=False)
        if missing or unexpected:
            raise ConfigError(f"checkpoint does not fit the model: missing {missing[:3]}, unexpected {unexpected[:3]}")
        if isinstance(self.wrapper, LanguageAdapters):
            ad = {k[len("adapters."):]: v for k, v in tensors.items() if k.startswith("adapters.")}
            self.wrapper.adapters.load_state_dict(ad)

    # -- export
    def save(self, directory: str | os.PathLike) -> Path:
        """Write the system in the layout of :mod:`lasp.models.layout` (never a loadable top-level checkpoint)."""
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        shared = directory / SHARED_SUBDIR
        marker = {"system": self.name, "layout": LAYOUT_VERSION, "model": SHARED_SUBDIR}
        if isinstance(self.wrapper, MaskedModel):
            # MaskedModel knows how to write its unmasked shared weights as a plain HF checkpoint; the mask set
            # it writes beside them moves up to final/masks, where the next stage looks for it
            self.wrapper.save_pretrained(shared)
            os.replace(shared / WRAPPER_MASKS_SUBDIR, directory / MASKS_SUBDIR)
            marker.update(masks=MASKS_SUBDIR, targets=list(self.wrapper.targets),
                          mode=getattr(self.wrapper, "mode", "auto"), languages=self.wrapper.languages)
        else:
            self.model.save_pretrained(shared)
            if isinstance(self.wrapper, LanguageAdapters):
                self.wrapper.save(directory)
                marker.update(adapters=ADAPTERS_CONFIG, languages=self.wrapper.languages)
        (directory / SYSTEM_FILE).write_text(json.dumps(marker, indent=2) + "\n")
        return directory

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

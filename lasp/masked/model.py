"""MaskedModel: one shared Hugging Face model, one sparse sub-network per language.

The wrapper swaps every targeted ``nn.Linear`` for a :class:`lasp.masked.layers.MaskedLinear` holding the same
Parameter objects (nothing added to the model's ``state_dict``), which computes ``x (W ⊙ M_lang)ᵀ + b`` by
folding the language's bit-packed mask into the weight cast (:mod:`lasp.masked.kernels.cast`); any other targeted
parameter (opt-in layer norms, convolutions) is multiplied by its mask for the call. Switching language only
changes an index, so it is O(1). Gradients reach only weights inside the active mask;
:class:`lasp.masked.confine.ConfinedOptimizer` makes the optimizer step respect the masks too (weight decay, momentum).
"""
from __future__ import annotations

import contextlib
import copy
import os
from typing import Iterable, Sequence

import torch
import torch.nn as nn

from lasp.masks.bits import union_packed, unpack_bits
from lasp.errors import MaskError
from lasp.masked.kernels.linear import MODES, resolve_mode
from lasp.masked.kernels.native import status as native_status
from lasp.masked.layers import MaskedForward, MaskedLinear, Route
from lasp.masks.language_masks import LanguageMasks
from lasp.masks.targets import canonical_parameters, owner_module, select_targets

_UNION_CACHE_SIZE = 16  # packed unions (1 bit per targeted weight each)


def _parents(model: nn.Module) -> dict[int, tuple[nn.Module, str]]:
    return {id(child): (parent, name) for parent in model.modules() for name, child in parent.named_children()}


def _strip(model: nn.Module) -> None:
    """Replace every MaskedLinear by a plain nn.Linear (same Parameters) and drop every swapped forward."""
    parents = _parents(model)
    for module in list(model.modules()):
        if isinstance(module, MaskedLinear):
            parent, child = parents[id(module)]
            setattr(parent, child, module.to_linear())
        elif isinstance(vars(module).get("forward"), MaskedForward):
            del module.forward


class MaskedModel(nn.Module):
    """Wrap ``model`` so that it runs through the sub-network of the active language(s).

    ``masks``: a :class:`LanguageMasks` (or a mask directory). ``target_modules``: regexes / group names
    selecting the masked parameters; by default exactly the parameters the mask set covers. ``mode``:
    ``cast`` (mask folded into the weight cast), ``reference`` (unpack + multiply on every call) or ``auto``
    (see :func:`lasp.masked.kernels.resolve_mode`).
    """

    def __init__(self, model: nn.Module, masks: LanguageMasks | str | os.PathLike,
                 target_modules=None, mode: str = "auto"):
        super().__init__()
        if not isinstance(masks, LanguageMasks):
            masks = LanguageMasks.load(masks)
        if mode not in MODES:
            raise MaskError(f"unknown mode {mode!r}; choose one of {', '.join(MODES)}")
        masks.validate(model)
        if target_modules is None:
            params = canonical_parameters(model)
            targets = {name: params[name] for name in masks.parameter_names}
        else:
            targets = select_targets(model, target_modules)
            for name in targets:
                if name not in masks.shapes:
                    raise MaskError(f"target {name} has no mask in this mask set")
        self.model = model
        self.masks = masks
        self.mode = mode
        self._targets = targets
        self._route = Route(masks.languages)
        self._union_cache: dict[tuple, dict[str, torch.Tensor]] = {}
        self._installed = False
        self._install()

    # ------------------------------------------------------------------ module swap
    def _stacked_bits(self, name: str) -> torch.Tensor:
        # every loaded language's packed bits for one target, stacked: uint8[L, *packed_shape]
        return torch.stack([self.masks.packed(lang)[name] for lang in self.masks.languages])

    def _install(self) -> None:
        by_module: dict[int, tuple[nn.Module, list[tuple[str, str]]]] = {}
        for name in self._targets:
            module, attr = owner_module(self.model, name)
            by_module.setdefault(id(module), (module, []))[1].append((name, attr))
        parents = _parents(self.model)
        mode = resolve_mode(self.mode, next(iter(self._targets.values())).device) if self._targets else "cast"
        for module, entries in by_module.values():
            if type(module) is nn.Linear and [a for _, a in entries] == ["weight"]:
                parent, child = parents[id(module)]
                name = entries[0][0]
                setattr(parent, child, MaskedLinear(module, self._stacked_bits(name), self._route, name, mode))
            else:
                bits = {name: self._stacked_bits(name) for name, _ in entries}
                module.forward = MaskedForward(module, entries, bits, self._route)
        self._installed = True

    def _uninstall(self) -> None:
        _strip(self.model)
        self._installed = False

    def masked_modules(self) -> list[MaskedLinear]:
        return [m for m in self.model.modules() if isinstance(m, MaskedLinear)]

    def bits(self, name: str, device: torch.device | None = None) -> torch.Tensor:
        """Stacked packed masks ``uint8[L, ...]`` of target ``name`` (on ``device`` when given)."""
        module = {m.target: m for m in self.masked_modules()}.get(name)
        if module is not None:
            return module.mask_bits if device is None else module.mask_bits.to(device)
        bits = self._stacked_bits(name)
        return bits if device is None else bits.to(device)

    def set_mode(self, mode: str) -> None:
        """Switch every swapped Linear between ``cast`` and ``reference`` (``auto`` resolves per device)."""
        if mode not in MODES:
            raise MaskError(f"unknown mode {mode!r}; choose one of {', '.join(MODES)}")
        self.mode = mode
        for module in self.masked_modules():
            module.mode = resolve_mode(mode, module.weight.device)

    def refresh(self) -> None:
        """Drop every cached masked weight (call after editing weights behind autograd, e.g. through ``.data``)."""
        self._route.epoch += 1

    # ------------------------------------------------------------------ language selection
    @property
    def languages(self) -> list[str]:
        return list(self._route.ids)

    @property
    def targets(self) -> dict[str, nn.Parameter]:
        return dict(self._targets)

    @property
    def active_languages(self) -> tuple[str, ...]:
        """Languages of the current selection (empty when dense)."""
        return self._route.names

    def _index(self, lang: str) -> int:
        return self._route.index(lang)

    def set_language(self, lang: str | Sequence[str] | None) -> None:
        """Select one language, one language per example of the next batch (a list), or ``None`` (dense).

        For a list, the fastest batch has each language's examples next to each other (segments are then
        slices); any order works (rows are regrouped by an index gather and put back afterwards).
        """
        self._route.select(lang)
        self._trim_cache()

    def _trim_cache(self) -> None:
        # keep masked copies only for the languages in use (memory: one weight copy per language)
        keep = {self._route.ids[l] for l in self._route.names}
        for module in self.masked_modules():
            module.trim(keep)

    @contextlib.contextmanager
    def language(self, lang: str | Sequence[str] | None):
        """``with mm.language("sw"): ...`` — restores the previous selection afterwards."""
        saved = self._route.state()
        self.set_language(lang)
        try:
            yield self
        finally:
            self._route.restore(saved)
            self._trim_cache()

    def languages_since_reset(self, reset: bool = False) -> tuple[str, ...]:
        """Every language run with gradients since the last reset (a step accumulating micro-batches of several
        languages trains all of them; forwards under ``no_grad``, e.g. evaluation, do not count)."""
        seen = tuple(l for l in self._route.ids if l in self._route.seen)
        if reset:
            self._route.seen = set()
            self._route.marked = False
        return seen

    def union_bits(self, languages: Iterable[str]) -> dict[str, torch.Tensor]:
        """``∪ M_l`` over ``languages`` as packed bits on each target's device (cached, 1 bit per weight)."""
        langs = tuple(sorted(set(languages)))
        if not langs:
            raise MaskError("union over an empty list of languages")
        key = (langs, tuple(p.device for p in self._targets.values())[:1])  # a moved model gets fresh unions
        if key not in self._union_cache:
            ids = [self._index(l) for l in langs]
            if len(self._union_cache) >= _UNION_CACHE_SIZE:
                self._union_cache.pop(next(iter(self._union_cache)))
            modules = {m.target: m for m in self.masked_modules()}
            self._union_cache[key] = {
                name: union_packed(modules[name].mask_bits[ids] if name in modules else self.bits(name, p.device)[ids])
                for name, p in self._targets.items()}
        return self._union_cache[key]

    def union_mask(self, languages: Iterable[str]) -> dict[str, torch.Tensor]:
        """``∪ M_l`` over ``languages`` as bool tensors on each target's device (unpacked on demand, not cached)."""
        return {name: unpack_bits(bits, self._targets[name].shape)
                for name, bits in self.union_bits(languages).items()}

    # ------------------------------------------------------------------ running
    def forward(self, *args, **kwargs):
        return self.model(*args, **kwargs)

    def __getattr__(self, name: str):
        try:
            return super().__getattr__(name)
        except AttributeError:
            return getattr(super().__getattr__("model"), name)

    # ------------------------------------------------------------------ export
    def merge_and_unload(self, lang: str) -> nn.Module:
        """A plain copy of the HF model (``nn.Linear`` modules) with every targeted weight replaced by ``W ⊙ M_lang``.

        Always a copy: merging in place would zero the shared weights outside ``M_lang``, destroying what every
        other language's sub-network uses (and the masks could no longer be undone).
        """
        index = self._index(lang)
        bits = {name: self.bits(name)[index] for name in self._targets}
        merged = copy.deepcopy(self.model)
        _strip(merged)
        params = canonical_parameters(merged)
        with torch.no_grad():
            for name in self._targets:
                p = params[name]
                p.mul_(unpack_bits(bits[name].to(p.device), p.shape).to(p.dtype))
        return merged

    def unload(self) -> nn.Module:
        """Put plain ``nn.Linear`` modules back (sharing the same Parameter objects) and return the shared model."""
        self._uninstall()
        return self.model

    def summary(self) -> str:
        total = sum(p.numel() for p in self.model.parameters())
        targeted = sum(p.numel() for p in self._targets.values())
        dens = [self.masks.density(l) for l in self.languages]
        return (f"languages: {len(dens)} | targeted params: {targeted:,} of {total:,} "
                f"({100 * targeted / max(total, 1):.1f}%) | mean density {sum(dens) / max(len(dens), 1):.3f} | "
                f"mask bits resident: {len(dens) * targeted / 8 / 2**20:.2f} MiB | mode: {self.mode} | "
                f"{native_status()}")

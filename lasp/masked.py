"""MaskedModel: one shared Hugging Face model, one sparse sub-network per language.

The wrapper patches the forward of every module that owns a targeted weight
(no copy of the model, nothing added to its ``state_dict``): a targeted Linear
computes ``x (W ⊙ M_lang)ᵀ + b`` through :func:`lasp.kernels.masked_linear`,
reading the language's bit-packed mask; any other targeted parameter (opt-in
layer norms, convolutions) is multiplied by its mask for the call. Switching
language only changes an index, so it is O(1). Gradients reach only weights
inside the active mask; :class:`lasp.confine.ConfinedOptimizer` makes the
optimizer step respect the masks too (weight decay, momentum).
"""
from __future__ import annotations

import contextlib
import copy
import json
import os
from typing import Iterable, Sequence

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch.func import functional_call

from lasp.bits import unpack_bits
from lasp.errors import MaskError
from lasp.kernels import MODES, masked_linear
from lasp.masks import LanguageMasks
from lasp.targets import canonical_parameters, owner_module, select_targets

WRAPPER_CONFIG = "masked_model.json"
MASKS_SUBDIR = "masks"


class _ActiveLanguage:
    """What the patched forwards read: dense, one language index, or one index per example."""

    def __init__(self):
        self.lang: int | None = None
        self.row_lang: torch.Tensor | None = None
        self.names: tuple[str, ...] = ()

    @property
    def dense(self) -> bool:
        return self.lang is None and self.row_lang is None


class MaskedModel(nn.Module):
    """Wrap ``model`` so that it runs through the sub-network of the active language(s).

    ``masks``: a :class:`LanguageMasks` (or a mask directory). ``target_modules``:
    regexes / group names selecting the masked parameters; by default exactly
    the parameters the mask set covers. ``mode``: ``reference``, ``fused`` or
    ``auto`` (see :mod:`lasp.kernels`).
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
        self._active = _ActiveLanguage()
        self._lang_ids = {lang: i for i, lang in enumerate(masks.languages)}
        # every loaded language's packed bits, stacked: uint8[L, *packed_shape] per target
        self._bits_cpu = {
            name: torch.stack([masks.packed(lang)[name] for lang in masks.languages]) for name in targets
        }
        self._bits: dict[tuple[str, torch.device], torch.Tensor] = {}
        self._mask_cache: dict[str, dict[int, torch.Tensor]] = {name: {} for name in targets}
        self._union_cache: dict[tuple, dict[str, torch.Tensor]] = {}
        self._patched: list[nn.Module] = []
        self._install()

    # ------------------------------------------------------------------ patching
    def _install(self) -> None:
        by_module: dict[nn.Module, list[tuple[str, str]]] = {}
        for name in self._targets:
            module, attr = owner_module(self.model, name)
            by_module.setdefault(module, []).append((name, attr))
        for module, entries in by_module.items():
            if isinstance(module, nn.Linear) and [a for _, a in entries] == ["weight"]:
                module.forward = self._linear_forward(module, entries[0][0])
            else:
                module.forward = self._generic_forward(module, entries)
            self._patched.append(module)

    def _uninstall(self) -> None:
        for module in self._patched:
            module.__dict__.pop("forward", None)
        self._patched = []

    def _linear_forward(self, module: nn.Linear, name: str):
        active = self._active

        def forward(x: torch.Tensor) -> torch.Tensor:
            if active.dense:
                return F.linear(x, module.weight, module.bias)
            row_lang = None if active.row_lang is None else active.row_lang.to(x.device, non_blocking=True)
            return masked_linear(x, module.weight, module.bias, self.bits(name, module.weight.device),
                                 lang=active.lang, row_lang=row_lang, mode=self.mode,
                                 mask_cache=self._mask_cache[name])
        return forward

    def _generic_forward(self, module: nn.Module, entries: list[tuple[str, str]]):
        active = self._active
        original = module.forward  # the class's forward, bound to the module
        reentered = [False]

        def forward(*args, **kwargs):
            if active.dense or reentered[0]:
                return original(*args, **kwargs)
            if active.lang is None:
                raise MaskError(f"mixed-language batches support Linear weights only; {entries[0][0]} is a "
                                f"{type(module).__name__} parameter (use one language per batch)")
            masked = {attr: getattr(module, attr) * self._dense_mask(name, active.lang, getattr(module, attr))
                      for name, attr in entries}
            reentered[0] = True
            try:
                return functional_call(module, masked, args, kwargs)
            finally:
                reentered[0] = False
        return forward

    def bits(self, name: str, device: torch.device) -> torch.Tensor:
        """Stacked packed masks ``uint8[L, ...]`` of target ``name``, resident on ``device``."""
        key = (name, device)
        if key not in self._bits:
            self._bits[key] = self._bits_cpu[name].to(device)
        return self._bits[key]

    def _dense_mask(self, name: str, index: int, like: torch.Tensor) -> torch.Tensor:
        cache = self._mask_cache[name]
        if index not in cache:
            cache[index] = unpack_bits(self.bits(name, like.device)[index], like.shape)
        return cache[index].to(like.dtype)

    # ------------------------------------------------------------------ language selection
    @property
    def languages(self) -> list[str]:
        return list(self._lang_ids)

    @property
    def targets(self) -> dict[str, nn.Parameter]:
        return dict(self._targets)

    @property
    def active_languages(self) -> tuple[str, ...]:
        """Languages of the current selection (empty when dense)."""
        return self._active.names

    def _index(self, lang: str) -> int:
        if lang not in self._lang_ids:
            raise MaskError(f"unknown language {lang!r}; loaded: {', '.join(self._lang_ids)}")
        return self._lang_ids[lang]

    def set_language(self, lang: str | Sequence[str] | None) -> None:
        """Select one language, one language per example of the next batch (a list), or ``None`` (dense)."""
        active = self._active
        if lang is None:
            active.lang, active.row_lang, active.names = None, None, ()
        elif isinstance(lang, str):
            active.lang, active.row_lang, active.names = self._index(lang), None, (lang,)
        else:
            langs = list(lang)
            if not langs:
                raise MaskError("set_language got an empty list of languages")
            ids = [self._index(l) for l in langs]
            if len(set(ids)) == 1:
                active.lang, active.row_lang = ids[0], None
            else:
                active.lang, active.row_lang = None, torch.tensor(ids, dtype=torch.long)
            active.names = tuple(dict.fromkeys(langs))
        self._trim_cache()

    def _trim_cache(self) -> None:
        # keep unpacked masks only for the languages in use (memory: 1 byte per weight per language)
        keep = {self._lang_ids[l] for l in self._active.names}
        for cache in self._mask_cache.values():
            for index in [i for i in cache if i not in keep]:
                del cache[index]

    @contextlib.contextmanager
    def language(self, lang: str | Sequence[str] | None):
        """``with mm.language("sw"): ...`` — restores the previous selection afterwards."""
        saved = (self._active.lang, self._active.row_lang, self._active.names)
        self.set_language(lang)
        try:
            yield self
        finally:
            self._active.lang, self._active.row_lang, self._active.names = saved
            self._trim_cache()

    def union_mask(self, languages: Iterable[str]) -> dict[str, torch.Tensor]:
        """``∪ M_l`` over ``languages`` as bool tensors on each target's device (cached)."""
        key = tuple(sorted(set(languages)))
        if key not in self._union_cache:
            if len(self._union_cache) > 16:
                self._union_cache.clear()
            for lang in key:
                self._index(lang)
            ids = [self._lang_ids[l] for l in key]
            out = {}
            for name, p in self._targets.items():
                packed = self.bits(name, p.device)[ids]
                acc = packed[0].clone()
                for extra in packed[1:]:
                    acc |= extra
                out[name] = unpack_bits(acc, p.shape)
            self._union_cache[key] = out
        return self._union_cache[key]

    # ------------------------------------------------------------------ running
    def forward(self, *args, **kwargs):
        return self.model(*args, **kwargs)

    def __getattr__(self, name: str):
        try:
            return super().__getattr__(name)
        except AttributeError:
            return getattr(super().__getattr__("model"), name)

    # ------------------------------------------------------------------ export
    @contextlib.contextmanager
    def _unpatched(self):
        self._uninstall()
        try:
            yield
        finally:
            self._install()

    def merge_and_unload(self, lang: str) -> nn.Module:
        """A plain copy of the HF model with every targeted weight replaced by ``W ⊙ M_lang``."""
        index = self._index(lang)
        with self._unpatched():
            merged = copy.deepcopy(self.model)
        params = canonical_parameters(merged)
        with torch.no_grad():
            for name in self._targets:
                p = params[name]
                p.mul_(unpack_bits(self.bits(name, p.device)[index], p.shape).to(p.dtype))
        return merged

    def unload(self) -> nn.Module:
        """Remove the patches and return the shared model (weights untouched)."""
        self._uninstall()
        return self.model

    def save_pretrained(self, directory: str | os.PathLike) -> str:
        """The shared model as a HF checkpoint in ``directory`` and the mask set in ``directory/masks``."""
        directory = os.fspath(directory)
        with self._unpatched():
            self.model.save_pretrained(directory)
        self.masks.subset(self.languages).save(os.path.join(directory, MASKS_SUBDIR))
        with open(os.path.join(directory, WRAPPER_CONFIG), "w") as fh:
            json.dump({"targets": list(self._targets), "mode": self.mode, "languages": self.languages}, fh,
                      indent=2)
        return directory

    @classmethod
    def from_pretrained(cls, directory: str | os.PathLike, head: str | None = None,
                        languages: Iterable[str] | None = None, mode: str | None = None) -> "MaskedModel":
        from lasp.models import load_model

        directory = os.fspath(directory)
        wrapper_path = os.path.join(directory, WRAPPER_CONFIG)
        if not os.path.isfile(wrapper_path):
            raise MaskError(f"{directory} was not written by MaskedModel.save_pretrained ({WRAPPER_CONFIG} missing)")
        with open(wrapper_path) as fh:
            wrapper = json.load(fh)
        if head is None:
            with open(os.path.join(directory, "config.json")) as fh:
                arch = (json.load(fh).get("architectures") or [""])[0]
            head = "ctc" if arch.endswith("ForCTC") else "pretraining" if arch.endswith("ForPreTraining") else "base"
        model = load_model(directory, head=head)
        masks = LanguageMasks.load(os.path.join(directory, MASKS_SUBDIR), languages)
        return cls(model, masks, target_modules=[f"^{n.replace('.', '[.]')}$" for n in wrapper["targets"]],
                   mode=mode or wrapper.get("mode", "auto"))

    def summary(self) -> str:
        total = sum(p.numel() for p in self.model.parameters())
        targeted = sum(p.numel() for p in self._targets.values())
        dens = [self.masks.density(l) for l in self.languages]
        return (f"languages: {len(dens)} | targeted params: {targeted:,} of {total:,} "
                f"({100 * targeted / max(total, 1):.1f}%) | mean density {sum(dens) / max(len(dens), 1):.3f} | "
                f"mask bits resident: {len(dens) * targeted / 8 / 2**20:.2f} MiB | mode: {self.mode}")

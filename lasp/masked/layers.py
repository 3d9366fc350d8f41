"""The modules :class:`lasp.masked.model.MaskedModel` swaps in, and the language selection they share.

``MaskedLinear`` replaces a targeted ``nn.Linear`` (PEFT's module-swap pattern): it holds the *same*
``weight`` / ``bias`` Parameter objects, so the model's ``state_dict`` keys and the optimizer's parameters
are unchanged, and keeps every language's bit-packed mask as a non-persistent buffer (moves with
``.to(device)``, never saved). Being a real module, it shows in ``print(model)`` and survives ``deepcopy``
and ``pickle``: a copy computes with the copy's weights.

Its masked weight copy ``cast(W) ⊙ M_lang`` (:mod:`lasp.masked.kernels.cast`) is built on first use and reused
until the weight changes (autograd version counter, so every optimizer step or ``load_state_dict``
invalidates it), the language selection changes, or autocast asks for another dtype. Code that edits weights
behind autograd's back (``p.data.mul_``) must call ``MaskedModel.refresh()``.

Other targeted parameters (opt-in layer norms, convolutions, biases, the quantizer) keep their module; a
picklable callable replaces the module's ``forward`` and runs it with ``param ⊙ M_lang`` substituted.
"""
from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch.func import functional_call

from lasp.masks.bits import unpack_bits
from lasp.errors import MaskError
from lasp.masked.kernels.cast import Segments, compute_dtype, linear_grouped, linear_single, masked_weight, segments_of
from lasp.masked.kernels.reference import masked_linear_reference


class Route:
    """The active selection every swapped module reads: dense, one language index, or grouped segments.

    Index tensors a mixed batch needs on a device are made once per ``select`` and device, not per Linear.
    """

    def __init__(self, languages: list[str]):
        self.ids = {lang: i for i, lang in enumerate(languages)}
        self.lang: int | None = None
        self.segments: Segments | None = None
        self.names: tuple[str, ...] = ()
        self.epoch = 0
        self.seen: set[str] = set()  # languages run with gradients since the optimizer last consumed them
        self.marked = False
        self._device_cache: dict = {}

    @property
    def dense(self) -> bool:
        return self.lang is None and self.segments is None

    def index(self, lang: str) -> int:
        if lang not in self.ids:
            raise MaskError(f"unknown language {lang!r}; loaded: {', '.join(self.ids)}")
        return self.ids[lang]

    def select(self, lang) -> None:
        if lang is None:
            self.lang, self.segments, self.names = None, None, ()
        elif isinstance(lang, str):
            self.lang, self.segments, self.names = self.index(lang), None, (lang,)
        else:
            langs = list(lang)
            if not langs:
                raise MaskError("set_language got an empty list of languages")
            ids = [self.index(l) for l in langs]
            if len(set(ids)) == 1:
                self.lang, self.segments = ids[0], None
            else:
                self.lang, self.segments = None, segments_of(ids)
            self.names = tuple(dict.fromkeys(langs))
        self.marked = False
        self._device_cache = {}

    def mark_trained(self) -> None:
        """Called by the modules when they run with gradients: these languages take part in the next step."""
        if not self.marked and torch.is_grad_enabled():
            self.seen.update(self.names)
            self.marked = True

    def state(self) -> tuple:
        return self.lang, self.segments, self.names

    def restore(self, state: tuple) -> None:
        self.lang, self.segments, self.names = state
        self.marked = False
        self._device_cache = {}

    def regroup(self, device: torch.device) -> tuple[torch.Tensor | None, torch.Tensor | None]:
        """(order, inverse) index tensors on ``device`` when the batch is not grouped by language, else (None, None)."""
        seg = self.segments
        if seg is None or seg.order is None:
            return None, None
        key = ("regroup", device)
        if key not in self._device_cache:
            order = torch.tensor(seg.order, dtype=torch.long)
            inverse = torch.empty_like(order)
            inverse[order] = torch.arange(len(order))
            self._device_cache[key] = (order.to(device, non_blocking=True), inverse.to(device, non_blocking=True))
        return self._device_cache[key]

    def row_lang(self, device: torch.device) -> torch.Tensor:
        """Per-example language indices on ``device`` (reference mode)."""
        key = ("row_lang", device)
        if key not in self._device_cache:
            rows = [0] * self.segments.rows
            order = self.segments.order or range(self.segments.rows)
            flat = list(order)
            for start, end, lang in self.segments.spans:
                for i in flat[start:end]:
                    rows[i] = lang
            self._device_cache[key] = torch.tensor(rows, dtype=torch.long).to(device, non_blocking=True)
        return self._device_cache[key]

    def __getstate__(self):
        state = dict(self.__dict__)
        state["_device_cache"] = {}
        return state


class MaskedLinear(nn.Linear):
    """``nn.Linear`` whose weight is ``W ⊙ M_lang`` for the route's active language(s); dense when none is."""

    def __init__(self, base: nn.Linear, bits: torch.Tensor, route: Route, target: str, mode: str = "cast"):
        nn.Module.__init__(self)
        self.in_features, self.out_features = base.in_features, base.out_features
        self.weight = base.weight  # the same Parameter object: state_dict and optimizer see no change
        if base.bias is not None:
            self.bias = base.bias
        else:
            self.register_parameter("bias", None)
        self.register_buffer("mask_bits", bits.to(base.weight.device), persistent=False)
        self._forward_pre_hooks.update(base._forward_pre_hooks)
        self._forward_hooks.update(base._forward_hooks)
        self.train(base.training)
        self.route = route
        self.target = target
        self.mode = mode
        self._copies: dict[int, tuple[tuple, torch.Tensor]] = {}
        self._spares: list[torch.Tensor] = []
        self._mask_cache: dict[int, torch.Tensor] = {}

    def extra_repr(self) -> str:
        return (f"{super().extra_repr()}, languages={self.mask_bits.shape[0]}, mode={self.mode}, "
                f"target={self.target}")

    def __getstate__(self):
        state = dict(self.__dict__)
        # caches are rebuilt from the copy's own weights
        state["_copies"], state["_spares"], state["_mask_cache"] = {}, [], {}
        return state

    def to_linear(self) -> nn.Linear:
        """A plain ``nn.Linear`` sharing this module's Parameter objects (and hooks)."""
        plain = nn.Linear.__new__(nn.Linear)
        nn.Module.__init__(plain)
        plain.in_features, plain.out_features = self.in_features, self.out_features
        plain.weight = self.weight
        if self.bias is not None:
            plain.bias = self.bias
        else:
            plain.register_parameter("bias", None)
        plain._forward_pre_hooks.update(self._forward_pre_hooks)
        plain._forward_hooks.update(self._forward_hooks)
        plain.train(self.training)
        return plain

    def masked_copy(self, lang: int, dtype: torch.dtype) -> torch.Tensor:
        """``cast(W) ⊙ M_lang`` in ``dtype``, cached until the weight, the dtype or ``refresh()`` changes it."""
        w = self.weight
        key = (w._version, w.data_ptr(), w.device, dtype, self.route.epoch)
        hit = self._copies.get(lang)
        if hit is not None and hit[0] == key:
            return hit[1]
        if torch.is_inference_mode_enabled():
            return masked_weight(w, self.mask_bits[lang], dtype)  # inference tensors must not be cached
        buffer = hit[1] if hit is not None else (self._spares.pop() if self._spares else None)
        out = masked_weight(w, self.mask_bits[lang], dtype, out=buffer)
        self._copies[lang] = ((w._version, w.data_ptr(), w.device, dtype, self.route.epoch), out)
        return out

    def trim(self, keep: set[int]) -> None:
        """Drop the copies of languages not in ``keep``; their buffers stay as spares for the next languages.

        Reusing a buffer matters on CPU: a fresh weight-sized allocation is page-faulted in on first write,
        which costs more than the masked copy itself. Spares are capped at the number of copies held before.
        """
        held = len(self._copies)
        for lang in [l for l in self._copies if l not in keep]:
            self._spares.append(self._copies.pop(lang)[1])
        del self._spares[:max(0, len(self._spares) - max(held, 1))]
        for lang in [l for l in self._mask_cache if l not in keep]:
            del self._mask_cache[lang]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        route = self.route
        if route.dense:
            return F.linear(x, self.weight, self.bias)
        route.mark_trained()
        if self.mode == "reference":
            if route.lang is not None:
                return masked_linear_reference(x, self.weight, self.bias, self.mask_bits, lang=route.lang,
                                               mask_cache=self._mask_cache)
            return masked_linear_reference(x, self.weight, self.bias, self.mask_bits,
                                           row_lang=route.row_lang(x.device), mask_cache=self._mask_cache)
        dtype = compute_dtype(x, self.weight)
        if route.lang is not None:
            return linear_single(x, self.weight, self.bias, self.masked_copy(route.lang, dtype),
                                 self.mask_bits[route.lang])
        seg = route.segments
        langs = [lang for _, _, lang in seg.spans]
        order, inverse = route.regroup(x.device)
        return linear_grouped(x, self.weight, self.bias, seg, order, inverse,
                              [self.masked_copy(l, dtype) for l in langs], [self.mask_bits[l] for l in langs])


class MaskedForward:
    """Replaces ``module.forward`` for non-Linear targets: the class's forward with ``param ⊙ M_lang``.

    A plain object (not a closure), so ``deepcopy`` maps ``module`` to the copy and ``pickle`` works.
    """

    def __init__(self, module: nn.Module, entries: list[tuple[str, str]], bits: dict[str, torch.Tensor],
                 route: Route):
        self.module = module
        self.entries = entries  # (target name, attribute of module)
        self.bits = bits  # target name -> uint8[L, *packed], on CPU
        self.route = route
        self.reentered = False
        self._on_device: dict = {}

    def __getstate__(self):
        state = dict(self.__dict__)
        state["_on_device"], state["reentered"] = {}, False
        return state

    def mask(self, name: str, lang: int, like: torch.Tensor) -> torch.Tensor:
        key = (name, lang, like.device)
        if key not in self._on_device:
            self._on_device[key] = unpack_bits(self.bits[name][lang].to(like.device), like.shape)
        return self._on_device[key]

    def __call__(self, *args, **kwargs):
        module, route = self.module, self.route
        if route.dense or self.reentered:
            return type(module).forward(module, *args, **kwargs)
        route.mark_trained()
        if route.lang is None:
            raise MaskError(f"mixed-language batches support Linear weights only; {self.entries[0][0]} is a "
                            f"{type(module).__name__} parameter (use one language per batch)")
        masked = {attr: getattr(module, attr) * self.mask(name, route.lang, getattr(module, attr)).to(
            getattr(module, attr).dtype) for name, attr in self.entries}
        self.reentered = True
        try:
            return functional_call(module, masked, args, kwargs)
        finally:
            self.reentered = False

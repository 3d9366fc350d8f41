"""Update confinement: a step on languages S changes only weights inside ∪_{l∈S} M_l.

Masked forwards already give zero gradient outside the active mask, but an optimizer still moves those
weights: decoupled weight decay shrinks them and momentum from earlier steps (other languages) keeps pushing.

For AdamW (and Adam without weight decay) confinement happens inside the optimizer's own pass: a masked AdamW
updates weight, first and second moment only where the step's union has a bit set, reading the union as
packed bits, and leaves every other entry with its exact bits — no snapshot, no restore. On CPU it is one
fused loop (:mod:`lasp.masked.kernels.native`), on GPUs one Triton kernel (:mod:`lasp.masked.kernels.triton_adamw`),
both a single pass that needs no memory beyond the optimizer's own; elsewhere (other dtypes, no Triton)
multi-tensor torch ops and ``torch.where`` over a few tensors at a time, so their temporaries stay the size of
the largest tensor, not of the model. The inner
optimizer keeps the state (``exp_avg``, ``exp_avg_sq``, ``step``) in its usual place and format, so its
``state_dict`` and checkpoints are unchanged; it still steps every untargeted parameter itself.

Any other optimizer falls back to a snapshot of each targeted weight and its same-shape state before the
inner step and a bitwise restore outside the union afterwards (correct for every optimizer, one extra copy).

S is every language whose forward ran with gradients since the last ``zero_grad`` (gradient accumulation over
micro-batches of different languages; evaluation under ``no_grad`` does not count), or the active selection
when none did, plus ``languages`` when given (under DDP: all ranks').

``fixed`` (packed bits per target) names weights no step may change even inside the union: adding a language
to a trained system holds every weight an earlier language keeps, so the new language trains only its mask's
weights that no other language reads.
"""
from __future__ import annotations

import math
from typing import Iterable

import torch

from lasp.masks.bits import unpack_bits
from lasp.masked.kernels import native, triton_adamw
from lasp.masked.model import MaskedModel

_INT_OF_SIZE = {1: torch.int8, 2: torch.int16, 4: torch.int32, 8: torch.int64}


def _restore_outside(inside: torch.Tensor, pairs: list[tuple[torch.Tensor, torch.Tensor]]) -> None:
    """``current[~inside] = saved[~inside]`` bit for bit, for every ``(current, saved)`` pair (``saved`` is scratch).

    On a GPU this is ``torch.where``. On CPU a bool-conditioned ``where`` is about 4x slower than integer bit
    operations on the same bytes, so there the tensors are viewed as integers and merged with an
    all-ones/all-zeros mask; being bitwise, it keeps NaNs and signed zeros exactly.
    """
    if inside.device.type != "cpu":
        for current, saved in pairs:
            torch.where(inside, current, saved, out=current)
        return
    masks: dict[torch.dtype, tuple[torch.Tensor, torch.Tensor]] = {}
    for current, saved in pairs:
        as_int = _INT_OF_SIZE[current.element_size()]
        if as_int not in masks:
            keep = inside.to(as_int).neg_()  # all bits set inside the union, none outside
            masks[as_int] = keep, keep.bitwise_not()
        keep, drop = masks[as_int]
        current_bits, saved_bits = current.view(as_int), saved.view(as_int)
        current_bits.bitwise_and_(keep)
        current_bits.bitwise_or_(saved_bits.bitwise_and_(drop))


def masked_adamw_supported(optimizer: torch.optim.Optimizer) -> bool:
    """True for the optimizers whose update :func:`masked_adamw_step` reproduces: AdamW, and Adam without L2."""
    if type(optimizer) not in (torch.optim.AdamW, torch.optim.Adam):
        return False
    for group in optimizer.param_groups:
        if group.get("amsgrad") or group.get("capturable") or group.get("differentiable"):
            return False
        if type(optimizer) is torch.optim.Adam and group.get("weight_decay", 0):
            return False  # Adam's L2 term is added to the gradient, which masking must see: use the fallback
    return True


def _scalar(value) -> float:
    return float(value.item()) if torch.is_tensor(value) else float(value)


def masked_adamw_step(params: list[torch.Tensor], unions: list[torch.Tensor], state: dict, group: dict,
                      decoupled: bool = True, host_steps: dict | None = None) -> None:
    """One AdamW step of ``group``'s hyper-parameters on ``params`` (each with ``.grad``), confined to ``unions``.

    ``unions[i]`` is the packed union for ``params[i]``. State is created/updated in ``state[p]`` exactly as
    torch's AdamW keeps it. Entries outside the union keep their bits in the weight and both moments.
    ``host_steps`` (id(param) -> step count) mirrors the step counters on the host, so a counter that lives on
    the GPU (fused/capturable AdamW) is read once, not synchronized every step.
    """
    host_steps = {} if host_steps is None else host_steps
    lr, eps = _scalar(group["lr"]), float(group["eps"])
    beta1, beta2 = (_scalar(b) for b in group["betas"])
    wd = float(group.get("weight_decay", 0.0)) if decoupled else 0.0
    maximize = bool(group.get("maximize", False))
    slow: list[tuple] = []
    for p, bits in zip(params, unions):
        st = state[p]
        if not st:
            # where torch's AdamW keeps it: on the parameter's device for the fused/capturable kernels
            on_device = group.get("fused") or group.get("capturable")
            st["step"] = torch.tensor(0.0, dtype=torch.float32, device=p.device if on_device else "cpu")
            st["exp_avg"] = torch.zeros_like(p, memory_format=torch.preserve_format)
            st["exp_avg_sq"] = torch.zeros_like(p, memory_format=torch.preserve_format)
        known = host_steps.get(id(p))
        if known is None or known[0] is not st["step"]:  # first step, or the state was loaded since
            known = (st["step"], _scalar(st["step"]))
        st["step"] += 1
        step = known[1] + 1
        host_steps[id(p)] = (st["step"], step)
        bc1, bc2_sqrt = 1 - beta1 ** step, math.sqrt(1 - beta2 ** step)
        g, m, v = p.grad, st["exp_avg"], st["exp_avg_sq"]
        fused = (native if p.dtype == torch.float32 and native.usable(p, g, m, v, bits) else
                 triton_adamw if p.dtype == torch.float32 and triton_adamw.usable(p, g, m, v, bits) else None)
        if fused is not None:
            fused.masked_adamw_(p, g, m, v, bits, lr=lr, beta1=beta1, beta2=beta2, eps=eps, weight_decay=wd,
                                bias_correction1=bc1, bias_correction2_sqrt=bc2_sqrt, maximize=maximize)
        else:
            slow.append((p, -g if maximize else g, m, v, bits, lr / bc1, bc2_sqrt))
    if slow:
        _masked_adamw_torch(slow, lr, beta1, beta2, eps, wd)


# elements per group of tensors the torch-op path updates together: its temporaries (13 bytes per element) stay
# under 30 MB, or the size of the largest tensor when that is bigger (XLSR-53: 4 M elements, 52 MB)
_GROUP_ELEMENTS = 1 << 21


def _masked_adamw_torch(items: list[tuple], lr: float, beta1: float, beta2: float, eps: float, wd: float) -> None:
    """The same update with multi-tensor torch ops (non-fp32, or no fused kernel): new values, then ``where`` on
    the union, a group of tensors at a time."""
    group: list[tuple] = []
    size = 0
    for item in items:
        if group and size + item[0].numel() > _GROUP_ELEMENTS:
            _masked_adamw_group(group, lr, beta1, beta2, eps, wd)
            group, size = [], 0
        group.append(item)
        size += item[0].numel()
    if group:
        _masked_adamw_group(group, lr, beta1, beta2, eps, wd)


def _masked_adamw_group(items: list[tuple], lr: float, beta1: float, beta2: float, eps: float, wd: float) -> None:
    ps, gs, ms, vs = ([it[i] for it in items] for i in range(4))
    keeps = [unpack_bits(it[4], it[0].shape) for it in items]
    step_sizes, bc2s = [it[5] for it in items], [it[6] for it in items]
    m_new = torch._foreach_lerp(ms, gs, 1 - beta1)
    v_new = torch._foreach_mul(vs, beta2)
    torch._foreach_addcmul_(v_new, gs, gs, value=1 - beta2)
    denom = torch._foreach_sqrt(v_new)
    for keep, v, vn in zip(keeps, vs, v_new):
        torch.where(keep, vn, v, out=v)
    del v_new
    torch._foreach_div_(denom, bc2s)
    torch._foreach_add_(denom, eps)
    p_new = torch._foreach_mul(ps, 1 - lr * wd)
    torch._foreach_addcdiv_(p_new, m_new, denom, [-s for s in step_sizes])
    del denom
    for keep, p, m, pn, mn in zip(keeps, ps, ms, p_new, m_new):
        torch.where(keep, mn, m, out=m)
        torch.where(keep, pn, p, out=p)


class ConfinedOptimizer:
    """Wrap a ``torch.optim.Optimizer`` so that its steps respect the language masks (see module docstring)."""

    def __init__(self, optimizer: torch.optim.Optimizer, masked_model: MaskedModel,
                 fixed: dict[str, torch.Tensor] | None = None):
        self.optimizer = optimizer
        self.masked_model = masked_model
        self.fixed = fixed
        self._allowed: dict[tuple, dict[str, torch.Tensor]] = {}
        in_optimizer = {id(p) for group in optimizer.param_groups for p in group["params"]}
        self._targets = {n: p for n, p in masked_model.targets.items() if id(p) in in_optimizer}
        self.fused = masked_adamw_supported(optimizer)
        self._host_steps: dict[int, tuple[torch.Tensor, float]] = {}

    def step_languages(self, languages: Iterable[str] | None = None) -> tuple[str, ...]:
        """The languages this step is confined to: ``languages`` ∪ every language trained since ``zero_grad``
        (the active selection when no forward with gradients ran since)."""
        mm = self.masked_model
        langs = set(languages or ()) | set(mm.languages_since_reset() or mm.active_languages)
        return tuple(l for l in mm.languages if l in langs)

    @torch.no_grad()
    def step(self, closure=None, languages: Iterable[str] | None = None):
        """One optimizer step confined to the step's languages (see :meth:`step_languages`).

        With no language at all (dense training) the step is not confined.
        """
        langs = self.step_languages(languages)
        self.masked_model.languages_since_reset(reset=True)
        if not langs:
            return self.optimizer.step(closure)
        union = self._updatable(langs)
        if self.fused:
            return self._fused_step(closure, union)
        return self._snapshot_step(closure, union)

    def _updatable(self, langs: tuple[str, ...]) -> dict[str, torch.Tensor]:
        """The packed bits a step on ``langs`` may change: their union, less the ``fixed`` weights."""
        union = self.masked_model.union_bits(langs)
        if self.fixed is None:
            return union
        if langs not in self._allowed:
            self._allowed[langs] = {name: bits & ~self.fixed[name].to(bits.device) for name, bits in union.items()}
        return self._allowed[langs]

    def _fused_step(self, closure, union: dict[str, torch.Tensor]):
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        by_param = {id(p): n for n, p in self._targets.items()}
        hidden: list[tuple[dict, torch.Tensor, torch.Tensor]] = []
        for group in self.optimizer.param_groups:
            for p in group["params"]:
                if id(p) in by_param and p.grad is not None:
                    hidden.append((group, p, p.grad))
        for _, p, _ in hidden:
            p.grad = None  # the inner optimizer skips parameters without a gradient: it steps the rest
        try:
            self.optimizer.step()
        finally:
            for _, p, g in hidden:
                p.grad = g
        decoupled = type(self.optimizer) is torch.optim.AdamW
        groups: dict[int, tuple[dict, list, list]] = {}
        for group, p, _ in hidden:
            entry = groups.setdefault(id(group), (group, [], []))
            entry[1].append(p)
            entry[2].append(union[by_param[id(p)]])
        for group, params, unions in groups.values():
            masked_adamw_step(params, unions, self.optimizer.state, group, decoupled=decoupled,
                              host_steps=self._host_steps)
        return loss

    def _snapshot_step(self, closure, union: dict[str, torch.Tensor]):
        saved = []
        for name, p in self._targets.items():
            state = self.optimizer.state.get(p, {})
            tensors = {k: v.clone() for k, v in state.items() if torch.is_tensor(v) and v.shape == p.shape}
            inside = unpack_bits(union[name], p.shape)
            saved.append((p, inside, p.clone(), tensors, set(state)))
        loss = self.optimizer.step(closure)
        for p, inside, weights, tensors, had_state in saved:
            state = self.optimizer.state.get(p, {})
            _restore_outside(inside, [(p, weights)] + [(state[k], v) for k, v in tensors.items() if k in state])
            for key, value in state.items():
                if key not in had_state and torch.is_tensor(value) and value.shape == p.shape:
                    value.masked_fill_(~inside, 0)  # state created by this step starts from zero outside
        return loss

    def zero_grad(self, set_to_none: bool = True) -> None:
        self.optimizer.zero_grad(set_to_none=set_to_none)
        self.masked_model.languages_since_reset(reset=True)

    @property
    def param_groups(self):
        return self.optimizer.param_groups

    @property
    def state(self):
        return self.optimizer.state

    def state_dict(self):
        return self.optimizer.state_dict()

    def load_state_dict(self, state_dict) -> None:
        self.optimizer.load_state_dict(state_dict)

    def add_param_group(self, group) -> None:
        self.optimizer.add_param_group(group)
        in_optimizer = {id(p) for g in self.optimizer.param_groups for p in g["params"]}
        self._targets = {n: p for n, p in self.masked_model.targets.items() if id(p) in in_optimizer}
        self.fused = masked_adamw_supported(self.optimizer)

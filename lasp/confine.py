"""Update confinement: a step on languages S changes only weights inside ∪_{l∈S} M_l.

Masked forwards already give zero gradient outside the active mask, but an
optimizer still moves those weights: decoupled weight decay shrinks them and
momentum from earlier steps (other languages) keeps pushing. The wrapper
snapshots, for every targeted parameter, the entries outside the step's mask
union — the weight and every optimizer-state tensor of the same shape (Adam
moments, momentum buffers) — and writes them back after the inner step. The
result is bit-identical, independent of the optimizer, and also holds under
DDP when every rank passes the union of all ranks' languages.
"""
from __future__ import annotations

from typing import Iterable

import torch

from lasp.masked import MaskedModel


class ConfinedOptimizer:
    """Wrap any ``torch.optim.Optimizer`` so that its steps respect the language masks."""

    def __init__(self, optimizer: torch.optim.Optimizer, masked_model: MaskedModel):
        self.optimizer = optimizer
        self.masked_model = masked_model
        in_optimizer = {id(p) for group in optimizer.param_groups for p in group["params"]}
        self._targets = {n: p for n, p in masked_model.targets.items() if id(p) in in_optimizer}

    @torch.no_grad()
    def step(self, closure=None, languages: Iterable[str] | None = None):
        """One optimizer step confined to ``languages`` (default: the model's active languages).

        With no active language (dense training) the step is not confined.
        """
        languages = tuple(languages) if languages is not None else self.masked_model.active_languages
        if not languages:
            return self.optimizer.step(closure)
        union = self.masked_model.union_mask(languages)
        saved = []
        for name, p in self._targets.items():
            outside = ~union[name]
            state = self.optimizer.state.get(p, {})
            tensors = {k: v[outside].clone() for k, v in state.items()
                       if torch.is_tensor(v) and v.shape == p.shape}
            saved.append((p, outside, p[outside].clone(), tensors, set(state)))
        loss = self.optimizer.step(closure)
        for p, outside, weights, tensors, had_state in saved:
            p.masked_scatter_(outside, weights)
            state = self.optimizer.state.get(p, {})
            for key, value in state.items():
                if not (torch.is_tensor(value) and value.shape == p.shape):
                    continue
                if key in tensors:
                    value.masked_scatter_(outside, tensors[key])
                elif key not in had_state:
                    value.masked_fill_(outside, 0)  # state created by this step starts from zero outside
        return loss

    def zero_grad(self, set_to_none: bool = True) -> None:
        self.optimizer.zero_grad(set_to_none=set_to_none)

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

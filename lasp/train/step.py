"""One optimizer step of the training loop: micro-batches, backward, one reduction over the ranks, the update.

A step takes ``grad_accum_steps`` micro-batches from the stream. Each runs forward under the stage's autocast
and backward at once (DDP all-reduces only after the last one, :func:`lasp.train.distributed.no_sync`), so the
gradients of all micro-batches of all ranks are summed before one update. Each micro-batch selects its own
languages; the confined optimizer trains the union of every language whose forward ran since the last
``zero_grad`` (all micro-batches) and of the other ranks' languages.

Nothing here reads a device value on the host before backward: the loss, its normaliser and the metrics stay on
the device. After backward one float64 vector, [non-finite micro-batches, loss sum, normaliser sum, over the time
budget, a stop asked for (Ctrl-C, SIGTERM), one entry per language], is summed over the ranks in one collective, and read back together with the
gradient norm in one host synchronization. A non-finite loss or gradient on any rank skips the update on every
rank (the gradients are all-reduced, so the norm agrees; the flag covers a non-finite loss with finite
gradients). Under fp16 the gradient scaler unscales before the check and updates its scale after every step: an
overflow of the scaled gradients halves the scale; a non-finite loss (the forward overflowed) keeps it. Either
step is skipped and counted.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Callable, Sequence

import torch

from lasp.train import distributed as D
from lasp.device import autocast


@dataclass
class StepResult:
    skipped: bool  # a non-finite loss or gradient on some rank: no update
    loss: float  # the global mean loss (sum over micro-batches and ranks / normaliser); nan when skipped
    grad_norm: float
    languages: list[str]  # every language trained in the step, over all ranks
    over_budget: bool  # some rank has used up max_minutes
    signalled: bool  # some rank was asked to stop (Ctrl-C, SIGTERM)
    diverging: bool  # counts toward max_nonfinite: a non-finite loss, or gradient without fp16 loss scaling
    metrics: dict[str, Any]  # the loss function's scalars, mean over the micro-batches (device tensors or floats)


class Stepper:
    """Runs :meth:`step`; holds what stays fixed over a run (see the module docstring)."""

    def __init__(self, *, system, stream, loss_fn: Callable, params: Sequence[torch.nn.Parameter], optimizer,
                 inner: torch.optim.Optimizer, scaler: torch.amp.GradScaler, dtype: torch.dtype | None,
                 accum: int, max_grad_norm: float, info: D.DistInfo, languages: Sequence[str]):
        self.system, self.stream, self.loss_fn = system, stream, loss_fn
        self.params, self.optimizer, self.inner, self.scaler = list(params), optimizer, inner, scaler
        self.dtype, self.accum, self.info = dtype, int(accum), info
        self.clip = max_grad_norm if max_grad_norm > 0 else math.inf
        self.languages = list(languages)  # the reduction's language entries (empty: the batches' own, this rank)
        self.confined = optimizer is not inner

    def step(self, step: int, over_budget: Callable[[], bool], stop_requested: Callable[[], bool]) -> StepResult:
        info, device = self.info, self.info.device
        nonfinite = torch.zeros((), dtype=torch.float64, device=device)
        loss_sum = torch.zeros((), dtype=torch.float64, device=device)
        weight_sum = torch.zeros((), dtype=torch.float64, device=device)
        local_langs: set[str] = set()
        metric_sums: dict[str, Any] = {}
        for k in range(self.accum):
            # the micro-batch index: with one micro-batch per step it is the step itself
            batch = self.stream.next(step * self.accum + k)
            self.system.set_language(batch.langs)
            local_langs.update(batch.langs)
            with D.no_sync(self.system, last=k == self.accum - 1):
                with autocast(device, self.dtype):
                    loss, weight, metrics = self.loss_fn(self.system, batch, step)
                self.scaler.scale(loss).backward()
            value = loss.detach().double()
            nonfinite += (~torch.isfinite(value)).double()
            loss_sum += value
            weight_sum += weight
            for key, v in metrics.items():
                metric_sums[key] = metric_sums[key] + v if key in metric_sums else v
        lang_flags = torch.tensor([1.0 if l in local_langs else 0.0 for l in self.languages], dtype=torch.float64)
        stops = torch.tensor([float(over_budget()), float(stop_requested())], dtype=torch.float64)
        reduced = D.all_reduce_sum(torch.cat([torch.stack([nonfinite, loss_sum, weight_sum]),
                                              stops.to(device, non_blocking=True),
                                              lang_flags.to(device, non_blocking=True)]), info)
        D.normalize_grads(self.params, reduced[2], info)  # DDP already summed them during backward
        if self.scaler.is_enabled():
            self.scaler.unscale_(self.inner)
        norm = torch.nn.utils.clip_grad_norm_(self.params, self.clip)
        host = torch.cat([reduced, norm.detach().double().reshape(1).to(device)]).tolist()  # the one sync
        bad_loss, total_loss, total_weight, over_count, stop_count = host[:5]
        grad_norm = host[-1]
        skipped = bad_loss > 0 or not math.isfinite(grad_norm)
        # fp16: an overflow of the scaled gradients is the loss scaler's calibration, not divergence
        diverging = bad_loss > 0 or (skipped and not self.scaler.is_enabled())
        langs = ([l for l, flag in zip(self.languages, host[5:-1]) if flag > 0] if self.languages
                 else sorted(local_langs))
        if not skipped:
            if self.confined:
                self.optimizer.step(languages=langs)
            else:
                self.optimizer.step()
        if self.scaler.is_enabled():
            if bad_loss > 0:
                # the forward overflowed, not the scaled gradients: keep the scale (update() must still run after
                # unscale_, and with new_scale it leaves the growth tracker alone)
                self.scaler.update(new_scale=self.scaler.get_scale())
            else:
                self.scaler.update()  # reads the inf checks unscale_ recorded: an overflow halves the scale
        self.optimizer.zero_grad(set_to_none=True)
        return StepResult(skipped=skipped, loss=float("nan") if skipped else total_loss / max(total_weight, 1e-12),
                          grad_norm=grad_norm, languages=langs, over_budget=over_count > 0,
                          signalled=stop_count > 0, diverging=diverging,
                          metrics={k: v / self.accum for k, v in metric_sums.items()})

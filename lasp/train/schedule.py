"""Learning-rate schedules and the Gumbel temperature decay.

Schedules are plain functions of the step returning a multiplier of the base
learning rate, so a LambdaLR built from them saves nothing but its step count
(a resumed run rebuilds the same function from the recipe).
"""
from __future__ import annotations

import math
from typing import Callable

from lasp.config.schema import OptimConfig


def tri_stage(max_steps: int, ratios: list[float], final_scale: float) -> Callable[[int], float]:
    """fairseq's tri-stage schedule: linear warm-up from lr*final_scale, hold at lr, exponential decay to lr*final_scale."""
    warm = int(ratios[0] * max_steps)
    hold = int(ratios[1] * max_steps)
    decay = max(max_steps - warm - hold, 1)

    def factor(step: int) -> float:
        if step < warm:
            return final_scale + (1.0 - final_scale) * step / max(warm, 1)
        if step < warm + hold:
            return 1.0
        t = min((step - warm - hold) / decay, 1.0)
        return math.exp(math.log(final_scale) * t)

    return factor


def linear_warmup(warmup_steps: int) -> Callable[[int], float]:
    """Linear warm-up from 0 to lr over warmup_steps, then constant."""
    def factor(step: int) -> float:
        if warmup_steps <= 0 or step >= warmup_steps:
            return 1.0
        return (step + 1) / warmup_steps

    return factor


def lr_factor(optim: OptimConfig, max_steps: int) -> Callable[[int], float]:
    if optim.schedule == "tri-stage":
        return tri_stage(max_steps, optim.tri_stage_ratios, optim.final_lr_scale)
    if optim.schedule == "linear-warmup":
        return linear_warmup(optim.warmup_steps)
    return lambda step: 1.0


def gumbel_temperature(step: int, max_temp: float, min_temp: float, decay: float) -> float:
    """wav2vec 2.0: temperature = max(max_temp * decay^step, min_temp)."""
    return max(max_temp * decay**step, min_temp)

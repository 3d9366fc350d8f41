"""Importance scores of the targeted weights for one language.

Scorers:
  magnitude  |w|                       (no data)
  taylor     Σ_b |w ⊙ ∂L_b/∂w|          first-order Taylor estimate of the loss change when w is removed
  fisher     Σ_b (∂L_b/∂w)²             empirical Fisher diagonal
  random     uniform noise, seeded      (the control of LaSS)

Gradient scorers use the model's own loss on the language's batches: the
wav2vec 2.0 pre-training loss (contrastive + diversity; no transcripts needed)
for ``*ForPreTraining`` models, CTC for ``*ForCTC`` models given labels. The
model runs in eval mode (no dropout) so scores are reproducible. Memory: one
fp32 accumulator per targeted parameter; only targeted parameters get gradients.
"""
from __future__ import annotations

import zlib
from typing import Iterable, Mapping

import torch
import torch.nn as nn
from tqdm.auto import tqdm

from lasp.errors import ConfigError
from lasp.data.collate import has_inputs
from lasp.models.objective import batch_loss
from lasp.masks.targets import select_targets

SCORERS = ("magnitude", "taylor", "fisher", "random")
GRADIENT_SCORERS = ("taylor", "fisher")


def language_seed(seed: int, lang: str) -> int:
    """A stable per-language seed (Python's ``hash`` is salted per process; crc32 is not)."""
    return (int(seed) * 1_000_003 + zlib.crc32(lang.encode())) % (2**31 - 1)


def score_language(
    model: nn.Module,
    batches: Iterable[Mapping] | None,
    scorer: str = "taylor",
    targets=None,
    max_batches: int | None = None,
    seed: int = 0,
    lang: str = "",
    progress: bool = False,
    stats: dict | None = None,
) -> dict[str, torch.Tensor]:
    """``{canonical parameter name: fp32 score tensor}`` for the targeted weights.

    ``batches`` yields collated batches (bookkeeping keys such as ``langs`` are ignored);
    ``max_batches`` caps how many are used. ``lang`` only seeds ``random``. ``stats``, when given, receives
    ``batches`` (used) and ``skipped_nonfinite`` (batches whose loss was NaN/inf and did not count).
    """
    if scorer not in SCORERS:
        raise ConfigError(f"unknown scorer {scorer!r}; choose one of {', '.join(SCORERS)}")
    params = select_targets(model, targets)
    if scorer == "magnitude":
        return {n: p.detach().abs().float().cpu() for n, p in params.items()}
    if scorer == "random":
        gen = torch.Generator().manual_seed(language_seed(seed, lang))
        return {n: torch.rand(p.shape, generator=gen) for n, p in params.items()}
    if batches is None:
        raise ConfigError(f"scorer {scorer!r} needs batches of the language's data")

    device = next(model.parameters()).device
    was_training = model.training
    saved_flags = {p: p.requires_grad for p in model.parameters()}
    scores = {n: torch.zeros(p.shape, dtype=torch.float32, device=device) for n, p in params.items()}
    used = skipped = 0
    try:
        model.eval()
        for p in model.parameters():
            p.requires_grad_(False)
        for p in params.values():
            p.requires_grad_(True)
            p.grad = None
        iterator = tqdm(batches, desc=f"score {lang or ''} ({scorer})", total=max_batches,
                        disable=None if progress else True, leave=False)
        for batch in iterator:
            if max_batches is not None and used >= max_batches:
                break
            if not has_inputs(batch):  # every row of it was undecodable (the dataset reported and counted them)
                continue
            _, loss, _ = batch_loss(model, batch, device)
            if not torch.isfinite(loss):
                skipped += 1  # a degenerate batch must not poison every score; counted, not hidden
                continue
            loss.backward()
            with torch.no_grad():
                for name, p in params.items():
                    g = p.grad.float()
                    if scorer == "taylor":
                        scores[name].add_((p.detach().float() * g).abs_())
                    else:
                        scores[name].add_(g.square())
                    p.grad = None
            used += 1
    finally:
        for p, flag in saved_flags.items():
            p.requires_grad_(flag)
            p.grad = None
        model.train(was_training)
    if stats is not None:
        stats.update(batches=used, skipped_nonfinite=skipped)
    if used == 0:
        raise ConfigError(f"no usable batch to score language {lang or '?'} with {scorer!r}"
                          + (f" ({skipped} had a non-finite loss)" if skipped else ""))
    return {n: s.cpu() for n, s in scores.items()}

"""Scores → boolean masks, and the one-shot mask search over all languages.

``sparsity`` is the fraction of targeted weights *removed*. Scopes:
  per-tensor  every tensor keeps exactly round((1 - s) · numel) weights (LaSS)
  global      one threshold over all targeted weights (PARP)
Patterns:
  unstructured   any weights
  n:m            n kept in every group of m consecutive weights along the input
                 dimension (2:4 is what sparse tensor cores run)
"""
from __future__ import annotations

from typing import Iterable, Mapping

import torch
import torch.nn as nn
from tqdm.auto import tqdm

from lasp.errors import ConfigError
from lasp.masks.language_masks import LanguageMasks
from lasp.search.config import check_sparsity, parse_pattern
from lasp.search.scoring import score_language

SCOPES = ("per-tensor", "global")


def _keep_top(flat: torch.Tensor, keep: int) -> torch.Tensor:
    """Bool mask keeping exactly ``keep`` largest entries (ties broken by position, deterministically)."""
    mask = torch.zeros(flat.numel(), dtype=torch.bool)
    if keep > 0:
        # stable descending sort: equal scores keep the earlier weight
        order = torch.sort(flat, descending=True, stable=True).indices
        mask[order[:keep]] = True
    return mask


def _nm_mask(score: torch.Tensor, n: int, m: int, name: str) -> torch.Tensor:
    if score.shape[-1] % m:
        raise ConfigError(f"{name}: input dimension {score.shape[-1]} is not a multiple of {m} for pattern {n}:{m}")
    groups = score.reshape(-1, m)
    top = groups.topk(n, dim=1).indices
    mask = torch.zeros_like(groups, dtype=torch.bool).scatter_(1, top, True)
    return mask.reshape(score.shape)


def prune(
    scores: Mapping[str, torch.Tensor],
    sparsity: float | None,
    scope: str = "per-tensor",
    pattern: str = "unstructured",
) -> dict[str, torch.Tensor]:
    """Keep the highest-scoring weights: ``{name: bool mask}`` of the same shapes."""
    if scope not in SCOPES:
        raise ConfigError(f"unknown scope {scope!r}; choose one of {', '.join(SCOPES)}")
    nm = parse_pattern(pattern)
    sparsity = check_sparsity(sparsity, nm)
    scores = {n: s.detach().float().cpu() for n, s in scores.items()}
    if nm is not None:  # N:M fixes the count inside every group; scope does not apply
        return {n: _nm_mask(s, *nm, name=n) for n, s in scores.items()}
    if scope == "per-tensor":
        return {
            n: _keep_top(s.flatten(), s.numel() - round(sparsity * s.numel())).reshape(s.shape)
            for n, s in scores.items()
        }
    flat = torch.cat([s.flatten() for s in scores.values()])
    keep = flat.numel() - round(sparsity * flat.numel())
    mask = _keep_top(flat, keep)
    out, offset = {}, 0
    for n, s in scores.items():
        out[n] = mask[offset:offset + s.numel()].reshape(s.shape)
        offset += s.numel()
    return out


def make_language_masks(
    model: nn.Module,
    batches_by_lang: Mapping[str, Iterable | None],
    scorer: str = "taylor",
    sparsity: float | Mapping[str, float] | None = 0.5,
    scope: str = "per-tensor",
    pattern: str = "unstructured",
    max_batches: int | None = None,
    targets=None,
    seed: int = 0,
    base_model: str | None = None,
    data: str | None = None,
    progress: bool = True,
) -> LanguageMasks:
    """Score every language in turn on the shared model and prune each to a mask.

    Languages are scored one after another, so memory holds one language's
    scores at a time. ``sparsity`` may be a per-language mapping.
    """
    dense = {}
    per_lang = {}
    skipped = {}
    languages = list(batches_by_lang)
    for lang in tqdm(languages, desc="languages", disable=None if progress else True):
        s = sparsity.get(lang) if isinstance(sparsity, Mapping) else sparsity
        stats: dict = {}
        scores = score_language(model, batches_by_lang[lang], scorer=scorer, targets=targets,
                                max_batches=max_batches, seed=seed, lang=lang, progress=progress, stats=stats)
        skipped[lang] = stats.get("skipped_nonfinite", 0)
        dense[lang] = prune(scores, s, scope=scope, pattern=pattern)
        per_lang[lang] = s
        del scores
    return LanguageMasks.from_dense(
        dense, base_model=base_model, scorer=scorer, data=data, sparsity=per_lang,
        extra={"scope": scope, "pattern": pattern, "batches_per_language": max_batches, "seed": seed,
               "targets": list(targets) if targets else "default", "skipped_nonfinite": skipped},
    )

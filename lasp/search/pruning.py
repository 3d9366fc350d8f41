"""Scores → boolean masks, and the one-shot mask search over all languages.

``sparsity`` is the fraction of targeted weights *removed*. Scopes:
  per-tensor  every tensor keeps exactly round((1 - s) · numel) weights (LaSS)
  global      one threshold over all targeted weights (PARP)
Patterns:
  unstructured   any weights
  n:m            n kept in every group of m consecutive weights along the input
                 dimension (2:4 is what sparse tensor cores run)
A layer profile (``layer_sparsity``) gives each encoder layer its own sparsity; the scope then applies within
each layer.
"""
from __future__ import annotations

from typing import Iterable, Mapping

import torch
import torch.nn as nn
from tqdm.auto import tqdm

from lasp.errors import ConfigError
from lasp.masks.language_masks import LanguageMasks
from lasp.masks.targets import layer_index
from lasp.search.config import check_sparsity, depth_profile, parse_pattern
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
    layer_sparsity: list[float] | None = None,
    num_layers: int | None = None,
) -> dict[str, torch.Tensor]:
    """Keep the highest-scoring weights: ``{name: bool mask}`` of the same shapes.

    ``layer_sparsity``: a profile over the ``num_layers`` encoder layers (:func:`depth_profile`; default: as many
    layers as the names show); each layer's tensors are pruned to its value, other tensors to ``sparsity``.
    """
    if scope not in SCOPES:
        raise ConfigError(f"unknown scope {scope!r}; choose one of {', '.join(SCOPES)}")
    if layer_sparsity:
        layers = {n: layer_index(n) for n in scores}
        found = [i for i in layers.values() if i is not None]
        per_layer = depth_profile(layer_sparsity, num_layers or (max(found) + 1 if found else 1))
        groups: dict[int | None, dict[str, torch.Tensor]] = {}
        for n, s in scores.items():
            groups.setdefault(layers[n], {})[n] = s
        out = {}
        for layer, group in groups.items():
            out.update(prune(group, sparsity if layer is None else per_layer[layer], scope, pattern))
        return {n: out[n] for n in scores}
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
    layer_sparsity: list[float] | None = None,
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
        dense[lang] = prune(scores, s, scope=scope, pattern=pattern, layer_sparsity=layer_sparsity,
                            num_layers=getattr(getattr(model, "config", None), "num_hidden_layers", None))
        per_lang[lang] = s
        del scores
    return LanguageMasks.from_dense(
        dense, base_model=base_model, scorer=scorer, data=data, sparsity=per_lang,
        extra={"scope": scope, "pattern": pattern, "layer_sparsity": list(layer_sparsity) if layer_sparsity else None,
               "batches_per_language": max_batches, "seed": seed,
               "targets": list(targets) if targets else "default", "skipped_nonfinite": skipped},
    )

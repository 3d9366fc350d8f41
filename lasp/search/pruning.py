"""Scores → boolean masks, and the one-shot mask search over all languages.

``sparsity`` is the fraction of targeted weights *removed*. Scopes:
  per-tensor  every tensor keeps exactly round((1 - s) · numel) weights (LaSS)
  global      one threshold over all targeted weights (PARP)
Patterns:
  unstructured   any weights
  n:m            n kept in every group of m consecutive weights along the input
                 dimension (2:4 is what sparse tensor cores run)

Selecting the top scores never sorts or concatenates them: a radix select over the scores' order-preserving
integer keys (two passes of 65536-bin histograms, one tensor at a time) finds the threshold, so pruning XLSR-53's
302 M scores in one global scope needs the boolean masks and a few temporaries of the largest tensor, not a sorted
copy with int64 indices (≈ 5 GB). Ties at the threshold keep the earlier weight (parameter order, then row-major
position), as a stable descending sort would. Scores stay on their device; each language's masks are bit-packed
as soon as they are made, so a search holds one language's boolean masks at a time.

A layer profile (``layer_sparsity``) gives each encoder layer its own sparsity; the scope then applies within
each layer.
"""
from __future__ import annotations

import sys
from typing import Iterable, Mapping

import torch
import torch.nn as nn
from tqdm.auto import tqdm

from lasp.errors import ConfigError
from lasp.masks.bits import pack_bits
from lasp.masks.language_masks import LanguageMasks
from lasp.masks.targets import layer_index
from lasp.search.config import check_sparsity, depth_profile, parse_pattern
from lasp.search.scoring import score_language

SCOPES = ("per-tensor", "global")


def _signed_keys(score: torch.Tensor) -> torch.Tensor:
    """int32 keys that compare like float32 scores of any sign (-0.0 equal to 0.0)."""
    bits = score.view(torch.int32)
    key = bits ^ ((bits >> 31) & 0x7FFFFFFF)  # negative floats order in reverse: flip all but the sign bit
    return key + (key < 0)  # -0.0 (key -1) joins 0.0 (key 0)


def _halves(score: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """The upper and lower 16 bits of every float32 as views (no copy); for a non-negative float the pair
    orders like the float itself."""
    pairs = score.view(torch.int16).view(-1, 2)
    return (pairs[:, 1], pairs[:, 0]) if sys.byteorder == "little" else (pairs[:, 0], pairs[:, 1])


def _upper_digits(score: torch.Tensor, signed: bool) -> torch.Tensor:
    if signed:
        return ((_signed_keys(score) >> 16) + 32768).flatten()
    return _halves(score)[0] & 0x7FFF  # the sign bit is set only on -0.0: clearing it makes -0.0 equal 0.0


def _lower_digits(score: torch.Tensor, signed: bool, upper: int) -> torch.Tensor:
    if signed:
        key = _signed_keys(score).flatten()
        return key[(key >> 16) == upper - 32768] & 0xFFFF
    high, low = _halves(score)
    # scores outside the chosen upper bin go to an extra bin 65536, which the caller drops (cheaper than selecting)
    return torch.where((high & 0x7FFF) == upper, low.to(torch.int32) & 0xFFFF, 65536)


def _top_digit(hist: torch.Tensor, wanted: int) -> tuple[int, int]:
    """(digit, count above it): the highest digit whose cumulative count from the top reaches ``wanted``."""
    top_down = hist.flip(0).cumsum(0)
    i = int(torch.nonzero(top_down >= wanted)[0])
    return 65535 - i, int(top_down[i]) - int(hist[65535 - i])


def _keep_top(scores: list[torch.Tensor], keep: int) -> list[torch.Tensor]:
    """Bool masks keeping exactly ``keep`` largest entries over all of ``scores`` (ties: the earlier entry).

    A radix select: a 65536-bin histogram of every score's upper 16 bits picks the threshold's upper half, a
    second of the lower 16 bits of the scores in that bin its lower half; then one comparison per score.
    """
    total = sum(s.numel() for s in scores)
    if keep <= 0:
        return [torch.zeros(s.shape, dtype=torch.bool, device=s.device) for s in scores]
    if keep >= total:
        return [torch.ones(s.shape, dtype=torch.bool, device=s.device) for s in scores]
    scores = [s.detach().float().contiguous() for s in scores]
    lowest = [float(s.min()) for s in scores]  # NaN propagates through min
    if any(v != v for v in lowest):
        raise ConfigError("scores contain NaN; a score must be a number for every weight")
    signed = min(lowest) < 0
    hist = sum(torch.bincount(_upper_digits(s, signed), minlength=65536).cpu() for s in scores)
    upper, above = _top_digit(hist, keep)
    hist = sum(torch.bincount(_lower_digits(s, signed, upper), minlength=65537)[:65536].cpu() for s in scores)
    lower, more = _top_digit(hist, keep - above)
    ties = keep - above - more  # scores equal to the threshold that are kept, the earliest first
    if signed:
        threshold = (upper - 32768) * 65536 + lower
        compare = _signed_keys
    else:
        threshold = torch.tensor([upper * 65536 + lower], dtype=torch.int32).view(torch.float32).item()
        compare = lambda s: s  # noqa: E731  (floats compare as floats: -0.0 == 0.0)
    out = []
    for s in scores:
        key = compare(s)
        mask = key > threshold
        if ties > 0:
            equal = (key == threshold).flatten()
            n = int(equal.sum())
            if n <= ties:
                mask |= equal.reshape(mask.shape)
            else:
                mask.view(-1)[torch.nonzero(equal).flatten()[:ties]] = True
            ties -= min(n, ties)
        out.append(mask)
    return out


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
    if nm is not None:  # N:M fixes the count inside every group; scope does not apply
        return {n: _nm_mask(s.detach().float(), *nm, name=n) for n, s in scores.items()}
    if scope == "per-tensor":
        return {n: _keep_top([s], s.numel() - round(sparsity * s.numel()))[0] for n, s in scores.items()}
    total = sum(s.numel() for s in scores.values())
    return dict(zip(scores, _keep_top(list(scores.values()), total - round(sparsity * total))))


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
    packed = {}
    shapes = {}
    per_lang = {}
    skipped = {}
    languages = list(batches_by_lang)
    for lang in tqdm(languages, desc="languages", disable=None if progress else True):
        s = sparsity.get(lang) if isinstance(sparsity, Mapping) else sparsity
        stats: dict = {}
        scores = score_language(model, batches_by_lang[lang], scorer=scorer, targets=targets,
                                max_batches=max_batches, seed=seed, lang=lang, progress=progress, stats=stats)
        skipped[lang] = stats.get("skipped_nonfinite", 0)
        shapes = {n: tuple(t.shape) for n, t in scores.items()}
        packed[lang] = pack_masks(prune(scores, s, scope=scope, pattern=pattern, layer_sparsity=layer_sparsity,
                                        num_layers=getattr(getattr(model, "config", None), "num_hidden_layers", None)))
        per_lang[lang] = s
        del scores
    return LanguageMasks.from_packed(
        packed, shapes, base_model=base_model, scorer=scorer, data=data, sparsity=per_lang,
        extra={"scope": scope, "pattern": pattern, "layer_sparsity": list(layer_sparsity) if layer_sparsity else None,
               "batches_per_language": max_batches, "seed": seed,
               "targets": list(targets) if targets else "default", "skipped_nonfinite": skipped},
    )


def pack_masks(masks: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """One language's boolean masks, bit-packed on the CPU one tensor at a time."""
    return {n: pack_bits(m.to("cpu", torch.bool).contiguous()) for n, m in masks.items()}

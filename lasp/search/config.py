"""The ``masks`` section of a recipe: how each language's sub-network is found, and the checks of its values.

The search package owns this section so that it takes its own settings without importing the recipe loader.
:func:`parse_pattern` and :func:`check_sparsity` are the one place a pattern or a sparsity is judged: the recipe
loader (through :meth:`MaskConfig.check`) and :func:`lasp.search.pruning.prune` both call them.
"""
from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Literal

from lasp.errors import ConfigError


def parse_pattern(pattern: str, name: str = "pattern") -> tuple[int, int] | None:
    """``None`` for unstructured, ``(n, m)`` for ``"n:m"``; ``name``: how the error names the value."""
    if pattern == "unstructured":
        return None
    match = re.fullmatch(r"(\d+):(\d+)", str(pattern or ""))
    if not match or not 0 < int(match.group(1)) < int(match.group(2)):
        raise ConfigError(f"{name} must be 'unstructured' or n:m with 0 < n < m (e.g. 2:4), got {pattern!r}")
    return int(match.group(1)), int(match.group(2))


def check_sparsity(sparsity: float | None, nm: tuple[int, int] | None, name: str = "sparsity") -> float:
    """The fraction of weights pruned: ``sparsity`` in [0, 1), or the one an n:m pattern implies (``None`` takes it;
    another value contradicts it)."""
    if nm is not None:
        implied = 1.0 - nm[0] / nm[1]
        if sparsity is not None and abs(sparsity - implied) > 1e-6:
            raise ConfigError(f"{name} {sparsity:g} contradicts pattern {nm[0]}:{nm[1]}, which keeps {nm[0]} of "
                              f"{nm[1]} weights, i.e. sparsity {implied:g} (set it to {implied:g})")
        return implied
    if sparsity is None or not 0.0 <= float(sparsity) < 1.0:
        raise ConfigError(f"{name} must be in [0, 1), got {sparsity!r}")
    return float(sparsity)


@dataclass
class MaskConfig:
    """How each language's mask is searched: method, scorer, sparsity, scope, N:M pattern, targets."""

    dir: str | None = field(default=None, metadata={
        "help": "mask set folder; searched and written there when it holds no mask set yet"})
    method: Literal["oneshot", "imp", "lass"] = field(default="oneshot", metadata={
        "help": "oneshot: score once and prune; imp: iterative pruning with rewinding (sparse sharing); "
                "lass: adapt the shared model to each language, then prune (LaSS)"})
    scorer: Literal["magnitude", "taylor", "fisher", "random"] = field(default="taylor", metadata={
        "help": "importance score: magnitude |w|, taylor |w*g|, fisher g^2, or random"})
    sparsity: float = field(default=0.5, metadata={
        "help": "fraction in [0, 1) of each targeted tensor (or of all targets, scope=global) pruned"})
    scope: Literal["per-tensor", "global"] = field(default="per-tensor", metadata={
        "help": "per-tensor: prune each tensor to the sparsity; global: one threshold over all targets"})
    pattern: str = field(default="unstructured", metadata={
        "help": "unstructured, or N:M such as 2:4 (keep N of every M weights); quoting is optional"})
    layer_sparsity: list[float] | None = field(default=None, metadata={
        "help": "sparsity per encoder layer, a profile over depth: one value per layer, or fewer, spread evenly "
                "from the first layer to the last and interpolated linearly in between (e.g. [0.7, 0.3, 0.7]: "
                "denser sharing in the middle, language-specific early and late layers); other targets keep "
                "masks.sparsity; oneshot and unstructured only; null = masks.sparsity in every layer"})
    max_batches: int = field(default=8, metadata={"help": "batches per language used for scoring"})
    targets: list[str] | None = field(default=None, metadata={
        "help": "regexes over parameter names to mask; null = the encoder layers' Linear weights"})
    imp_rounds: int = field(default=3, metadata={
        "help": "imp only: rounds of (train, prune, rewind to the shared weights)"})
    imp_steps: int = field(default=50, metadata={"help": "imp only: training steps on the language per round"})
    imp_lr: float = field(default=5e-4, metadata={"help": "imp only: learning rate of those training steps"})
    reuse: bool = field(default=False, metadata={
        "help": "use the mask set in dir even if what made it (scorer, sparsity, data, ...) differs from this "
                "recipe"})
    min_utterances: int = field(default=20, metadata={
        "help": "a language needs at least this many training rows to get a mask searched for it"})
    lass_steps: int = field(default=50, metadata={
        "help": "lass only: Adam steps adapting the shared model to each language before pruning"})
    lass_lr: float = field(default=5e-4, metadata={"help": "lass only: learning rate of those adaptation steps"})
    lass_criterion: Literal["magnitude", "change"] = field(default="change", metadata={
        "help": "lass only: prune the smallest adapted weights |W_lang| (magnitude) or the least changed "
                "|W_lang - W_shared| (change)"})

    def check(self) -> None:
        """Value checks the types cannot express; a ConfigError names the recipe key (``masks.<key>``)."""
        check_sparsity(self.sparsity, parse_pattern(self.pattern, _key("pattern")), _key("sparsity"))
        for key in ("max_batches", "imp_rounds", "imp_steps", "lass_steps"):
            if getattr(self, key) < 1:
                raise ConfigError(f"{_key(key)} must be >= 1")
        for key in ("imp_lr", "lass_lr"):
            if getattr(self, key) <= 0:
                raise ConfigError(f"{_key(key)} must be > 0, got {getattr(self, key)}")
        if self.layer_sparsity is not None:
            if not self.layer_sparsity:
                raise ConfigError(f"{_key('layer_sparsity')} is empty; give at least one sparsity, or null")
            for i, value in enumerate(self.layer_sparsity):
                check_sparsity(value, None, f"{_key('layer_sparsity')}[{i}]")
            if self.method != "oneshot" or self.pattern != "unstructured":
                raise ConfigError(f"{_key('layer_sparsity')} applies to masks.method oneshot with pattern "
                                  f"unstructured, not {self.method} with {self.pattern}")
        if self.min_utterances < 0:
            raise ConfigError(f"{_key('min_utterances')} must be >= 0, got {self.min_utterances}")


def depth_profile(profile: list[float], num_layers: int) -> list[float]:
    """The sparsity of each of ``num_layers`` layers: ``profile`` itself when it has one value per layer, else its
    values spread evenly from the first layer to the last and interpolated linearly in between."""
    if len(profile) == num_layers or len(profile) == 1:
        return [float(v) for v in profile] * (num_layers if len(profile) == 1 else 1)
    out = []
    for layer in range(num_layers):
        x = layer / (num_layers - 1) * (len(profile) - 1) if num_layers > 1 else 0.0
        lo = min(int(x), len(profile) - 2)
        out.append(float(profile[lo] + (profile[lo + 1] - profile[lo]) * (x - lo)))
    return out


def _key(name: str) -> str:
    return f"key 'masks.{name}'"

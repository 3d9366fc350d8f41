"""Language-balanced batch sampling, as in XLSR: p(l) ∝ (n_l / N)^α.

Each step draws one language with these probabilities and takes that language's next batch, so by default every
batch is single-language (what a language-masked model needs). Within a language, an "epoch" is a seeded
shuffle of its utterances, grouped into length buckets so a batch pads little, cut into batches by count and/or
padded seconds, then shuffled. The stream is a pure function of (seed, step):

* the language at step t comes from a generator seeded with (seed, t // 1024), so it needs no carried RNG state;
* language l's k-th epoch is rebuilt from (seed, l, k) whenever it is needed.

``state_dict()`` is therefore just the step count, and ``load_state_dict()`` replays the cheap language draws to
put every cursor back, so a resumed run sees exactly the batches an uninterrupted one would have seen.

Distributed (torchrun): all ranks draw the same language at every step and take consecutive batches of it, rank r
the r-th. Ranks thus get distinct batches, always of the same language (the masked model's active sub-network
agrees across DDP replicas), and stay in step because the stream is infinite.
"""
from __future__ import annotations

import zlib
from typing import Iterator, Mapping, Sequence

import numpy as np

from lasp.errors import ConfigError

_BLOCK = 1024  # language draws per generator seed
_BUCKET_BATCHES = 50  # a length bucket holds about this many batches' worth of utterances


def language_probabilities(counts: Mapping[str, float], alpha: float = 0.5) -> dict[str, float]:
    """p(l) = (n_l/N)^α / Σ_k (n_k/N)^α; α=1 keeps the natural distribution, α→0 makes it uniform."""
    if not counts:
        raise ConfigError("language_probabilities: no languages")
    if alpha < 0:
        raise ConfigError(f"language_probabilities: alpha must be >= 0, got {alpha}")
    bad = [lang for lang, n in counts.items() if not n > 0]
    if bad:
        raise ConfigError(f"language_probabilities: language(s) {', '.join(map(str, bad))} have no data")
    total = float(sum(counts.values()))
    weights = {lang: (n / total) ** alpha for lang, n in counts.items()}
    norm = sum(weights.values())
    return {lang: w / norm for lang, w in weights.items()}


def _lang_key(lang: str) -> int:
    return zlib.crc32(lang.encode("utf-8"))


def make_batches(
    indices: Sequence[int],
    durations: Sequence[float],
    rng: np.random.Generator,
    *,
    batch_size: int | None,
    max_batch_seconds: float | None,
    bucket: bool = True,
) -> list[list[int]]:
    """One shuffled pass over ``indices`` cut into batches (length-bucketed unless ``bucket`` is False)."""
    order = np.asarray(indices, dtype=np.int64)[rng.permutation(len(indices))]
    per_batch = batch_size or max(1, int(max_batch_seconds / max(np.median([durations[i] for i in order]), 1e-3)))
    chunk = per_batch * _BUCKET_BATCHES
    batches: list[list[int]] = []
    for start in range(0, len(order), chunk):
        part = order[start:start + chunk]
        if bucket:
            part = part[np.argsort([durations[i] for i in part], kind="stable")]
        batches.extend(_cut(part.tolist(), durations, batch_size, max_batch_seconds))
    return [batches[i] for i in rng.permutation(len(batches))]


def _cut(order: list[int], durations, batch_size, max_batch_seconds) -> list[list[int]]:
    """Consecutive batches; seconds are counted padded (longest × count), which bounds activation memory."""
    batches, current, longest = [], [], 0.0
    for i in order:
        d = float(durations[i])
        grown = max(longest, d)
        full = (batch_size is not None and len(current) >= batch_size) or (
            max_batch_seconds is not None and current and grown * (len(current) + 1) > max_batch_seconds)
        if full:
            batches.append(current)
            current, grown = [], d
        current.append(i)
        longest = grown
    if current:
        batches.append(current)
    return batches


class LanguageBatchSampler:
    """Infinite, deterministic stream of index batches; see the module docstring.

    ``langs[i]`` and ``durations[i]`` describe dataset item i. Batches hold ``batch_size`` items and/or at most
    ``max_batch_seconds`` of padded audio. Language weights use total seconds per language (XLSR's "hours"), or
    utterance counts with ``weight_by="utterances"``. ``mixed=True`` fills each batch item by item, drawing the
    language of every item with the same probabilities, and hands the batch out grouped by language.
    """

    def __init__(
        self,
        langs: Sequence[str],
        durations: Sequence[float] | None = None,
        *,
        batch_size: int | None = None,
        max_batch_seconds: float | None = None,
        alpha: float = 0.5,
        mixed: bool = False,
        seed: int = 0,
        rank: int = 0,
        world_size: int = 1,
        weight_by: str = "seconds",
        bucket: bool = True,
    ):
        if batch_size is None and max_batch_seconds is None:
            raise ConfigError("LanguageBatchSampler: give batch_size and/or max_batch_seconds")
        if batch_size is not None and batch_size < 1:
            raise ConfigError(f"LanguageBatchSampler: batch_size must be >= 1, got {batch_size}")
        if max_batch_seconds is not None and max_batch_seconds <= 0:
            raise ConfigError(f"LanguageBatchSampler: max_batch_seconds must be > 0, got {max_batch_seconds}")
        if not 0 <= rank < world_size:
            raise ConfigError(f"LanguageBatchSampler: rank {rank} is outside world_size {world_size}")
        if weight_by not in ("seconds", "utterances"):
            raise ConfigError(f"LanguageBatchSampler: weight_by must be 'seconds' or 'utterances', got {weight_by!r}")
        if durations is None:
            if max_batch_seconds is not None or weight_by == "seconds":
                need = "max_batch_seconds" if max_batch_seconds is not None else "weight_by='seconds'"
                raise ConfigError(f"LanguageBatchSampler: {need} needs durations (seconds per item); pass them, "
                                  "or use batch_size with weight_by='utterances'")
            durations = [1.0] * len(langs)  # unused: batches are cut by count, languages weighted by count
        if len(durations) != len(langs):
            raise ConfigError(f"LanguageBatchSampler: {len(langs)} languages but {len(durations)} durations")
        self.durations = [float(d) for d in durations]
        self.item_langs = list(langs)
        self.by_lang: dict[str, list[int]] = {}
        for i, lang in enumerate(langs):
            self.by_lang.setdefault(lang, []).append(i)
        if not self.by_lang:
            raise ConfigError("LanguageBatchSampler: the dataset is empty")
        self.languages = sorted(self.by_lang)
        sizes = {lang: (sum(self.durations[i] for i in idx) if weight_by == "seconds" else len(idx))
                 for lang, idx in self.by_lang.items()}
        self.probabilities = language_probabilities({lang: sizes[lang] for lang in self.languages}, alpha)
        self._p = np.array([self.probabilities[lang] for lang in self.languages])
        self.batch_size, self.max_batch_seconds = batch_size, max_batch_seconds
        self.alpha, self.mixed, self.seed, self.bucket = alpha, mixed, int(seed), bucket
        self.rank, self.world_size, self.weight_by = rank, world_size, weight_by
        self._reset()

    # -- the stream ---------------------------------------------------------------------------------------
    def _reset(self) -> None:
        self.step = 0
        # per language: [epoch, position, batches or item order of that epoch]
        self._cursor: dict[str, list] = {lang: [0, 0, None] for lang in self.languages}
        self._block: tuple[int, np.ndarray] | None = None
        self._mixed_items = 0  # item-level language draws consumed (mixed mode)
        self._mixed_block: tuple[int, np.ndarray] | None = None

    def _draws(self, step: int) -> np.ndarray:
        """Language ids drawn for the block of steps (or, mixed, item draws) holding ``step``."""
        block = step // _BLOCK
        if self._block is None or self._block[0] != block:
            rng = np.random.default_rng([self.seed, 0x4C41, block])
            self._block = (block, rng.choice(len(self.languages), size=_BLOCK, p=self._p))
        return self._block[1]

    def _language_at(self, step: int) -> str:
        return self.languages[int(self._draws(step)[step % _BLOCK])]

    def _epoch(self, lang: str, epoch: int) -> list:
        rng = np.random.default_rng([self.seed, _lang_key(lang), epoch])
        idx = self.by_lang[lang]
        if self.mixed:
            return np.asarray(idx)[rng.permutation(len(idx))].tolist()
        return make_batches(idx, self.durations, rng, batch_size=self.batch_size,
                            max_batch_seconds=self.max_batch_seconds, bucket=self.bucket)

    def _current(self, lang: str) -> list:
        """``lang``'s cursor, on its next unit: an exhausted epoch rolls over to the next one here, and only here."""
        cur = self._cursor[lang]
        if cur[2] is None:
            cur[2] = self._epoch(lang, cur[0])
        if cur[1] >= len(cur[2]):
            cur[0], cur[1], cur[2] = cur[0] + 1, 0, self._epoch(lang, cur[0] + 1)
        return cur

    def _take(self, lang: str) -> object:
        """The next unit (a batch, or an item when mixed) of ``lang``'s endless sequence of epochs."""
        cur = self._current(lang)
        cur[1] += 1
        return cur[2][cur[1] - 1]

    def _next_global(self) -> list[list[int]]:
        """The world_size batches of the current step (one per rank)."""
        if self.mixed:
            batches = [self._mixed_batch() for _ in range(self.world_size)]
        else:
            lang = self._language_at(self.step)
            batches = [list(self._take(lang)) for _ in range(self.world_size)]
        self.step += 1
        return batches

    def _mixed_batch(self) -> list[int]:
        # Item-level language draws use their own counter so they do not depend on the step's draws.
        batch: list[int] = []
        longest = 0.0
        while True:
            lang = self.languages[int(self._mixed_draw(self._mixed_items))]
            if self.batch_size is not None and len(batch) >= self.batch_size:
                break
            peek = self._peek(lang)
            grown = max(longest, self.durations[peek])
            if self.max_batch_seconds is not None and batch and grown * (len(batch) + 1) > self.max_batch_seconds:
                break
            self._mixed_items += 1
            batch.append(int(self._take(lang)))
            longest = grown
        # grouped by language (first appearance, stable): each masked Linear then runs one plain GEMM per
        # language on a slice, instead of permuting the activations in forward and backward
        first = {}
        for i in batch:
            first.setdefault(self.item_langs[i], len(first))
        return sorted(batch, key=lambda i: first[self.item_langs[i]])

    def _mixed_draw(self, n: int) -> int:
        block = n // _BLOCK
        cache = self._mixed_block
        if cache is None or cache[0] != block:
            rng = np.random.default_rng([self.seed, 0x4D49, block])
            cache = self._mixed_block = (block, rng.choice(len(self.languages), size=_BLOCK, p=self._p))
        return cache[1][n % _BLOCK]

    def _peek(self, lang: str) -> int:
        cur = self._current(lang)
        return int(cur[2][cur[1]])

    def __iter__(self) -> Iterator[list[int]]:
        """Continues from the current state; never ends (the trainer decides how many steps to run)."""
        while True:
            yield self._next_global()[self.rank]

    def next_batch(self) -> list[int]:
        return self._next_global()[self.rank]

    # -- resume -------------------------------------------------------------------------------------------
    def state_dict(self, step: int | None = None) -> dict:
        """The sampler's position: batches yielded so far, or ``step`` (batches the trainer actually consumed,
        which is what to save when a DataLoader prefetches ahead of the training loop)."""
        return {
            "version": 1, "step": self.step if step is None else int(step), "seed": self.seed,
            "world_size": self.world_size, "mixed": self.mixed, "languages": self.languages,
            "alpha": self.alpha, "batch_size": self.batch_size, "max_batch_seconds": self.max_batch_seconds,
        }

    def load_state_dict(self, state: Mapping) -> None:
        """Restore a position saved by :meth:`state_dict` (the settings must match)."""
        for key in ("seed", "world_size", "mixed", "languages", "alpha", "batch_size", "max_batch_seconds"):
            if key in state and state[key] != self.state_dict()[key]:
                raise ConfigError(f"LanguageBatchSampler: saved {key}={state[key]!r} does not match "
                                  f"this sampler's {self.state_dict()[key]!r}")
        self._reset()
        target = int(state["step"])
        if not self.mixed:
            # Only cursor positions matter: count draws per language, then advance each cursor in one go.
            counts = {lang: 0 for lang in self.languages}
            for step in range(target):
                counts[self._language_at(step)] += 1
            for lang, n in counts.items():
                self._advance(lang, n * self.world_size)
            self.step = target
        else:
            while self.step < target:
                self._next_global()

    def _advance(self, lang: str, units: int) -> None:
        while units > 0:
            cur = self._current(lang)
            n = min(units, len(cur[2]) - cur[1])
            cur[1] += n
            units -= n

    # -- one language ---------------------------------------------------------------------------------------
    def language_batches(self, lang: str, n: int | None = None, *, seed: int | None = None) -> list[list[int]]:
        """``n`` batches of ``lang`` alone (all of one shuffled pass when ``n`` is None; cycles if needed).

        The one "batches of one language" helper (mask scoring, IMP, random-mask controls): seeded by
        (seed, language), independent of the stream's position, so every caller gets the same batches.
        """
        if lang not in self.by_lang:
            raise ConfigError(f"language '{lang}' has no utterances (have: {', '.join(self.languages)})")
        base = self.seed if seed is None else int(seed)
        out: list[list[int]] = []
        epoch = 0
        while True:
            rng = np.random.default_rng([base, _lang_key(lang), 0x5343, epoch])
            batches = make_batches(self.by_lang[lang], self.durations, rng, batch_size=self.batch_size,
                                   max_batch_seconds=self.max_batch_seconds, bucket=self.bucket)
            if n is None:
                return batches
            out.extend(batches[: n - len(out)])
            if len(out) >= n:
                return out
            epoch += 1


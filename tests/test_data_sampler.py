"""Language-balanced sampler: frequencies, single-language batches, resume, ranks, seconds budget."""
from __future__ import annotations

import itertools
from collections import Counter

import numpy as np
import pytest

from lasp.data.sampler import LanguageBatchSampler, language_probabilities
from lasp.errors import ConfigError


def corpus(sizes=(("es", 600), ("de", 150), ("sw", 20)), seed=0):
    rng = np.random.default_rng(seed)
    langs = [lang for lang, n in sizes for _ in range(n)]
    order = rng.permutation(len(langs))  # interleave languages in the dataset
    langs = [langs[i] for i in order]
    durations = rng.uniform(1.0, 6.0, size=len(langs)).round(3).tolist()
    return langs, durations


def test_language_probabilities_formula():
    p = language_probabilities({"a": 900, "b": 100}, alpha=0.5)
    assert p["a"] == pytest.approx(0.9**0.5 / (0.9**0.5 + 0.1**0.5))
    assert language_probabilities({"a": 900, "b": 100}, alpha=1.0)["a"] == pytest.approx(0.9)
    assert language_probabilities({"a": 900, "b": 100}, alpha=0.0)["a"] == pytest.approx(0.5)
    with pytest.raises(ConfigError, match="language\\(s\\) b have no data"):
        language_probabilities({"a": 1, "b": 0})


def test_frequencies_match_temperature_sampling_and_batches_are_single_language():
    langs, durations = corpus()
    sampler = LanguageBatchSampler(langs, durations, batch_size=4, alpha=0.5, seed=3)
    seconds = {l: sum(d for x, d in zip(langs, durations) if x == l) for l in set(langs)}
    total = sum(seconds.values())
    expected = {l: (s / total) ** 0.5 for l, s in seconds.items()}
    norm = sum(expected.values())
    n = 20000
    counts = Counter()
    for batch in itertools.islice(iter(sampler), n):
        batch_langs = {langs[i] for i in batch}
        assert len(batch_langs) == 1 and 1 <= len(batch) <= 4
        counts[batch_langs.pop()] += 1
    # Tolerance: 0.01 absolute, about 3 binomial standard deviations at n = 20000.
    for lang, e in expected.items():
        assert abs(counts[lang] / n - e / norm) < 0.01, (lang, counts[lang] / n, e / norm)
    # the low-resource language is up-sampled relative to its share of the data
    assert counts["sw"] / n > 2 * seconds["sw"] / total


def test_every_utterance_of_a_language_is_used_once_per_epoch():
    langs, durations = corpus((("es", 50), ("de", 30)))
    sampler = LanguageBatchSampler(langs, durations, batch_size=7, seed=0)
    epoch = sampler._epoch("de", 0)
    flat = sorted(i for b in epoch for i in b)
    assert flat == sorted(i for i, l in enumerate(langs) if l == "de")


def test_resume_from_mid_epoch_state_gives_identical_batches():
    langs, durations = corpus()
    for mixed in (False, True):
        kwargs = dict(batch_size=5, seed=11, mixed=mixed)
        a = LanguageBatchSampler(langs, durations, **kwargs)
        it = iter(a)
        head = [next(it) for _ in range(137)]  # sw (20 items) wraps several epochs by now
        state = a.state_dict()
        expected = [next(it) for _ in range(50)]
        b = LanguageBatchSampler(langs, durations, **kwargs)
        b.load_state_dict(state)
        assert [next(iter(b)) for _ in range(50)] == expected
        # a state taken "at step k" (what a trainer saves when a DataLoader prefetches) resumes at k
        c = LanguageBatchSampler(langs, durations, **kwargs)
        c.load_state_dict(a.state_dict(step=100))
        assert list(itertools.islice(iter(c), 37)) == head[100:]
    with pytest.raises(ConfigError, match="seed"):
        LanguageBatchSampler(langs, durations, batch_size=5, seed=12).load_state_dict(state)


def test_same_seed_same_stream_other_seed_other_stream():
    langs, durations = corpus()
    take = lambda s: list(itertools.islice(iter(LanguageBatchSampler(langs, durations, batch_size=4, seed=s)), 30))
    assert take(1) == take(1)
    assert take(1) != take(2)


def test_ranks_get_distinct_batches_of_the_same_language_in_step():
    langs, durations = corpus()
    world = 3
    streams = [list(itertools.islice(iter(LanguageBatchSampler(langs, durations, batch_size=4, seed=5, rank=r,
                                                                world_size=world)), 40)) for r in range(world)]
    for step in range(40):
        batches = [streams[r][step] for r in range(world)]
        step_langs = {langs[i] for b in batches for i in b}
        assert len(step_langs) == 1  # all ranks train the same language (same sub-network under DDP)
        lang = step_langs.pop()
        if lang != "sw":  # sw has 5 batches per epoch; the larger languages never repeat within a step
            flat = [i for b in batches for i in b]
            assert len(flat) == len(set(flat))
    with pytest.raises(ConfigError, match="rank 3 is outside world_size 3"):
        LanguageBatchSampler(langs, durations, batch_size=4, rank=3, world_size=3)


def test_seconds_budget_and_length_bucketing():
    langs, durations = corpus()
    sampler = LanguageBatchSampler(langs, durations, max_batch_seconds=20.0, seed=0)
    batches = list(itertools.islice(iter(sampler), 300))
    for b in batches:
        padded = max(durations[i] for i in b) * len(b)
        assert padded <= 20.0 or len(b) == 1
    # bucketing keeps lengths in a batch close together (unbucketed random batches spread ~3.3 s on average)
    spread = np.mean([max(durations[i] for i in b) - min(durations[i] for i in b) for b in batches if len(b) > 1])
    assert spread < 1.0


def test_mixed_batches_mix_languages():
    langs, durations = corpus()
    sampler = LanguageBatchSampler(langs, durations, batch_size=8, mixed=True, seed=0)
    batches = list(itertools.islice(iter(sampler), 100))
    assert all(len(b) == 8 for b in batches)
    assert sum(len({langs[i] for i in b}) > 1 for b in batches) > 50


def test_mixed_batches_come_grouped_by_language():
    """Each language's items are contiguous, so the masked layers need no permutation of the activations."""
    from lasp.masked.kernels.cast import segments_of

    langs, durations = corpus()
    for world, rank in ((1, 0), (2, 1)):
        sampler = LanguageBatchSampler(langs, durations, max_batch_seconds=30.0, mixed=True, seed=3, rank=rank,
                                       world_size=world)
        for batch in itertools.islice(iter(sampler), 200):
            row_langs = [langs[i] for i in batch]
            assert segments_of(row_langs).order is None, row_langs


def test_language_batches_are_fixed_and_of_one_language():
    langs, durations = corpus()
    sampler = LanguageBatchSampler(langs, durations, batch_size=6, seed=0)
    first = sampler.language_batches("sw", 10)
    assert len(first) == 10 and all(langs[i] == "sw" for b in first for i in b)
    list(itertools.islice(iter(sampler), 25))  # the stream's position does not matter
    assert sampler.language_batches("sw", 10) == first
    assert LanguageBatchSampler(langs, durations, batch_size=6, seed=0).language_batches("sw", 10) == first
    with pytest.raises(ConfigError, match="language 'fr' has no utterances"):
        sampler.language_batches("fr", 2)


def test_weight_by_utterances_needs_no_durations_and_seconds_say_what_is_missing():
    langs = ["sw"] * 9 + ["tr"]
    sampler = LanguageBatchSampler(langs, batch_size=2, weight_by="utterances", alpha=1.0)
    assert sampler.probabilities == {"sw": 0.9, "tr": pytest.approx(0.1)}
    assert all(len(b) <= 2 for b in itertools.islice(iter(sampler), 10))
    with pytest.raises(ConfigError, match="weight_by='seconds' needs durations"):
        LanguageBatchSampler(langs, batch_size=2)
    with pytest.raises(ConfigError, match="max_batch_seconds needs durations"):
        LanguageBatchSampler(langs, max_batch_seconds=5.0, weight_by="utterances")

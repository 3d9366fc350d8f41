"""From a manifest to a mask set: score every language on its own batches and prune.

This is the one-shot search (score → prune) behind ``lasp prune``; the iterative
search with rewinding lives in :mod:`lasp.train.imp`.
"""
from __future__ import annotations

import os
import random
from typing import Iterator, Sequence

from lasp.masks import LanguageMasks
from lasp.models import load_model
from lasp.pruning import make_language_masks


def language_batches(dataset, indices: Sequence[int], collator, batch_size: int, max_batches: int,
                     seed: int = 0) -> Iterator[dict]:
    """Up to ``max_batches`` collated batches drawn from ``indices`` (one language), in a seeded order."""
    order = list(indices)
    random.Random(seed).shuffle(order)
    made = 0
    for start in range(0, len(order), batch_size):
        if made >= max_batches:
            return
        items = [dataset[i] for i in order[start:start + batch_size]]
        items = [item for item in items if item is not None]
        if not items:
            continue
        batch = collator(items)
        if batch is None:
            continue
        made += 1
        yield batch


def prune_from_manifest(
    model: str,
    manifest: str,
    out: str,
    scorer: str = "taylor",
    sparsity: float | None = 0.5,
    scope: str = "per-tensor",
    pattern: str = "unstructured",
    batches: int = 8,
    batch_size: int = 4,
    languages: Sequence[str] | None = None,
    targets=None,
    seed: int = 0,
    on_bad: str = "skip",
    head: str = "auto",
    max_seconds: float = 20.0,
    method: str = "oneshot",
    imp_rounds: int = 3,
    imp_steps: int = 50,
    imp_lr: float = 5e-4,
) -> LanguageMasks:
    """Search every language's mask of ``model`` on ``manifest`` and write the mask set to ``out``.

    ``method="oneshot"`` scores once and prunes; ``method="imp"`` runs iterative magnitude pruning with
    rewinding (``imp_rounds`` rounds of ``imp_steps`` training steps on the language's batches).
    """
    from lasp.errors import ConfigError

    if method not in ("oneshot", "imp"):
        raise ConfigError(f"unknown mask search method {method!r}; choose oneshot or imp")
    from lasp.data.collate import CTCCollator, PretrainCollator
    from lasp.data.dataset import SpeechDataset
    from lasp.data.manifest import read_manifest
    from lasp.data.text import Vocabulary, normalize_text

    if sparsity is None and pattern == "unstructured":
        sparsity = 0.5
    utterances = read_manifest(manifest)
    langs = list(dict.fromkeys(u.lang for u in utterances)) if not languages else list(languages)
    head = "pretraining" if head == "auto" else head
    vocab = None
    if head == "ctc":
        # the dataset normalizes transcripts, so the vocabulary must be built from normalized text
        vocab = Vocabulary.build([normalize_text(u.text, u.lang) for u in utterances])
        net = load_model(model, head="ctc", vocab_size=len(vocab))
        collator = CTCCollator(pad_id=vocab.pad_id)
    else:
        net = load_model(model, head="pretraining")
        collator = PretrainCollator(net.config, seed=seed)
    dataset = SpeechDataset(utterances, vocab=vocab, on_bad=on_bad, max_seconds=max_seconds)
    by_lang: dict[str, list[int]] = {lang: [] for lang in langs}
    for i, lang in enumerate(dataset.langs):
        if lang in by_lang:
            by_lang[lang].append(i)
    for lang, idx in by_lang.items():
        if not idx:
            known = sorted(set(dataset.langs))
            raise_missing(lang, manifest, known)
    if method == "imp":
        from lasp.train.imp import imp_language_masks

        batch_lists = {lang: list(language_batches(dataset, idx, collator, batch_size, batches, seed))
                       for lang, idx in by_lang.items()}
        masks = imp_language_masks(net, batch_lists, sparsity=sparsity, rounds=imp_rounds, steps=imp_steps,
                                   lr=imp_lr, scope=scope, pattern=pattern, targets=targets, seed=seed,
                                   base_model=model, data=os.path.abspath(manifest))
        masks.save(out)
        return masks
    needs_data = scorer in ("taylor", "fisher")
    batch_iters = {
        lang: (language_batches(dataset, idx, collator, batch_size, batches, seed) if needs_data else None)
        for lang, idx in by_lang.items()
    }
    masks = make_language_masks(net, batch_iters, scorer=scorer, sparsity=sparsity, scope=scope, pattern=pattern,
                                max_batches=batches, targets=targets, seed=seed, base_model=model,
                                data=os.path.abspath(manifest))
    masks.save(out)
    return masks


def raise_missing(lang: str, manifest: str, known: list[str]) -> None:
    from lasp.errors import DataError

    raise DataError(f"{manifest}: no usable utterance of language {lang!r}; languages present: {', '.join(known)}")

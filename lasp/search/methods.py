"""Every way to find a mask set, side by side, fed by the same batches.

  oneshot   score each language on its batches (lasp.search.scoring), prune (lasp.search.pruning)
  imp       iterative magnitude pruning with rewinding on the same batches (lasp.search.imp)
  lass      adapt the shared model to each language on the same batches, prune by |W| or |ΔW| (lasp.search.lass)
  random    uniform random masks at masks.sparsity, or matched per tensor to a lasp set (the LaSS control)

``lasp prune`` and the automatic search inside ``pretrain`` / ``finetune`` both call :func:`search_masks`
with a recipe, so one recipe gives one mask set whoever searches it: the model is loaded the same way (seeded,
same head), batches come from the one "batches of one language" helper
(:meth:`lasp.data.sampler.LanguageBatchSampler.language_batches`) through the one collator module, on the same
device.
"""
from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Sequence

import torch

from lasp.data.pipeline import ctc_collator, make_dataset, make_sampler, pretrain_collator, read_split, recipe_loader
from lasp.data.text import Vocabulary, normalize_text
from lasp.device import pick_device
from lasp.errors import ConfigError
from lasp.masks.language_masks import LanguageMasks
from lasp.models.features import feature_normalization
from lasp.models.load import check_head, checkpoint_heads, is_preset, load_model
from lasp.search.imp import imp_language_masks
from lasp.search.lass import lass_language_masks
from lasp.search.pruning import make_language_masks
from lasp.search.scoring import GRADIENT_SCORERS, language_seed

log = logging.getLogger(__name__)
METHODS = ("oneshot", "imp", "lass")


def search_head(init: str, head: str = "auto") -> str:
    """The loss the search scores with. auto: CTC when ``init`` is a checkpoint with a trained CTC head (and its
    vocab.json), else the pre-training loss (needs no transcripts)."""
    if head not in ("auto", "pretraining", "ctc"):
        raise ConfigError(f"unknown scoring head {head!r}; choose auto, pretraining or ctc")
    if head != "auto":
        return head
    if not is_preset(init) and os.path.isdir(init) and "ctc" in checkpoint_heads(init) \
            and (Path(init) / "vocab.json").is_file():
        return "ctc"
    return "pretraining"


def load_search_model(cfg, init: str, head: str, device: torch.device | str = "cpu"):
    """The model masks are searched on: ``init`` with its own trained ``head`` (a preset's random weights are
    drawn from ``cfg.seed``, exactly as a training stage draws them), and the vocabulary of a CTC head."""
    if os.path.isdir(init):
        check_head(init, head)
    vocab = None
    extra = {}
    if head == "ctc":
        if is_preset(init):
            vocab = Vocabulary.build(normalize_text(u.text, u.lang) for u in read_split(cfg.data, "train"))
            extra = {"vocab_size": len(vocab), "pad_token_id": vocab.pad_id}
        elif (Path(init) / "vocab.json").is_file():
            vocab = Vocabulary.load(init)
        else:
            raise ConfigError(f"{init}: scoring through the CTC head needs the vocab.json it was trained with")
    torch.manual_seed(cfg.seed)
    model = load_model(init, head=head, require_head=True, **{**cfg.model.overrides, **extra})
    return model.to(device), vocab


def language_loaders(cfg, init: str, model, vocab, languages: Sequence[str], device) -> dict:
    """``{lang: DataLoader}`` over ``masks.max_batches`` batches of that language of ``data.train``."""
    normalize = feature_normalization(init)
    dataset = make_dataset(cfg.data, read_split(cfg.data, "train", languages), vocab)
    collator = (ctc_collator(model.config, vocab, normalize) if vocab is not None
                else pretrain_collator(cfg, model.config, normalize))
    sampler = make_sampler(cfg.data, dataset, cfg.seed, mixed=False)
    return {lang: recipe_loader(cfg.data, dataset, sampler.language_batches(lang, cfg.masks.max_batches),
                                collator, device) for lang in languages}


def random_masks_like(masks: LanguageMasks, seed: int) -> LanguageMasks:
    """Random masks keeping, per language and tensor, exactly as many weights as ``masks`` does."""
    dense = {}
    for lang in masks.languages:
        gen = torch.Generator().manual_seed(language_seed(seed, lang))
        dense[lang] = {}
        for name, m in masks[lang].items():
            keep = int(m.sum())
            order = torch.randperm(m.numel(), generator=gen)
            flat = torch.zeros(m.numel(), dtype=torch.bool)
            flat[order[:keep]] = True
            dense[lang][name] = flat.view(m.shape)
    return LanguageMasks.from_dense(dense, base_model=masks.metadata.get("base_model"), scorer="random",
                                    data=None, sparsity={l: masks.sparsity(l) for l in masks.languages},
                                    extra={"matched_to": "per-tensor density of a lasp mask set", "seed": seed})


def random_masks(model, languages: Sequence[str], cfg, base_model: str) -> LanguageMasks:
    """Uniform random masks at ``masks.sparsity`` per tensor (no lasp set to match)."""
    return make_language_masks(model, {l: None for l in languages}, scorer="random", sparsity=cfg.masks.sparsity,
                               scope="per-tensor", targets=cfg.masks.targets, seed=cfg.seed,
                               base_model=base_model, progress=False)


def search_masks(cfg, init: str, languages: Sequence[str], *, head: str = "auto",
                 device: torch.device | str = "cpu", progress: bool = True) -> LanguageMasks:
    """The lasp mask set of ``init`` for ``languages`` on ``data.train``, by ``masks.method``.

    The search seeds itself and leaves the caller's torch RNG as it was, so a training stage draws the same
    random numbers whether or not it had to search (a rerun finds the masks already saved).
    """
    device = torch.device(device)
    with torch.random.fork_rng(devices=[device.index or 0] if device.type == "cuda" else []):
        return _search(cfg, init, languages, head, device, progress)


def _search(cfg, init, languages, head, device, progress) -> LanguageMasks:
    m = cfg.masks
    if m.method not in METHODS:
        raise ConfigError(f"key 'masks.method': unknown mask search method {m.method!r}; choose "
                          + ", ".join(METHODS))
    head = search_head(init, head)
    model, vocab = load_search_model(cfg, init, head, device)
    needs_data = m.method in ("imp", "lass") or m.scorer in GRADIENT_SCORERS
    loaders = language_loaders(cfg, init, model, vocab, languages, device) if needs_data else \
        {l: None for l in languages}
    data = os.path.abspath(cfg.data.train) if cfg.data.train else None
    if m.method == "imp":
        masks = imp_language_masks(model, {l: list(loaders[l]) for l in languages}, sparsity=m.sparsity,
                                   rounds=m.imp_rounds, steps=m.imp_steps, lr=m.imp_lr, scope=m.scope,
                                   pattern=m.pattern, targets=m.targets, seed=cfg.seed, base_model=init, data=data,
                                   progress=progress)
    elif m.method == "lass":
        masks = lass_language_masks(model, {l: list(loaders[l]) for l in languages}, sparsity=m.sparsity,
                                    steps=m.lass_steps, lr=m.lass_lr, criterion=m.lass_criterion, scope=m.scope,
                                    pattern=m.pattern, targets=m.targets, seed=cfg.seed, base_model=init, data=data,
                                    progress=progress)
    else:
        masks = make_language_masks(model, loaders, scorer=m.scorer, sparsity=m.sparsity, scope=m.scope,
                                    pattern=m.pattern, max_batches=m.max_batches, targets=m.targets,
                                    seed=cfg.seed, base_model=init, data=data, progress=progress,
                                    layer_sparsity=m.layer_sparsity)
    masks.metadata.update(method=m.method, head=head, batch_size=cfg.data.batch_size,
                          max_batch_seconds=cfg.data.max_batch_seconds, max_seconds=cfg.data.max_seconds)
    if head == "pretraining" and needs_data:
        p = cfg.pretrain
        masks.metadata.update(mask_time_prob=p.mask_time_prob, mask_time_length=p.mask_time_length,
                              num_negatives=p.num_negatives)
    bad = {l: n for l, n in masks.metadata.get("skipped_nonfinite", {}).items() if n}
    if bad:
        log.warning("mask search skipped batches with a non-finite loss: %s",
                    ", ".join(f"{l} {n}" for l, n in bad.items()))
    return masks


def prune_to_dir(cfg, init: str, out: str, *, languages: Sequence[str] | None = None, head: str = "auto",
                 progress: bool = True) -> LanguageMasks:
    """``lasp prune``: search the mask set of ``init`` for ``languages`` (default: every language of data.train,
    or data.languages) by the recipe and write it to ``out``."""
    utts = read_split(cfg.data, "train", languages)  # a language without training data is an error here
    langs = sorted({u.lang for u in utts})
    masks = search_masks(cfg, init, langs, head=head, device=pick_device(cfg.device), progress=progress)
    masks.save(out)
    return masks

"""Iterative magnitude pruning with rewinding (sparse sharing, Sun et al. 2020), per language.

For each language, starting from the shared weights W0 and a full mask:
R rounds of { rewind to W0 ⊙ M; train k steps on the language's batches
through the current sub-network; prune the smallest-magnitude surviving
weights so that the sparsity reaches 1-(1-s)^(r/R) }. The model is rewound to
W0 at the end, so the shared model is unchanged and only the masks remain.
Geometric sparsity steps prune the same fraction of the survivors each round.

Memory: a round's masks live on the parameters' device in the parameters' dtype, made once per round (the
training steps multiply by them, nothing is copied per step); each language's final masks are bit-packed at
once, so only one language is ever held as booleans.
"""
from __future__ import annotations

from typing import Mapping, Sequence

import torch
import torch.nn as nn
from tqdm.auto import tqdm

from lasp.data.collate import has_inputs
from lasp.errors import ConfigError
from lasp.masks.language_masks import LanguageMasks
from lasp.models.objective import batch_loss, mean_loss
from lasp.search.pruning import pack_masks, prune
from lasp.masks.targets import select_targets


def round_sparsity(final: float, r: int, rounds: int) -> float:
    """Sparsity after round r (1-based) of ``rounds`` on the way to ``final``."""
    return 1.0 - (1.0 - final) ** (r / rounds)


def imp_language_masks(
    model: nn.Module,
    batches_by_lang: Mapping[str, Sequence[Mapping]],
    *,
    sparsity: float,
    rounds: int = 3,
    steps: int = 50,
    lr: float = 5e-4,
    scope: str = "per-tensor",
    pattern: str = "unstructured",
    targets=None,
    seed: int = 0,
    base_model: str | None = None,
    data: str | None = None,
    progress: bool = True,
) -> LanguageMasks:
    """Masks for every language by IMP with rewinding; ``batches_by_lang[lang]`` is cycled for the k steps."""
    if rounds < 1 or steps < 1:
        raise ConfigError("IMP needs rounds >= 1 and steps >= 1")
    params = select_targets(model, targets)
    shared = {k: v.detach().clone() for k, v in model.state_dict().items()}
    was_training = model.training
    packed: dict[str, dict[str, torch.Tensor]] = {}
    skipped: dict[str, int] = {}
    trainable = [p for p in model.parameters() if p.requires_grad]
    try:
        for lang in tqdm(list(batches_by_lang), desc="imp languages", disable=None if progress else True):
            batches = [b for b in batches_by_lang[lang] if has_inputs(b)]
            if not batches:
                raise ConfigError(f"IMP: no batches for language {lang!r}")
            mask = {n: torch.ones_like(p, dtype=torch.bool) for n, p in params.items()}
            torch.manual_seed(seed)
            for r in range(1, rounds + 1):
                model.load_state_dict(shared)  # rewind
                keep = {n: mask[n].to(p.dtype) for n, p in params.items()}  # on the device, once per round
                with torch.no_grad():
                    for n, p in params.items():
                        p.mul_(keep[n])
                # Adam without weight decay: zero gradients leave pruned weights at exactly zero
                opt = torch.optim.Adam(trainable, lr=lr)
                model.train()
                for k in range(steps):
                    _, loss, frames = batch_loss(model, batches[k % len(batches)])
                    loss = mean_loss(loss, frames)  # per masked frame / per utterance, whatever the batch size
                    opt.zero_grad(set_to_none=True)
                    if not torch.isfinite(loss):
                        skipped[lang] = skipped.get(lang, 0) + 1  # counted into the mask set's metadata
                        continue
                    loss.backward()
                    for n, p in params.items():
                        if p.grad is not None:
                            p.grad.mul_(keep[n])
                    opt.step()
                    with torch.no_grad():
                        for n, p in params.items():
                            p.mul_(keep[n])
                del keep
                # pruned weights score below every survivor, so they stay pruned
                scores = {n: torch.where(mask[n], p.detach().abs(), torch.full_like(p, -1.0))
                          for n, p in params.items()}
                mask = prune(scores, round_sparsity(sparsity, r, rounds), scope=scope, pattern=pattern)
                del scores
            packed[lang] = pack_masks(mask)
            del mask
    finally:
        model.load_state_dict(shared)
        model.train(was_training)
    return LanguageMasks.from_packed(
        packed, {n: tuple(p.shape) for n, p in params.items()}, base_model=base_model, scorer="magnitude", data=data,
        sparsity={l: sparsity for l in packed},
        extra={"method": "imp", "rounds": rounds, "steps_per_round": steps, "lr": lr, "scope": scope,
               "pattern": pattern, "seed": seed, "targets": list(targets) if targets else "default",
               "skipped_nonfinite": {l: skipped.get(l, 0) for l in packed}},
    )

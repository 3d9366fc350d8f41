"""LaSS-style mask search (Lin et al. 2021, "Learning Language Specific Sub-network for Multilingual MT"), per
language: adapt the shared model to the language, prune, restore.

For each language, starting from the shared weights W0: train every trainable weight for ``steps`` Adam steps
on that language's batches (a short language-specific fine-tune, or an adaptive pre-train when the loss is the
pre-training one), then prune each targeted tensor by

  magnitude   |W_lang|          LaSS's criterion: keep the largest weights of the adapted model
  change      |W_lang − W0|     keep the weights the language moved most

and restore W0 before the next language, so the shared model is unchanged and only the masks remain. With few
adaptation steps |W_lang| is still dominated by |W0|, the same for every language, so ``magnitude`` masks share
as much as one-shot magnitude masks; ``change`` looks only at what the language did to the weights.
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

CRITERIA = ("magnitude", "change")


def lass_language_masks(
    model: nn.Module,
    batches_by_lang: Mapping[str, Sequence[Mapping]],
    *,
    sparsity: float,
    steps: int = 50,
    lr: float = 5e-4,
    criterion: str = "change",
    scope: str = "per-tensor",
    pattern: str = "unstructured",
    targets=None,
    seed: int = 0,
    base_model: str | None = None,
    data: str | None = None,
    progress: bool = True,
) -> LanguageMasks:
    """Masks for every language by adapt-then-prune; ``batches_by_lang[lang]`` is cycled for the ``steps``."""
    if criterion not in CRITERIA:
        raise ConfigError(f"key 'masks.lass_criterion': unknown criterion {criterion!r}; choose "
                          + " or ".join(CRITERIA))
    if steps < 1:
        raise ConfigError(f"key 'masks.lass_steps': must be at least 1, got {steps}")
    if lr <= 0:
        raise ConfigError(f"key 'masks.lass_lr': must be > 0, got {lr}")
    params = select_targets(model, targets)
    shared = {k: v.detach().clone() for k, v in model.state_dict().items()}
    start = {n: p.detach().clone() for n, p in params.items()}
    trainable = [p for p in model.parameters() if p.requires_grad]
    was_training = model.training
    packed: dict[str, dict[str, torch.Tensor]] = {}
    skipped: dict[str, int] = {}
    try:
        for lang in tqdm(list(batches_by_lang), desc="lass languages", disable=None if progress else True):
            batches = [b for b in batches_by_lang[lang] if has_inputs(b)]
            if not batches:
                raise ConfigError(f"masks.method lass: no batches for language {lang!r}")
            model.load_state_dict(shared)  # every language adapts from the same shared weights
            torch.manual_seed(seed)        # same dropout / masking draws for every language: only the data differs
            opt = torch.optim.Adam(trainable, lr=lr)
            model.train()
            for k in range(steps):
                _, loss, frames = batch_loss(model, batches[k % len(batches)])
                loss = mean_loss(loss, frames)
                opt.zero_grad(set_to_none=True)
                if not torch.isfinite(loss):
                    skipped[lang] = skipped.get(lang, 0) + 1  # counted into the mask set's metadata
                    continue
                loss.backward()
                opt.step()
            with torch.no_grad():
                scores = {n: (p.detach() - start[n].to(p.device)).abs() if criterion == "change" else p.detach().abs()
                          for n, p in params.items()}
            packed[lang] = pack_masks(prune(scores, sparsity, scope=scope, pattern=pattern))
            del scores
    finally:
        model.load_state_dict(shared)  # restore the shared model whatever happened
        model.train(was_training)
    return LanguageMasks.from_packed(
        packed, {n: tuple(p.shape) for n, p in params.items()}, base_model=base_model, scorer=f"lass-{criterion}",
        data=data, sparsity={l: sparsity for l in packed},
        extra={"method": "lass", "criterion": criterion, "steps": steps, "lr": lr, "scope": scope,
               "pattern": pattern, "seed": seed, "targets": list(targets) if targets else "default",
               "skipped_nonfinite": {l: skipped.get(l, 0) for l in packed}},
    )

"""`lasp pretrain`: continued wav2vec 2.0 pre-training, shared or language-adaptive.

Loss: contrastive over the masked frames + diversity_weight × codebook
diversity (Wav2Vec2ForPreTraining sums both over masked frames); the summed
gradients of all ranks are divided by the global number of masked frames, as
in wav2vec 2.0. The Gumbel temperature decays from gumbel_max to gumbel_min.
Language-adaptive (system lasp/random): each batch runs through its language's
sub-network and the confined optimizer updates only that sub-network.
Codevector perplexity is logged; a value below perplexity_warn × codebook size
means the quantizer is collapsing, and a warning says so.
"""
from __future__ import annotations

import dataclasses
import warnings
from pathlib import Path

from lasp.config import RecipeConfig, stage_run_dir
from lasp.models import load_model
from lasp.train import distributed as D
from lasp.train.data import (language_batches, make_dataset, make_sampler, pretrain_inputs, read_split,
                             SamplerStream, step_rng)
from lasp.train.loop import Batch, train_loop
from lasp.train.schedule import gumbel_temperature
from lasp.train.setup import export_final, resolve_masks, start_stage
from lasp.train.systems import System, build_system


def pretrain(cfg: RecipeConfig, *, callbacks: dict | None = None, progress: bool = True) -> Path:
    """Run the pre-training stage of ``cfg``; returns ``<run_dir>/final`` (model [+ masks])."""
    p = cfg.pretrain
    info = start_stage(cfg)
    run_dir = stage_run_dir(cfg, "pretrain")
    init = p.init or cfg.model.name
    model = load_model(init, head="pretraining", **cfg.model.overrides)
    model.config.diversity_loss_weight = p.diversity_weight
    model.to(info.device)

    utts = read_split(cfg.data, "train")
    dataset = make_dataset(cfg.data, utts)
    languages = sorted(set(dataset.langs))

    def build(items, step, salt="pretrain"):
        return pretrain_inputs(model, [it["input_values"] for it in items], mask_time_prob=p.mask_time_prob,
                               mask_time_length=p.mask_time_length, num_negatives=p.num_negatives,
                               rng=step_rng(cfg.seed, step, info.rank, salt))

    batch_size = cfg.data.batch_size or 4

    def batches_for(lang: str, count: int) -> list:
        return language_batches(dataset, lang, batch_size, lambda items, b: build(items, b, "masks:" + lang),
                                count, seed=cfg.seed)

    masks = resolve_masks(cfg, p.system, model, languages, run_dir, init, batches_for, info, progress)
    system = build_system(p.system, model, languages, masks=masks)
    sampler = make_sampler(cfg.data, dataset, cfg.seed, info.rank, info.world_size)
    stream = SamplerStream(dataset, sampler, build, device=info.device)
    codebook = model.config.num_codevector_groups * model.config.num_codevectors_per_group
    collapse = {"warned": False}

    def on_step_start(step: int) -> None:
        model.set_gumbel_temperature(gumbel_temperature(step, p.gumbel_max, p.gumbel_min, p.gumbel_decay))

    def loss_fn(sys: System, batch: Batch, step: int):
        out = sys(**batch.inputs)
        frames = float(batch.inputs["mask_time_indices"].sum())
        ppl = float(out.codevector_perplexity.detach())
        if ppl < p.perplexity_warn * codebook and not collapse["warned"] and info.is_main:
            warnings.warn(f"pretrain step {step}: codevector perplexity {ppl:.1f} is below "
                          f"{p.perplexity_warn:g} × {codebook} codevectors — the quantizer is collapsing "
                          "(raise diversity_weight or gumbel_max, or lower the learning rate)", stacklevel=2)
            collapse["warned"] = True
        metrics = {"contrastive": float(out.contrastive_loss.detach()) / max(frames, 1.0),
                   "diversity": float(out.diversity_loss.detach()) / max(frames, 1.0), "ppl": ppl,
                   "ppl_collapsed": float(ppl < p.perplexity_warn * codebook),
                   "gumbel_temp": float(model.quantizer.temperature), "masked_frames": frames}
        return out.loss, frames, metrics

    if info.is_main and progress:
        print(system.summary())
    result = train_loop(system=system, stream=stream, loss_fn=loss_fn, stage=p, run_dir=run_dir, info=info,
                        on_step_start=on_step_start, callbacks=callbacks, desc=f"pretrain[{p.system}]",
                        progress=progress)
    final = run_dir / "final"
    if info.is_main:
        summary = {k: (str(v) if isinstance(v, Path) else v) for k, v in dataclasses.asdict(result).items()
                   if k != "history"}
        summary.update(stage="pretrain", system=p.system, init=init, languages=languages)
        final = export_final(system, run_dir, cfg, summary)
    D.barrier(info)
    return final

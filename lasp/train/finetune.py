"""`lasp finetune`: multilingual CTC fine-tuning from pre-trained weights.

Wav2Vec2ForCTC over the shared character vocabulary (one output layer for all
languages), feature encoder frozen, CTC loss averaged per utterance
(``ctc_loss_reduction="mean"``, ``ctc_zero_infinity``), optional time masking,
tri-stage or linear-warm-up learning rate, bf16/fp16 autocast on GPU. The
system decides what trains: everything (shared), each language's sub-network
(lasp / random masks), or per-language adapters (+ the CTC head).
"""
from __future__ import annotations

import dataclasses
from pathlib import Path

from lasp.config import RecipeConfig, stage_run_dir
from lasp.models import load_model
from lasp.system_layout import is_model_dir
from lasp.train import distributed as D
from lasp.train.data import (SamplerStream, ctc_inputs, language_batches, load_vocab, make_dataset, make_sampler,
                             read_split)
from lasp.train.loop import Batch, train_loop
from lasp.train.setup import export_final, resolve_masks, start_stage
from lasp.train.systems import System, build_system


def finetune_init(cfg: RecipeConfig) -> str:
    """finetune.init, else the pre-training stage's output when it exists, else model.name."""
    if cfg.finetune.init:
        return cfg.finetune.init
    pre = stage_run_dir(cfg, "pretrain") / "final"
    return str(pre) if is_model_dir(pre) else cfg.model.name


def finetune(cfg: RecipeConfig, *, callbacks: dict | None = None, progress: bool = True) -> Path:
    """Run the fine-tuning stage of ``cfg``; returns ``<run_dir>/final`` (model, vocab.json [, masks | adapters])."""
    f = cfg.finetune
    info = start_stage(cfg)
    run_dir = stage_run_dir(cfg, "finetune")
    init = finetune_init(cfg)

    utts = read_split(cfg.data, "train")
    vocab = load_vocab(cfg.data, utts, run_dir)
    dataset = make_dataset(cfg.data, utts, vocab)
    languages = sorted(set(dataset.langs))
    model = load_model(init, head="ctc", **{
        **cfg.model.overrides, "vocab_size": len(vocab), "pad_token_id": vocab.pad_id,
        "ctc_loss_reduction": "mean", "ctc_zero_infinity": True,
        "mask_time_prob": f.mask_time_prob, "mask_time_length": f.mask_time_length,
    })
    if f.freeze_feature_encoder:
        model.freeze_feature_encoder()
    model.to(info.device)

    def build(items, step):
        return ctc_inputs(model, [it["input_values"] for it in items], [it["labels"] for it in items])

    batch_size = cfg.data.batch_size or 4

    def batches_for(lang: str, count: int) -> list:
        return language_batches(dataset, lang, batch_size, build, count, seed=cfg.seed)

    masks = resolve_masks(cfg, f.system, model, languages, run_dir, init, batches_for, info, progress)
    system = build_system(f.system, model, languages, masks=masks, adapter_dim=cfg.adapters.dim,
                          freeze_base=cfg.adapters.freeze_base)
    mixed = cfg.data.mixed and f.system != "adapters"  # adapters run one language per batch
    sampler = make_sampler(cfg.data, dataset, cfg.seed, info.rank, info.world_size, mixed=mixed)
    stream = SamplerStream(dataset, sampler, build, device=info.device)

    def loss_fn(sys: System, batch: Batch, step: int):
        out = sys(**batch.inputs)
        return out.loss, 1.0, {}

    if info.is_main and progress:
        print(system.summary())
    result = train_loop(system=system, stream=stream, loss_fn=loss_fn, stage=f, run_dir=run_dir, info=info,
                        callbacks=callbacks, desc=f"finetune[{f.system}]", progress=progress)
    final = run_dir / "final"
    if info.is_main:
        summary = {k: (str(v) if isinstance(v, Path) else v) for k, v in dataclasses.asdict(result).items()
                   if k != "history"}
        trainable = sum(p.numel() for _, p in system.named_trainable())
        summary.update(stage="finetune", system=f.system, init=init, languages=languages,
                       trainable_parameters=trainable)
        final = export_final(system, run_dir, cfg, summary, extra=lambda d: vocab.save(d))
    D.barrier(info)
    return final

"""`lasp finetune`: multilingual CTC fine-tuning from pre-trained weights.

Wav2Vec2ForCTC over the shared character vocabulary (one output layer for all
languages), feature encoder frozen, CTC loss averaged per utterance
(``ctc_loss_reduction="mean"``, ``ctc_zero_infinity``), optional time masking,
tri-stage or linear-warm-up learning rate, bf16/fp16 autocast on GPU. The
system decides what trains: everything (shared), each language's sub-network
(lasp / random masks), or per-language adapters (+ the CTC head).
"""
from __future__ import annotations

import logging
from pathlib import Path

from lasp.config.recipe import RecipeConfig, stage_run_dir
from lasp.models.features import feature_normalization
from lasp.data.pipeline import ctc_collator, load_vocab, make_dataset, make_sampler, read_split, recipe_loader
from lasp.errors import ConfigError
from lasp.models.load import is_preset, load_model
from lasp.models.objective import batch_loss
from lasp.models.layout import is_model_dir
from lasp.train import distributed as D
from lasp.train.batches import LoaderStream, skipped_rows_summary
from lasp.train.loop import Batch, train_loop
from lasp.train.setup import claim_run, export_final, resolve_masks, start_stage
from lasp.models.system import System, build_system

log = logging.getLogger(__name__)
FROM_PRETRAIN = "pretrain"  # finetune.init: this recipe's pre-training output


def finetune_init(cfg: RecipeConfig) -> tuple[str, str]:
    """(start point, why): ``finetune.init`` — a model directory, a preset, or ``pretrain`` for this recipe's
    pre-training output (which must exist); null means ``model.name``. Nothing is guessed from what is on disk."""
    init = cfg.finetune.init
    if init == FROM_PRETRAIN:
        pre = stage_run_dir(cfg, "pretrain") / "final"
        if not is_model_dir(pre):
            raise ConfigError(f"key 'finetune.init' is 'pretrain' but {pre} holds no pre-trained model "
                              "(run `lasp pretrain` with this recipe first)")
        return str(pre), "finetune.init: pretrain (this recipe's pre-training output)"
    if init:
        return init, "finetune.init"
    return cfg.model.name, "finetune.init is null: model.name"


def finetune(cfg: RecipeConfig, *, callbacks: dict | None = None, progress: bool = True) -> Path:
    """Run the fine-tuning stage of ``cfg``; returns ``<run_dir>/final`` (model, vocab.json [, masks | adapters])."""
    f = cfg.finetune
    info = start_stage(cfg)
    run_dir = stage_run_dir(cfg, "finetune")
    init, why = finetune_init(cfg)
    start = f"fine-tuning starts from {init} ({why})"
    if is_preset(init):
        start += " — a preset: randomly initialised weights, no pre-training"
    if info.is_main:
        if is_preset(init):
            log.warning("%s", start)
        elif progress:
            print(start)

    claim_run(cfg, "finetune", run_dir, init, info)
    utts = read_split(cfg.data, "train")
    # rank 0 builds and saves the vocabulary; the others read it (concurrent writers could read a half-written file)
    vocab = load_vocab(cfg.data, utts, run_dir) if info.is_main else None
    D.wait_for_main(info)
    vocab = vocab if vocab is not None else load_vocab(cfg.data, utts, run_dir)
    dataset = make_dataset(cfg.data, utts, vocab)
    checked_out = list(dataset.report().bad)  # rows dropped before training (decode-time skips come with batches)
    languages = sorted(set(dataset.langs))
    model = load_model(init, head="ctc", **{
        **cfg.model.overrides, "vocab_size": len(vocab), "pad_token_id": vocab.pad_id,
        "ctc_loss_reduction": "mean", "ctc_zero_infinity": True,
        "mask_time_prob": f.mask_time_prob, "mask_time_length": f.mask_time_length,
    })
    if f.freeze_feature_encoder:
        model.freeze_feature_encoder()
    model.to(info.device)

    normalize = feature_normalization(init)

    masks = resolve_masks(cfg, f.system, model, languages, run_dir, init, info, progress)
    system = build_system(f.system, model, languages, masks=masks, adapter_dim=cfg.adapters.dim,
                          freeze_base=cfg.adapters.freeze_base)
    mixed = cfg.data.mixed and f.system != "adapters"  # adapters run one language per batch
    sampler = make_sampler(cfg.data, dataset, cfg.seed, info.rank, info.world_size, mixed=mixed)
    loader = recipe_loader(cfg.data, dataset, sampler, ctc_collator(model.config, vocab, normalize), info.device)
    stream = LoaderStream(loader, sampler, device=info.device)

    def loss_fn(sys: System, batch: Batch, step: int):
        _, loss, weight = batch_loss(sys, batch.inputs)
        return loss, weight, {}

    if info.is_main and progress:
        print(system.summary())
    result = train_loop(system=system, stream=stream, loss_fn=loss_fn, stage=f, run_dir=run_dir, info=info,
                        callbacks=callbacks, desc=f"finetune[{f.system}]", progress=progress, seed=cfg.seed)
    skipped_rows = skipped_rows_summary(checked_out, D.all_gather_object(stream.skipped_rows, info))
    final = run_dir / "final"
    if info.is_main:
        summary = result.as_dict()
        trainable = sum(p.numel() for _, p in system.named_trainable())
        summary.update(stage="finetune", system=f.system, init=init, init_from=why, languages=languages,
                       trainable_parameters=trainable, normalize=normalize, skipped_rows=skipped_rows,
                       distributed=D.describe(info))

        final = export_final(system, run_dir, cfg, summary, extra=vocab.save)
    D.wait_for_main(info)
    return final

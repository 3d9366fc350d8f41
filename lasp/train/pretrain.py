"""`lasp pretrain`: continued wav2vec 2.0 pre-training, shared or language-adaptive.

Loss: contrastive over the masked frames + diversity_weight × codebook
diversity (Wav2Vec2ForPreTraining sums both over masked frames); the summed
gradients of all ranks are divided by the global number of masked frames, as
in wav2vec 2.0. The Gumbel temperature decays from gumbel_max to gumbel_min.
Language-adaptive (system lasp/random): each batch runs through its language's
sub-network and the confined optimizer updates only that sub-network.
Codevector perplexity is logged; a value below perplexity_warn × codebook size
at a logged step means the quantizer is collapsing, and a warning says so.
"""
from __future__ import annotations

import warnings
from pathlib import Path

from lasp.config.recipe import PretrainConfig, RecipeConfig, stage_run_dir
from lasp.models.features import feature_normalization
from lasp.data.pipeline import make_dataset, make_sampler, pretrain_collator, read_split, recipe_loader
from lasp.models.load import load_model
from lasp.models.objective import batch_loss
from lasp.train import distributed as D
from lasp.train.batches import LoaderStream, skipped_rows_summary
from lasp.train.loop import Batch, train_loop
from lasp.train.schedule import gumbel_temperature
from lasp.train.setup import claim_run, export_final, resolve_masks, start_stage
from lasp.models.system import System, build_system


def pretraining_objective(p: PretrainConfig, model, is_main: bool = True):
    """(loss_fn, on_step_start, check_collapse) of wav2vec 2.0 pre-training for :func:`lasp.train.loop.train_loop`:
    the contrastive + diversity loss with its logged parts, the Gumbel temperature schedule, and the warning
    when the quantizer collapses (call ``check_collapse()`` once more after training)."""
    codebook = model.config.num_codevector_groups * model.config.num_codevectors_per_group
    collapse = {"warned": False, "logged": None}

    def check_collapse() -> None:
        """Warn once when a logged step's perplexity fell below perplexity_warn × codebook. Called before the
        next step and after training: the device value is read when its step's backward has long been queued."""
        logged, collapse["logged"] = collapse["logged"], None
        if logged is None or collapse["warned"] or not is_main:
            return
        step, ppl = logged[0], float(logged[1])
        if ppl < p.perplexity_warn * codebook:
            warnings.warn(f"pretrain step {step}: codevector perplexity {ppl:.1f} is below "
                          f"{p.perplexity_warn:g} × {codebook} codevectors — the quantizer is collapsing "
                          "(raise diversity_weight or gumbel_max, or lower the learning rate)", stacklevel=2)
            collapse["warned"] = True

    def on_step_start(step: int) -> None:
        check_collapse()
        model.set_gumbel_temperature(gumbel_temperature(step, p.gumbel_max, p.gumbel_min, p.gumbel_decay))

    def loss_fn(sys: System, batch: Batch, step: int):
        out, loss, frames = batch_loss(sys, batch.inputs)
        # device values: the loop reads them at log steps, after backward (a read here would make the host wait
        # for the forward before it could queue backward)
        ppl = out.codevector_perplexity.detach()
        per_frame = frames.clamp(min=1.0)
        metrics = {"contrastive": out.contrastive_loss.detach() / per_frame,
                   "diversity": out.diversity_loss.detach() / per_frame, "ppl": ppl,
                   "ppl_collapsed": (ppl < p.perplexity_warn * codebook).float(),
                   "gumbel_temp": float(model.quantizer.temperature), "masked_frames": frames}
        if (step + 1) % p.log_every == 0 or step + 1 == p.max_steps:
            collapse["logged"] = (step, ppl)
        return loss, frames, metrics

    return loss_fn, on_step_start, check_collapse


def pretrain(cfg: RecipeConfig, *, callbacks: dict | None = None, progress: bool = True) -> Path:
    """Run the pre-training stage of ``cfg``; returns ``<run_dir>/final`` (model [+ masks])."""
    p = cfg.pretrain
    info = start_stage(cfg)
    run_dir = stage_run_dir(cfg, "pretrain")
    init = p.init or cfg.model.name
    claim_run(cfg, "pretrain", run_dir, init, info)
    model = load_model(init, head="pretraining", **cfg.model.overrides)
    model.config.diversity_loss_weight = p.diversity_weight
    model.to(info.device)

    utts = read_split(cfg.data, "train")
    dataset = make_dataset(cfg.data, utts)
    checked_out = list(dataset.report().bad)  # rows dropped before training (decode-time skips come with batches)
    languages = sorted(set(dataset.langs))
    normalize = feature_normalization(init)

    masks = resolve_masks(cfg, p.system, model, languages, run_dir, init, info, progress)
    system = build_system(p.system, model, languages, masks=masks)
    sampler = make_sampler(cfg.data, dataset, cfg.seed, info.rank, info.world_size)
    loader = recipe_loader(cfg.data, dataset, sampler, pretrain_collator(cfg, model.config, normalize), info.device)
    stream = LoaderStream(loader, sampler, device=info.device)
    loss_fn, schedule_step, check_collapse = pretraining_objective(p, model, info.is_main)
    about = dict(stage="pretrain", system=p.system, init=init, languages=languages, normalize=normalize)

    def keep(step: int) -> None:
        """The model after ``step`` steps as at-step-<step>/; the folder is written once (a resume passing the
        step again finds it)."""
        if step in p.keep_at and info.is_main and not (run_dir / f"at-step-{step}").is_dir():
            export_final(system, run_dir, cfg, {**about, "step": step}, name=f"at-step-{step}")

    def on_step_start(step: int) -> None:
        keep(step)  # before the step runs: the weights are those after `step` steps
        schedule_step(step)

    if info.is_main and progress:
        print(system.summary())
    result = train_loop(system=system, stream=stream, loss_fn=loss_fn, stage=p, run_dir=run_dir, info=info,
                        on_step_start=on_step_start, callbacks=callbacks, desc=f"pretrain[{p.system}]",
                        progress=progress, seed=cfg.seed)
    check_collapse()
    skipped_rows = skipped_rows_summary(checked_out, D.all_gather_object(stream.skipped_rows, info))
    final = run_dir / "final"
    if info.is_main:
        summary = result.as_dict()
        summary.update(about, skipped_rows=skipped_rows, distributed=D.describe(info))
        final = export_final(system, run_dir, cfg, summary)
        keep(result.step)
    D.wait_for_main(info)
    return final

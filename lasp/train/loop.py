"""The training loop both stages share.

One step (:mod:`lasp.train.step`): take ``grad_accum_steps`` micro-batches of
the stream (their languages select the sub-network / adapter), compute the
stage's loss under the stage's autocast and back-propagate each (DDP sums the
gradients over ranks after the last one), divide by the global normaliser
(masked frames for pre-training, one per micro-batch and rank for CTC's
per-utterance mean), clip, take a (confined) optimizer step and advance the LR
schedule. A non-finite loss or gradient skips the update on every rank and is
counted (``skipped_nonfinite``); the batches are consumed and the schedule still
advances, so a step index always means the same batches and learning rate.

Checkpoints hold everything a resumed run needs to continue bit-for-bit on the
same hardware: trainable tensors, optimizer, scheduler, the batch stream's
(sampler's) state, every RNG, the step, counters and the training time already
spent (``max_minutes`` counts across resumes).

One writer per run directory (:mod:`lasp.locks`). Resuming takes the newest
checkpoint that verifies, reporting the ones it skipped, and applies the recipe's
optimizer settings (a change ``resume_allow`` let through takes effect). Ctrl-C
and SIGTERM finish the step in flight, save a checkpoint at that step boundary
and stop (:mod:`lasp.train.stops`; the CLI says how to resume and exits with 130
or 143). A run whose loss is non-finite in more than ``max_nonfinite`` of its
steps has diverged: it stops with an error and nothing is exported.
"""
from __future__ import annotations

import math
import signal
import sys
import time
import dataclasses
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Protocol

import torch

from lasp.config.schema import StageConfig
from lasp.errors import ConfigError, LaspError
from lasp.locks import acquire
from lasp.train import distributed as D
from lasp.train.checkpoint import (CheckpointError, load_resumable, rng_state, save_checkpoint, seed_everything,
                                   set_rng_state)
from lasp.train.metrics_log import MetricsLogger, trim_metrics
from lasp.device import autocast_dtype
from lasp.train.precision import enable_activation_checkpointing, grad_scaler
from lasp.train.schedule import lr_factor
from lasp.train.step import Stepper
from lasp.train.stops import SIGNAL_NAMES, StopRequests, TrainingInterrupted
from lasp.models.system import System


@dataclass
class Batch:
    inputs: dict[str, Any]  # model keyword arguments (tensors)
    langs: list[str]  # one language per example


class Diverged(LaspError):
    """The loss was non-finite in more than the stage's ``max_nonfinite`` share of its steps."""


# a few non-finite steps early on are normal (fp16 loss scaling calibrates, warm-up); judge the share after these
_NONFINITE_GRACE_STEPS = 20


class BatchStream(Protocol):
    def next(self, step: int) -> Batch: ...
    def state_dict(self) -> dict: ...
    def load_state_dict(self, state: dict) -> None: ...


# (system, batch, step) -> (loss to back-propagate, its normaliser weight, scalars to log)
LossFn = Callable[[System, Batch, int], "tuple[torch.Tensor, float, dict[str, float]]"]


@dataclass
class TrainResult:
    run_dir: Path
    step: int
    skipped_nonfinite: int
    elapsed_s: float
    last_loss: float | None
    stopped_by: str  # "max_steps" | "max_minutes" (a signal raises TrainingInterrupted instead)

    def as_dict(self) -> dict:
        """JSON-ready fields (paths as strings): the start of a stage's train_summary.json."""
        return {k: str(v) if isinstance(v, Path) else v for k, v in dataclasses.asdict(self).items()}


def make_optimizer(params: list[torch.nn.Parameter], stage: StageConfig) -> torch.optim.Optimizer:
    o = stage.optim
    if not params:
        raise ConfigError("nothing to train: no parameter requires a gradient")
    return torch.optim.AdamW(params, lr=o.lr, betas=tuple(o.betas), eps=o.eps, weight_decay=o.weight_decay)


def apply_optim_settings(optimizer: torch.optim.Optimizer, scheduler, stage: StageConfig) -> None:
    """After loading a checkpoint: the recipe's optimizer settings, not the saved ones, drive the next steps.

    Unchanged settings give back exactly the saved values; a change the resume check allowed
    (``resume_allow``) takes effect from the first resumed step.
    """
    o = stage.optim
    for i, group in enumerate(optimizer.param_groups):
        group.update(betas=tuple(o.betas), eps=o.eps, weight_decay=o.weight_decay, initial_lr=o.lr)
        scheduler.base_lrs[i] = o.lr
        group["lr"] = o.lr * scheduler.lr_lambdas[i](scheduler.last_epoch)


def train_loop(*, system: System, stream: BatchStream, loss_fn: LossFn, stage: StageConfig, run_dir: str | Path,
               info: D.DistInfo | None = None, on_step_start: Callable[[int], None] | None = None,
               callbacks: dict[str, Callable] | None = None, desc: str = "train",
               progress: bool = True, seed: int | None = None) -> TrainResult:
    """Train ``system`` for ``stage.max_steps`` (or ``stage.max_minutes``), resuming from run_dir if asked.

    ``callbacks``: ``{"on_checkpoint": fn(step, path)}``, called on rank 0 after each checkpoint is complete.
    ``seed``: every RNG is seeded with it when training starts from step 0, so that what ran before the loop in
    this process (a mask search, which a rerun skips) cannot change the run.
    """
    info = info or D.DistInfo()
    run_dir = Path(run_dir)
    callbacks = callbacks or {}
    named = system.named_trainable()
    params = [p for _, p in named]
    inner = make_optimizer(params, stage)
    optimizer = system.wrap_optimizer(inner)
    scheduler = torch.optim.lr_scheduler.LambdaLR(inner, lr_factor(stage.optim, stage.max_steps))
    dtype = autocast_dtype(info.device, stage.precision)
    scaler = grad_scaler(info.device, dtype)
    use_scaler = scaler.is_enabled()
    key = desc.split("[")[0]  # the recipe section: pretrain / finetune

    if info.is_main:
        acquire(run_dir, "run directory")  # re-entrant: the stage may hold it already; released at exit
    step, skipped, nonfinite, elapsed_before = 0, 0, 0, 0.0
    ckpt, skipped_ckpts = None, []
    if stage.resume:
        ckpt, tensors, state, skipped_ckpts = load_resumable(run_dir)
        for name, why in skipped_ckpts:
            if info.is_main:
                print(f"lasp: skipped checkpoint {name}: {why}", file=sys.stderr)
        if ckpt is None and skipped_ckpts:
            raise CheckpointError(f"{run_dir}: no usable checkpoint to resume from ({len(skipped_ckpts)} "
                                  "skipped, see above); start over with resume=false or another run_dir")
        if ckpt is not None and skipped_ckpts and info.is_main:
            print(f"lasp: resuming from {ckpt.name} (step {int(state['step'])})", file=sys.stderr)
    if ckpt is not None:
        system.load_state_tensors(tensors)
        inner.load_state_dict(state["optimizer"])
        scheduler.load_state_dict(state["scheduler"])
        apply_optim_settings(inner, scheduler, stage)
        if use_scaler and state.get("scaler"):
            scaler.load_state_dict(state["scaler"])
        ranks = state["ranks"]
        if len(ranks) != info.world_size:
            raise ConfigError(f"{ckpt} was written by {len(ranks)} rank(s); resume it with the same number "
                              f"(this run has {info.world_size})")
        stream.load_state_dict(ranks[info.rank]["stream"])
        set_rng_state(ranks[info.rank]["rng"])
        step, skipped, elapsed_before = int(state["step"]), int(state["skipped_nonfinite"]), float(state["elapsed_s"])
        nonfinite = int(state.get("nonfinite_loss", skipped))
    elif seed is not None:
        seed_everything(seed)

    def save(at: int) -> Path | None:
        per_rank = D.all_gather_object({"stream": stream.state_dict(), "rng": rng_state()}, info)
        path = None
        if info.is_main:
            state = {"step": at, "optimizer": inner.state_dict(), "scheduler": scheduler.state_dict(),
                     "scaler": scaler.state_dict() if use_scaler else {}, "ranks": per_rank,
                     "skipped_nonfinite": skipped, "nonfinite_loss": nonfinite,
                     "elapsed_s": elapsed_before + (time.monotonic() - t0)}
            path = save_checkpoint(run_dir, at, system.state_tensors(), state, keep=stage.keep_checkpoints)
        D.wait_for_main(info)
        if path is not None and "on_checkpoint" in callbacks:
            callbacks["on_checkpoint"](at, path)
        return path

    if info.is_main:
        trim_metrics(run_dir, step)  # steps after the checkpoint are trained again: their records go
    logger = MetricsLogger(run_dir, total=stage.max_steps, initial=step, rank=info.rank, progress=progress,
                           desc=desc)
    if info.is_main and ckpt is not None:
        logger.log(step, {"resumed_from": str(ckpt),
                          **({"skipped_checkpoints": [f"{n}: {w}" for n, w in skipped_ckpts]}
                             if skipped_ckpts else {})}, kind="event")
    t0 = time.monotonic()
    last_loss = None
    stopped_by = "max_steps"
    last_saved = step if ckpt is not None else -1
    budget = stage.max_minutes * 60.0 if stage.max_minutes is not None else math.inf

    def over_budget() -> bool:
        return elapsed_before + (time.monotonic() - t0) >= budget

    if stage.activation_checkpointing:
        enable_activation_checkpointing(system.model)
    D.distribute(system, info)  # DDP over the ranks (a no-op in one process)
    system.train(True)
    stepper = Stepper(system=system, stream=stream, loss_fn=loss_fn, params=params, optimizer=optimizer,
                      inner=inner, scaler=scaler, dtype=dtype, accum=stage.grad_accum_steps,
                      max_grad_norm=stage.optim.max_grad_norm, info=info, languages=system.languages or [])
    stops = StopRequests()
    try:
        with stops:
            # a step boundary: a stop asked for during the last step is taken here, where all state agrees. Later
            # steps carry both checks in their own reduction; this is the one before the first step
            flags = D.all_reduce_sum(torch.tensor([float(over_budget()), float(stops.signum is not None)],
                                                  device=info.device), info).tolist()
            over, signalled = flags[0] > 0, flags[1] > 0
            while step < stage.max_steps:
                if over or signalled:
                    stopped_by = "signal" if signalled else "max_minutes"
                    break
                if on_step_start is not None:
                    on_step_start(step)
                result = stepper.step(step, over_budget, lambda: stops.signum is not None)
                over, signalled = result.over_budget, result.signalled
                skipped += int(result.skipped)
                nonfinite += int(result.diverging)
                scheduler.step()
                step += 1
                last_loss = result.loss
                logger.advance()
                if step % stage.log_every == 0 or step == stage.max_steps:
                    metrics = {k: float(v) for k, v in result.metrics.items()}  # device values: read at log steps
                    logger.log(step, {"loss": last_loss, "lr": scheduler.get_last_lr()[0],
                                      "grad_norm": result.grad_norm, "skipped_nonfinite": skipped,
                                      "langs": ",".join(result.languages), **metrics})
                if nonfinite > stage.max_nonfinite * step and step >= min(_NONFINITE_GRACE_STEPS, stage.max_steps):
                    raise Diverged(
                        f"{desc} diverged: the loss was not finite in {nonfinite} of the first {step} steps (more "
                        f"than {key}.max_nonfinite={stage.max_nonfinite:g} of them); stopped, nothing exported. "
                        f"Lower {key}.optim.lr (now {stage.optim.lr:g}) or clip harder ({key}.optim.max_grad_norm)")
                if step % stage.ckpt_every == 0:
                    save(step)
                    last_saved = step
            if last_saved != step:
                save(step)
    except KeyboardInterrupt:
        if info.world_size > 1:  # the other ranks are not at a point where they can join a save
            raise
        # asked twice: stopped inside a step, whose state is not saved; a resume repeats it from the checkpoint
        where = f"checkpoint step {last_saved}" if last_saved > 0 else "the start (no checkpoint yet)"
        raise TrainingInterrupted(f"stopped at once during step {step + 1}; a resume continues from {where}",
                                  signal.SIGINT) from None
    finally:
        logger.close()
    if stopped_by == "signal" or stops.signum is not None:  # (a stop asked for during the last save counts)
        signum = stops.signum or signal.SIGTERM
        raise TrainingInterrupted(f"{SIGNAL_NAMES[signum]}: stopped after step {step}; checkpoint saved in "
                                  f"{run_dir / 'checkpoints' / f'step-{step:08d}'}" if step > 0 else
                                  f"{SIGNAL_NAMES[signum]}: stopped before the first step; nothing to save", signum)
    elapsed = elapsed_before + (time.monotonic() - t0)
    return TrainResult(run_dir=run_dir, step=step, skipped_nonfinite=skipped, elapsed_s=elapsed,
                       last_loss=last_loss, stopped_by=stopped_by)

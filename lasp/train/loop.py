"""The training loop both stages share.

One step: take the next batch of the stream (its languages select the
sub-network / adapter), compute the stage's loss, back-propagate (DDP sums the
gradients over ranks during backward), divide by the global normaliser (masked frames for
pre-training, one per rank for CTC's per-utterance mean), clip, take a
(confined) optimizer step and advance the LR schedule. A non-finite loss or
gradient skips the update on every rank and is counted (``skipped_nonfinite``);
the batch is consumed and the schedule still advances, so a step index always
means the same batch and learning rate.

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

import contextlib
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
from lasp.train.schedule import lr_factor
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


def _autocast(device: torch.device, precision: str):
    if device.type != "cuda" or precision == "fp32":
        return contextlib.nullcontext()
    return torch.autocast("cuda", dtype=torch.bfloat16 if precision == "bf16" else torch.float16)


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
    use_scaler = info.device.type == "cuda" and stage.precision == "fp16"
    scaler = torch.amp.GradScaler("cuda", enabled=use_scaler)
    confined = optimizer is not inner
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
        D.barrier(info)
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
    D.distribute(system, info)  # DDP over the ranks (a no-op in one process)
    system.train(True)
    stops = StopRequests()
    try:
        with stops:
            while step < stage.max_steps:
                # a step boundary: a stop asked for during the last step is taken here, where all state agrees
                over = elapsed_before + (time.monotonic() - t0) >= budget
                signalled = stops.signum is not None
                if D.any_rank(over or signalled, info):
                    stopped_by = "signal" if D.any_rank(signalled, info) else "max_minutes"
                    break
                if on_step_start is not None:
                    on_step_start(step)
                batch = stream.next(step)
                system.set_language(batch.langs)
                with _autocast(info.device, stage.precision):
                    loss, weight, metrics = loss_fn(system, batch, step)
                bad = D.any_rank(not bool(torch.isfinite(loss.detach()).all()), info)
                diverging = bad
                if not bad:
                    scaler.scale(loss).backward()
                total_weight = D.all_sum(weight, info)
                grad_norm = float("nan")
                unscaled = False
                if not bad:
                    D.normalize_grads(params, total_weight, info)  # DDP already summed them during backward
                    if use_scaler:
                        scaler.unscale_(inner)
                        unscaled = True
                    clip = stage.optim.max_grad_norm if stage.optim.max_grad_norm > 0 else math.inf
                    grad_norm = float(torch.nn.utils.clip_grad_norm_(params, clip))
                    bad = not math.isfinite(grad_norm)  # identical on every rank after the all-reduce
                    diverging = bad and not use_scaler  # fp16: the loss scaler's overflow skips are its own
                langs = D.step_languages(batch.langs, info)
                if bad:
                    skipped += 1
                elif confined:
                    optimizer.step(languages=langs)
                else:
                    optimizer.step()
                if unscaled:
                    # update() reads the inf checks unscale_ records and asserts without them; after a non-finite
                    # loss (no backward) the scale stays: it only scales gradients, not the forward that overflowed
                    scaler.update()
                optimizer.zero_grad(set_to_none=True)
                scheduler.step()
                step += 1
                nonfinite += int(diverging)
                loss_sum = D.all_sum(float(loss.detach()) if not bad else 0.0, info)
                last_loss = loss_sum / max(total_weight, 1e-12) if not bad else float("nan")
                logger.advance()
                if step % stage.log_every == 0 or step == stage.max_steps:
                    logger.log(step, {"loss": last_loss, "lr": scheduler.get_last_lr()[0], "grad_norm": grad_norm,
                                      "skipped_nonfinite": skipped, "langs": ",".join(langs), **metrics})
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

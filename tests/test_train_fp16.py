"""fp16 training in the shared loop on CPU: fp16 autocast, torch.amp.GradScaler("cpu"), ``unscale_`` before
clipping, the scale kept after a non-finite loss and halved after an overflow. What a GPU runs with
``precision: fp16``; everything between the loss and the optimizer step is lasp's code.
"""
from __future__ import annotations

import copy
import math

import numpy as np
import pytest
import torch

from conftest import make_ctc_batch
from lasp.config.recipe import load_recipe
from lasp.models.system import System
from lasp.train.checkpoint import latest_checkpoint, load_checkpoint
from lasp.train.loop import train_loop
from lasp.train.metrics_log import read_metrics
from test_train_loop import Stream  # two Spanish CTC examples per step, seeded by the step

INIT_SCALE = 2.0**16  # torch's default, which the loop keeps
NAN_STEP, OVERFLOW_STEP, STEPS = 6, 8, 10


@pytest.fixture
def cpu_fp16(monkeypatch):
    """The gradient scalers the loop makes (torch's own, for the CPU), to read their scale during training."""
    scalers = []
    grad_scaler = torch.amp.GradScaler

    def make_scaler(device, **kw):
        assert device == "cpu"
        scalers.append(grad_scaler(device, **kw))
        return scalers[-1]

    monkeypatch.setattr(torch.amp, "GradScaler", make_scaler)
    return scalers


def _seed(step):
    torch.manual_seed(step)
    np.random.seed(step)


def _fp16_stage(*over):
    # the planted non-finite loss is one of a few steps: more than max_nonfinite's default share would stop the run
    return load_recipe(None, ["finetune.optim.schedule=constant", "finetune.log_every=1", "finetune.precision=fp16",
                              "finetune.ckpt_every=100", "finetune.max_nonfinite=0.5", *over]).finetune


def _train(model, scalers, run_dir, max_steps, seen):
    """Train; the loss is NaN at NAN_STEP, and at OVERFLOW_STEP finite but with scaled gradients that overflow.

    ``seen[step]``: the weights and the scale the step started from, and the dtype of the logits."""
    def loss_fn(system, batch, step):
        _seed(step)  # dropout and SpecAugment draw the same as in _grad_norm_fp32
        out = system(**batch.inputs)
        seen[step] = {"weights": {n: p.detach().clone() for n, p in model.named_parameters()},
                      "scale": scalers[-1].get_scale(), "logits": out.logits.dtype}
        loss = out.loss
        if step == NAN_STEP:
            loss = loss * float("nan")
        if step == OVERFLOW_STEP:
            loss = loss * 1e35  # finite; times the scale it is inf in fp32, and so is every gradient
        return loss, 1.0, {}

    return train_loop(system=System("shared", model), stream=Stream(), loss_fn=loss_fn,
                      stage=_fp16_stage(f"finetune.max_steps={max_steps}"), run_dir=run_dir, progress=False)


def _grad_norm_fp32(model, weights, step):
    """The gradient norm of ``step``'s batch from ``weights``, without autocast or scaling, on a copy of the model."""
    ref = copy.deepcopy(model)
    ref.load_state_dict(weights)
    ref.train()
    _seed(step)
    ref(**make_ctc_batch(12, batch_size=2, samples=4000, seed=step)).loss.backward()
    return float(torch.nn.utils.get_total_norm([p.grad for p in ref.parameters() if p.grad is not None]))


def _same(a, b):
    return all(torch.equal(a[n], b[n]) for n in a)


def test_fp16_steps_skip_non_finite_losses_and_overflows_and_halve_the_scale_only_on_overflow(
        tmp_path, tiny_ctc, cpu_fp16):
    seen = {}
    res = _train(tiny_ctc, cpu_fp16, tmp_path, STEPS, seen)

    assert seen[0]["logits"] == torch.float16  # the forward ran under fp16 autocast
    records = [r for r in read_metrics(tmp_path) if r["kind"] == "train"]
    counts = [0] + [r["skipped_nonfinite"] for r in records]
    skipped = [counts[i + 1] - counts[i] == 1 for i in range(STEPS)]
    # at torch's initial scale the first fp16 backward passes may overflow too; those are skipped like the others
    assert skipped[NAN_STEP] and skipped[OVERFLOW_STEP] and not skipped[-1]
    assert res.step == STEPS and res.skipped_nonfinite == sum(skipped)
    seen[STEPS] = {"weights": {n: p.detach().clone() for n, p in tiny_ctc.named_parameters()}}
    for i in range(STEPS):
        # a skipped step leaves every weight as it was, any other step trains
        assert _same(seen[i]["weights"], seen[i + 1]["weights"]) == skipped[i], i
        assert math.isnan(records[i]["loss"]) == skipped[i], i
    # the scale halves after every overflow of the scaled gradients and stays after a non-finite loss (its backward
    # runs, so that nothing waits for the loss before backward, but the forward overflowed, not the scaled gradients)
    for i in range(STEPS - 1):
        halved = skipped[i] and i != NAN_STEP
        assert seen[i + 1]["scale"] == seen[i]["scale"] / (2 if halved else 1), i
    assert seen[0]["scale"] == INIT_SCALE
    # gradients are unscaled before they are clipped and logged
    first = skipped.index(False)
    expected = _grad_norm_fp32(tiny_ctc, seen[first]["weights"], first)
    assert records[first]["grad_norm"] == pytest.approx(expected, rel=0.05)
    _, state = load_checkpoint(latest_checkpoint(tmp_path))
    assert state["scaler"]["scale"] == seen[STEPS - 1]["scale"]


def test_resumed_fp16_run_continues_with_the_saved_scale(tmp_path, tiny_ctc, cpu_fp16):
    seen = {}
    _train(tiny_ctc, cpu_fp16, tmp_path, OVERFLOW_STEP + 1, seen)  # stops (and saves) right after the overflow
    saved = seen[OVERFLOW_STEP]["scale"] / 2
    res = _train(tiny_ctc, cpu_fp16, tmp_path, OVERFLOW_STEP + 2, seen)
    assert res.step == OVERFLOW_STEP + 2 and len(cpu_fp16) == 2
    assert seen[OVERFLOW_STEP + 1]["scale"] == saved < INIT_SCALE

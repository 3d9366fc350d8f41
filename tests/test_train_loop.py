"""The shared loop on synthetic batches: non-finite losses skipped and counted, time budget, schedules."""
from __future__ import annotations

import math

import pytest
import torch

from conftest import make_ctc_batch
from lasp.config.recipe import load_recipe
from lasp.train.metrics_log import read_metrics
from lasp.train.loop import Batch, train_loop
from lasp.train.schedule import gumbel_temperature, linear_warmup, lr_factor, tri_stage
from lasp.models.system import System


class Stream:
    def __init__(self):
        self.pos = 0

    def next(self, step):
        self.pos += 1
        return Batch(make_ctc_batch(12, batch_size=2, samples=4000, seed=step), ["es", "es"])

    def state_dict(self):
        return {"pos": self.pos}

    def load_state_dict(self, state):
        self.pos = state["pos"]


def _stage(*over):
    return load_recipe(None, ["finetune.optim.schedule=constant", "finetune.log_every=1", *over]).finetune


def test_nonfinite_losses_are_skipped_and_counted(tmp_path, tiny_ctc):
    system = System("shared", tiny_ctc)
    seen = {}

    def loss_fn(sys, batch, step):
        loss = sys(**batch.inputs).loss
        if step in (1, 3):
            loss = loss * float("nan")
        seen[step] = {n: p.detach().clone() for n, p in tiny_ctc.named_parameters()}
        return loss, 1.0, {}

    res = train_loop(system=system, stream=Stream(), loss_fn=loss_fn,
                     stage=_stage("finetune.max_steps=5", "finetune.max_nonfinite=0.5"), run_dir=tmp_path,
                     progress=False)
    assert res.step == 5 and res.skipped_nonfinite == 2
    # a skipped step leaves every weight untouched: weights seen at step 2 equal those at step 1
    for n in seen[1]:
        assert torch.equal(seen[1][n], seen[2][n]), n
    assert any(not torch.equal(seen[0][n], seen[1][n]) for n in seen[0])
    records = [r for r in read_metrics(tmp_path) if r["kind"] == "train"]
    assert [r["skipped_nonfinite"] for r in records] == [0, 1, 1, 2, 2]
    assert math.isnan(records[1]["loss"]) and math.isfinite(records[2]["loss"])
    assert (tmp_path / "tb").is_dir() and any((tmp_path / "tb").iterdir())


@pytest.mark.parametrize("steps, nan_from, stops_at", [(30, 3, 20), (5, 4, 5)])
def test_a_diverging_run_stops_with_an_error(tmp_path, tiny_ctc, steps, nan_from, stops_at):
    """More than max_nonfinite (10 %) of the steps non-finite: judged from step 20 on, and at the end of a
    shorter run. The run stops with one message and no final weights."""
    from lasp.train.loop import Diverged

    system = System("shared", tiny_ctc)

    def loss_fn(sys, batch, step):
        loss = sys(**batch.inputs).loss
        return (loss * float("inf") if step + 1 >= nan_from else loss), 1.0, {}

    with pytest.raises(Diverged) as err:
        train_loop(system=system, stream=Stream(), loss_fn=loss_fn, stage=_stage(f"finetune.max_steps={steps}"),
                   run_dir=tmp_path, progress=False, desc="finetune[shared]")
    bad = stops_at - nan_from + 1
    assert str(err.value).startswith(f"finetune[shared] diverged: the loss was not finite in {bad} of the first "
                                     f"{stops_at} steps (more than finetune.max_nonfinite=0.1 of them)")
    assert "\n" not in str(err.value)
    assert max(r["step"] for r in read_metrics(tmp_path)) == stops_at
    assert not (tmp_path / "checkpoints").exists()  # nothing saved after (or at) the divergence


def test_time_budget_stops_training_and_checkpoints(tmp_path, tiny_ctc):
    system = System("shared", tiny_ctc)
    res = train_loop(system=system, stream=Stream(), loss_fn=lambda s, b, k: (s(**b.inputs).loss, 1.0, {}),
                     stage=_stage("finetune.max_steps=1000", "finetune.max_minutes=0.0001"), run_dir=tmp_path,
                     progress=False)
    assert res.stopped_by == "max_minutes" and res.step < 1000
    from lasp.train.checkpoint import latest_checkpoint

    assert latest_checkpoint(tmp_path).name == f"step-{res.step:08d}"


def test_lr_schedules():
    f = tri_stage(100, [0.1, 0.4, 0.5], 0.05)
    assert f(0) == pytest.approx(0.05) and f(10) == pytest.approx(1.0) and f(49) == pytest.approx(1.0)
    assert f(75) == pytest.approx(0.05 ** 0.5) and f(100) == pytest.approx(0.05)
    g = linear_warmup(4)
    assert [g(s) for s in range(6)] == [0.25, 0.5, 0.75, 1.0, 1.0, 1.0]
    cfg = load_recipe(None, ["finetune.optim.schedule=constant"])
    assert lr_factor(cfg.finetune.optim, 10)(3) == 1.0


def test_gumbel_temperature_decays_to_its_floor():
    assert gumbel_temperature(0, 2.0, 0.5, 0.9) == 2.0
    assert gumbel_temperature(1, 2.0, 0.5, 0.9) == pytest.approx(1.8)
    assert gumbel_temperature(10_000, 2.0, 0.5, 0.9) == 0.5

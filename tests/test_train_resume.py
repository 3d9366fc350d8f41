"""Checkpoint / resume: atomic writes, and a SIGKILLed run resumed equals an uninterrupted one."""
from __future__ import annotations

import json
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from lasp.train.checkpoint import (latest_checkpoint, load_checkpoint, rng_state, save_checkpoint,
                                   set_rng_state)
from lasp.train.metrics_log import read_metrics
from test_train_support import fast_recipe, make_corpus

TESTS = Path(__file__).resolve().parent
ROOT = TESTS.parent


def test_rng_state_round_trip():
    import random

    import numpy as np

    state = rng_state()
    a = (torch.rand(3), np.random.rand(3), random.random())
    set_rng_state(state)
    b = (torch.rand(3), np.random.rand(3), random.random())
    assert torch.equal(a[0], b[0]) and (a[1] == b[1]).all() and a[2] == b[2]


def test_a_crash_during_save_leaves_the_latest_checkpoint_intact(tmp_path, monkeypatch):
    t1 = {"w": torch.arange(4.0)}
    save_checkpoint(tmp_path, 1, t1, {"step": 1})

    def die(*args, **kwargs):  # the process "dies" after the weights were written, before the state
        raise KeyboardInterrupt("killed during save")

    monkeypatch.setattr("lasp.train.checkpoint.torch.save", die)
    with pytest.raises(KeyboardInterrupt):
        save_checkpoint(tmp_path, 2, {"w": torch.zeros(4)}, {"step": 2})
    latest = latest_checkpoint(tmp_path)
    assert latest.name == "step-00000001"
    tensors, state = load_checkpoint(latest)
    assert torch.equal(tensors["w"], t1["w"]) and state["step"] == 1
    # the half-written folder went with the exception (a kill -9 leaves it; the next save removes it)
    assert not any(p.name.startswith(".tmp-") for p in (tmp_path / "checkpoints").iterdir())
    monkeypatch.undo()
    save_checkpoint(tmp_path, 3, {"w": torch.ones(4)}, {"step": 3}, keep=1)
    names = sorted(p.name for p in (tmp_path / "checkpoints").iterdir())
    assert names == ["latest", "step-00000003"]  # half-written directory and old step cleaned up


def test_latest_pointing_at_a_missing_checkpoint_is_reported(tmp_path):
    from lasp.errors import ConfigError

    (tmp_path / "checkpoints").mkdir()
    (tmp_path / "checkpoints" / "latest").write_text("step-00000009\n")
    with pytest.raises(ConfigError, match="step-00000009"):
        latest_checkpoint(tmp_path)


@pytest.mark.parametrize("name", ["../../other-run/checkpoints/step-00000060", "/abs/step-00000001", "step-1"])
def test_latest_naming_anything_but_a_checkpoint_of_this_run_is_refused(tmp_path, name):
    from lasp.train.checkpoint import CheckpointError, load_resumable

    other = tmp_path / "other-run"
    save_checkpoint(other, 60, {"w": torch.ones(2)}, {"step": 60})
    run = tmp_path / "a" / "b"
    save_checkpoint(run, 2, {"w": torch.zeros(2)}, {"step": 2})
    (run / "checkpoints" / "latest").write_text(name + "\n")
    for read in (load_resumable, latest_checkpoint):
        with pytest.raises(CheckpointError, match=rf"{run / 'checkpoints' / 'latest'} names '{name}', which is not a "
                                                  r"checkpoint of this run.*delete"):
            read(run)


KILLED_RUN = textwrap.dedent("""
    import os, signal, sys
    sys.path.insert(0, {tests!r})
    from pathlib import Path
    from test_train_support import fast_recipe
    from lasp.train.finetune import finetune
    manifests = {{"train": Path({train!r}), "test": Path({test!r})}}
    cfg = fast_recipe(Path({root!r}), manifests, *{overrides!r})
    def on_checkpoint(step, path):
        if step == {kill_at}:
            os.kill(os.getpid(), signal.SIGKILL)
    finetune(cfg, callbacks={{"on_checkpoint": on_checkpoint}}, progress=False)
""")


@pytest.mark.e2e
@pytest.mark.parametrize("system, extra", [("lasp", ()), ("adapters", ()),
                                           ("lasp", ("finetune.grad_accum_steps=3", "data.mixed=true"))],
                         ids=["lasp", "adapters", "lasp-accumulating-mixed"])
def test_sigkill_then_resume_matches_an_uninterrupted_run(tmp_path, system, extra):
    from lasp.train.finetune import finetune

    manifests = make_corpus(tmp_path / "corpus")
    common = [f"finetune.system={system}", "finetune.max_steps=8", "finetune.ckpt_every=3",
              "finetune.mask_time_prob=0.2", "finetune.mask_time_length=2", "model.name=tiny", *extra]
    # uninterrupted
    ref_cfg = fast_recipe(tmp_path / "a", manifests, *common)
    ref_final = finetune(ref_cfg, progress=False)
    # killed by SIGKILL right after the step-6 checkpoint, in its own process
    script = KILLED_RUN.format(tests=str(TESTS), train=str(manifests["train"]), test=str(manifests["test"]),
                               root=str(tmp_path / "b"), overrides=common, kill_at=6)
    proc = subprocess.run([sys.executable, "-c", script], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert proc.returncode == -signal.SIGKILL, proc.stderr[-2000:]
    run_b = tmp_path / "b" / "runs" / f"finetune-{system}"
    assert latest_checkpoint(run_b).name == "step-00000006"
    assert not (run_b / "final").exists()
    # resumed in this process
    cfg_b = fast_recipe(tmp_path / "b", manifests, *common)
    final_b = finetune(cfg_b, progress=False)
    a = load_file(str(ref_final / "shared" / "model.safetensors"))
    b = load_file(str(final_b / "shared" / "model.safetensors"))
    assert a.keys() == b.keys()
    # CPU, one thread, same seed: the resumed run is bit-identical (tolerance 0)
    for k in a:
        assert torch.equal(a[k], b[k]), k
    if system == "adapters":
        assert torch.equal(load_file(str(ref_final / "adapters.safetensors"))["es.0.linear_2.weight"],
                           load_file(str(final_b / "adapters.safetensors"))["es.0.linear_2.weight"])
    loss_a = {r["step"]: r["loss"] for r in read_metrics(ref_final.parent) if r["kind"] == "train"}
    loss_b = {r["step"]: r["loss"] for r in read_metrics(run_b) if r["kind"] == "train"}
    assert [loss_b[s] for s in range(1, 9)] == [loss_a[s] for s in range(1, 9)]
    events = [r for r in read_metrics(run_b) if r["kind"] == "event"]
    assert events and events[0]["resumed_from"].endswith("step-00000006")
    summary = json.loads((final_b / "train_summary.json").read_text())
    assert summary["step"] == 8 and summary["skipped_nonfinite"] == 0

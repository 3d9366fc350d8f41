"""Run directories: changed-recipe resume, one writer, checkpoint checksums and fallback, kill and Ctrl-C."""
from __future__ import annotations

import hashlib
import json
import os
import re
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from lasp.config.recipe import save_recipe
from lasp.errors import ConfigError
from lasp.locks import LockError
from lasp.train.checkpoint import load_resumable
from lasp.train.metrics_log import read_metrics
from test_provenance_masks import tree_hashes
from test_train_support import fast_recipe, make_corpus

TESTS = Path(__file__).resolve().parent
ROOT = TESTS.parent
COMMON = ["finetune.system=lasp", "finetune.mask_time_prob=0.0", "model.name=tiny"]


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    return make_corpus(tmp_path_factory.mktemp("corpus"))


def _final_weights(final: Path) -> dict:
    return load_file(str(final / "shared" / "model.safetensors"))


def test_resume_with_a_changed_recipe_lists_the_keys(tmp_path, corpus):
    from lasp.train.finetune import finetune

    run = tmp_path / "runs" / "finetune-lasp"
    finetune(fast_recipe(tmp_path, corpus, *COMMON, "finetune.max_steps=2"), progress=False)
    before = tree_hashes(run)
    cfg = fast_recipe(tmp_path, corpus, *COMMON, "finetune.max_steps=2", "finetune.optim.lr=0.1")
    with pytest.raises(ConfigError, match=r"changed: finetune\.optim\.lr: 0\.001 -> 0\.1\. .*"
                                          r"finetune\.resume_allow=\[finetune\.optim\.lr\]"):
        finetune(cfg, progress=False)
    assert tree_hashes(run) == before
    with pytest.raises(ConfigError, match=r"finetune\.max_steps: 2 -> 4"):
        finetune(fast_recipe(tmp_path, corpus, *COMMON, "finetune.max_steps=4"), progress=False)
    assert tree_hashes(run) == before
    # an explicitly allowed key resumes; the record then holds the new value
    final = finetune(fast_recipe(tmp_path, corpus, *COMMON, "finetune.max_steps=4",
                                 "finetune.resume_allow=[max_steps]"), progress=False)
    events = [r for r in read_metrics(run) if r["kind"] == "event"]
    assert events[-1]["resumed_from"].endswith("step-00000002")
    assert (final / "train_summary.json").is_file()
    # the change the refusal suggests, spelled as it says, resumes, and the new learning rate trains
    changed = [*COMMON, "finetune.max_steps=6", "finetune.optim.lr=0.002"]
    with pytest.raises(ConfigError) as refused:
        finetune(fast_recipe(tmp_path, corpus, *changed), progress=False)
    suggestion = re.search(r"finetune\.resume_allow=\[[^]]*\]", str(refused.value)).group(0)
    assert suggestion == "finetune.resume_allow=[finetune.max_steps, finetune.optim.lr]"
    finetune(fast_recipe(tmp_path, corpus, *changed, suggestion), progress=False)
    lrs = {r["step"]: r["lr"] for r in read_metrics(run) if r["kind"] == "train"}
    assert lrs[4] == pytest.approx(0.001) and lrs[5] == lrs[6] == pytest.approx(0.002)
    # starting over is always possible, and leaves nothing of the earlier run
    finetune(fast_recipe(tmp_path, corpus, *COMMON, "finetune.max_steps=2", "finetune.optim.lr=0.1",
                         "finetune.resume=false"), progress=False)
    assert sorted(p.name for p in (run / "checkpoints").iterdir()) == ["latest", "step-00000002"]
    assert max(r["step"] for r in read_metrics(run)) == 2


def test_resume_with_other_data_in_the_same_manifest_is_refused(tmp_path):
    from lasp.train.finetune import finetune

    corpus = make_corpus(tmp_path / "corpus")
    run = tmp_path / "runs" / "finetune-lasp"
    finetune(fast_recipe(tmp_path, corpus, *COMMON, "finetune.max_steps=2"), progress=False)
    record = json.loads((run / "run.json").read_text())["recipe"]
    assert record["data.train (sha256)"] == hashlib.sha256(corpus["train"].read_bytes()).hexdigest()
    rows = corpus["train"].read_text().splitlines(keepends=True)
    corpus["train"].write_text("".join(rows[:-1]))  # the same path, one row fewer
    before = tree_hashes(run)
    with pytest.raises(ConfigError, match=rf"changed: data\.train: the file {corpus['train']} holds other data "
                                          r"than when the run started"):
        finetune(fast_recipe(tmp_path, corpus, *COMMON, "finetune.max_steps=4", "finetune.resume_allow=[max_steps]"),
                 progress=False)
    assert tree_hashes(run) == before


HOLDER = textwrap.dedent("""
    import sys, time
    sys.path.insert(0, {tests!r})
    from pathlib import Path
    from test_train_support import fast_recipe
    from lasp.train.finetune import finetune
    cfg = fast_recipe(Path({root!r}), {{"train": Path({train!r}), "test": Path({test!r})}}, *{overrides!r})
    def on_checkpoint(step, path):
        if step == 1:
            Path({ready!r}).write_text("ready")
            time.sleep(120)
    finetune(cfg, callbacks={{"on_checkpoint": on_checkpoint}}, progress=False)
""")


@pytest.mark.e2e
def test_a_second_writer_is_refused_and_a_dead_ones_lock_goes_with_it(tmp_path, corpus, capsys):
    from lasp.train.finetune import finetune

    overrides = [*COMMON, "finetune.max_steps=3", "finetune.ckpt_every=1"]
    ready = tmp_path / "ready"
    script = HOLDER.format(tests=str(TESTS), root=str(tmp_path), train=str(corpus["train"]),
                           test=str(corpus["test"]), overrides=overrides, ready=str(ready))
    holder = subprocess.Popen([sys.executable, "-c", script], cwd=ROOT, stderr=subprocess.PIPE, text=True)
    try:
        for _ in range(600):
            if ready.exists() or holder.poll() is not None:
                break
            time.sleep(0.1)
        assert ready.exists(), holder.stderr.read()[-2000:] if holder.poll() is not None else "holder never ready"
        run = tmp_path / "runs" / "finetune-lasp"
        before = tree_hashes(run)
        with pytest.raises(LockError, match=rf"run directory {run} is in use by another lasp process "
                                            rf"\(pid {holder.pid} on "):
            finetune(fast_recipe(tmp_path, corpus, *overrides), progress=False)
        assert tree_hashes(run) == before
    finally:
        holder.send_signal(signal.SIGKILL)
        holder.wait()
    # the holder died without releasing: the kernel released its lock with it, nothing to take over
    capsys.readouterr()
    final = finetune(fast_recipe(tmp_path, corpus, *overrides), progress=False)
    assert "stale" not in capsys.readouterr().err
    assert (final / "train_summary.json").is_file()


KILLED_IN_SAVE = textwrap.dedent("""
    import os, signal, sys
    sys.path.insert(0, {tests!r})
    from pathlib import Path
    from test_train_support import fast_recipe
    import lasp.train.checkpoint as ckpt
    from lasp.train.finetune import finetune
    real_save_file = ckpt.save_file
    def dying_save_file(tensors, path, *a, **k):
        real_save_file(tensors, path, *a, **k)
        if "step-00000006" in str(path):  # the weights of step 6 are written, its state is not
            os.kill(os.getpid(), signal.SIGKILL)
    ckpt.save_file = dying_save_file
    cfg = fast_recipe(Path({root!r}), {{"train": Path({train!r}), "test": Path({test!r})}}, *{overrides!r})
    finetune(cfg, progress=False)
""")


@pytest.mark.e2e
def test_kill_during_a_checkpoint_write_and_a_corrupt_newest_checkpoint_resume_from_the_one_before(
        tmp_path, corpus, capsys):
    from lasp.train.finetune import finetune

    overrides = [*COMMON, "finetune.max_steps=8", "finetune.ckpt_every=2", "finetune.keep_checkpoints=3"]
    reference = finetune(fast_recipe(tmp_path / "ref", corpus, *overrides), progress=False)
    script = KILLED_IN_SAVE.format(tests=str(TESTS), root=str(tmp_path / "b"), train=str(corpus["train"]),
                                   test=str(corpus["test"]), overrides=overrides)
    proc = subprocess.run([sys.executable, "-c", script], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert proc.returncode == -signal.SIGKILL, proc.stderr[-2000:]
    run = tmp_path / "b" / "runs" / "finetune-lasp"
    ckpts = run / "checkpoints"
    assert (ckpts / "latest").read_text().strip() == "step-00000004"
    assert any(p.name.startswith(".tmp-step-00000006") for p in ckpts.iterdir())  # the write that was killed
    # and the disk loses the end of the newest complete checkpoint
    weights = ckpts / "step-00000004" / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:-100])
    capsys.readouterr()
    final = finetune(fast_recipe(tmp_path / "b", corpus, *overrides), progress=False)
    err = capsys.readouterr().err
    assert "skipped checkpoint step-00000004: " in err and "model.safetensors has" in err and "truncated" in err
    assert "resuming from step-00000002 (step 2)" in err
    events = [r for r in read_metrics(run) if r["kind"] == "event"]
    assert events[-1]["resumed_from"].endswith("step-00000002")
    assert events[-1]["skipped_checkpoints"][0].startswith("step-00000004: ")
    a, b = _final_weights(reference), _final_weights(final)
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)  # same result as uninterrupted


def test_resume_reports_when_no_checkpoint_is_usable(tmp_path, corpus):
    from lasp.train.finetune import finetune

    overrides = [*COMMON, "finetune.max_steps=2", "finetune.ckpt_every=1"]
    finetune(fast_recipe(tmp_path, corpus, *overrides), progress=False)
    ckpts = tmp_path / "runs" / "finetune-lasp" / "checkpoints"
    for d in ckpts.glob("step-*"):
        (d / "model.safetensors").write_bytes(b"garbage")
    path, _, _, skipped = load_resumable(ckpts.parent)
    assert path is None and len(skipped) == 2
    with pytest.raises(ConfigError, match="no usable checkpoint to resume from"):
        finetune(fast_recipe(tmp_path, corpus, *overrides), progress=False)


@pytest.mark.e2e
def test_ctrl_c_saves_a_checkpoint_and_says_how_to_resume(tmp_path, corpus):
    cfg = fast_recipe(tmp_path, corpus, *COMMON, "finetune.max_steps=100000", "finetune.ckpt_every=100000",
                      "finetune.log_every=1")
    recipe = save_recipe(cfg, tmp_path / "recipe.yaml")
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    proc = subprocess.Popen([sys.executable, "-m", "lasp", "finetune", str(recipe)], cwd=ROOT, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    run = tmp_path / "runs" / "finetune-lasp"
    try:
        for _ in range(1200):
            if proc.poll() is not None:
                break
            metrics = run / "metrics.jsonl"
            if metrics.is_file() and sum(1 for r in read_metrics(run) if r["kind"] == "train") >= 3:
                break
            time.sleep(0.1)
        proc.send_signal(signal.SIGINT)
        out, err = proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 130, err[-3000:]
    assert "Traceback" not in err
    lines = [l for l in err.splitlines() if "Ctrl-C" in l]
    assert len(lines) == 1, err[-3000:]
    step = int(lines[0].split("Ctrl-C: stopped after step ")[1].split(";")[0])
    assert step >= 3 and f"checkpoint saved in {run / 'checkpoints'}" in lines[0]
    assert f"(resume with: lasp finetune {recipe})" in lines[0]
    path, _, state, skipped = load_resumable(run)
    assert path is not None and not skipped and int(state["step"]) == step

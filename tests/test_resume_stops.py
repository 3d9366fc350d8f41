"""A stopped run resumes to exactly the run that was never stopped: `kill -9` at several steps, Ctrl-C and SIGTERM,
in pre-training and fine-tuning, each compared with an uninterrupted run by the sha256 of its final weights.

Every run is the `lasp` command in its own process, as a user runs it; a stop is sent once the run's
metrics.jsonl shows the step it is aimed at (where exactly it lands varies, which is the point).
"""
from __future__ import annotations

import hashlib
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from safetensors import safe_open

from lasp.config.recipe import save_recipe
from test_train_support import fast_recipe, make_corpus

ROOT = Path(__file__).resolve().parents[1]
ENV = {**os.environ, "PYTHONPATH": str(ROOT), "TQDM_DISABLE": "1"}
STEPS = 12
STAGE_KEYS = ["max_steps={steps}", "ckpt_every=4", "log_every=1", "keep_checkpoints=2"]


def weights_sha(final: Path) -> str:
    """sha256 over every tensor of every safetensors file of a final/ folder (names, dtypes, shapes, bytes)."""
    h = hashlib.sha256()
    for f in sorted(final.rglob("*.safetensors")):
        h.update(str(f.relative_to(final)).encode())
        with safe_open(str(f), "pt") as st:
            for k in sorted(st.keys()):
                t = st.get_tensor(k).contiguous()
                h.update(f"{k}|{t.dtype}|{tuple(t.shape)}|".encode())
                h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes())
    return h.hexdigest()


@pytest.fixture(scope="module")
def recipes(tmp_path_factory):
    root = tmp_path_factory.mktemp("stops")
    manifests = make_corpus(root / "corpus")
    out = {}
    for stage in ("pretrain", "finetune"):
        keys = [f"{stage}.{k.format(steps=STEPS)}" for k in STAGE_KEYS]
        out[stage] = save_recipe(fast_recipe(root, manifests, f"{stage}.system=lasp", *keys,
                                             "finetune.mask_time_prob=0.2", "finetune.mask_time_length=2"),
                                 root / f"{stage}.yaml")
    return out


def _command(stage: str, recipe: Path, out: Path) -> list[str]:
    return [sys.executable, "-m", "lasp", stage, str(recipe), f"output_dir={out}"]


def _run(stage: str, recipe: Path, out: Path) -> subprocess.CompletedProcess:
    return subprocess.run(_command(stage, recipe, out), cwd=ROOT, env=ENV, capture_output=True, text=True,
                          timeout=600)


def _last_step(run_dir: Path) -> int:
    try:
        lines = (run_dir / "metrics.jsonl").read_text().splitlines()
    except FileNotFoundError:
        return 0
    steps = [r["step"] for r in map(json.loads, (l for l in lines if l.endswith("}"))) if r["kind"] == "train"]
    return max(steps, default=0)


def _stop_at(stage: str, recipe: Path, out: Path, step: int, signum: int) -> tuple[int, str]:
    """Start the stage in its own session (SIGINT at its default, as in a terminal), send ``signum`` once
    ``step`` was logged; returns (exit status, stderr)."""
    proc = subprocess.Popen(_command(stage, recipe, out), cwd=ROOT, env=ENV, stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE, text=True, start_new_session=True,
                            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    run_dir = out / f"{stage}-lasp"
    deadline = time.monotonic() + 600
    while _last_step(run_dir) < step and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.02)
    assert proc.poll() is None, f"the run ended before step {step}: {proc.stderr.read()[-2000:]}"
    os.killpg(proc.pid, signum) if signum == signal.SIGINT else proc.send_signal(signum)  # Ctrl-C: the group
    _, err = proc.communicate(timeout=600)
    return proc.returncode, err


@pytest.fixture(scope="module")
def reference(recipes, tmp_path_factory):
    """The final weights of an uninterrupted run of each stage."""
    root = tmp_path_factory.mktemp("reference")
    shas = {}
    for stage, recipe in recipes.items():
        done = _run(stage, recipe, root / stage)
        assert done.returncode == 0, done.stderr[-2000:]
        shas[stage] = weights_sha(root / stage / f"{stage}-lasp" / "final")
    return shas


@pytest.mark.parametrize("stage", ["pretrain", "finetune"])
def test_kill_9_at_three_steps_each_resumed_is_bit_identical(stage, recipes, reference, tmp_path):
    """One run killed three times, each time rerun with the same command: before its first checkpoint (the
    rerun starts over, its mask search included), between checkpoints, and late."""
    out = tmp_path / "run"
    run_dir = out / f"{stage}-lasp"
    for at in (1, 6, 10):
        rc, err = _stop_at(stage, recipes[stage], out, at, signal.SIGKILL)
        assert rc == -signal.SIGKILL, err[-2000:]
        assert not (run_dir / "final").exists()
    done = _run(stage, recipes[stage], out)
    assert done.returncode == 0, done.stderr[-2000:]
    assert "stale" not in done.stderr  # the kernel freed the lock with the killed process
    assert weights_sha(run_dir / "final") == reference[stage]
    # the steps trained again after a checkpoint are logged once
    steps = [r["step"] for r in map(json.loads, (run_dir / "metrics.jsonl").read_text().splitlines())
             if r["kind"] == "train"]
    assert steps == list(range(1, STEPS + 1))


@pytest.mark.parametrize("stage", ["pretrain", "finetune"])
def test_ctrl_c_and_sigterm_save_at_a_step_boundary_and_resume_bit_identically(stage, recipes, reference, tmp_path):
    out = tmp_path / "run"
    run_dir = out / f"{stage}-lasp"
    for at, signum, code, name in ((3, signal.SIGINT, 130, "Ctrl-C"), (7, signal.SIGTERM, 143, "SIGTERM")):
        rc, err = _stop_at(stage, recipes[stage], out, at, signum)
        assert rc == code, err[-2000:]
        assert "Traceback" not in err
        # the last step done is the checkpoint saved, and the message says so and how to resume
        done = _last_step(run_dir)
        assert at <= done < STEPS
        assert (run_dir / "checkpoints" / "latest").read_text().strip() == f"step-{done:08d}"
        last = err.strip().splitlines()[-1]
        assert f"{name}: stopped after step {done}; checkpoint saved in {run_dir / 'checkpoints'}" in last
        assert f"resume with: lasp {stage} {recipes[stage]} output_dir={out}" in last
        assert not (run_dir / ".lasp.lock").exists()
    resumed = _run(stage, recipes[stage], out)
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    assert weights_sha(run_dir / "final") == reference[stage]

"""Training into a log file (nohup, SLURM, `> log`): plain progress lines while it runs; Ctrl-C is one line."""
from __future__ import annotations

import logging
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from test_train_support import FAST_MODEL, make_corpus

ROOT = Path(__file__).resolve().parent.parent
PROGRESS = re.compile(r"^pretrain\[lasp\] step (\d+)/(\d+) \(\d+%\) \| loss [-\d.e+]+ .*\| rate [\d.e+]+ steps/s \| "
                      r"elapsed \d+:\d\d:\d\d \| ETA (\d+:\d\d:\d\d|\?)$")


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    return make_corpus(tmp_path_factory.mktemp("corpus"), n_train=4, n_test=1)


def start_pretrain(tmp_path: Path, corpus: dict, steps: int, log: Path, every: str) -> subprocess.Popen:
    cmd = [sys.executable, "-m", "lasp", "pretrain", "-", *FAST_MODEL, "threads=1", "device=cpu",
           f"output_dir={tmp_path / 'runs'}", f"data.train={corpus['train']}", "data.batch_size=2",
           "pretrain.num_negatives=5", "pretrain.mask_time_length=2", "pretrain.mask_time_prob=0.5",
           "masks.max_batches=1", "masks.scorer=magnitude", "masks.min_utterances=2", f"pretrain.max_steps={steps}",
           "pretrain.log_every=1",
           "pretrain.ckpt_every=100000"]
    cmd[cmd.index("-")] = str(ROOT / "recipes" / "pretrain_tiny.yaml")
    env = {**os.environ, "PYTHONPATH": str(ROOT), "LASP_PROGRESS_SECONDS": every}
    fh = open(log, "w")
    return subprocess.Popen(cmd, stdout=fh, stderr=subprocess.STDOUT, env=env, cwd=tmp_path)


def wait_for_progress(proc: subprocess.Popen, log: Path, timeout: float = 120) -> list[str]:
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        lines = [l for l in log.read_text().splitlines() if PROGRESS.match(l)]
        if lines:
            return lines
        assert proc.poll() is None, log.read_text()
        time.sleep(0.05)
    raise AssertionError("no progress line in the log")


@pytest.mark.e2e
def test_progress_lines_in_a_log_while_training(tmp_path, corpus):
    log = tmp_path / "train.log"
    proc = start_pretrain(tmp_path, corpus, steps=300, log=log, every="0.05")  # a tiny step takes ~15 ms
    wait_for_progress(proc, log)
    assert proc.poll() is None  # the line arrived while training was still running
    assert proc.wait(timeout=300) == 0
    text = log.read_text()
    assert "\r" not in text and "\x1b" not in text, text  # no progress-bar or colour control characters
    steps = [int(PROGRESS.match(l).group(1)) for l in text.splitlines() if PROGRESS.match(l)]
    assert len(steps) >= 3 and steps == sorted(steps) and steps[-1] == 300, text
    assert f"run directory (checkpoints, metrics.jsonl, tb/): {tmp_path / 'runs' / 'pretrain-lasp'}" in text


@pytest.mark.e2e
def test_ctrl_c_during_training_is_one_line(tmp_path, corpus):
    log = tmp_path / "train.log"
    proc = start_pretrain(tmp_path, corpus, steps=100000, log=log, every="0")
    wait_for_progress(proc, log)
    proc.send_signal(signal.SIGINT)
    assert proc.wait(timeout=120) == 130
    text = log.read_text()
    assert "Traceback" not in text, text
    last = text.splitlines()[-1]
    # training saved a checkpoint and says where; the CLI adds the command that resumes
    assert last.startswith("lasp pretrain: Ctrl-C: stopped after step "), last
    assert "; checkpoint saved in " in last and " (resume with: lasp pretrain " in last, last
    assert "pretrain.max_steps=100000" in last


def test_expected_head_switch_is_one_line(tmp_path, capsys, caplog):
    from lasp.models.load import load_model

    torch.manual_seed(0)
    load_model("tiny", head="pretraining").save_pretrained(tmp_path / "pre")
    capsys.readouterr()
    with caplog.at_level(logging.WARNING):
        load_model(str(tmp_path / "pre"), head="ctc", vocab_size=12)
    captured = capsys.readouterr()
    assert captured.out.splitlines() == [
        f"loaded {tmp_path / 'pre'}: 7 head tensors not used (project_hid, project_q, quantizer); "
        "new CTC head initialised (lm_head.bias, lm_head.weight)"]
    assert "LOAD REPORT" not in captured.err and not caplog.records  # transformers' table is not shown
    # the other way round (a CTC model as a pre-training start) leaves the quantizer random: a warning naming it
    load_model(str(tmp_path / "pre"), head="ctc", vocab_size=12).save_pretrained(tmp_path / "ctc")
    capsys.readouterr()
    with caplog.at_level(logging.WARNING):
        load_model(str(tmp_path / "ctc"), head="pretraining")
    warnings = [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING]
    assert len(warnings) == 1 and "weights not in the checkpoint" in warnings[0] and "quantizer" in warnings[0]
    assert capsys.readouterr().out == ""

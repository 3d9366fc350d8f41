"""Failures a user can fix print one line naming the path or key and what to do, exit non-zero, no traceback."""
from __future__ import annotations

import errno
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from lasp.cli import main
from test_train_support import FAST_MODEL, make_corpus

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    return make_corpus(tmp_path_factory.mktemp("corpus"), n_train=2, n_test=1)


@pytest.fixture
def recipe(tmp_path, corpus):
    path = tmp_path / "r.yaml"
    path.write_text(f"seed: 0\ndevice: cpu\noutput_dir: {tmp_path / 'runs'}\n"
                    f"data:\n  train: {corpus['train']}\n  test: {corpus['test']}\n", encoding="utf-8")
    return path


@pytest.fixture
def no_model_load(monkeypatch):
    """Early validation: these failures must be found before any model is built."""
    def refuse(*args, **kwargs):
        raise AssertionError("a model was loaded before the recipe's paths were checked")

    for module in ("lasp.train.pretrain", "lasp.train.finetune"):
        monkeypatch.setattr(f"{module}.load_model", refuse)


def one_line_error(capsys, rc: int, *needles: str) -> str:
    err = capsys.readouterr().err
    lines = err.rstrip("\n").splitlines()
    assert rc != 0
    assert len(lines) == 1 and "Traceback" not in err, err
    for needle in needles:
        assert needle in lines[0], lines[0]
    return lines[0]


def test_output_path_that_is_a_file(tmp_path, recipe, capsys, no_model_load):
    blocker = tmp_path / "taken"
    blocker.write_text("user data\n")
    rc = main(["pretrain", str(recipe), *FAST_MODEL, f"output_dir={blocker}"])
    one_line_error(capsys, rc, "output_dir", str(blocker), "is a file", "choose another output path")
    assert blocker.read_text() == "user data\n"
    rc = main(["finetune", str(recipe), f"finetune.run_dir={blocker}"])
    one_line_error(capsys, rc, "finetune.run_dir", str(blocker), "is a file")


def test_unwritable_output_is_found_before_the_model_loads(tmp_path, recipe, capsys, no_model_load, monkeypatch):
    # root may write anywhere, so the read-only mount is simulated where lasp asks the OS
    monkeypatch.setattr("lasp.cli.preflight.os.access", lambda path, mode: False)
    rc = main(["pretrain", str(recipe), f"output_dir={tmp_path / 'ro' / 'runs'}"])
    one_line_error(capsys, rc, "output_dir", "not writable", "choose a writable output path")


@pytest.mark.parametrize("code, needle", [(errno.ENOSPC, "disk is full"), (errno.EROFS, "read-only"),
                                          (errno.EACCES, "permission denied")])
def test_full_or_read_only_disk_during_a_stage_names_the_file(tmp_path, recipe, capsys, monkeypatch, code,
                                                              needle):
    """The write fails deep inside a library with no file name on the exception: lasp names what it was writing."""
    import torch

    from lasp.train.checkpoint import save_checkpoint

    run_dir = tmp_path / "runs" / "pretrain-lasp"

    def write(tensors, filename):
        raise OSError(code, os.strerror(code))

    def stage(cfg):
        save_checkpoint(run_dir, 10, {"w": torch.zeros(2)}, {})

    monkeypatch.setattr("lasp.train.checkpoint.save_file", write)
    monkeypatch.setattr("lasp.train.pretrain.pretrain", stage)
    rc = main(["pretrain", str(recipe)])
    one_line_error(capsys, rc, str(run_dir / "checkpoints" / "step-00000010"), os.strerror(code), needle)
    assert not any((run_dir / "checkpoints").iterdir())  # nothing half-written left behind


def test_config_folder_without_weights(tmp_path, recipe, capsys, no_model_load):
    from transformers import Wav2Vec2Config

    folder = tmp_path / "xlsr"
    Wav2Vec2Config().save_pretrained(folder)
    rc = main(["pretrain", str(recipe), f"model.name={folder}"])
    one_line_error(capsys, rc, "model.name", str(folder), "no weights", "model.safetensors")


def test_config_folder_without_weights_outside_a_recipe(tmp_path, capsys):
    """Where no recipe check runs first (prune --model), the folder is still judged before any head or weight."""
    from transformers import Wav2Vec2Config

    folder = tmp_path / "xlsr"
    Wav2Vec2Config().save_pretrained(folder)
    manifest = make_corpus(tmp_path / "c", langs=("es",), n_train=1, n_test=1)["train"]
    rc = main(["masks", "prune", "--model", str(folder), "--data", str(manifest), "--out", str(tmp_path / "m"),
               "--scorer", "magnitude", "--min-utterances", "1"])
    one_line_error(capsys, rc, str(folder), "no weights", "model.safetensors", "copy the whole Hugging Face")
    assert not (tmp_path / "m").exists()  # the --out folder made for the lock goes with the failed command


def test_non_utf8_manifest(tmp_path, recipe, capsys, no_model_load):
    bad = tmp_path / "latin1.jsonl"
    bad.write_bytes(json.dumps({"audio": "a.wav", "text": "x", "lang": "es"}).encode()[:-2] + b"\xe9\"}\n")
    rc = main(["pretrain", str(recipe), f"data.train={bad}"])
    one_line_error(capsys, rc, "data.train", str(bad), "not UTF-8", "line 1", "0xe9")
    # `data info` reads it through the manifest reader: the CLI finds the file the decoder was reading
    rc = main(["data", "info", str(bad)])
    one_line_error(capsys, rc, str(bad), "not UTF-8", "line 1")


def test_format_version_in_a_recipe(tmp_path, capsys):
    path = tmp_path / "v2.yaml"
    path.write_text('format_version: "v2"\nseed: 0\n')
    rc = main(["validate", str(path)])
    one_line_error(capsys, rc, str(path), "unknown key 'format_version'")


def test_negative_seed(recipe, capsys, no_model_load):
    rc = main(["pretrain", str(recipe), "seed=-1"])
    one_line_error(capsys, rc, "key 'seed'", "must be >= 0")


def test_keyboard_interrupt_is_one_line_with_the_resume_command(recipe, capsys, monkeypatch):
    def stage(cfg):
        raise KeyboardInterrupt

    monkeypatch.setattr("lasp.train.finetune.finetune", stage)
    rc = main(["finetune", str(recipe), "finetune.max_steps=5"])
    assert rc == 130
    line = one_line_error(capsys, rc, "interrupted; resume with: lasp finetune")
    assert line.endswith(f"{recipe} finetune.max_steps=5")


def test_keyboard_interrupt_keeps_what_training_said(recipe, capsys, monkeypatch):
    def stage(cfg):  # training saved a checkpoint and says so in the exception
        raise KeyboardInterrupt("interrupted at step 3; checkpoint runs/x/checkpoint-000003")

    monkeypatch.setattr("lasp.train.pretrain.pretrain", stage)
    rc = main(["pretrain", str(recipe)])
    assert rc == 130
    one_line_error(capsys, rc, "lasp pretrain: interrupted at step 3; checkpoint runs/x/checkpoint-000003 "
                               f"(resume with: lasp pretrain {recipe})")


def test_closed_pipe_exits_quietly(tmp_path):
    """`lasp validate --explain | head -1`: the reader is gone before lasp writes."""
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    proc = subprocess.Popen([sys.executable, "-m", "lasp", "validate", "--explain"], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, env=env, cwd=tmp_path)
    proc.stdout.close()  # like `head` exiting: python needs far longer than this to start and import lasp
    err = proc.stderr.read().decode()
    assert proc.wait(timeout=120) == 141  # 128 + SIGPIPE, what a shell reports for `yes | head`
    assert err == ""


def test_full_disk_reported_by_a_compiled_writer(tmp_path, recipe, capsys, monkeypatch, random_masks):
    """safetensors raises its own error type for ENOSPC; the message still becomes one line naming the file."""
    from safetensors import SafetensorError

    out = tmp_path / "runs" / "masks"

    def write(tensors, filename, metadata=None):
        raise SafetensorError("Error while serializing: IoError(Os { code: 28, kind: StorageFull, "
                              'message: "No space left on device" })')

    monkeypatch.setattr("lasp.masks.store.save_file", write)
    monkeypatch.setattr("lasp.train.pretrain.pretrain", lambda cfg: random_masks.save(out))
    rc = main(["pretrain", str(recipe)])
    one_line_error(capsys, rc, str(out / "masks-core."), "No space left on device", "disk is full")
    assert sorted(p.name for p in out.iterdir()) == []  # no partial mask file, no config naming one


def test_a_bug_keeps_its_traceback(recipe, monkeypatch):
    def stage(cfg):
        raise RuntimeError("shape mismatch in lasp itself")

    monkeypatch.setattr("lasp.train.pretrain.pretrain", stage)
    with pytest.raises(RuntimeError, match="shape mismatch"):
        main(["pretrain", str(recipe)])


def test_earlier_spellings_still_work_with_a_note(tmp_path, capsys, random_masks):
    random_masks.save(tmp_path / "masks")
    assert main(["overlap", str(tmp_path / "masks"), "--out", str(tmp_path / "o"), "--no-plots"]) == 0
    err = capsys.readouterr().err
    assert "`lasp overlap` is now `lasp masks overlap`" in err
    assert (tmp_path / "o" / "summary.txt").is_file()

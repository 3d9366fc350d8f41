"""What used to be accepted silently is an error or is counted and reported."""
from __future__ import annotations

import json
import logging
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from lasp.errors import ConfigError
from test_train_support import fast_recipe, make_corpus

ROOT = Path(__file__).resolve().parent.parent


def test_a_typo_in_model_overrides_names_the_key(tmp_path):
    from lasp.models.load import load_model

    with pytest.raises(ConfigError, match="'hiden_size' is not a field of Wav2Vec2Config.*did you mean 'hidden_size'"):
        load_model("tiny", head="pretraining", hiden_size=32)
    torch.manual_seed(0)
    load_model("tiny", head="pretraining", hidden_size=48, num_attention_heads=4).save_pretrained(tmp_path)
    with pytest.raises(ConfigError, match="'mask_tim_prob'.*did you mean 'mask_time_prob'"):
        load_model(str(tmp_path), head="ctc", mask_tim_prob=0.1)
    assert load_model(str(tmp_path), head="ctc", mask_time_prob=0.1).config.mask_time_prob == 0.1


def test_finetuning_start_point_is_explicit_and_logged(tmp_path, caplog):
    from lasp.train.finetune import finetune, finetune_init

    corpus = make_corpus(tmp_path / "corpus", n_train=2, n_test=1)
    cfg = fast_recipe(tmp_path, corpus, "finetune.system=shared", "finetune.max_steps=1")
    assert finetune_init(cfg) == ("tiny", "finetune.init is null: model.name")
    with caplog.at_level(logging.WARNING, logger="lasp.train.finetune"):
        final = finetune(cfg, progress=False)
    assert "fine-tuning starts from tiny" in caplog.text and "randomly initialised" in caplog.text
    summary = json.loads((final / "train_summary.json").read_text())
    assert summary["init"] == "tiny" and summary["init_from"] == "finetune.init is null: model.name"
    # `pretrain` names this recipe's pre-training output, and it must exist: nothing is guessed from the disk
    with pytest.raises(ConfigError, match="'finetune.init' is 'pretrain' but .*pretrain-lasp/final"):
        finetune_init(fast_recipe(tmp_path, corpus, "finetune.init=pretrain"))


def _nan_batch(model):
    from conftest import make_pretrain_batch

    batch = make_pretrain_batch(model, batch_size=1, samples=4000, span=2)
    batch["input_values"][0, 100] = float("nan")
    return batch


def test_scoring_and_imp_count_non_finite_batches_in_the_mask_metadata(tiny_pretraining, tmp_path):
    from conftest import make_pretrain_batch

    from lasp.search.imp import imp_language_masks
    from lasp.masks.language_masks import LanguageMasks
    from lasp.search.pruning import make_language_masks

    good = make_pretrain_batch(tiny_pretraining, batch_size=1, samples=4000, span=2)
    bad = _nan_batch(tiny_pretraining)
    masks = make_language_masks(tiny_pretraining, {"es": [good, bad, good], "de": [good]}, scorer="taylor",
                                progress=False)
    masks.save(tmp_path / "m")
    assert LanguageMasks.load(tmp_path / "m").metadata["skipped_nonfinite"] == {"es": 1, "de": 0}
    imp = imp_language_masks(tiny_pretraining, {"es": [good, bad]}, sparsity=0.5, rounds=1, steps=4,
                             progress=False)
    assert imp.metadata["skipped_nonfinite"] == {"es": 2}  # steps 1 and 3 took the NaN batch
    with pytest.raises(ConfigError, match="1 had a non-finite loss"):
        make_language_masks(tiny_pretraining, {"es": [bad]}, scorer="taylor", progress=False)


def test_prune_through_a_head_the_checkpoint_lacks_is_an_error(tmp_path, capsys):
    from lasp.cli import main
    from lasp.models.load import load_model

    corpus = make_corpus(tmp_path / "corpus", n_train=2, n_test=1)
    torch.manual_seed(0)
    load_model("tiny", head="pretraining").save_pretrained(tmp_path / "pre")
    assert main(["masks", "prune", "--model", str(tmp_path / "pre"), "--data", str(corpus["train"]), "--head", "ctc",
                 "--min-utterances", "1", "--out", str(tmp_path / "m")]) == 1
    err = capsys.readouterr().err
    assert "no trained 'ctc' head" in err and "saved heads: pretraining" in err
    assert not (tmp_path / "m" / "mask_config.json").exists()  # no mask set written (only its lock folder)


def test_lasp_help_does_not_import_torch():
    code = "import sys; from lasp.cli import build_parser; build_parser(); print('torch' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, check=True,
                         env={"PYTHONPATH": str(ROOT), "PATH": "/usr/bin:/bin"})
    assert out.stdout.strip() == "False"


def test_evaluation_imports_none_of_the_training_machinery():
    code = ("import sys; import lasp.train.evaluate; "
            "print(sorted(m for m in sys.modules if m.startswith('lasp.train.') and m != 'lasp.train.evaluate'))")
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, check=True,
                         env={"PYTHONPATH": str(ROOT), "PATH": "/usr/bin:/bin"})
    assert out.stdout.strip() == "[]"

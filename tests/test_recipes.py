"""Every recipe in recipes/ validates; each starts with the command that runs it; typos fail by name."""
from __future__ import annotations

import re
from pathlib import Path

import pytest

from lasp.config.recipe import load_recipe
from lasp.errors import ConfigError

RECIPES = sorted((Path(__file__).resolve().parent.parent / "recipes").glob("*.yaml"))


def test_there_are_recipes():
    names = {p.name for p in RECIPES}
    assert {"pretrain_tiny.yaml", "finetune_tiny.yaml", "xlsr53_commonvoice.yaml"} <= names


@pytest.mark.parametrize("recipe", RECIPES, ids=lambda p: p.name)
def test_recipe_validates_and_names_its_command(recipe):
    load_recipe(recipe)
    first = recipe.read_text(encoding="utf-8").splitlines()[0]
    assert first.startswith("# ") and "lasp" in first and f"recipes/{recipe.name}" in first, first


@pytest.mark.parametrize("recipe", RECIPES, ids=lambda p: p.name)
def test_a_mistyped_key_fails_naming_it(recipe, tmp_path):
    text = recipe.read_text(encoding="utf-8")
    broken = tmp_path / recipe.name
    broken.write_text(re.sub(r"^seed:", "sede:", text, count=1, flags=re.M), encoding="utf-8")
    with pytest.raises(ConfigError, match="unknown key 'sede'"):
        load_recipe(broken)


def test_paper_scale_recipe_settings():
    cfg = load_recipe(RECIPES[[p.name for p in RECIPES].index("xlsr53_commonvoice.yaml")])
    assert cfg.pretrain.mask_time_prob == 0.65 and cfg.pretrain.num_negatives == 100
    assert cfg.pretrain.diversity_weight == 0.1
    assert (cfg.pretrain.gumbel_max, cfg.pretrain.gumbel_min) == (2.0, 0.5)
    assert cfg.finetune.optim.schedule == "tri-stage" and cfg.finetune.freeze_feature_encoder
    assert cfg.data.alpha == 0.5 and len(cfg.data.languages) == 10
    # paper scale: mp3s decode in worker processes, and pre-training steps on over an hour of audio (8 GPUs)
    assert cfg.data.num_workers >= 4
    assert cfg.data.max_batch_seconds * cfg.pretrain.grad_accum_steps * 8 >= 3600


@pytest.mark.slow
@pytest.mark.timeout(3600)
def test_paper_scale_recipe_first_steps_on_the_xlsr53_preset(tmp_path):
    """The CommonVoice recipe's own settings, on the xlsr-53 preset (random weights), tiny data and batches."""
    import json

    from test_train_support import make_corpus

    from lasp.train.finetune import finetune
    from lasp.train.pretrain import pretrain

    m = make_corpus(tmp_path, langs=("es", "ru"), n_train=2, n_test=1)
    recipe = RECIPES[[p.name for p in RECIPES].index("xlsr53_commonvoice.yaml")]
    overrides = [
        "model.name=xlsr-53", "device=auto", f"output_dir={tmp_path / 'runs'}", f"data.train={m['train']}",
        f"data.test={m['test']}", "data.languages=[es, ru]", "data.vocab=null", "data.batch_size=1",
        "data.max_batch_seconds=null", f"masks.dir={tmp_path / 'masks'}", "masks.max_batches=1",
        "masks.min_utterances=1", "pretrain.max_steps=2", "finetune.max_steps=2", "pretrain.num_negatives=10",
        "pretrain.mask_time_length=2",
    ]
    cfg = load_recipe(recipe, overrides)
    pre = pretrain(cfg, progress=False)
    summary = json.loads((pre / "train_summary.json").read_text())
    assert summary["step"] == 2 and summary["skipped_nonfinite"] == 0
    fin = finetune(cfg, progress=False)
    assert json.loads((fin / "train_summary.json").read_text())["step"] == 2

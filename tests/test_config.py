"""Recipe schema: typed loading, key=value overrides, errors that name the key."""
from __future__ import annotations

import pytest

from lasp.cli import main
from lasp.config.recipe import config_to_dict, load_recipe, parse_overrides, save_recipe, stage_run_dir
from lasp.errors import ConfigError


def write(tmp_path, text):
    p = tmp_path / "r.yaml"
    p.write_text(text)
    return p


def test_defaults_and_stage_specific_nested_defaults():
    cfg = load_recipe(None, ["finetune.optim.lr=1e-3"])
    # a partial nested section keeps the stage's own defaults (tri-stage for fine-tuning)
    assert cfg.finetune.optim.lr == pytest.approx(1e-3)
    assert cfg.finetune.optim.schedule == "tri-stage"
    assert cfg.pretrain.optim.schedule == "linear-warmup"
    assert cfg.pretrain.optim.lr == pytest.approx(5e-4)


def test_overrides_are_typed_and_nested(tmp_path):
    p = write(tmp_path, "data:\n  batch_size: 4\nmodel:\n  overrides: {hidden_size: 64}\n")
    cfg = load_recipe(p, ["data.batch_size=8", "data.languages=[es, de]", "masks.dir=null",
                          "model.overrides={num_hidden_layers: 3}", "pretrain.max_minutes=2.5"])
    assert cfg.data.batch_size == 8
    assert cfg.data.languages == ["es", "de"]
    assert cfg.masks.dir is None
    assert cfg.model.overrides == {"hidden_size": 64, "num_hidden_layers": 3}  # merged, not replaced
    assert cfg.pretrain.max_minutes == 2.5
    assert parse_overrides(["a.b=1", "a.c=x"]) == {"a": {"b": 1, "c": "x"}}


@pytest.mark.parametrize("text, key, hint", [
    ("finetune:\n  max_step: 10\n", "finetune.max_step", "max_steps"),
    ("dta:\n  train: x\n", "dta", "data"),
    ("finetune:\n  optim:\n    lrr: 0.1\n", "finetune.optim.lrr", "lr"),
])
def test_unknown_keys_name_the_key_and_suggest(tmp_path, text, key, hint):
    with pytest.raises(ConfigError) as err:
        load_recipe(write(tmp_path, text))
    assert f"unknown key '{key}'" in str(err.value)
    assert f"did you mean '{hint}'" in str(err.value)
    assert "r.yaml" in str(err.value)


@pytest.mark.parametrize("override, fragment", [
    ("finetune.max_steps=ten", "key 'finetune.max_steps' expects int"),
    ("data.mixed=3", "key 'data.mixed' expects bool"),
    ("finetune.system=dense", "key 'finetune.system' must be one of"),
    ("masks.sparsity=1.5", "key 'masks.sparsity' must be in [0, 1)"),
    ("finetune.optim.tri_stage_ratios=[0.5, 0.5, 0.5]", "tri_stage_ratios"),
    ("pretrain.system=adapters", "key 'pretrain.system'"),
    ("data.batch_size=null", "cannot both be null"),
    # what the stages would reject later is refused when the recipe loads
    ("masks.pattern=2:4x", "key 'masks.pattern' must be 'unstructured' or n:m with 0 < n < m"),
    ("masks.pattern=4:2", "key 'masks.pattern' must be 'unstructured' or n:m"),
    ("masks.pattern=1:4", "key 'masks.sparsity' 0.5 contradicts pattern 1:4, which keeps 1 of 4 weights, i.e. "
                          "sparsity 0.75 (set it to 0.75)"),
    ("masks.lass_steps=0", "key 'masks.lass_steps' must be >= 1"),
    ("masks.min_utterances=-1", "key 'masks.min_utterances' must be >= 0"),
    ("data.alpha=-1", "key 'data.alpha' must be >= 0, got -1.0"),
    ("data.num_workers=-1", "key 'data.num_workers' must be >= 0"),
    ("finetune.optim.lr=.inf", "key 'finetune.optim.lr' must be a finite number, got inf"),
    ("pretrain.optim.lr=.nan", "key 'pretrain.optim.lr' must be a finite number, got nan"),
    ("pretrain.max_minutes=.inf", "key 'pretrain.max_minutes' must be a finite number, got inf"),
    ("finetune.optim.betas=[0.9, -.inf]", r"key 'finetune.optim.betas[1]' must be a finite number"),
    ("data.max_seconds=.nan", "key 'data.max_seconds' must be a finite number"),
    ("finetune.max_step=3", "unknown key 'finetune.max_step'"),
    ("novalue", "not of the form key=value"),
])
def test_bad_values_fail_naming_the_key(override, fragment):
    with pytest.raises(ConfigError) as err:
        load_recipe(None, [override])
    assert fragment in str(err.value)


def test_save_and_reload_round_trip(tmp_path):
    cfg = load_recipe(None, ["seed=7", "finetune.system=adapters", "adapters.dim=8"])
    path = save_recipe(cfg, tmp_path / "out.yaml")
    again = load_recipe(path)
    assert again == cfg
    assert stage_run_dir(again, "finetune").name == "finetune-adapters"


def test_a_pattern_and_the_sparsity_it_implies_load():
    cfg = load_recipe(None, ["masks.pattern=1:4", "masks.sparsity=0.75"])
    assert (cfg.masks.pattern, cfg.masks.sparsity) == ("1:4", 0.75)


def test_the_run_section_is_typed_and_optional(tmp_path):
    cfg = load_recipe(write(tmp_path, "run:\n  systems: [shared, lasp]\n  parallel: 3\n"))
    assert cfg.run.parallel == 3 and cfg.run.systems == ["shared", "lasp"]
    assert cfg.run.base_steps == 500  # a partial section keeps the section's defaults
    assert config_to_dict(cfg)["run"]["parallel"] == 3
    assert load_recipe(save_recipe(cfg, tmp_path / "again.yaml")) == cfg
    with pytest.raises(ConfigError, match="unknown key 'run.paralel' \\(did you mean 'parallel'\\?\\)"):
        load_recipe(write(tmp_path, "run:\n  paralel: 2\n"))
    with pytest.raises(ConfigError, match="key 'run' expects RunConfig \\| null, got 3"):
        load_recipe(None, ["run=3"])
    # a recipe without one has none, and writes none: stage recipes keep the keys they always had
    stages = load_recipe(None)
    assert stages.run is None and "run" not in config_to_dict(stages)
    assert "run:" not in save_recipe(stages, tmp_path / "stages.yaml").read_text()


def test_validate_command(tmp_path, capsys):
    good = write(tmp_path, "seed: 3\n")
    assert main(["validate", str(good)]) == 0
    assert "ok" in capsys.readouterr().out
    assert main(["validate", str(good), "finetune.max_stepz=1"]) == 1
    assert "unknown key 'finetune.max_stepz'" in capsys.readouterr().err
    assert main(["validate", "--explain"]) == 0
    assert "finetune.optim.schedule" in capsys.readouterr().out
    for override, key in (("masks.pattern=2:4x", "masks.pattern"), ("data.alpha=-1", "data.alpha"),
                          ("finetune.optim.lr=.inf", "finetune.optim.lr")):
        assert main(["validate", str(good), override]) == 1
        err = capsys.readouterr().err
        assert f"r.yaml: key '{key}'" in err and len(err.strip().splitlines()) == 1, err

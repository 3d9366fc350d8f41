"""`masks.pattern: 2:4` is the N:M pattern "2:4", not YAML 1.1's base-60 integer 124 (file or override)."""
from __future__ import annotations

import pytest
import yaml

from lasp.config.recipe import load_recipe, save_recipe, yaml_load


@pytest.mark.parametrize("spelling", ["2:4", '"2:4"', "'2:4'"])
def test_pattern_in_a_recipe_file(tmp_path, spelling):
    path = tmp_path / "r.yaml"
    path.write_text(f"masks:\n  pattern: {spelling}\n")
    assert load_recipe(path).masks.pattern == "2:4"


@pytest.mark.parametrize("spelling", ["2:4", '"2:4"', "'2:4'"])
def test_pattern_as_an_override(spelling):
    assert load_recipe(None, [f"masks.pattern={spelling}"]).masks.pattern == "2:4"


def test_saved_recipe_reads_back_with_any_yaml_loader(tmp_path):
    cfg = load_recipe(None, ["masks.pattern=2:4"])
    path = save_recipe(cfg, tmp_path / "recipe.yaml")
    assert yaml.safe_load(path.read_text())["masks"]["pattern"] == "2:4"  # quoted on the way out
    assert load_recipe(path).masks.pattern == "2:4"


def test_other_scalars_resolve_as_before():
    data = yaml_load("a: 10\nb: 5.0e-4\nc: 1e-3\nd: true\ne: null\nf: -3\ng: 0x10\nh: 1:30.5\ni: .inf\n")
    assert data == {"a": 10, "b": 5.0e-4, "c": 1e-3, "d": True, "e": None, "f": -3, "g": 16, "h": "1:30.5",
                    "i": float("inf")}


def test_a_file_far_larger_than_any_recipe_is_refused_before_parsing(tmp_path):
    from lasp.errors import ConfigError

    huge = tmp_path / "huge.yaml"
    huge.write_text("data:\n  languages: [" + "es, " * 600_000 + "de]\n")  # 2.4 MB: parsing it would take minutes
    with pytest.raises(ConfigError, match=rf"{huge}: 2\.3 MiB is not a recipe \(recipes are a few KiB"):
        load_recipe(huge)

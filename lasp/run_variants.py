"""Ablations inside `lasp run`: ``run.variants``, each an extra lasp system on the same base model.

A variant is ``{name, overrides: {key: value}, pretrain: true|false}``. Its overrides change the masks section
(scorer, method, sparsity, LaSS settings ...) and, if wanted, the pre-training or fine-tuning sections of the
stage recipe; the runner owns where each stage reads and writes (``*.dir``, ``*.run_dir``, ``*.init``,
``*.system``), so those keys are refused. ``pretrain: false`` fine-tunes the variant's masked model straight
from the base model (language-adaptive pre-training off). A variant whose masks section equals the lasp
system's reuses the lasp mask set instead of searching it again.
"""
from __future__ import annotations

import json
import re
from dataclasses import dataclass
from pathlib import Path

from lasp.config import RecipeConfig, _merge, config_from_dict, config_to_dict, parse_overrides, save_recipe
from lasp.config_schema import SYSTEMS, MaskConfig
from lasp.errors import ConfigError

OVERRIDABLE = ("masks.", "pretrain.", "finetune.")
RUNNER_KEYS = ("masks.dir", "pretrain.run_dir", "pretrain.init", "pretrain.system", "finetune.run_dir",
               "finetune.init", "finetune.system")
_NAME = re.compile(r"^[a-z0-9][a-z0-9._]*(-[a-z0-9._]+)*$")
RESERVED = set(SYSTEMS) | {"base", "masks", "lasp"}


@dataclass
class Variant:
    name: str
    overrides: dict
    pretrain: bool = True

    def override_args(self) -> list[str]:
        # JSON values are YAML, and strings stay strings ("2:4" is not read as a number)
        return [f"{k}={json.dumps(v)}" for k, v in self.overrides.items()]


def parse_variants(raw: list) -> list[Variant]:
    """``run.variants`` as checked Variants; a bad entry is an error naming its position and key."""
    out: list[Variant] = []
    for i, item in enumerate(raw):
        where = f"run.variants[{i}]"
        if not isinstance(item, dict):
            raise ConfigError(f"{where}: must be a mapping {{name, overrides, pretrain}}, got {item!r}")
        unknown = sorted(set(item) - {"name", "overrides", "pretrain"})
        if unknown:
            raise ConfigError(f"{where}: unknown key {unknown[0]!r} (use name, overrides, pretrain)")
        name = item.get("name")
        if not isinstance(name, str) or not _NAME.match(name):
            raise ConfigError(f"{where}: 'name' must be lower-case letters, digits, '.', '_' or '-', got {name!r}")
        if name in RESERVED or any(v.name == name for v in out):
            raise ConfigError(f"{where}: name {name!r} is taken (a system, a stage or another variant)")
        overrides = item.get("overrides") or {}
        if not isinstance(overrides, dict):
            raise ConfigError(f"{where}.overrides: must be a mapping of recipe keys to values")
        for key in overrides:
            if not str(key).startswith(OVERRIDABLE):
                raise ConfigError(f"{where}.overrides: key {key!r} is not a masks.*, pretrain.* or finetune.* key "
                                  "(a variant shares the corpus, model and data settings of the run)")
            if key in RUNNER_KEYS:
                raise ConfigError(f"{where}.overrides: key {key!r} is set by lasp run for every variant")
        pretrain = item.get("pretrain", True)
        if not isinstance(pretrain, bool):
            raise ConfigError(f"{where}.pretrain: must be true or false, got {pretrain!r}")
        out.append(Variant(name, dict(overrides), pretrain))
    return out


def variant_recipe(stage_recipe: Path, variant: Variant) -> Path:
    """Where the variant's stage recipe lives, next to the run's stages.yaml."""
    return Path(stage_recipe).parent / f"stages-{variant.name}.yaml"


def variant_config(stage_cfg: RecipeConfig, variant: Variant) -> RecipeConfig:
    """The run's stage recipe with the variant's overrides (each key and value checked as in a recipe)."""
    data = _merge(config_to_dict(stage_cfg), parse_overrides(variant.override_args()))
    return config_from_dict(data, where=f"run.variants {variant.name!r}")


def write_variant_recipes(stage_cfg: RecipeConfig, stage_recipe: Path, variants: list[Variant]) -> None:
    """Write each variant's stage recipe, ``stages-<name>.yaml``, next to ``stage_recipe``."""
    for v in variants:
        save_recipe(variant_config(stage_cfg, v), variant_recipe(stage_recipe, v))


def label(cfg: RecipeConfig, pretrain: bool = True) -> str:
    """How a mask search setting is named in tables and the CER-vs-sparsity plot (one line per label)."""
    m = cfg.masks
    name = {"oneshot": f"oneshot {m.scorer}", "imp": "imp", "lass": f"lass {m.lass_criterion}"}[m.method]
    if m.method == "oneshot" and m.scorer in ("taylor", "fisher") and m.max_batches != MaskConfig.max_batches:
        name += f" ({m.max_batches} batches)"  # a line of its own in the plot: more scoring data, same criterion
    return name + ("" if pretrain else ", no pre-training")

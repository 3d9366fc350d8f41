"""Ablations inside `lasp run`: ``run.variants``, each an extra system on the same base model.

A variant is ``{name, overrides: {key: value}, pretrain: true|false, score_on: base|shared, system: lasp|adapters}``.

- ``system: lasp`` (the default): a lasp system. Its overrides change the masks section (scorer, method,
  sparsity, LaSS settings ...) and, if wanted, the pre-training or fine-tuning sections of the stage recipe.
  ``pretrain: false`` fine-tunes the variant's masked model straight from the base model (language-adaptive
  pre-training off). ``score_on: shared`` searches the variant's masks on the fine-tuned shared system, so the
  gradient scorers use the CTC loss on the transcripts instead of the pre-training loss on the base model.
  A variant whose masks section equals the lasp system's (scored on the base) reuses the lasp mask set.
- ``system: adapters``: the adapter baseline with other ``adapters.*`` or ``finetune.*`` settings (e.g.
  ``adapters.freeze_base: true``), fine-tuned from the same model as the adapters system.

The runner owns where each stage reads and writes (``*.dir``, ``*.run_dir``, ``*.init``, ``*.system``), so those
keys are refused.
"""
from __future__ import annotations

import json
import re
from dataclasses import dataclass
from pathlib import Path

from lasp.config.recipe import RecipeConfig, _merge, config_from_dict, config_to_dict, parse_overrides, save_recipe
from lasp.config.schema import SYSTEMS, MaskConfig
from lasp.errors import ConfigError

OVERRIDABLE = {"lasp": ("masks.", "pretrain.", "finetune."), "adapters": ("adapters.", "finetune.")}
VARIANT_SYSTEMS = tuple(OVERRIDABLE)
SCORE_ON = ("base", "shared")
RUNNER_KEYS = ("masks.dir", "pretrain.run_dir", "pretrain.init", "pretrain.system", "finetune.run_dir",
               "finetune.init", "finetune.system")
_NAME = re.compile(r"^[a-z0-9][a-z0-9._]*(-[a-z0-9._]+)*$")
RESERVED = set(SYSTEMS) | {"base", "masks", "lasp"}


@dataclass
class Variant:
    name: str
    overrides: dict
    pretrain: bool = True
    score_on: str = "base"
    system: str = "lasp"

    def reuses_lasp_masks(self, lasp_cfg: RecipeConfig, own_cfg: RecipeConfig) -> bool:
        """A lasp variant whose masks are searched exactly as the lasp system's: it trains on that mask set."""
        return self.system == "lasp" and self.score_on == "base" and own_cfg.masks == lasp_cfg.masks

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
        keys = ("name", "overrides", "pretrain", "score_on", "system")
        unknown = sorted(set(item) - set(keys))
        if unknown:
            raise ConfigError(f"{where}: unknown key {unknown[0]!r} (use {', '.join(keys)})")
        name = item.get("name")
        if not isinstance(name, str) or not _NAME.match(name):
            raise ConfigError(f"{where}: 'name' must be lower-case letters, digits, '.', '_' or '-', got {name!r}")
        if name in RESERVED or any(v.name == name for v in out):
            raise ConfigError(f"{where}: name {name!r} is taken (a system, a stage or another variant)")
        system = item.get("system", "lasp")
        if system not in VARIANT_SYSTEMS:
            raise ConfigError(f"{where}.system: must be one of {', '.join(VARIANT_SYSTEMS)}, got {system!r}")
        overrides = item.get("overrides") or {}
        if not isinstance(overrides, dict):
            raise ConfigError(f"{where}.overrides: must be a mapping of recipe keys to values")
        allowed = OVERRIDABLE[system]
        for key in overrides:
            if not str(key).startswith(allowed):
                raise ConfigError(f"{where}.overrides: key {key!r} is not a "
                                  + ", ".join(f"{a}*" for a in allowed) + f" key for a {system} variant "
                                  "(a variant shares the corpus, model and data settings of the run)")
            if key in RUNNER_KEYS:
                raise ConfigError(f"{where}.overrides: key {key!r} is set by lasp run for every variant")
        pretrain = item.get("pretrain", True)
        if not isinstance(pretrain, bool):
            raise ConfigError(f"{where}.pretrain: must be true or false, got {pretrain!r}")
        score_on = item.get("score_on", "base")
        if score_on not in SCORE_ON:
            raise ConfigError(f"{where}.score_on: must be base or shared, got {score_on!r}")
        if system == "adapters" and ("pretrain" in item or "score_on" in item):
            raise ConfigError(f"{where}: an adapters variant has no masks and no language-adaptive pre-training "
                              "(drop pretrain and score_on)")
        out.append(Variant(name, dict(overrides), pretrain, score_on, system))
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


def label(cfg: RecipeConfig, variant: Variant | None = None, say_pretraining: bool = False) -> str:
    """How a system's setting is named in tables and, with ``say_pretraining``, in the CER-vs-sparsity plot (one
    line per label; the table has a column for pre-training)."""
    if variant is not None and variant.system == "adapters":
        a = cfg.adapters
        return f"adapters, dim {a.dim}, base {'frozen' if a.freeze_base else 'trained'}"
    m = cfg.masks
    name = {"oneshot": f"oneshot {m.scorer}", "imp": "imp", "lass": f"lass {m.lass_criterion}"}[m.method]
    if m.method == "oneshot" and m.scorer in ("taylor", "fisher") and m.max_batches != MaskConfig.max_batches:
        name += f" ({m.max_batches} batch{'es' if m.max_batches > 1 else ''})"  # a line of its own in the plot: more scoring data, same criterion
    if variant is not None and variant.score_on == "shared":
        name += ", CTC on shared"
    off = say_pretraining and variant is not None and not variant.pretrain
    return name + (", no pre-training" if off else "")

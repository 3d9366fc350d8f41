"""Ablations inside `lasp run`: ``run.variants``, each an extra system on the same base model.

A variant is a :class:`~lasp.config.schema.VariantConfig`: ``{name, overrides: {key: value}, pretrain,
score_on, system: lasp|adapters}``, checked when the recipe loads (:func:`lasp.config.checks.check_variants`).

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
from pathlib import Path

from lasp.config.recipe import config_from_dict, config_to_dict, merge, parse_overrides, save_recipe
from lasp.config.schema import RecipeConfig, VariantConfig
from lasp.search.config import MaskConfig


def pretrains(variant: VariantConfig) -> bool:
    """A lasp variant is pre-trained unless it says ``pretrain: false``; an adapters variant never is."""
    return variant.system == "lasp" and variant.pretrain is not False


def scored_on_shared(variant: VariantConfig) -> bool:
    return variant.score_on == "shared"


def reuses_lasp_masks(variant: VariantConfig, lasp_cfg: RecipeConfig, own_cfg: RecipeConfig) -> bool:
    """A lasp variant whose masks are searched exactly as the lasp system's: it trains on that mask set."""
    return variant.system == "lasp" and not scored_on_shared(variant) and own_cfg.masks == lasp_cfg.masks


def override_args(variant: VariantConfig) -> list[str]:
    # JSON values are YAML, and strings stay strings ("2:4" is not read as a number)
    return [f"{k}={json.dumps(v)}" for k, v in variant.overrides.items()]


def variant_recipe(stage_recipe: Path, variant: VariantConfig) -> Path:
    """Where the variant's stage recipe lives, next to the run's stages.yaml."""
    return Path(stage_recipe).parent / f"stages-{variant.name}.yaml"


def variant_config(stage_cfg: RecipeConfig, variant: VariantConfig) -> RecipeConfig:
    """The run's stage recipe with the variant's overrides (each key and value checked as in a recipe)."""
    data = merge(config_to_dict(stage_cfg), parse_overrides(override_args(variant)))
    return config_from_dict(data, where=f"run.variants {variant.name!r}")


def write_variant_recipes(stage_cfg: RecipeConfig, stage_recipe: Path, variants: list[VariantConfig]) -> None:
    """Write each variant's stage recipe, ``stages-<name>.yaml``, next to ``stage_recipe``."""
    for v in variants:
        save_recipe(variant_config(stage_cfg, v), variant_recipe(stage_recipe, v))


def label(cfg: RecipeConfig, variant: VariantConfig | None = None, say_pretraining: bool = False) -> str:
    """How a system's setting is named in tables and, with ``say_pretraining``, in the CER-vs-sparsity plot (one
    line per label; the table has a column for pre-training)."""
    if variant is not None and variant.system == "adapters":
        a = cfg.adapters
        return f"adapters, dim {a.dim}, base {'frozen' if a.freeze_base else 'trained'}"
    m = cfg.masks
    name = {"oneshot": f"oneshot {m.scorer}", "imp": "imp", "lass": f"lass {m.lass_criterion}"}[m.method]
    if m.method == "oneshot" and m.scorer in ("taylor", "fisher") and m.max_batches != MaskConfig.max_batches:
        name += f" ({m.max_batches} batch{'es' if m.max_batches > 1 else ''})"  # a line of its own in the plot: more scoring data, same criterion
    if variant is not None and scored_on_shared(variant):
        name += ", CTC on shared"
    off = say_pretraining and variant is not None and not pretrains(variant)
    return name + (", no pre-training" if off else "")

"""A `lasp run` output folder written while the run section was an untyped extra section is planned the same
and its stages resume: no run record is refused because the recipe's shape changed."""
from __future__ import annotations

import shutil
from pathlib import Path

from lasp.config.recipe import config_to_dict, load_recipe, save_recipe
from lasp.run.runner import plan_jobs, stage_config
from lasp.run.variants import write_variant_recipes
from lasp.train.run_record import check_run_record, stage_recipe

OLD = Path(__file__).resolve().parent / "fixtures" / "run_folder_before_typed_run_section"
NEW_KEYS = {"max_nonfinite: 0.1", "grad_accum_steps: 1", "activation_checkpointing: false", "keep_at: []",
            "layer_sparsity: null", "export_languages: false",
            "precision: fp32"}
STAGES = ("pretrain-lasp", "finetune-random", "finetune-adapters", "finetune-magnitude", "finetune-adapters-frozen")


def test_an_old_run_folder_is_planned_the_same_and_its_stages_resume(tmp_path):
    cfg = load_recipe(OLD / "recipe.yaml")  # its run.variants are plain mappings, some keys left out
    assert [(v.name, v.system, v.pretrain) for v in cfg.run.variants] == [("magnitude", "lasp", False),
                                                                          ("adapters-frozen", "adapters", None)]
    # rerunning rewrites the stage recipes: byte for byte what the folder holds
    stage_cfg = stage_config(cfg, cfg.run, {s: f"run/corpus/{s}.jsonl" for s in ("train", "dev", "test")})
    stages = save_recipe(stage_cfg, tmp_path / "stages.yaml")
    write_variant_recipes(stage_cfg, stages, cfg.run.variants)
    for name in ("stages.yaml", "stages-magnitude.yaml", "stages-adapters-frozen.yaml"):
        # keys added to the schema since the folder was written appear with their defaults, and only they
        rewritten = "".join(l for l in (tmp_path / name).read_text().splitlines(keepends=True)
                            if l.strip() not in NEW_KEYS)
        assert rewritten == (OLD / name).read_text(), name
    # every stage process reads its recipe with the planned overrides and resumes under the old run record
    jobs = {j.name: j for j in plan_jobs(load_recipe(OLD / "stages.yaml"), cfg.run, Path("run/stages.yaml"))}
    for name in STAGES:
        stage, recipe, overrides = jobs[name].argv[3], Path(jobs[name].argv[4]), jobs[name].argv[5:]
        stage_cfg = load_recipe(OLD / recipe.name, overrides)
        section = getattr(stage_cfg, stage)
        run_dir = tmp_path / name
        shutil.copytree(OLD / name, run_dir)
        record = stage_recipe(config_to_dict(stage_cfg), stage, section.system, section.init)
        assert check_run_record(run_dir, stage, record, allow=[], resuming=True) == [], name

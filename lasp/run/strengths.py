"""The base-strength axis of `lasp run` (``run.strengths``): the whole comparison once per strength of the base.

A strength ``PRESET@STEPS`` is the preset pre-trained shared on the run's corpus for STEPS steps. Each preset is
pre-trained once per seed, in ``<output_dir>/bases/[seed-<s>/]<preset>/``, by a chain of `lasp pretrain` stages
that continue one run (its checkpoint, optimizer, sampler and RNG) to each strength's step and keep the model there
(``pretrain.keep_at``: ``at-step-<N>/``). With a schedule and a Gumbel decay that do not depend on max_steps, that
model is the one an N-step pre-training gives, and the chain costs the longest strength's steps once.

Each strength's comparison is an ordinary `lasp run` of the recipe (seeds, systems, variants, its own report) in
``<output_dir>/<preset>-<steps>/``, with the kept model as its base (``model.name``); every strength of a seed reads
the same corpus.
"""
from __future__ import annotations

import sys
from dataclasses import dataclass, replace
from pathlib import Path

from lasp.analysis.seeds import EVAL_DIR
from lasp.config.checks import parse_strength
from lasp.config.schema import RecipeConfig, RunConfig
from lasp.run.schedule import Job
from lasp.run.seeds import evaluated_systems, seed_configs

BASES = "bases"
KEPT = "at-step-{steps}"


@dataclass
class Comparison:
    """One comparison of a run: a strength's (or, without run.strengths, the run's own) recipe and its seeds."""

    name: str                       # the strength (tiny-800), or "" for the run itself
    cfg: RecipeConfig               # output_dir and run.report of this comparison
    seed_cfgs: list[RecipeConfig]   # one per seed, base model set
    preset: str | None = None
    steps: int | None = None

    def prefix(self, seed_cfg: RecipeConfig) -> str:
        """How this comparison's jobs of ``seed_cfg`` are named in the one schedule ("" for a one-seed run)."""
        parts = [self.name] if self.name else []
        if len(self.seed_cfgs) > 1:
            parts.append(f"seed-{seed_cfg.seed}")
        return "/".join(parts)

    def systems(self) -> list[str]:
        """Every system this comparison evaluates: the run's systems and its variants."""
        return evaluated_systems(self.cfg.run)

    def evaluated(self) -> list[str]:
        """The systems whose evaluation every seed has finished (all of them once the comparison is done)."""
        run_dirs = [Path(c.output_dir) for c in self.seed_cfgs]
        return [s for s in self.systems()
                if all((d / EVAL_DIR.format(system=s) / "results.json").is_file() for d in run_dirs)]


def strength_name(preset: str, steps: int) -> str:
    return f"{preset}-{steps}"


def base_run_dir(cfg: RecipeConfig, seed_cfg: RecipeConfig, preset: str, multi_seed: bool) -> Path:
    """Where ``preset`` is pre-trained for the seed of ``seed_cfg``."""
    root = Path(cfg.output_dir) / BASES
    return (root / f"seed-{seed_cfg.seed}" if multi_seed else root) / preset


def comparisons(cfg: RecipeConfig, settings: RunConfig) -> list[Comparison]:
    """The comparisons `lasp run` makes: one per strength, or the run itself."""
    if not settings.strengths:
        return [Comparison("", cfg, seed_configs(cfg, settings))]
    out = []
    for value in settings.strengths:
        preset, steps = parse_strength(value)
        name = strength_name(preset, steps)
        sout = Path(cfg.output_dir) / name
        ssettings = replace(settings, strengths=[], base_steps=steps, report=str(sout / "report.md"))
        scfg = replace(cfg, output_dir=str(sout), model=replace(cfg.model, name=preset), run=ssettings)
        seeds = seed_configs(scfg, ssettings)
        multi = len(seeds) > 1
        seeds = [replace(c, model=replace(c.model, name=str(base_run_dir(cfg, c, preset, multi)
                                                                 / KEPT.format(steps=steps))))
                 for c in seeds]
        out.append(Comparison(name, scfg, seeds, preset, steps))
    return out


def base_job_name(comparison: Comparison, seed_cfg: RecipeConfig) -> str:
    seed = f"seed-{seed_cfg.seed}/" if len(comparison.seed_cfgs) > 1 else ""
    return f"{BASES}/{seed}base-{comparison.preset}-{comparison.steps}"


def base_jobs(cfg: RecipeConfig, settings: RunConfig, groups: list[Comparison],
              stage_recipes: dict[object, Path]) -> list[Job]:
    """Per seed and preset, the chain of pre-training stages that keeps the model at each strength's step.

    ``stage_recipes``: a stage recipe of each seed (any strength's: they share the corpus and the sections a
    shared pre-training reads); the chain overrides the model, the steps and where it writes.
    """
    jobs = []
    for preset in dict.fromkeys(g.preset for g in groups):
        mine = sorted((g for g in groups if g.preset == preset), key=lambda g: g.steps)
        keep = "[" + ", ".join(str(g.steps) for g in mine) + "]"
        for i, group in enumerate(mine):
            for seed_cfg in group.seed_cfgs:
                run_dir = Path(seed_cfg.model.name).parent
                deps = [base_job_name(mine[i - 1], seed_cfg)] if i else []
                jobs.append(Job(base_job_name(group, seed_cfg),
                                [sys.executable, "-m", "lasp", "pretrain", str(stage_recipes[seed_cfg.seed]),
                                 "pretrain.system=shared", f"pretrain.run_dir={run_dir}", f"model.name={preset}",
                                 f"pretrain.init={preset}", f"pretrain.max_steps={group.steps}", "pretrain.max_minutes=null",
                                 f"pretrain.keep_at={keep}", "pretrain.resume_allow=[max_steps, keep_at]",
                                 f"threads={settings.base_threads}", "data.mixed=false"],
                                deps, Path(seed_cfg.model.name) / "train_summary.json",
                                threads=settings.base_threads, run_dir=run_dir, max_steps=group.steps))
    return jobs

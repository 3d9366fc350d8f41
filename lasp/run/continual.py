"""`lasp run` of a recipe with a ``continual`` section: train on some languages, then add the others one at a time.

    corpus ─► base (shared pre-training, on the first languages) ─► masks (every language, on the base)
      ├─► [pretrain-first ─►] finetune-first ─► evaluate-first ─► add-1-<l1> ─► add-2-<l2> ─► ...   (step 0, 1, 2 ...)
      │                                          ├─► adapter-<l1>   (MMS adapter on the same frozen system)
      │                                          └─► control-<l1>   (the rule switched off: add_language.rule=shared)
      └─► [pretrain-joint ─►] finetune-joint ─► evaluate-joint   (every language trained together from the start)

Each addition is an ordinary ``lasp add-language`` of the previous step's system, evaluated on every language it
serves (``add-<i>-<lang>/eval``); the adapter baseline of language ``l_i`` is added to the same system as the
lasp addition of ``l_i`` (step i-1). Stages are scheduled like every `lasp run` (finished ones skipped, a killed
one resumes); with ``run.seeds`` every seed is a complete experiment in ``<output_dir>/seed-<s>``. The report
(:mod:`lasp.analysis.continual`) goes to ``run.report``.
"""
from __future__ import annotations

import json
import sys
import time
from dataclasses import replace
from pathlib import Path

from lasp.analysis.continual import write_continual_report
from lasp.config.recipe import RecipeConfig, save_recipe
from lasp.config.schema import ContinualConfig, RunConfig
from lasp.errors import ConfigError
from lasp.io import atomic_write_json
from lasp.run.inputs import base_is_checkpoint, make_corpus
from lasp.run.outputs import RunOutputs
from lasp.run.runner import guarded_run, masks_jobs, merge_times, override_value, run_settings, stage_config
from lasp.run.schedule import Job, run_jobs
from lasp.run.seeds import seed_configs

# the order a free thread-slot picks ready stages in: the long chain (fine-tuning, then additions) first
_RANK = {"base": 0, "masks": 1, "pretrain": 2, "finetune": 3, "add": 4, "adapter": 5, "control": 6, "evaluate": 7}


def continual_settings(cfg: RecipeConfig, settings: RunConfig) -> ContinualConfig:
    cont = cfg.continual
    if cont is None:
        raise ConfigError("this recipe has no 'continual' section; see recipes/continual.yaml")
    if not cont.first or not cont.add:
        raise ConfigError("continual.first and continual.add each need at least one language")
    both = sorted(set(cont.first) & set(cont.add))
    if both:
        raise ConfigError(f"continual: language {both[0]!r} is in both first and add")
    for key, langs in (("first", cont.first), ("add", cont.add)):
        odd = [l for l in langs if l not in settings.languages]
        if odd:
            raise ConfigError(f"continual.{key}: {odd[0]!r} is not one of run.languages {settings.languages}")
    if cont.add_steps < 1:
        raise ConfigError("continual.add_steps must be at least 1")
    return cont


def step_dirs(out: Path, cont: ContinualConfig) -> list[tuple[str, Path, list[str]]]:
    """(stage name, evaluation folder, languages served) of step 0 (the first languages) and every addition."""
    steps = [("first", out / "eval-first", list(cont.first))]
    for i, lang in enumerate(cont.add, 1):
        steps.append((f"add-{i}-{lang}", out / f"add-{i}-{lang}" / "eval", list(cont.first) + list(cont.add[:i])))
    return steps


def plan_continual(cfg: RecipeConfig, settings: RunConfig, cont: ContinualConfig, recipe: Path) -> list[Job]:
    out = Path(cfg.output_dir)
    lasp = [sys.executable, "-m", "lasp"]
    masks = out / "masks-lasp"
    first = f"data.languages={json.dumps(list(cont.first))}"
    if base_is_checkpoint(cfg):
        base, base_job, jobs = Path(cfg.model.name), [], []
    else:
        base, base_job = out / "base" / "final", ["base"]
        jobs = [Job("base", [*lasp, "pretrain", str(recipe), "pretrain.system=shared", f"pretrain.run_dir={base.parent}",
                             f"pretrain.init={cfg.model.name}", f"pretrain.max_steps={settings.base_steps}",
                             f"pretrain.max_minutes={override_value(settings.base_minutes)}",
                             f"threads={settings.base_threads}", "data.mixed=false",
                             *([first] if cont.base_on_first else [])],
                    [], base, threads=settings.base_threads, run_dir=base.parent, max_steps=settings.base_steps,
                    max_minutes=settings.base_minutes)]
    jobs += masks_jobs("masks", "lasp", cfg, recipe, base, base_job, masks, settings)  # every language's mask
    for name, langs in (("first", cont.first), ("joint", list(cont.first) + list(cont.add))):
        only = f"data.languages={json.dumps(list(langs))}"
        pre, ft, ev = out / f"pretrain-{name}", out / f"finetune-{name}", out / f"eval-{name}"
        init, deps = base, ["masks"]
        if cont.pretrain:
            jobs.append(Job(f"pretrain-{name}", [*lasp, "pretrain", str(recipe), "pretrain.system=lasp",
                                                 f"pretrain.run_dir={pre}", f"pretrain.init={base}",
                                                 f"masks.dir={masks}", "threads=1", "data.mixed=false", only],
                            ["masks"], pre / "final", run_dir=pre, max_steps=cfg.pretrain.max_steps))
            init, deps = pre / "final", [f"pretrain-{name}"]
        jobs += [Job(f"finetune-{name}", [*lasp, "finetune", str(recipe), "finetune.system=lasp",
                                          f"finetune.run_dir={ft}", f"finetune.init={init}",
                                          f"masks.dir={masks}", "threads=1", only],
                     deps, ft / "final", run_dir=ft, max_steps=cfg.finetune.max_steps),
                 Job(f"evaluate-{name}", [*lasp, "evaluate", str(recipe), f"evaluate.model={ft / 'final'}",
                                          f"evaluate.out_dir={ev}", "threads=1", only],
                     [f"finetune-{name}"], ev / "results.json")]
    prev, prev_job = out / "finetune-first", "finetune-first"
    for i, lang in enumerate(cont.add, 1):
        def addition(name: str, *extra: str) -> Job:
            d = out / name
            return Job(name, [*lasp, "add-language", str(prev), "--lang", lang, "--data", cfg.data.train,
                              "--test", cfg.data.test, "--out", str(d), "--set",
                              f"finetune.max_steps={cont.add_steps}", f"add_language.pretrain={json.dumps(cont.add_pretrain)}",
                              "threads=1", *extra],
                       [prev_job], d / "eval" / "results.json", run_dir=d, max_steps=cont.add_steps)
        jobs.append(addition(f"add-{i}-{lang}"))
        jobs.append(addition(f"adapter-{lang}", "add_language.rule=adapter", f"evaluate.languages=[{lang}]"))
        if i == 1 and cont.control:
            jobs.append(addition(f"control-{lang}", "add_language.rule=shared"))
        prev, prev_job = out / f"add-{i}-{lang}", f"add-{i}-{lang}"
    return jobs


def _kind(name: str) -> int:
    return _RANK[name.rsplit("/", 1)[-1].split("-")[0]]


def _prepare(seed_cfg: RecipeConfig, outputs: RunOutputs) -> list[Job]:
    """One seed's corpus, its recipes (recipe.yaml, stages.yaml) and its stage graph; what it will write in
    output_dir is listed in ``outputs`` first."""
    settings = seed_cfg.run
    cont = continual_settings(seed_cfg, settings)
    out = Path(seed_cfg.output_dir)
    outputs.claim([out])
    manifests = make_corpus(seed_cfg, settings)  # first: a refused corpus leaves nothing behind
    if "test" not in manifests:
        raise ConfigError(f"{settings.corpus}: the continual experiment needs a test manifest")
    stage_cfg = stage_config(seed_cfg, settings, manifests)
    jobs = plan_continual(stage_cfg, settings, cont, out / "stages.yaml")
    outputs.claim([out / "stages.yaml", out / "recipe.yaml", out / "logs", out / "stage_times.json",
                   settings.report, Path(settings.report).parent / "continual.json",
                   *(job.run_dir or job.done_marker.parent for job in jobs)])
    out.mkdir(parents=True, exist_ok=True)
    save_recipe(stage_cfg, out / "stages.yaml")
    save_recipe(seed_cfg, out / "recipe.yaml")
    return jobs


def run_continual(cfg: RecipeConfig, progress: bool = True, fresh: bool = False,
                  command: str = "lasp run RECIPE") -> Path:
    """Run the continual experiment of ``cfg`` (every seed of run.seeds) and write its report (opening with
    ``command``, the command line that ran it); returns its path. Output folder, lock, corpus checks and
    ``fresh`` as every `lasp run` (:func:`lasp.run.runner.guarded_run`)."""
    settings = run_settings(cfg)
    cont = continual_settings(cfg, settings)

    def experiment(runs: list[RecipeConfig], outputs: RunOutputs, t0: float) -> Path:
        multi = len(runs) > 1
        print(f"lasp run (continual): first {', '.join(cont.first)}, then add {', '.join(cont.add)} one at a "
              "time" + (f", seeds {', '.join(str(c.seed) for c in runs)}" if multi else "")
              + f", output {cfg.output_dir}", flush=True)
        jobs = []
        for seed_cfg in runs:
            planned = _prepare(seed_cfg, outputs)
            prefix = f"seed-{seed_cfg.seed}/" if multi else ""
            jobs += [replace(j, name=prefix + j.name, deps=[prefix + d for d in j.deps]) for j in planned]
        jobs.sort(key=lambda j: _kind(j.name))
        outputs.claim([Path(cfg.output_dir) / "logs"])
        walls = run_jobs(jobs, settings.parallel, Path(cfg.output_dir) / "logs", progress=progress)
        for seed_cfg in runs:
            seed_out, prefix = Path(seed_cfg.output_dir), f"seed-{seed_cfg.seed}/" if multi else ""
            mine = {k[len(prefix):]: v for k, v in walls.items() if k.startswith(prefix)}
            atomic_write_json(seed_out / "stage_times.json", merge_times(seed_out / "stage_times.json", mine))
        report = write_continual_report(settings.report, cont, [Path(c.output_dir) for c in runs],
                                        wall_total=time.monotonic() - t0, command=command)
        print(f"report: {report}", flush=True)
        return report

    return guarded_run(cfg, fresh, experiment)


def continual_report_from_outputs(cfg: RecipeConfig, command: str = "lasp run RECIPE") -> Path:
    """`lasp report` of a continual recipe: the report from whatever stages have finished."""
    settings = run_settings(cfg)
    cont = continual_settings(cfg, settings)
    runs = seed_configs(cfg, settings)
    for seed_cfg in runs:
        path = Path(seed_cfg.output_dir) / "stages.yaml"
        if not path.is_file():
            raise ConfigError(f"{path}: missing; `lasp run` has not started in output_dir {cfg.output_dir} yet")
    return write_continual_report(settings.report, cont, [Path(c.output_dir) for c in runs], command=command)

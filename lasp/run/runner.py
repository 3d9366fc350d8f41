"""`lasp run RECIPE`: the paper's pipeline end to end, as independent stage processes.

    corpus ─► base ─► masks (score + prune per language)
          ─► language-adaptive pre-training per system ─► CTC fine-tuning per system ─► evaluation ─► report

The corpus is the user's when ``run.corpus`` already holds manifests that lasp did not synthesize (no
``synth.json``): it is read, never written. Otherwise lasp synthesizes its offline demo corpus there. The base
is ``model.name`` itself when that is a local checkpoint directory (e.g. XLSR-53); for a preset (random
weights) a shared pre-training run on the corpus stands in for a pre-trained model.

Every stage is an ordinary ``lasp`` command run in its own process with one
thread (two one-thread processes get more done on a small CPU machine than one
two-thread process), scheduled as soon as the stages it needs are done. A stage
whose output exists is skipped, and a killed stage resumes from its last
checkpoint, so rerunning the same command continues an interrupted run.
"""
from __future__ import annotations

import json
import sys
import time
from dataclasses import replace
from pathlib import Path
from typing import Callable

from lasp.config.recipe import load_recipe, save_recipe
from lasp.config.schema import RecipeConfig, RunConfig
from lasp.errors import ConfigError
from lasp.io import atomic_write_json
from lasp.locks import locked
from lasp.run.inputs import base_is_checkpoint, check_corpus, corpus_kind, corpus_manifests, make_corpus
from lasp.run.outputs import RunOutputs
from lasp.run.report import seeds_report, write_report
from lasp.run.scaling import scaling_report
from lasp.run.schedule import Job, run_jobs
from lasp.run.seeds import seed_configs, summarize
from lasp.run.signal import REPEAT_SEED_OFFSET, repeat_dir, write_signals
from lasp.run.strengths import BASES, Comparison, base_job_name, base_jobs, comparisons
from lasp.run.variants import (pretrains, reuses_lasp_masks, scored_on_shared, variant_config, variant_recipe,
                               write_variant_recipes)

# The demo recipe ships inside the package so that `lasp run` works from any directory;
# recipes/demo.yaml in the repository is the same file (a test keeps them identical).
DEMO_RECIPE = Path(__file__).parent.parent / "recipes" / "demo.yaml"


def demo_recipe_path() -> Path:
    return DEMO_RECIPE


def run_settings(cfg: RecipeConfig) -> RunConfig:
    """The recipe's run section (its values were checked when the recipe loaded), or an error without one."""
    if cfg.run is None:
        raise ConfigError("this recipe has no 'run' section; see recipes/demo.yaml")
    return cfg.run


def plan_jobs(cfg: RecipeConfig, settings: RunConfig, stage_recipe: Path, base_job: list[str] | None = None
              ) -> list[Job]:
    """The stage graph: which command each stage runs and which stages it waits for.

    Pre-training batches are always single-language (each batch trains one language's sub-network, as in
    the paper); ``data.mixed`` only decides whether fine-tuning batches mix languages. ``base_job``: the stage
    that makes a checkpoint base (a strength's kept model), if any.
    """
    out = Path(cfg.output_dir)
    lasp = [sys.executable, "-m", "lasp"]
    masks = Path(cfg.masks.dir) if cfg.masks.dir else out / "masks-lasp"
    if base_is_checkpoint(cfg):
        base, base_job, jobs = Path(cfg.model.name), base_job or [], []  # a pre-trained model is the base
    else:
        base, base_job = out / "base" / "final", ["base"]
        jobs = [Job("base", [*lasp, "pretrain", str(stage_recipe), "pretrain.system=shared",
                             f"pretrain.run_dir={base.parent}", f"pretrain.init={cfg.model.name}",
                             f"pretrain.max_minutes={override_value(settings.base_minutes)}",
                             f"pretrain.max_steps={settings.base_steps}",
                             f"threads={settings.base_threads}", "data.mixed=false"],
                    [], base, threads=settings.base_threads, run_dir=base.parent, max_steps=settings.base_steps,
                    max_minutes=settings.base_minutes)]
    masked = [s for s in settings.systems if s in ("lasp", "random")]
    variants = [(v, variant_config(cfg, v)) for v in settings.variants]
    if masked or any(reuses_lasp_masks(v, cfg, vcfg) for v, vcfg in variants):
        # the lasp masks (random masks copy their per-tensor density) are searched once, on the base model
        jobs += masks_jobs("masks", "lasp", cfg, stage_recipe, base, base_job, masks, settings)
    # adapters are a fine-tuning method: they start from the shared model (the base without a shared system)
    adapters_start = ((out / "pretrain-shared" / "final", ["pretrain-shared"]) if "shared" in settings.systems
                      else (base, base_job))
    for system in settings.systems:
        pretrain_dir = out / f"pretrain-{system}"
        if system != "adapters":  # adapters are a fine-tuning method; they start from the shared model
            jobs.append(Job(f"pretrain-{system}",
                            [*lasp, "pretrain", str(stage_recipe), f"pretrain.system={system}",
                             f"pretrain.run_dir={pretrain_dir}", f"pretrain.init={base}",
                             f"masks.dir={masks}", "threads=1", "data.mixed=false"],
                            ["masks"] if system in masked else base_job, pretrain_dir / "final",
                            run_dir=pretrain_dir, max_steps=cfg.pretrain.max_steps,
                            max_minutes=cfg.pretrain.max_minutes))
        if system == "adapters":
            init, deps = adapters_start
        else:
            init, deps = pretrain_dir / "final", [f"pretrain-{system}"]
        jobs += _finetune_jobs(system, system, cfg, stage_recipe, masks, init, deps)
    for variant, vcfg in variants:
        recipe = variant_recipe(stage_recipe, variant)
        if variant.system == "adapters":
            # the adapter baseline with other settings, from the model the adapters system starts from
            jobs += _finetune_jobs(variant.name, "adapters", vcfg, recipe, masks, *adapters_start)
            continue
        # a lasp variant has its own masks unless they are searched exactly as the lasp system's
        if reuses_lasp_masks(variant, cfg, vcfg):
            vmasks, masks_job = masks, "masks"
        else:
            vmasks, masks_job = out / f"masks-{variant.name}", f"masks-{variant.name}"
            if scored_on_shared(variant):
                # scored through the fine-tuned shared system's CTC head, on the transcripts
                jobs += masks_jobs(masks_job, variant.name, vcfg, recipe, out / "finetune-shared" / "final",
                                    ["finetune-shared"], vmasks, settings, head="ctc")
            else:
                jobs += masks_jobs(masks_job, variant.name, vcfg, recipe, base, base_job, vmasks, settings)
        init, init_deps = base, [masks_job]
        if pretrains(variant):
            pretrain_dir = out / f"pretrain-{variant.name}"
            jobs.append(Job(f"pretrain-{variant.name}",
                            [*lasp, "pretrain", str(recipe), "pretrain.system=lasp", f"pretrain.run_dir={pretrain_dir}",
                             f"pretrain.init={base}", f"masks.dir={vmasks}", "threads=1", "data.mixed=false"],
                            [masks_job], pretrain_dir / "final", run_dir=pretrain_dir,
                            max_steps=vcfg.pretrain.max_steps, max_minutes=vcfg.pretrain.max_minutes))
            init, init_deps = pretrain_dir / "final", [f"pretrain-{variant.name}"]
        jobs += _finetune_jobs(variant.name, "lasp", vcfg, recipe, vmasks, init, init_deps)
    # When a thread-slot frees up, start the earliest kind of stage that is ready: every pre-training run
    # before any fine-tuning run, so the long fine-tuning runs start as early as possible and end together.
    return sorted(jobs, key=lambda job: STAGE_RANK[stage_kind(job.name)])


STAGE_RANK = {"base": 0, "masks": 1, "pretrain": 2, "finetune": 3, "evaluate": 4}


def stage_kind(name: str) -> str:
    """``finetune`` for ``finetune-lasp`` or ``seed-1/finetune-sparsity-0.3``."""
    return name.rsplit("/", 1)[-1].split("-")[0]


def masks_jobs(name: str, set_name: str, cfg: RecipeConfig, recipe: Path, base: Path, base_job: list[str],
                masks: Path, settings: RunConfig, head: str = "auto") -> list[Job]:
    """``lasp prune`` of ``base`` by ``cfg``'s masks section (any method) into ``masks``; ``head``: the loss the
    gradient scorers use (auto: the pre-training loss on a base model). With run.repeat_search also the same
    search on other batches (:mod:`lasp.run.signal`) into repeat/masks-<set_name>."""
    m = cfg.masks
    searches = [(name, cfg.seed, masks)]
    if settings.repeat_search:
        searches.append((f"repeat/{name}", cfg.seed + REPEAT_SEED_OFFSET, repeat_dir(cfg.output_dir, set_name)))
    return [Job(job, [sys.executable, "-m", "lasp", "prune", "--recipe", str(recipe), "--model", str(base),
                      "--data", cfg.data.train, "--method", m.method,
                      "--scorer", m.scorer, "--sparsity", str(m.sparsity), "--scope", m.scope,
                      "--pattern", m.pattern, "--batches", str(m.max_batches),
                      "--batch-size", str(cfg.data.batch_size or 4), "--seed", str(seed),
                      "--langs", ",".join(settings.languages), "--out", str(out),
                      "--min-utterances", str(m.min_utterances), "--head", head,
                      *(["--targets", *m.targets] if m.targets else [])],
                base_job, out / "mask_config.json") for job, seed, out in searches]


def _finetune_jobs(name: str, system: str, cfg: RecipeConfig, recipe: Path, masks: Path, init: Path,
                   deps: list[str]) -> list[Job]:
    """Fine-tuning of ``system`` from ``init`` into finetune-<name>, and its evaluation into eval-<name>."""
    lasp = [sys.executable, "-m", "lasp"]
    out = Path(cfg.output_dir)
    ft_dir, eval_dir = out / f"finetune-{name}", out / f"eval-{name}"
    return [Job(f"finetune-{name}",
                [*lasp, "finetune", str(recipe), f"finetune.system={system}", f"finetune.run_dir={ft_dir}",
                 f"finetune.init={init}", f"masks.dir={masks}", "threads=1"],
                deps, ft_dir / "final", run_dir=ft_dir, max_steps=cfg.finetune.max_steps,
                max_minutes=cfg.finetune.max_minutes),
            Job(f"evaluate-{name}",
                [*lasp, "evaluate", str(recipe), f"evaluate.model={ft_dir / 'final'}",
                 f"evaluate.out_dir={eval_dir}", "threads=1"],
                [f"finetune-{name}"], eval_dir / "results.json")]


def override_value(value) -> str:
    """``value`` as the YAML of a ``key=value`` override (None is ``null``)."""
    return "null" if value is None else str(value)


def prepare(cfg: RecipeConfig, settings: RunConfig, outputs: RunOutputs, base_job: list[str] | None = None
            ) -> tuple[RecipeConfig, list[Job]]:
    """One seed's corpus, its recipes (recipe.yaml, stages.yaml, stages-<variant>.yaml) and its stage graph;
    what it will write in output_dir is listed in ``outputs`` first. ``base_job``: the stage that makes a
    checkpoint base (a strength's kept model), if any."""
    out = Path(cfg.output_dir)
    outputs.claim([out])  # a seed's own folder
    manifests = make_corpus(cfg, settings)  # first: a refused corpus leaves nothing behind
    kind = corpus_kind(settings.corpus)
    what = "lasp synthetic corpus, read only" if kind == "synthetic" else "your manifests, read only"
    base = cfg.model.name if base_is_checkpoint(cfg) else f"pre-trained here from the {cfg.model.name} preset"
    print(f"corpus: {settings.corpus} ({what}); base model: {base}", flush=True)
    stage_cfg = stage_config(cfg, settings, manifests)
    jobs = plan_jobs(stage_cfg, settings, out / "stages.yaml", base_job)
    outputs.claim([out / "stages.yaml", out / "recipe.yaml", out / "logs", out / "stage_times.json",
                   out / "overlap", settings.report, *(variant_recipe(out / "stages.yaml", v)
                                                      for v in settings.variants),
                   *(job.run_dir or job.done_marker.parent for job in jobs)])
    out.mkdir(parents=True, exist_ok=True)
    stage_recipe = save_recipe(stage_cfg, out / "stages.yaml")
    save_recipe(cfg, out / "recipe.yaml")
    write_variant_recipes(stage_cfg, stage_recipe, settings.variants)
    return stage_cfg, jobs


def stage_config(cfg: RecipeConfig, settings: RunConfig, manifests: dict[str, str]) -> RecipeConfig:
    """The recipe every stage of one seed reads: ``cfg`` on the corpus ``manifests``, without the run and continual sections."""
    stage_cfg = replace(cfg, run=None, continual=None)
    stage_cfg.data = replace(cfg.data, train=manifests["train"], test=manifests["test"],
                             valid=manifests.get("dev"), languages=list(settings.languages))
    return stage_cfg


def _base_job(group: Comparison, seed_cfg: RecipeConfig) -> list[str] | None:
    return [base_job_name(group, seed_cfg)] if group.preset else None


def plan_run(cfg: RecipeConfig) -> list[Job]:
    """Every stage `lasp run` would run for ``cfg``, every strength, seed and variant, without making or reading a
    corpus (its manifests are assumed at <run.corpus>/<split>.jsonl): for checking a recipe before a long run."""
    settings = run_settings(cfg)
    groups = comparisons(cfg, settings)
    jobs, recipes = [], {}
    for group in groups:
        for seed_cfg in group.seed_cfgs:
            stage_recipe = Path(seed_cfg.output_dir) / "stages.yaml"
            recipes.setdefault(seed_cfg.seed, stage_recipe)
            planned = plan_jobs(stage_config(seed_cfg, seed_cfg.run, corpus_manifests(seed_cfg.run)), seed_cfg.run,
                                stage_recipe, _base_job(group, seed_cfg))
            jobs += _prefixed(planned, group.prefix(seed_cfg))
    if settings.strengths:
        jobs += base_jobs(cfg, settings, groups, recipes)
    return _one_schedule(jobs, groups)


def _one_schedule(jobs: list[Job], groups: list[Comparison]) -> list[Job]:
    """Every seed's stages in one schedule, by kind of stage first (seed order within a kind): no thread slot
    waits at a seed boundary for a two-thread base pre-training, and all fine-tuning runs end together. With
    several strengths, strength by strength (a base pre-training with its strength): a run stopped part-way has
    whole strengths done, and the next strength's base fills any thread-slot the current one leaves free."""
    def strength(job: Job) -> int:
        name = job.name.rsplit("/", 1)[-1].removeprefix("base-") if job.name.startswith(BASES + "/") else job.name
        return next((i for i, g in enumerate(groups) if g.name and (name == g.name or name.startswith(g.name + "/"))),
                    0)

    return sorted(jobs, key=lambda job: (strength(job), STAGE_RANK[stage_kind(job.name)]))


def _prefixed(jobs: list[Job], prefix: str) -> list[Job]:
    """The same jobs named ``<prefix>/<name>`` (several seeds or strengths share one schedule)."""
    if not prefix:
        return jobs
    return [replace(j, name=f"{prefix}/{j.name}", deps=[d if d.startswith(BASES + "/") else f"{prefix}/{d}"
                                                         for d in j.deps]) for j in jobs]


def run(cfg: RecipeConfig, progress: bool = True, fresh: bool = False) -> Path:
    """Run the whole comparison described by ``cfg`` (once per strength of run.strengths and seed of run.seeds)
    and return the report's path.

    One `lasp run` at a time per output_dir; every corpus is checked before anything is written; ``fresh``
    removes what an earlier `lasp run` made there, and only that (:func:`guarded_run`).
    """
    return guarded_run(cfg, fresh, lambda runs, outputs, t0: _run(cfg, run_settings(cfg), outputs, progress, t0))


# (every seed's recipe, what the run claims in output_dir, its start time) -> the report's path
Experiment = Callable[[list[RecipeConfig], RunOutputs, float], Path]


def guarded_run(cfg: RecipeConfig, fresh: bool, experiment: Experiment) -> Path:
    """Run ``experiment`` over the seeds of ``cfg`` holding a lock on output_dir (taken before anything is read
    or written there). Every corpus is checked before anything is written; ``fresh`` then removes what an earlier
    `lasp run` made in output_dir (:mod:`lasp.run.outputs`), and only that. What the experiment makes there is
    recorded as the run's, even when it fails part-way."""
    settings = run_settings(cfg)
    if not settings.strengths and base_is_checkpoint(cfg) and not Path(cfg.model.name).is_dir():
        raise ConfigError(f"model.name: {cfg.model.name!r} is neither a preset nor a local checkpoint directory")
    t0 = time.monotonic()
    out = Path(cfg.output_dir)
    with locked(out, "output_dir"):
        runs = seed_configs(cfg, settings)
        for seed_cfg in runs:
            check_corpus(seed_cfg, seed_cfg.run)
        outputs = RunOutputs(out, corpus=[settings.corpus])
        if fresh:
            outputs.remove()
        before = outputs.snapshot()
        try:
            return experiment(runs, outputs, t0)
        finally:
            outputs.claim_new(before)


def _run(cfg: RecipeConfig, settings: RunConfig, outputs: RunOutputs, progress: bool, t0: float) -> Path:
    out = Path(cfg.output_dir)
    groups = comparisons(cfg, settings)
    seeds = groups[0].seed_cfgs
    print(f"lasp run: {len(settings.languages)} languages, systems {', '.join(settings.systems)}"
          + (f", {len(settings.variants)} variants" if settings.variants else "")
          + (f", seeds {', '.join(str(c.seed) for c in seeds)}" if len(seeds) > 1 else "")
          + (f", strengths {', '.join(settings.strengths)}" if settings.strengths else "") + f", output {out}",
          flush=True)
    prepared, jobs, recipes = [], [], {}
    for group in groups:
        stage_cfgs = []
        for seed_cfg in group.seed_cfgs:
            stage_cfg, planned = prepare(seed_cfg, seed_cfg.run, outputs, _base_job(group, seed_cfg))
            stage_cfgs.append(stage_cfg)
            recipes.setdefault(seed_cfg.seed, Path(seed_cfg.output_dir) / "stages.yaml")
            jobs += _prefixed(planned, group.prefix(seed_cfg))
        prepared.append((group, stage_cfgs))
    if settings.strengths:
        jobs += base_jobs(cfg, settings, groups, recipes)
    outputs.claim([out / "logs"])
    walls = run_jobs(_one_schedule(jobs, groups), settings.parallel, out / "logs", progress=progress)
    for group in groups:
        for seed_cfg in group.seed_cfgs:
            seed_out, prefix = Path(seed_cfg.output_dir), group.prefix(seed_cfg)
            prefix += "/" if prefix else ""
            mine = {k[len(prefix):]: v for k, v in walls.items() if k.startswith(prefix)}
            atomic_write_json(seed_out / "stage_times.json", merge_times(seed_out / "stage_times.json", mine))
    report = write_all_reports(cfg, settings, prepared, wall_total=time.monotonic() - t0)
    print(f"report: {report}", flush=True)
    return report


def write_all_reports(cfg: RecipeConfig, settings: RunConfig, prepared: list[tuple[Comparison, list]],
                      wall_total: float | None = None) -> Path:
    """Every comparison's reports and, with several strengths, the scaling report; returns the run's report.

    With several strengths, a strength still running (some evaluation missing) gets no report of its own yet, only
    the language signals of its finished mask searches; the scaling report shows what it has so far."""
    if not settings.strengths:
        (group, stage_cfgs), = prepared
        return write_reports(group.cfg, group.cfg.run, group.seed_cfgs, stage_cfgs, wall_total=wall_total)
    for group, stage_cfgs in prepared:
        if len(group.evaluated()) == len(group.systems()):
            write_reports(group.cfg, group.cfg.run, group.seed_cfgs, stage_cfgs)
        else:
            for seed_cfg, stage_cfg in zip(group.seed_cfgs, stage_cfgs):
                write_signals(Path(seed_cfg.output_dir), stage_cfg, group.cfg.run)
    return scaling_report(cfg, settings, prepared, wall_total=wall_total)


def write_reports(cfg: RecipeConfig, settings: RunConfig, seed_cfgs: list[RecipeConfig],
                  stage_cfgs: list[RecipeConfig], wall_total: float | None = None) -> Path:
    """The run's report (and, with several seeds, every seed's report and the seed summary); returns its path."""
    multi = len(seed_cfgs) > 1
    run_dirs = [Path(c.output_dir) for c in seed_cfgs]
    for run_dir, stage_cfg in zip(run_dirs, stage_cfgs):
        write_signals(run_dir, stage_cfg, settings)
    summary = summarize(run_dirs, settings, Path(cfg.output_dir)) if multi or settings.variants else None
    if not multi:
        return write_report(stage_cfgs[0], seed_cfgs[0].run, run_dirs[0], wall_total=wall_total,
                            summary=summary)
    for seed_cfg, stage_cfg in zip(seed_cfgs, stage_cfgs):
        write_report(stage_cfg, seed_cfg.run, Path(seed_cfg.output_dir), seeds_of=settings)
    return seeds_report(cfg, settings, summary, seed_cfgs, stage_cfgs, wall_total=wall_total)


def report_from_outputs(cfg: RecipeConfig) -> Path:
    """`lasp report`: rewrite the reports of a finished (or partly finished) `lasp run` of ``cfg``."""
    settings = run_settings(cfg)
    prepared = []
    for group in comparisons(cfg, settings):
        stage_cfgs = []
        for seed_cfg in group.seed_cfgs:
            path = Path(seed_cfg.output_dir) / "stages.yaml"
            if not path.is_file():
                raise ConfigError(f"{path}: missing; `lasp run` has not started in output_dir {cfg.output_dir} yet")
            stage_cfgs.append(load_recipe(path))
        prepared.append((group, stage_cfgs))
    return write_all_reports(cfg, settings, prepared)


def merge_times(path: Path, walls: dict[str, float]) -> dict[str, float]:
    old = json.loads(path.read_text()) if path.is_file() else {}
    old.update({k: round(v, 1) for k, v in walls.items()})
    return old

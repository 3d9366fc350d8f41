"""Value checks of a recipe that its types cannot express: ranges, combinations, the rules of ``run.variants``.

Each section's values are checked once, here or by the section's own ``check()`` (``masks``, ``data``: their
packages own them), when the recipe loads; every stage, `lasp run` and `lasp validate` see the same verdict.
"""
from __future__ import annotations

import re

from lasp.config.schema import SYSTEMS, RecipeConfig, RunConfig, StageConfig
from lasp.errors import ConfigError
from lasp.models.load import PRESETS

# what a variant may change, per kind of variant; the corpus, model and data settings are the run's
OVERRIDABLE = {"lasp": ("masks.", "pretrain.", "finetune."), "adapters": ("adapters.", "finetune.")}
# where each stage reads and writes: `lasp run` sets these for every variant
RUNNER_KEYS = ("masks.dir", "pretrain.run_dir", "pretrain.init", "pretrain.system", "finetune.run_dir",
               "finetune.init", "finetune.system")
# names of folders and jobs a variant's name must not collide with
RESERVED = set(SYSTEMS) | {"base", "masks", "lasp"}
_NAME = re.compile(r"^[a-z0-9][a-z0-9._]*(-[a-z0-9._]+)*$")


def check_config(cfg: RecipeConfig, *, where: str = "recipe") -> None:
    """Raise one ConfigError naming the source (``where``) and the key of the first bad value."""
    try:
        _check_top(cfg)
        cfg.data.check()
        cfg.masks.check()
        for stage in ("pretrain", "finetune"):
            _check_stage(getattr(cfg, stage), stage)
        _check_pretrain(cfg)
        if cfg.run is not None:
            check_run(cfg.run)
            _check_strengths(cfg)
    except ConfigError as err:
        raise ConfigError(f"{where}: {err}") from None


def _check_top(cfg: RecipeConfig) -> None:
    if cfg.seed < 0:
        raise ConfigError(f"key 'seed' must be >= 0 (numpy seeds are unsigned), got {cfg.seed}")
    if cfg.threads is not None and cfg.threads < 1:
        raise ConfigError("key 'threads' must be >= 1")
    if cfg.adapters.dim < 1:
        raise ConfigError("key 'adapters.dim' must be >= 1")
    if cfg.evaluate.batch_size < 1:
        raise ConfigError("key 'evaluate.batch_size' must be >= 1")


def _check_stage(sc: StageConfig, stage: str) -> None:
    if sc.max_steps < 1:
        raise ConfigError(f"key '{stage}.max_steps' must be >= 1")
    if sc.max_minutes is not None and sc.max_minutes <= 0:
        raise ConfigError(f"key '{stage}.max_minutes' must be > 0")
    for key in ("log_every", "ckpt_every", "keep_checkpoints", "grad_accum_steps"):
        if getattr(sc, key) < 1:
            raise ConfigError(f"key '{stage}.{key}' must be >= 1")
    if not 0 <= sc.max_nonfinite <= 1:
        raise ConfigError(f"key '{stage}.max_nonfinite' must be a share of the steps in [0, 1], got {sc.max_nonfinite}")
    o = sc.optim
    if o.lr <= 0:
        raise ConfigError(f"key '{stage}.optim.lr' must be > 0")
    if len(o.betas) != 2 or not all(0 <= b < 1 for b in o.betas):
        raise ConfigError(f"key '{stage}.optim.betas' must be two numbers in [0, 1), got {o.betas}")
    if len(o.tri_stage_ratios) != 3 or abs(sum(o.tri_stage_ratios) - 1.0) > 1e-6 or min(o.tri_stage_ratios) < 0:
        raise ConfigError(f"key '{stage}.optim.tri_stage_ratios' must be three fractions summing to 1, "
                          f"got {o.tri_stage_ratios}")
    if o.warmup_steps < 0:
        raise ConfigError(f"key '{stage}.optim.warmup_steps' must be >= 0")
    if not 0 < o.final_lr_scale <= 1:
        raise ConfigError(f"key '{stage}.optim.final_lr_scale' must be in (0, 1]")


def _check_pretrain(cfg: RecipeConfig) -> None:
    p = cfg.pretrain
    if p.system == "adapters":
        raise ConfigError("key 'pretrain.system' 'adapters' is a fine-tuning baseline; pre-train with shared, lasp "
                          "or random")
    if not 0 < p.mask_time_prob <= 1:
        raise ConfigError("key 'pretrain.mask_time_prob' must be in (0, 1]")
    if p.mask_time_length < 1 or p.num_negatives < 1:
        raise ConfigError("key 'pretrain.mask_time_length' and pretrain.num_negatives must be >= 1")
    if not 0 < p.gumbel_min <= p.gumbel_max:
        raise ConfigError("key 'pretrain.gumbel_min' must be in (0, gumbel_max]")
    if not 0 < p.gumbel_decay <= 1:
        raise ConfigError("key 'pretrain.gumbel_decay' must be in (0, 1]")
    if any(step < 1 for step in p.keep_at) or len(set(p.keep_at)) != len(p.keep_at):
        raise ConfigError(f"key 'pretrain.keep_at' must be distinct steps >= 1, got {p.keep_at}")
    if not 0 <= cfg.finetune.mask_time_prob < 1:
        raise ConfigError("key 'finetune.mask_time_prob' must be in [0, 1)")


def check_run(run: RunConfig) -> None:
    """The run section: counts, seeds, low-resource languages, and every variant."""
    if run.parallel < 1:
        raise ConfigError("key 'run.parallel' must be at least 1")
    if run.base_steps < 1:
        raise ConfigError("key 'run.base_steps' must be at least 1")
    if run.base_threads < 1:
        raise ConfigError("key 'run.base_threads' must be at least 1")
    if run.base_minutes is not None and run.base_minutes <= 0:
        raise ConfigError("key 'run.base_minutes' must be > 0 (or null for no wall-time budget)")
    if any(s < 0 for s in run.seeds) or len(set(run.seeds)) != len(run.seeds):
        raise ConfigError(f"key 'run.seeds' must be distinct integers >= 0, got {run.seeds}")
    unknown_low = [lang for lang in run.low_resource if lang not in run.languages]
    if unknown_low:
        raise ConfigError(f"key 'run.low_resource': {unknown_low[0]!r} is not one of run.languages")
    check_variants(run)


def parse_strength(value: str, where: str = "run.strengths") -> tuple[str, int]:
    """``"tiny@800"`` -> ``("tiny", 800)``; the preset must be one of lasp's, the steps at least 1."""
    preset, _, steps = str(value).partition("@")
    if preset not in PRESETS or not steps.isdigit() or int(steps) < 1:
        raise ConfigError(f"key '{where}': {value!r} is not PRESET@STEPS with a preset of "
                          f"{', '.join(PRESETS)} and steps >= 1 (e.g. tiny@800)")
    return preset, int(steps)


def _check_strengths(cfg: RecipeConfig) -> None:
    """Each strength's base is its preset's one pre-training, continued from the strength below: that equals a
    run that stops there only when nothing depends on where the run will end."""
    strengths = [parse_strength(v, f"run.strengths[{i}]") for i, v in enumerate(cfg.run.strengths)]
    if len(set(strengths)) != len(strengths):
        raise ConfigError(f"key 'run.strengths' names a strength twice: {cfg.run.strengths}")
    if not strengths:
        return
    if cfg.run.base_minutes is not None:
        raise ConfigError("key 'run.base_minutes' must be null with run.strengths (a strength is a step count)")
    if cfg.pretrain.optim.schedule == "tri-stage":
        raise ConfigError("key 'pretrain.optim.schedule': tri-stage decays over max_steps, so a base kept at "
                          "step N of a longer pre-training would differ from an N-step one; run.strengths needs "
                          "linear-warmup or constant")


def check_variants(run: RunConfig) -> None:
    """What the loader cannot say about ``run.variants``: names, which keys each kind of variant may override,
    and settings only a lasp variant has."""
    names: set[str] = set()
    for i, v in enumerate(run.variants):
        at = f"run.variants[{i}]"
        if not _NAME.match(v.name):
            raise ConfigError(f"key '{at}.name' must be lower-case letters, digits, '.', '_' or '-', got {v.name!r}")
        if v.name in RESERVED or v.name in names:
            raise ConfigError(f"key '{at}.name': name {v.name!r} is taken (a system, a stage or another variant)")
        names.add(v.name)
        allowed = OVERRIDABLE[v.system]
        for key in v.overrides:
            if not str(key).startswith(allowed):
                raise ConfigError(f"key '{at}.overrides': key {key!r} is not a "
                                  + ", ".join(f"{a}*" for a in allowed) + f" key for a {v.system} variant "
                                  "(a variant shares the corpus, model and data settings of the run)")
            if key in RUNNER_KEYS:
                raise ConfigError(f"key '{at}.overrides': key {key!r} is set by lasp run for every variant")
        if v.system == "adapters" and (v.pretrain is not None or v.score_on is not None):
            raise ConfigError(f"key '{at}': an adapters variant has no masks and no language-adaptive "
                              "pre-training (drop pretrain and score_on)")
        if v.score_on == "shared" and "shared" not in run.systems:
            raise ConfigError(f"key '{at}.score_on': shared needs the shared system in run.systems (its "
                              f"fine-tuned CTC model scores the masks), got {run.systems}")

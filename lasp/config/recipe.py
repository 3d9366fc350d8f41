"""Recipes: YAML files mapped onto the typed dataclasses of :mod:`lasp.config.schema`.

``load_recipe(path, overrides)`` reads a recipe with YAML (safe loading, no base-60 numbers), applies
``key=value`` overrides (dotted keys, values parsed as YAML), and checks every
key and type against the schema before any work starts: an unknown or mistyped
key raises :class:`~lasp.errors.ConfigError` naming the key (and the closest
valid one). Other lasp commands may add whole sections with
:func:`register_section`; they are checked the same way.
"""
from __future__ import annotations

import dataclasses
import difflib
import re
import types
import typing
from pathlib import Path
from typing import Any

import yaml

from lasp.config.schema import (  # noqa: F401  (re-exported: the public schema)
    SYSTEMS,
    AddLanguageConfig,
    ContinualConfig,
    AdapterConfig,
    DataConfig,
    EvaluateConfig,
    FinetuneConfig,
    MaskConfig,
    ModelConfig,
    OptimConfig,
    PretrainConfig,
    RecipeConfig,
    RunConfig,
    StageConfig,
)
from lasp.errors import ConfigError

_EXTRA_SECTIONS: dict[str, type] = {}


class RecipeLoader(yaml.SafeLoader):
    """``yaml.safe_load`` without YAML 1.1's base-60 numbers: ``2:4`` (an N:M pattern) stays the string "2:4".

    PyYAML follows YAML 1.1, where a plain ``2:4`` is the sexagesimal integer 124 and ``1:30.5`` a float;
    YAML 1.2 dropped both. Everything else (bools, nulls, ints, floats, quoting) resolves as before, and
    exponents without a dot or sign (``1e-3``, ``5e4``) are floats, as in YAML 1.2.
    """


RecipeLoader.yaml_implicit_resolvers = {
    first: [(tag, rx) for tag, rx in resolvers if tag not in ("tag:yaml.org,2002:int", "tag:yaml.org,2002:float")]
    for first, resolvers in yaml.SafeLoader.yaml_implicit_resolvers.items()
}
RecipeLoader.add_implicit_resolver(
    "tag:yaml.org,2002:int",
    re.compile(r"^(?:[-+]?0b[0-1_]+|[-+]?0[0-7_]+|[-+]?(?:0|[1-9][0-9_]*)|[-+]?0x[0-9a-fA-F_]+)$"),
    list("-+0123456789"),
)
RecipeLoader.add_implicit_resolver(
    "tag:yaml.org,2002:float",
    re.compile(r"""^(?:[-+]?(?:[0-9][0-9_]*)\.[0-9_]*(?:[eE][-+]?[0-9]+)?
                |[-+]?(?:[0-9][0-9_]*)(?:[eE][-+]?[0-9]+)
                |[-+]?\.[0-9][0-9_]*(?:[eE][-+]?[0-9]+)?
                |[-+]?\.(?:inf|Inf|INF)
                |\.(?:nan|NaN|NAN))$""", re.X),
    list("-+0123456789."),
)


def yaml_load(text: str) -> Any:
    """Parse recipe text (a file or one override value) with :class:`RecipeLoader`."""
    return yaml.load(text, Loader=RecipeLoader)  # noqa: S506 - RecipeLoader is a SafeLoader


def register_section(name: str, cls: type) -> None:
    """Let recipes carry a section ``name`` typed by dataclass ``cls`` (found in ``cfg.extra[name]``)."""
    if not dataclasses.is_dataclass(cls):
        raise TypeError(f"section {name!r} must be a dataclass, got {cls!r}")
    if name in {f.name for f in dataclasses.fields(RecipeConfig)}:
        raise ValueError(f"section {name!r} is already part of the recipe schema")
    _EXTRA_SECTIONS[name] = cls


# `lasp run` reads this section; every other command ignores it
register_section("run", RunConfig)
# `lasp add-language` reads this one; `lasp run` runs the continual experiment when a recipe has `continual`
register_section("add_language", AddLanguageConfig)
register_section("continual", ContinualConfig)


# --------------------------------------------------------------------------- typing helpers
def _type_name(tp: Any) -> str:
    origin = typing.get_origin(tp)
    if origin is typing.Literal:
        return " | ".join(repr(a) for a in typing.get_args(tp))
    if origin in (typing.Union, types.UnionType):
        return " | ".join(_type_name(a) for a in typing.get_args(tp))
    if tp is type(None):
        return "null"
    if origin is not None:
        return f"{origin.__name__}[{', '.join(_type_name(a) for a in typing.get_args(tp))}]"
    return getattr(tp, "__name__", str(tp))


def _coerce(value: Any, tp: Any, key: str, where: str, base: Any = None) -> Any:
    """Return ``value`` as type ``tp`` or raise ConfigError naming ``key`` (``base``: defaults of a section)."""
    def fail() -> ConfigError:
        return ConfigError(f"{where}: key '{key}' expects {_type_name(tp)}, got {value!r}")

    if tp is Any:
        return value
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        args = typing.get_args(tp)
        if value is None:
            if type(None) in args:
                return None
            raise fail()
        for arg in args:
            if arg is type(None):
                continue
            try:
                return _coerce(value, arg, key, where)
            except ConfigError:
                continue
        raise fail()
    if origin is typing.Literal:
        if value in typing.get_args(tp):
            return value
        raise ConfigError(
            f"{where}: key '{key}' must be one of {', '.join(repr(a) for a in typing.get_args(tp))}, got {value!r}"
        )
    if origin is list:
        if not isinstance(value, (list, tuple)):
            raise fail()
        (item_tp,) = typing.get_args(tp) or (Any,)
        return [_coerce(v, item_tp, f"{key}[{i}]", where) for i, v in enumerate(value)]
    if origin is dict:
        if not isinstance(value, dict):
            raise fail()
        return dict(value)
    if dataclasses.is_dataclass(tp):
        return _build(tp, value, key, where, base)
    if tp is bool:
        if isinstance(value, bool):
            return value
        raise fail()
    if tp is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        raise fail()
    if tp is float:
        # YAML 1.1 reads "1e-3" as a string; accept any number spelled that way
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
        if isinstance(value, str):
            try:
                return float(value)
            except ValueError:
                raise fail() from None
        raise fail()
    if tp is str:
        if isinstance(value, str):
            return value
        raise fail()
    raise fail()


def _hints(cls: type) -> dict[str, Any]:
    return typing.get_type_hints(cls)


def _unknown_key(key: str, known: list[str], where: str) -> ConfigError:
    leaf = key.rsplit(".", 1)[-1]
    close = difflib.get_close_matches(leaf, known, n=1)
    hint = f" (did you mean '{close[0]}'?)" if close else f" (valid: {', '.join(sorted(known))})"
    return ConfigError(f"{where}: unknown key '{key}'{hint}")


def _build(cls: type, data: Any, prefix: str, where: str, base: Any = None) -> Any:
    # a partial section keeps its parent's defaults (finetune.optim defaults differ from pretrain.optim's)
    base = base if base is not None else cls()
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise ConfigError(f"{where}: section '{prefix}' must be a mapping, got {data!r}")
    hints = _hints(cls)
    names = [f.name for f in dataclasses.fields(cls) if f.name != "extra" or cls is not RecipeConfig]
    kwargs: dict[str, Any] = {}
    for key, value in data.items():
        full = f"{prefix}.{key}" if prefix else str(key)
        if key not in names:
            raise _unknown_key(full, names, where)
        kwargs[key] = _coerce(value, hints[key], full, where, getattr(base, key))
    return dataclasses.replace(base, **kwargs)


# --------------------------------------------------------------------------- public API
def parse_overrides(items: list[str] | None) -> dict[str, Any]:
    """``["finetune.max_steps=100", "masks.dir=null"]`` -> nested dict (values parsed as YAML)."""
    tree: dict[str, Any] = {}
    for item in items or []:
        if "=" not in item:
            raise ConfigError(f"override '{item}' is not of the form key=value")
        key, raw = item.split("=", 1)
        key = key.strip()
        if not key or any(not part for part in key.split(".")):
            raise ConfigError(f"override '{item}' has an empty key")
        try:
            value = yaml_load(raw) if raw.strip() else ""
        except yaml.YAMLError as err:
            raise ConfigError(f"override '{item}': value is not valid YAML ({err})") from None
        node = tree
        parts = key.split(".")
        for part in parts[:-1]:
            node = node.setdefault(part, {})
            if not isinstance(node, dict):
                raise ConfigError(f"override '{item}' conflicts with an earlier override of '{part}'")
        node[parts[-1]] = value
    return tree


def _merge(base: dict[str, Any], top: dict[str, Any]) -> dict[str, Any]:
    out = dict(base)
    for key, value in top.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict) and key != "overrides":
            out[key] = _merge(out[key], value)
        elif isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = {**out[key], **value}
        else:
            out[key] = value
    return out


def config_from_dict(data: dict[str, Any] | None, *, where: str = "recipe") -> RecipeConfig:
    """Build and check a RecipeConfig from a plain mapping (a parsed recipe)."""
    data = dict(data or {})
    extra_raw = {name: data.pop(name) for name in list(data) if name in _EXTRA_SECTIONS}
    cfg = _build(RecipeConfig, data, "", where)
    cfg.extra = {name: _build(_EXTRA_SECTIONS[name], raw, name, where) for name, raw in extra_raw.items()}
    check_config(cfg, where=where)
    return cfg


def load_recipe(path: str | Path | None, overrides: list[str] | None = None) -> RecipeConfig:
    """Read a YAML recipe (or start from defaults when ``path`` is None) and apply key=value overrides."""
    where = str(path) if path is not None else "recipe"
    data: dict[str, Any] = {}
    if path is not None:
        p = Path(path)
        if not p.is_file():
            raise ConfigError(f"recipe not found: {p}")
        try:
            loaded = yaml_load(p.read_text(encoding="utf-8"))
        except yaml.YAMLError as err:
            raise ConfigError(f"{p}: not valid YAML: {err}") from None
        if loaded is not None and not isinstance(loaded, dict):
            raise ConfigError(f"{p}: a recipe must be a mapping of sections, got {type(loaded).__name__}")
        data = loaded or {}
    data = _merge(data, parse_overrides(overrides))
    return config_from_dict(data, where=where)


def config_to_dict(cfg: Any) -> dict[str, Any]:
    """A plain, YAML-ready mapping of a config (extra sections inlined at the top level)."""
    out = dataclasses.asdict(cfg)
    if isinstance(cfg, RecipeConfig):
        out.pop("extra", None)
        for name, section in cfg.extra.items():
            out[name] = dataclasses.asdict(section) if dataclasses.is_dataclass(section) else section
    return out


def save_recipe(cfg: RecipeConfig, path: str | Path) -> Path:
    """Write the resolved recipe next to a run so the run can be reproduced."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(yaml.safe_dump(config_to_dict(cfg), sort_keys=False), encoding="utf-8")
    return path


def check_config(cfg: RecipeConfig, *, where: str = "recipe") -> None:
    """Value checks the types alone cannot express (ranges, combinations)."""
    def bad(key: str, why: str) -> ConfigError:
        return ConfigError(f"{where}: key '{key}' {why}")

    if cfg.seed < 0:
        raise bad("seed", f"must be >= 0 (numpy seeds are unsigned), got {cfg.seed}")
    if cfg.threads is not None and cfg.threads < 1:
        raise bad("threads", "must be >= 1")
    if not 0.0 <= cfg.masks.sparsity < 1.0:
        raise bad("masks.sparsity", f"must be in [0, 1), got {cfg.masks.sparsity}")
    for key in ("max_batches", "imp_rounds", "imp_steps"):
        if getattr(cfg.masks, key) < 1:
            raise bad(f"masks.{key}", "must be >= 1")
    if cfg.adapters.dim < 1:
        raise bad("adapters.dim", "must be >= 1")
    if cfg.data.batch_size is None and cfg.data.max_batch_seconds is None:
        raise bad("data.batch_size", "and data.max_batch_seconds cannot both be null")
    if cfg.data.batch_size is not None and cfg.data.batch_size < 1:
        raise bad("data.batch_size", "must be >= 1")
    if cfg.data.max_seconds <= 0:
        raise bad("data.max_seconds", "must be > 0")
    if len(set(cfg.data.languages)) != len(cfg.data.languages):
        raise bad("data.languages", "lists a language twice")
    for stage in ("pretrain", "finetune"):
        sc: StageConfig = getattr(cfg, stage)
        if sc.max_steps < 1:
            raise bad(f"{stage}.max_steps", "must be >= 1")
        if sc.max_minutes is not None and sc.max_minutes <= 0:
            raise bad(f"{stage}.max_minutes", "must be > 0")
        for key in ("log_every", "ckpt_every", "keep_checkpoints"):
            if getattr(sc, key) < 1:
                raise bad(f"{stage}.{key}", "must be >= 1")
        o = sc.optim
        if o.lr <= 0:
            raise bad(f"{stage}.optim.lr", "must be > 0")
        if len(o.betas) != 2 or not all(0 <= b < 1 for b in o.betas):
            raise bad(f"{stage}.optim.betas", f"must be two numbers in [0, 1), got {o.betas}")
        if len(o.tri_stage_ratios) != 3 or abs(sum(o.tri_stage_ratios) - 1.0) > 1e-6 or min(o.tri_stage_ratios) < 0:
            raise bad(f"{stage}.optim.tri_stage_ratios", f"must be three fractions summing to 1, got {o.tri_stage_ratios}")
        if o.warmup_steps < 0:
            raise bad(f"{stage}.optim.warmup_steps", "must be >= 0")
        if not 0 < o.final_lr_scale <= 1:
            raise bad(f"{stage}.optim.final_lr_scale", "must be in (0, 1]")
    if cfg.pretrain.system == "adapters":
        raise bad("pretrain.system", "'adapters' is a fine-tuning baseline; pre-train with shared, lasp or random")
    p = cfg.pretrain
    if not 0 < p.mask_time_prob <= 1:
        raise bad("pretrain.mask_time_prob", "must be in (0, 1]")
    if p.mask_time_length < 1 or p.num_negatives < 1:
        raise bad("pretrain.mask_time_length", "and pretrain.num_negatives must be >= 1")
    if not 0 < p.gumbel_min <= p.gumbel_max:
        raise bad("pretrain.gumbel_min", "must be in (0, gumbel_max]")
    if not 0 < p.gumbel_decay <= 1:
        raise bad("pretrain.gumbel_decay", "must be in (0, 1]")
    if not 0 <= cfg.finetune.mask_time_prob < 1:
        raise bad("finetune.mask_time_prob", "must be in [0, 1)")
    if cfg.evaluate.batch_size < 1:
        raise bad("evaluate.batch_size", "must be >= 1")


def stage_run_dir(cfg: RecipeConfig, stage: str) -> Path:
    """The run directory of ``stage`` ("pretrain" or "finetune"): explicit, or <output_dir>/<stage>-<system>."""
    sc: StageConfig = getattr(cfg, stage)
    if sc.run_dir:
        return Path(sc.run_dir)
    return Path(cfg.output_dir) / f"{stage}-{sc.system}"


def explain() -> list[str]:
    """Every recipe key, section by section: ``key: type = default`` and an indented line of help.

    What `lasp <command> --explain` prints. Defaults are those of a recipe that leaves the key out (a
    section's own defaults, so finetune.optim.schedule shows tri-stage). Sections registered with
    :func:`register_section` (``run``) are included.
    """
    from lasp.config.help import SECTIONS, help_for

    lines: list[str] = []

    def walk(cls: type, instance: Any, prefix: str) -> None:
        hints = _hints(cls)
        fields = [f for f in dataclasses.fields(cls) if not (cls is RecipeConfig and f.name == "extra")]
        scalars = [f for f in fields if not dataclasses.is_dataclass(hints[f.name])]
        if scalars:
            section = prefix.rstrip(".")
            lines.append(f"# {section}: {SECTIONS.get(section, '')}" if section else f"# {SECTIONS['']}")
        for f in scalars:
            lines.append(f"{prefix}{f.name}: {_type_name(hints[f.name])} = {getattr(instance, f.name)!r}")
            lines.append(f"    {help_for(cls, f.name)}")
        for f in fields:
            if dataclasses.is_dataclass(hints[f.name]):
                walk(hints[f.name], getattr(instance, f.name), f"{prefix}{f.name}.")

    walk(RecipeConfig, RecipeConfig(), "")
    for name, cls in _EXTRA_SECTIONS.items():
        walk(cls, cls(), f"{name}.")
    return lines

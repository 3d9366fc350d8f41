"""Recipes: YAML files mapped onto the typed dataclasses of :mod:`lasp.config.schema`.

``load_recipe(path, overrides)`` reads a recipe with YAML (safe loading, no base-60 numbers), applies
``key=value`` overrides (dotted keys, values parsed as YAML), and checks every key, type and value against the
schema before any work starts (:mod:`lasp.config.checks`): an unknown or mistyped key, or a value out of range,
raises :class:`~lasp.errors.ConfigError` naming the key (and the closest valid one).
"""
from __future__ import annotations

import dataclasses
import difflib
import math
import re
import types
import typing
from pathlib import Path
from typing import Any

import yaml

from lasp.config.checks import check_config
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
    VariantConfig,
)
from lasp.errors import ConfigError
from lasp.io import atomic_write


# a recipe names its data; a file far larger than any recipe would take minutes and gigabytes to parse
MAX_RECIPE_BYTES = 1 << 20
# sections a recipe may leave out (None), read by the commands named in their help
OPTIONAL_SECTIONS = ("run", "add_language", "continual")


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


# --------------------------------------------------------------------------- typing helpers
def type_name(tp: Any) -> str:
    """How an error or `--explain` spells a schema type: ``int | null``, ``'oneshot' | 'imp'``, ``list[str]``."""
    origin = typing.get_origin(tp)
    if origin is typing.Literal:
        return " | ".join(repr(a) for a in typing.get_args(tp))
    if origin in (typing.Union, types.UnionType):
        return " | ".join(type_name(a) for a in typing.get_args(tp))
    if tp is type(None):
        return "null"
    if origin is not None:
        return f"{origin.__name__}[{', '.join(type_name(a) for a in typing.get_args(tp))}]"
    return getattr(tp, "__name__", str(tp))


def section_type(tp: Any) -> type | None:
    """The dataclass a field holds (``RunConfig`` for ``RunConfig | None``), or None for a plain value."""
    if dataclasses.is_dataclass(tp):
        return tp
    if typing.get_origin(tp) in (typing.Union, types.UnionType):
        return next((a for a in typing.get_args(tp) if dataclasses.is_dataclass(a)), None)
    return None


class _NotFinite(ConfigError):
    """A float key given inf or nan: reported as such, not as the type it failed to be."""


def _coerce(value: Any, tp: Any, key: str, where: str, base: Any = None) -> Any:
    """Return ``value`` as type ``tp`` or raise ConfigError naming ``key`` (``base``: defaults of a section)."""
    def fail() -> ConfigError:
        return ConfigError(f"{where}: key '{key}' expects {type_name(tp)}, got {value!r}")

    if tp is Any:
        return value
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        args = typing.get_args(tp)
        if value is None:
            if type(None) in args:
                return None
            raise fail()
        section = section_type(tp)
        if section is not None and isinstance(value, dict):  # a section's own errors name its keys
            return _build(section, value, key, where, base)
        for arg in args:
            if arg is type(None):
                continue
            try:
                return _coerce(value, arg, key, where)
            except _NotFinite:
                raise
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
            number = float(value)
        elif isinstance(value, str):
            try:
                number = float(value)
            except ValueError:
                raise fail() from None
        else:
            raise fail()
        if not math.isfinite(number):  # no stage trains, prunes or samples with inf or nan
            raise _NotFinite(f"{where}: key '{key}' must be a finite number, got {value!r}")
        return number
    if tp is str:
        if isinstance(value, str):
            return value
        raise fail()
    raise fail()


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
    hints = typing.get_type_hints(cls)
    names = [f.name for f in dataclasses.fields(cls)]
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


def merge(base: dict[str, Any], top: dict[str, Any]) -> dict[str, Any]:
    """``top`` over ``base``, section by section (an ``overrides`` mapping is merged one level, not deeper)."""
    out = dict(base)
    for key, value in top.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict) and key != "overrides":
            out[key] = merge(out[key], value)
        elif isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = {**out[key], **value}
        else:
            out[key] = value
    return out


def config_from_dict(data: dict[str, Any] | None, *, where: str = "recipe") -> RecipeConfig:
    """Build and check a RecipeConfig from a plain mapping (a parsed recipe)."""
    cfg = _build(RecipeConfig, dict(data or {}), "", where)
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
        size = p.stat().st_size
        if size > MAX_RECIPE_BYTES:
            raise ConfigError(f"{p}: {size / 2**20:.1f} MiB is not a recipe (recipes are a few KiB; at most "
                              f"{MAX_RECIPE_BYTES // 2**20} MiB are read): is it the right file?")
        try:
            loaded = yaml_load(p.read_text(encoding="utf-8"))
        except yaml.YAMLError as err:
            raise ConfigError(f"{p}: not valid YAML: {err}") from None
        if loaded is not None and not isinstance(loaded, dict):
            raise ConfigError(f"{p}: a recipe must be a mapping of sections, got {type(loaded).__name__}")
        data = loaded or {}
    data = merge(data, parse_overrides(overrides))
    return config_from_dict(data, where=where)


def config_to_dict(cfg: Any) -> dict[str, Any]:
    """A plain, YAML-ready mapping of a config. The optional sections a recipe does not have (run, add_language,
    continual) are left out: the stage recipes `lasp run` writes stay what they were before they were typed."""
    out = dataclasses.asdict(cfg)
    if isinstance(cfg, RecipeConfig):
        for name in OPTIONAL_SECTIONS:
            if getattr(cfg, name) is None:
                del out[name]
    return out


def save_recipe(cfg: RecipeConfig, path: str | Path) -> Path:
    """Write the resolved recipe next to a run so the run can be reproduced."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    return atomic_write(path, yaml.safe_dump(config_to_dict(cfg), sort_keys=False))


def stage_run_dir(cfg: RecipeConfig, stage: str) -> Path:
    """The run directory of ``stage`` ("pretrain" or "finetune"): explicit, or <output_dir>/<stage>-<system>."""
    sc: StageConfig = getattr(cfg, stage)
    if sc.run_dir:
        return Path(sc.run_dir)
    return Path(cfg.output_dir) / f"{stage}-{sc.system}"

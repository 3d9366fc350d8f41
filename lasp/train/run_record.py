"""The record of a training run: which recipe keys its result depends on, and the check that resuming keeps them.

The recipe keys a stage depends on are recorded in ``<run_dir>/run.json`` when the stage starts. Resuming with any
of them changed is an error listing the keys; ``<stage>.resume_allow`` names keys that may change (e.g.
``[max_steps, max_minutes]``).
"""
from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any, Iterable, Mapping

from lasp import __version__
from lasp.errors import ConfigError
from lasp.io import atomic_write_json

RUN_RECORD = "run.json"

_NEVER_COMPARED_STAGE = {"resume", "resume_allow", "run_dir"}


def _flatten(obj: Any, prefix: str = "") -> dict[str, Any]:
    if isinstance(obj, Mapping):
        out: dict[str, Any] = {}
        for k, v in obj.items():
            out.update(_flatten(v, f"{prefix}{k}."))
        return out
    return {prefix[:-1]: obj}


def stage_recipe(cfg_dict: Mapping, stage: str, system: str, init: str | None) -> dict[str, Any]:
    """The flattened recipe keys a training stage's result depends on."""
    keep: dict[str, Any] = {"seed": cfg_dict.get("seed"), "model": cfg_dict.get("model"),
                            "data": {k: v for k, v in (cfg_dict.get("data") or {}).items() if k != "test"},
                            stage: {k: v for k, v in (cfg_dict.get(stage) or {}).items()
                                    if k not in _NEVER_COMPARED_STAGE}}
    if system in ("lasp", "random"):
        keep["masks"] = cfg_dict.get("masks")
    if system == "adapters":
        keep["adapters"] = cfg_dict.get("adapters")
    flat = _flatten(keep)
    flat[f"{stage}.init (resolved)"] = init
    return flat


def _allowed(key: str, stage: str, allow: Iterable[str]) -> bool:
    for a in allow:
        full = a if "." in a else f"{stage}.{a}"
        if key == full or key.startswith(full + "."):
            return True
    return False


def check_run_record(run_dir: str | os.PathLike, stage: str, recipe: Mapping[str, Any], allow: Iterable[str],
                     resuming: bool, write: bool = True) -> list[str]:
    """Compare ``recipe`` with the run's record when resuming; (re)write the record. Returns allowed changes."""
    path = Path(run_dir) / RUN_RECORD
    recipe = json.loads(json.dumps(dict(recipe), default=str))  # compare as stored (tuples -> lists, ...)
    old = None
    if path.is_file():
        try:
            old = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, ValueError) as err:
            raise ConfigError(f"{path}: cannot read the run record ({err}); it records the recipe this run "
                              "started with: restore it, or start the run in a new directory") from None
    changed: list[str] = []
    if resuming and old is not None and old.get("stage") == stage:
        before = old.get("recipe", {})
        keys = sorted(set(before) | set(recipe))
        changed = [k for k in keys if before.get(k, "<absent>") != recipe.get(k, "<absent>")]
        refused = [k for k in changed if not _allowed(k, stage, allow)]
        if refused:
            shown = "; ".join(f"{k}: {before.get(k, '<absent>')!r} -> {recipe.get(k, '<absent>')!r}"
                              for k in refused[:8])
            more = f" (and {len(refused) - 8} more)" if len(refused) > 8 else ""
            raise ConfigError(
                f"{run_dir} was started with a different recipe; changed: {shown}{more}. Resume with the "
                f"original settings, start over in another run_dir (or with {stage}.resume=false), or allow "
                f"the keys with {stage}.resume_allow=[{', '.join(k.removeprefix(stage + '.') for k in refused)}]")
    if write:
        Path(run_dir).mkdir(parents=True, exist_ok=True)
        record = {"stage": stage, "lasp_version": __version__, "recipe": dict(recipe),
                  "allowed_changes": sorted(set((old or {}).get("allowed_changes", [])) | set(changed))}
        atomic_write_json(path, record, indent=1, default=str)
    return changed

"""The record of a training run: which recipe keys its result depends on, and the check that resuming keeps them.

The recipe keys a stage depends on are recorded in ``<run_dir>/run.json`` when the stage starts, with the sha256
of the data they name (a manifest changed at the same path is other data) and the keys resolved (the stage's
starting model). Resuming with any of them changed is an error listing the keys; ``<stage>.resume_allow`` names
keys that may change, as full keys (``finetune.optim.lr``) or within the stage (``optim.lr``, ``max_steps``).
"""
from __future__ import annotations

import dataclasses
import json
import os
import shutil
import sys
from pathlib import Path
from typing import Any, Iterable, Mapping

from lasp import __version__
from lasp.config.schema import RecipeConfig
from lasp.errors import ConfigError
from lasp.io import atomic_write_json, read_json_object, sha256_file

RUN_RECORD = "run.json"
# the top-level keys of a recipe: a resume_allow entry that starts with one of them is already a full key
RECIPE_SECTIONS = tuple(f.name for f in dataclasses.fields(RecipeConfig))
# what a training stage makes in its run directory (the masks and vocabulary only when the recipe names no
# folder of its own for them; evaluate's default output folder): what starting the run over removes
RUN_OUTPUTS = ("checkpoints", "final", "metrics.jsonl", "tb", RUN_RECORD, "eval")

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
    for split in ("train", "valid"):
        path = flat.get(f"data.{split}")
        if path:
            flat[f"data.{split} (sha256)"] = sha256_file(path) if os.path.isfile(path) else None
    return flat


def full_key(key: str, stage: str, sections: Iterable[str]) -> str:
    """``optim.lr`` -> ``finetune.optim.lr`` within ``stage``; keys that start with a recipe section stay."""
    return key if key.split(".")[0] in set(sections) else f"{stage}.{key}"


def _allowed(key: str, allow: Iterable[str]) -> bool:
    base = key.split(" (")[0]  # "data.train (sha256)" is allowed with data.train
    return any(base == a or base.startswith(a + ".") for a in allow)


def _read_record(path: Path) -> dict | None:
    if not path.is_file():
        return None
    return read_json_object(path, "lasp run record", ConfigError, hint="it records the recipe this run started "
                            "with: restore it, or start the run in a new directory")


def check_stage_of_run(run_dir: str | os.PathLike, stage: str) -> None:
    """``run_dir`` must not be another stage's run directory (their checkpoints would mix)."""
    old = _read_record(Path(run_dir) / RUN_RECORD)
    if old is not None and old.get("stage") not in (None, stage):
        raise ConfigError(f"{run_dir} is the run directory of a {old['stage']} run; give {stage} its own "
                          f"({stage}.run_dir)")


def check_run_record(run_dir: str | os.PathLike, stage: str, recipe: Mapping[str, Any], allow: Iterable[str],
                     resuming: bool, write: bool = True) -> list[str]:
    """Compare ``recipe`` with the run's record when resuming; (re)write the record. Returns allowed changes.

    ``allow``: full recipe keys (see :func:`full_key`)."""
    path = Path(run_dir) / RUN_RECORD
    allow = list(allow)
    recipe = json.loads(json.dumps(dict(recipe), default=str))  # compare as stored (tuples -> lists, ...)
    old = _read_record(path)
    changed: list[str] = []
    if resuming and old is not None and old.get("stage") == stage:
        before = old.get("recipe", {})
        # a key the record lacks was added to lasp after the run started (a new setting at its default, the
        # data's sha256): there is nothing to compare it with
        changed = [k for k in sorted(before) if before[k] != recipe.get(k, "<absent>")]
        refused = [k for k in changed if not _allowed(k, allow)]
        if refused:
            shown = "; ".join(_change(k, before, recipe) for k in refused[:8])
            more = f" (and {len(refused) - 8} more)" if len(refused) > 8 else ""
            keys = sorted({k.split(" (")[0] for k in refused} | set(allow))
            raise ConfigError(
                f"{run_dir} was started with a different recipe; changed: {shown}{more}. Resume with the "
                f"original settings, start over in another run_dir (or with {stage}.resume=false), or allow "
                f"the change with {stage}.resume_allow=[{', '.join(keys)}]")
    if write:
        Path(run_dir).mkdir(parents=True, exist_ok=True)
        record = {"stage": stage, "lasp_version": __version__, "recipe": dict(recipe), "resume_allow": allow,
                  "allowed_changes": sorted(set((old or {}).get("allowed_changes", [])) | set(changed))}
        atomic_write_json(path, record, indent=1, default=str)
    return changed


def start_over(run_dir: str | os.PathLike, why: str, *, keep_masks: bool, keep_vocab: bool) -> list[str]:
    """Remove what an earlier run made in ``run_dir`` (:data:`RUN_OUTPUTS`, its own masks and vocabulary unless
    the recipe keeps them elsewhere); nothing else there is touched. Returns the names removed."""
    run_dir = Path(run_dir)
    names = [*RUN_OUTPUTS, *(() if keep_masks else ("masks-lasp", "masks-random")),
             *(() if keep_vocab else ("vocab.json",))]
    gone = []
    for name in names:
        path = run_dir / name
        if path.is_dir() and not path.is_symlink():
            shutil.rmtree(path)
            gone.append(name + "/")
        elif path.exists() or path.is_symlink():
            path.unlink()
            gone.append(name)
    if gone:
        print(f"lasp: {why}: starting {run_dir} over; removed the earlier run's {', '.join(gone)}", file=sys.stderr)
    return gone


def _change(key: str, before: Mapping, now: Mapping) -> str:
    was, is_ = before.get(key, "<absent>"), now.get(key, "<absent>")
    if key.endswith("(sha256)"):
        return (f"{key.split(' (')[0]}: the file {now.get(key.split(' (')[0])} holds other data than when the run "
                f"started (sha256 {str(was)[:12]} -> {str(is_)[:12]})")
    return f"{key}: {was!r} -> {is_!r}"

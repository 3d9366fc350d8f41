"""Checks a command makes before any heavy work: inputs readable, model folders complete, outputs writable.

Loading XLSR-53 and scoring its masks takes minutes; a typo in an output path or a manifest saved in the
wrong encoding should fail in the first second, with one line naming the recipe key and the path. These
checks only read (file existence, UTF-8 decoding, ``os.access``); nothing is created.
"""
from __future__ import annotations

import os
from pathlib import Path

from lasp.config.recipe import RecipeConfig, stage_run_dir
from lasp.errors import ConfigError, DataError
from lasp.io import read_text
from lasp.models.load import check_model_source
from lasp.train.finetune import finetune_init


def check_text_file(key: str, path: str | os.PathLike) -> None:
    """``path`` (named by recipe key ``key``) exists and is UTF-8 text."""
    p = Path(path)
    if not p.exists():
        raise DataError(f"{key}: {p} not found")
    if not p.is_file():
        raise DataError(f"{key}: {p} is a folder; give the manifest file (e.g. {p / 'train.jsonl'})")
    read_text(p, key)


def check_output_dir(key: str, path: str | os.PathLike) -> None:
    """``path`` is, or can become, a writable folder: neither it nor a parent is a file; not read-only."""
    p = Path(path).absolute()
    for candidate in (p, *p.parents):
        if candidate.exists():
            if not candidate.is_dir():
                what = "is a file" if candidate == p else f"cannot be created: {candidate} is a file"
                raise ConfigError(f"{key}: {p} {what}; choose another output path or move the file")
            if not os.access(candidate, os.W_OK | os.X_OK):
                raise ConfigError(f"{key}: {candidate} is not writable (read-only file system or no permission); "
                                  "choose a writable output path")
            return


def check_output_file(key: str, path: str | os.PathLike) -> None:
    """``path`` is not a folder and its folder can be written."""
    p = Path(path)
    if p.is_dir():
        raise ConfigError(f"{key}: {p} is a folder; give a file path")
    check_output_dir(key, p.parent)


def check_stage(cfg: RecipeConfig, stage: str) -> None:
    """Everything ``lasp <stage>`` reads or writes, checked before it loads a model."""
    if stage in ("pretrain", "finetune"):
        sc = getattr(cfg, stage)
        check_text_file("data.train", _required(cfg.data.train, "data.train"))
        if cfg.data.valid:
            check_text_file("data.valid", cfg.data.valid)
        if stage == "pretrain":
            check_model_source("pretrain.init" if sc.init else "model.name", sc.init or cfg.model.name)
        else:
            init, _ = finetune_init(cfg)
            check_model_source("finetune.init" if sc.init else "model.name", init)
        check_output_dir(f"{stage}.run_dir" if sc.run_dir else "output_dir", stage_run_dir(cfg, stage))
        if cfg.masks.dir and sc.system == "lasp" and not (Path(cfg.masks.dir) / "mask_config.json").is_file():
            check_output_dir("masks.dir", cfg.masks.dir)  # searched and written there
        if cfg.data.vocab and stage == "finetune":
            check_output_dir("data.vocab", cfg.data.vocab)
    elif stage == "evaluate":
        ev = cfg.evaluate
        split = getattr(cfg.data, ev.split)
        check_text_file(f"data.{ev.split}", _required(split, f"data.{ev.split}"))
        model_dir, out_dir = evaluate_paths(cfg)
        check_model_source("evaluate.model" if ev.model else "finetune.run_dir", str(model_dir))
        check_output_dir("evaluate.out_dir" if ev.out_dir else "output_dir", out_dir)
    else:
        raise ValueError(f"unknown stage {stage!r}")


def evaluate_paths(cfg: RecipeConfig) -> tuple[Path, Path]:
    """(model folder, output folder) of ``lasp evaluate``: the rule lasp.train.evaluate.evaluate applies."""
    ev = cfg.evaluate
    model_dir = Path(ev.model) if ev.model else stage_run_dir(cfg, "finetune") / "final"
    return model_dir, (Path(ev.out_dir) if ev.out_dir else model_dir.parent / "eval")


def _required(value: str | None, key: str) -> str:
    if not value:
        raise ConfigError(f"key '{key}' is required here (a manifest path)")
    return value

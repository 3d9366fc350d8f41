"""What every stage does first: threads, seeds, device and process group, mask sets, the final export."""
from __future__ import annotations

import functools
import json
import os
import random
import shutil
from pathlib import Path
from typing import Callable, Sequence

import numpy as np
import torch

from lasp.config.recipe import RecipeConfig, config_to_dict, save_recipe
from lasp.data.text import Vocabulary
from lasp.device import apply_cpu_settings
from lasp.errors import ConfigError
from lasp.io import TMP_PREFIX, atomic_dir, atomic_write_json
from lasp.locks import acquire, release
from lasp.masks.language_masks import LanguageMasks
from lasp.masks.provenance import check_mask_provenance, expected_record, legacy_record, note_base_weights
from lasp.masks.store import CONFIG_NAME, check_mask_dir, read_config
from lasp.models.export import export_language
from lasp.models.features import feature_normalization, save_feature_extractor
from lasp.models.layout import SHARED_SUBDIR
from lasp.models.system import System
from lasp.search.checks import check_language_rows
from lasp.search.methods import random_masks, random_masks_like, search_masks
from lasp.train import distributed as D
from lasp.train.checkpoint import checkpoint_dir
from lasp.train.run_record import (RECIPE_SECTIONS, check_run_record, check_stage_of_run, full_key, stage_recipe,
                                   start_over)


def start_stage(cfg: RecipeConfig) -> D.DistInfo:
    apply_cpu_settings(cfg.threads, cfg.cpu_onednn)
    info = D.init_distributed(cfg.device)
    # the same seed on every rank: model initialisation must agree; data order is sharded by the sampler
    random.seed(cfg.seed)
    np.random.seed(cfg.seed)
    torch.manual_seed(cfg.seed)
    return info


def _is_mask_dir(path: str | Path | None) -> bool:
    return bool(path) and (Path(path) / CONFIG_NAME).is_file()


def claim_run(cfg: RecipeConfig, stage: str, run_dir: Path, init: str, info: D.DistInfo,
              extra: dict | None = None) -> None:
    """Become the one writer of ``run_dir`` and check the recipe against the one the run started with.

    The lock stays until the process ends (the training loop and the final export run under it). Resuming a
    run (it has checkpoints and ``resume`` is on) with changed recipe keys or data is an error listing them,
    except the keys ``<stage>.resume_allow`` names. ``resume=false`` starts the run over: what an earlier run
    made in ``run_dir`` goes first, so that the two never mix. The recipe is recorded in ``<run_dir>/run.json``.
    Call it before anything is written into ``run_dir``. ``extra``: more recipe sections the run depends on.
    """
    sc = getattr(cfg, stage)
    if info.is_main:
        acquire(run_dir, "run directory")
        check_stage_of_run(run_dir, stage)
        if not sc.resume:
            start_over(run_dir, f"{stage}.resume=false", keep_masks=bool(cfg.masks.dir),
                       keep_vocab=bool(cfg.data.vocab))
    D.wait_for_main(info)
    ckpts = checkpoint_dir(run_dir)
    resuming = sc.resume and ckpts.is_dir() and any(ckpts.glob("step-*"))
    recipe = {**stage_recipe(config_to_dict(cfg), stage, sc.system, init), **(extra or {})}
    allow = [full_key(a, stage, RECIPE_SECTIONS) for a in sc.resume_allow]
    check_run_record(run_dir, stage, recipe, allow, resuming, write=info.is_main)


def _model_name(model: str | None) -> str | None:
    """A model as mask records name it: a folder by its absolute path, a preset by its name."""
    return os.path.abspath(model) if model and os.path.isdir(model) else model


def _in_lineage(ancestor: str | None, model: str | None, depth: int = 8) -> bool:
    """Whether ``model`` is ``ancestor`` or was trained by lasp from it (each trained system's
    train_summary.json names the model it started from)."""
    ancestor = _model_name(ancestor)
    for _ in range(depth):
        if not model or not ancestor:
            return False
        if _model_name(model) == ancestor:
            return True
        summary = Path(model) / "train_summary.json"
        try:
            model = json.loads(summary.read_text(encoding="utf-8")).get("init") if summary.is_file() else None
        except (OSError, ValueError, AttributeError):
            return False
    return False


def _guard_masks(fn):
    """Around :func:`resolve_masks`: check an existing mask set's provenance against the recipe;
    before a search, refuse a folder of foreign mask files, check the rows per language, and lock the set."""
    @functools.wraps(fn)
    def wrapper(cfg, system, model, languages, run_dir, init, info, progress=True):
        run_dir = Path(run_dir)
        if system not in ("lasp", "random"):
            return fn(cfg, system, model, languages, run_dir, init, info, progress)
        m = cfg.masks
        check_mask_dir(m.dir)
        source = m.dir if _is_mask_dir(m.dir) else (Path(init) / "masks" if _is_mask_dir(Path(init) / "masks")
                                                     else None)
        target = None
        if source is not None:
            config = read_config(str(source))
            records = {l: (config.get("provenance") or {}).get(l) or legacy_record(config, l) for l in languages}
            config_base = next(iter(records.values()), {}).get("base_model") if records else None
            # the starting weights must be the ones the set was searched on, unless one of the two models was
            # trained by lasp from the other (masks searched on the base model, used on its pre-trained version)
            related = _in_lineage(config_base, init) or _in_lineage(init, config_base)
            same_base = config_base == _model_name(init)
            wanted = expected_record(m, cfg.data.train, init, model if same_base or not related else None)
            if source != m.dir:
                # the masks the starting model was trained with: a later stage may train on other data (labelled
                # fine-tuning after unlabelled pre-training); the mask settings must still agree
                wanted.pop("data_sha256")
            check_mask_provenance(source, records, wanted, languages, m.reuse)
        elif system == "lasp":
            check_language_rows(cfg.data.train, languages, m.min_utterances, "masks.min_utterances")
            note_base_weights(init, model, m.targets)  # recorded with the masks the search makes
            target = Path(m.dir) if m.dir else run_dir / "masks-lasp"
            if info.is_main:
                acquire(target, "mask set")
        try:
            return fn(cfg, system, model, languages, run_dir, init, info, progress)
        finally:
            if target is not None and info.is_main:
                release(target)
    return wrapper


@_guard_masks
def resolve_masks(cfg: RecipeConfig, system: str, model: torch.nn.Module, languages: Sequence[str],
                  run_dir: Path, init: str, info: D.DistInfo, progress: bool = True) -> LanguageMasks | None:
    """The mask set a masked system trains with, searched (and saved) when there is none yet.

    lasp: ``masks.dir`` if it holds a mask set; else the masks the ``init`` model was trained with
    (``<init>/masks``); else :func:`lasp.search.methods.search_masks` on ``init`` (what ``lasp prune`` runs for
    the same recipe) saved to ``masks.dir`` (or ``<run_dir>/masks-lasp``). random: random masks with the
    per-tensor density of that lasp set when one exists, else at ``masks.sparsity``, saved to
    ``<run_dir>/masks-random``.
    """
    if system not in ("lasp", "random"):
        return None
    m = cfg.masks
    source = m.dir if _is_mask_dir(m.dir) else (Path(init) / "masks" if _is_mask_dir(Path(init) / "masks") else None)
    if system == "random":
        out = run_dir / "masks-random"
        if info.is_main and not _is_mask_dir(out):
            if source is not None:
                masks = random_masks_like(LanguageMasks.load(source, languages), cfg.seed)
            else:
                masks = random_masks(model, languages, cfg, base_model=init)
            masks.save(out)
        D.wait_for_main(info)
        return LanguageMasks.load(out, languages)
    if source is not None:
        return LanguageMasks.load(source, languages)
    out = Path(m.dir) if m.dir else run_dir / "masks-lasp"
    if info.is_main:
        search_masks(cfg, init, languages, device=info.device, progress=progress).save(out)
    D.wait_for_main(info)
    return LanguageMasks.load(out, languages)


def export_final(system: System, run_dir: Path, cfg: RecipeConfig, summary: dict,
                 extra: Callable[[Path], None] | None = None, name: str = "final") -> Path:
    """Write ``<run_dir>/final`` (or ``<run_dir>/<name>``) atomically (temporary directory, then rename).

    Layout: :mod:`lasp.models.layout`: one copy of the shared weights. The shared model gets the
    feature-extractor config training used (so the next stage and exports normalize audio the same way). With
    ``finetune.export_languages`` a fine-tuned system (``extra`` wrote vocab.json) also gets one plain,
    pipeline-loadable model per language in ``final/<lang>/`` (:mod:`lasp.models.export`); for the shared system
    these folders link the one weights file instead of copying it.
    """
    final = run_dir / name
    for stale in run_dir.glob(f"{TMP_PREFIX}{name}.*"):  # an export killed part-way (the run is ours: locked)
        shutil.rmtree(stale, ignore_errors=True)
    with atomic_dir(final, replace=True) as tmp:
        system.save_pretrained(tmp)
        normalize = summary["normalize"] if "normalize" in summary else feature_normalization(summary["init"])
        save_feature_extractor(str(tmp / SHARED_SUBDIR), system.model.config, normalize)
        if extra is not None:
            extra(tmp)
        if (tmp / "vocab.json").is_file() and cfg.finetune.export_languages:
            _export_languages(system, tmp, summary.get("languages") or [], normalize)
        save_recipe(cfg, tmp / "recipe.yaml")
        atomic_write_json(tmp / "train_summary.json", summary)
    return final


def _export_languages(system: System, directory: Path, languages: Sequence[str], normalize: bool) -> None:
    languages = system.wrapper.languages if system.wrapper is not None else list(languages)
    taken = {p.name for p in directory.iterdir()}
    clash = [l for l in languages if l in taken]
    if clash:
        raise ConfigError(f"language code {clash[0]!r} collides with {directory.name}/{clash[0]} of the system layout")
    vocab = Vocabulary.load(directory)
    was_training = system.model.training
    system.train(False)
    try:
        # every language of the shared system is the shared model: link its one weights file
        weights = directory / SHARED_SUBDIR / "model.safetensors"
        weights = weights if system.wrapper is None and weights.is_file() else None
        for lang in languages:
            export_language(system, system.vocabulary(lang, vocab), lang, directory / lang, do_normalize=normalize, weights=weights)
    except ConfigError as err:  # adapters on a post-norm encoder: the system itself is still saved and usable
        print(f"{directory.parent.name}/final: per-language exports skipped ({err})")
        for lang in languages:
            shutil.rmtree(directory / lang, ignore_errors=True)
    finally:
        system.train(was_training)

"""What every stage does first: threads, seeds, device and process group, mask sets, the final export."""
from __future__ import annotations

import json
import os
import random
import shutil
from pathlib import Path
from typing import Callable, Sequence

import numpy as np
import torch

from lasp.config import RecipeConfig, save_recipe
from lasp.cpu import apply_cpu_settings
from lasp.masks import CONFIG_NAME, LanguageMasks
from lasp.train import distributed as D
from lasp.train.systems import System


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


def resolve_masks(cfg: RecipeConfig, system: str, model: torch.nn.Module, languages: Sequence[str],
                  run_dir: Path, init: str, info: D.DistInfo, progress: bool = True) -> LanguageMasks | None:
    """The mask set a masked system trains with, searched (and saved) when there is none yet.

    lasp: ``masks.dir`` if it holds a mask set; else the masks the ``init`` model was trained with
    (``<init>/masks``); else :func:`lasp.mask_search.search_masks` on ``init`` (what ``lasp prune`` runs for
    the same recipe) saved to ``masks.dir`` (or ``<run_dir>/masks-lasp``). random: random masks with the
    per-tensor density of that lasp set when one exists, else at ``masks.sparsity``, saved to
    ``<run_dir>/masks-random``.
    """
    from lasp.mask_search import random_masks, random_masks_like, search_masks

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
        D.barrier(info)
        return LanguageMasks.load(out, languages)
    if source is not None:
        return LanguageMasks.load(source, languages)
    out = Path(m.dir) if m.dir else run_dir / "masks-lasp"
    if info.is_main:
        search_masks(cfg, init, languages, device=info.device, progress=progress).save(out)
    D.barrier(info)
    return LanguageMasks.load(out, languages)


def export_final(system: System, run_dir: Path, cfg: RecipeConfig, summary: dict,
                 extra: Callable[[Path], None] | None = None) -> Path:
    """Write ``<run_dir>/final`` atomically (temporary directory, then rename).

    Layout: :mod:`lasp.system_layout`. The shared model gets the feature-extractor config training used (so the
    next stage and exports normalize audio the same way); a fine-tuned system (``extra`` wrote vocab.json) also
    gets one plain, pipeline-loadable model per language in ``final/<lang>/`` (:mod:`lasp.export`).
    """
    from lasp.data.collate import feature_normalization, save_feature_extractor
    from lasp.system_layout import SHARED_SUBDIR

    final = run_dir / "final"
    tmp = run_dir / f".tmp-final-{os.getpid()}"
    if tmp.exists():
        shutil.rmtree(tmp)
    system.save(tmp)
    normalize = summary["normalize"] if "normalize" in summary else feature_normalization(summary["init"])
    save_feature_extractor(str(tmp / SHARED_SUBDIR), system.model.config, normalize)
    if extra is not None:
        extra(tmp)
    if (tmp / "vocab.json").is_file():
        _export_languages(system, tmp, summary.get("languages") or [], normalize)
    save_recipe(cfg, tmp / "recipe.yaml")
    (tmp / "train_summary.json").write_text(json.dumps(summary, indent=2) + "\n")
    if final.exists():
        shutil.rmtree(final)
    os.rename(tmp, final)
    return final


def _export_languages(system: System, directory: Path, languages: Sequence[str], normalize: bool) -> None:
    from lasp.data.text import Vocabulary
    from lasp.errors import ConfigError
    from lasp.export import export_language

    languages = system.wrapper.languages if system.wrapper is not None else list(languages)
    taken = {p.name for p in directory.iterdir()}
    clash = [l for l in languages if l in taken]
    if clash:
        raise ConfigError(f"language code {clash[0]!r} collides with {directory.name}/{clash[0]} of the system layout")
    vocab = Vocabulary.load(directory)
    was_training = system.model.training
    system.train(False)
    try:
        for lang in languages:
            export_language(system, vocab, lang, directory / lang, do_normalize=normalize)
    except ConfigError as err:  # adapters on a post-norm encoder: the system itself is still saved and usable
        print(f"{directory.parent.name}/final: per-language exports skipped ({err})")
        for lang in languages:
            shutil.rmtree(directory / lang, ignore_errors=True)
    finally:
        system.train(was_training)

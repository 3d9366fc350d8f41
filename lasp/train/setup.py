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
    """Write ``<run_dir>/final`` atomically (temporary directory, then rename)."""
    final = run_dir / "final"
    tmp = run_dir / f".tmp-final-{os.getpid()}"
    if tmp.exists():
        shutil.rmtree(tmp)
    system.save(tmp)
    if extra is not None:
        extra(tmp)
    save_recipe(cfg, tmp / "recipe.yaml")
    (tmp / "train_summary.json").write_text(json.dumps(summary, indent=2) + "\n")
    if final.exists():
        shutil.rmtree(final)
    os.rename(tmp, final)
    return final

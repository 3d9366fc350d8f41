"""Atomic, resumable checkpoints.

A checkpoint is a directory ``<run_dir>/checkpoints/step-NNNNNNNN/`` holding
``model.safetensors`` (every trainable tensor: model, adapters) and
``state.pt`` (optimizer, scheduler, sampler, RNG, step, counters; plain
tensors and containers, read back with ``torch.load(weights_only=True)``).

Atomicity: the directory is written under a temporary name, fsynced and
renamed; only then is the one-line ``latest`` file replaced (write + fsync +
``os.replace``). A process killed at any point leaves ``latest`` naming a
complete checkpoint; half-written temporary directories are removed on the
next save.

Checksums: ``checksums.json`` records each file's size and sha256. Resuming
verifies them and falls back to the newest checkpoint that verifies and loads,
saying which ones it skipped and why (a disk that lost or corrupted the newest
files must not stop a run that has an older good checkpoint).
"""
from __future__ import annotations

import json
import random
import re
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors.torch import load_file, save_file

from lasp.errors import ConfigError
from lasp.io import (TMP_PREFIX, atomic_dir, atomic_write, fsync_dir, fsync_file, read_json_object,
                     sha256_file)

LATEST = "latest"
_STEP_NAME = re.compile(r"step-\d{8}")
CHECKSUMS = "checksums.json"
_FILES = ("model.safetensors", "state.pt")


class CheckpointError(ConfigError):
    """A checkpoint on disk is incomplete or corrupt."""


def rng_state() -> dict[str, Any]:
    """Every RNG a training step draws from (torch CPU/CUDA, numpy's global, Python's)."""
    np_state = np.random.get_state()
    state: dict[str, Any] = {
        "torch": torch.get_rng_state(),
        "numpy": {"name": np_state[0], "keys": torch.from_numpy(np_state[1].astype(np.int64)),
                  "pos": int(np_state[2]), "has_gauss": int(np_state[3]), "gauss": float(np_state[4])},
        "python": list(random.getstate()[1]),
        "python_version": random.getstate()[0],
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def seed_everything(seed: int) -> None:
    """Seed every RNG :func:`rng_state` saves."""
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)  # CUDA generators too


def set_rng_state(state: dict[str, Any]) -> None:
    torch.set_rng_state(state["torch"])
    n = state["numpy"]
    np.random.set_state((n["name"], n["keys"].numpy().astype(np.uint32), n["pos"], n["has_gauss"], n["gauss"]))
    random.setstate((state["python_version"], tuple(state["python"]), None))
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def checkpoint_dir(run_dir: str | Path) -> Path:
    return Path(run_dir) / "checkpoints"


def _pointed(root: Path) -> Path | None:
    """The checkpoint ``latest`` names, or None without one. It must name a checkpoint of this run: a name
    like ``step-00000040`` in the same folder, nothing that leads elsewhere (another run's weights)."""
    pointer = root / LATEST
    if not pointer.is_file():
        return None
    try:
        name = pointer.read_text(encoding="utf-8").strip()
    except (OSError, UnicodeDecodeError) as err:
        raise CheckpointError(f"{pointer}: unreadable ({err}); delete it to resume from the newest checkpoint") from None
    path = root / name
    if not _STEP_NAME.fullmatch(name) or path.is_symlink():
        raise CheckpointError(f"{pointer} names {name[:200]!r}, which is not a checkpoint of this run (step-NNNNNNNN "
                              f"in {root}); delete {pointer} to resume from the newest checkpoint there")
    return path


def latest_checkpoint(run_dir: str | Path) -> Path | None:
    """The newest complete checkpoint of a run, or None."""
    root = checkpoint_dir(run_dir)
    path = _pointed(root)
    if path is None:
        return None
    name, pointer = path.name, root / LATEST
    if not (path / "model.safetensors").is_file() or not (path / "state.pt").is_file():
        raise ConfigError(f"{pointer} names {name!r}, which is not a complete checkpoint")
    return path


def save_checkpoint(run_dir: str | Path, step: int, tensors: dict[str, torch.Tensor], state: dict[str, Any],
                    keep: int = 2) -> Path:
    """Write checkpoint ``step`` atomically and drop all but the newest ``keep``."""
    root = checkpoint_dir(run_dir)
    root.mkdir(parents=True, exist_ok=True)
    for stale in root.glob(TMP_PREFIX + "*"):  # left by a process killed mid-write (the run is ours: locked)
        shutil.rmtree(stale, ignore_errors=True)
    name = f"step-{step:08d}"
    final = root / name
    # replace: re-saving a step (a resumed run that stopped exactly there)
    with atomic_dir(final, replace=True) as tmp:
        # clone: safetensors refuses tensors that share storage, and a view may be non-contiguous
        save_file({k: v.detach().cpu().contiguous().clone() for k, v in tensors.items()},
                  str(tmp / "model.safetensors"))
        torch.save(state, tmp / "state.pt")
        sums = {f: {"bytes": (tmp / f).stat().st_size, "sha256": sha256_file(tmp / f)} for f in _FILES}
        (tmp / CHECKSUMS).write_text(json.dumps(sums, indent=1) + "\n", encoding="utf-8")
        for f in tmp.iterdir():
            fsync_file(f)
        fsync_dir(tmp)
    atomic_write(root / LATEST, name + "\n")  # only now does a resume see the new checkpoint
    steps = sorted(p for p in root.glob("step-*") if p.is_dir())
    for old in steps[:-keep] if keep > 0 else []:
        if old.name != name:
            shutil.rmtree(old, ignore_errors=True)
    return final


def verify_checkpoint(path: str | Path) -> None:
    """Raise :class:`CheckpointError` saying what is wrong with a checkpoint directory (missing file, size or
    sha256 different from ``checksums.json``)."""
    path = Path(path)
    for f in _FILES:
        if not (path / f).is_file():
            raise CheckpointError(f"{path / f} is missing")
    sums_path = path / CHECKSUMS
    if not sums_path.is_file():
        return  # written before checksums existed: loading it is the only check
    sums = read_json_object(sums_path, "checkpoint checksum list", CheckpointError)
    for f in _FILES:
        want = sums.get(f) or {}
        size = (path / f).stat().st_size
        if want.get("bytes") is not None and size != want["bytes"]:
            raise CheckpointError(f"{path / f} has {size} bytes, {CHECKSUMS} records {want['bytes']} (truncated?)")
        if want.get("sha256") and sha256_file(path / f) != want["sha256"]:
            raise CheckpointError(f"{path / f}: sha256 does not match {CHECKSUMS} (corrupt)")


def load_checkpoint(path: str | Path) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """Read a checkpoint directory back: (tensors, state). No pickle beyond torch's weights-only loader."""
    path = Path(path)
    verify_checkpoint(path)
    try:
        tensors = load_file(str(path / "model.safetensors"))
        state = torch.load(path / "state.pt", map_location="cpu", weights_only=True)
    except Exception as err:  # SafetensorError, UnpicklingError, OSError, RuntimeError ...
        raise CheckpointError(f"cannot read checkpoint {path}: {type(err).__name__}: {err}") from None
    return tensors, state


def load_resumable(run_dir: str | Path) -> tuple[Path | None, dict, dict, list[tuple[str, str]]]:
    """The newest checkpoint of a run that verifies and loads: (path, tensors, state, skipped).

    Candidates: the one ``latest`` names, then every ``step-*`` directory, newest first. ``skipped`` lists
    ``(name, reason)`` for each one passed over; (None, {}, {}, skipped) when none is usable.
    """
    root = checkpoint_dir(run_dir)
    if not root.is_dir():
        return None, {}, {}, []
    candidates: list[Path] = []
    pointed = _pointed(root)
    if pointed is not None:
        candidates.append(pointed)
    candidates += sorted((p for p in root.glob("step-*") if p.is_dir() and not p.is_symlink()
                          and _STEP_NAME.fullmatch(p.name)), reverse=True)
    skipped: list[tuple[str, str]] = []
    seen = set()
    for path in candidates:
        if path.name in seen:
            continue
        seen.add(path.name)
        if not path.is_dir():
            skipped.append((path.name, f"{LATEST} names it but it does not exist"))
            continue
        try:
            tensors, state = load_checkpoint(path)
        except CheckpointError as err:
            skipped.append((path.name, str(err)))
            continue
        return path, tensors, state, skipped
    return None, {}, {}, skipped

"""Where a trained system's files live inside its directory (a stage's ``final/``).

    final/
      lasp_system.json     what this is: system name, layout version, where the parts are
      shared/              the shared model as a Hugging Face checkpoint (config.json, model.safetensors,
                           preprocessor_config.json). For a masked system these are the weights *before* any
                           language's mask: no language was trained as this dense model.
      masks/               the mask set (lasp / random systems)
      adapters.*           per-language adapters (adapters system)
      added/               languages added after training: each one's CTC head, vocabulary [and adapters]
                           (:mod:`lasp.models.continual`); the joint head and vocab.json serve the others
      vocab.json           the CTC vocabulary (fine-tuned systems)
      <lang>/              one language exported as a plain Wav2Vec2ForCTC + processor (``lasp.models.export``)

There is deliberately no ``config.json`` + weights pair at the top: ``from_pretrained(final)`` fails instead of
silently loading the shared weights as if they were a trained model. This module only names paths, so the
model loader can resolve a system directory without importing the training code.
"""
from __future__ import annotations

import os
from pathlib import Path

from lasp.errors import ConfigError
from lasp.io import read_json_object

SYSTEM_FILE = "lasp_system.json"
SHARED_SUBDIR = "shared"
MASKS_SUBDIR = "masks"
ADDED_SUBDIR = "added"
LAYOUT_VERSION = 2


def read_marker(directory: str | os.PathLike) -> dict | None:
    """The parsed ``lasp_system.json`` of ``directory``, or None when there is none."""
    path = Path(directory) / SYSTEM_FILE
    if not path.is_file():
        return None
    marker = read_json_object(path, "lasp system marker", ConfigError)
    if "system" not in marker:
        raise ConfigError(f"{path}: no 'system' key; not written by lasp")
    return marker


def is_system_dir(directory: str | os.PathLike) -> bool:
    """True for a directory in this layout (version 2 marker)."""
    marker = read_marker(directory)
    return bool(marker) and int(marker.get("layout", 1)) >= LAYOUT_VERSION


def model_dir(directory: str | os.PathLike) -> Path:
    """The Hugging Face checkpoint folder of ``directory``: its ``shared/`` for a system directory, else itself."""
    directory = Path(directory)
    if is_system_dir(directory):
        return directory / read_marker(directory).get("model", SHARED_SUBDIR)
    return directory


def system_dir_of(run: str | os.PathLike) -> Path:
    """The trained system of ``run``: ``run`` itself when it holds one, else its ``final/``."""
    run = Path(run)
    for candidate in (run, run / "final"):
        if (model_dir(candidate) / "config.json").is_file():
            return candidate
    raise ConfigError(f"{run}: no trained system here (expected {run}/final/{SHARED_SUBDIR}/config.json)")


def is_model_dir(directory: str | os.PathLike) -> bool:
    """True when ``directory`` holds a model lasp can load (a system directory or a plain HF checkpoint)."""
    return (model_dir(directory) / "config.json").is_file()

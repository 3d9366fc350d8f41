"""The on-disk side of a mask set: file names, config reading, integrity checks, merging, removal.

See :mod:`lasp.masks.language_masks` for the format. Everything here works on paths and plain dicts, so checks that run
before any model is loaded (``lasp prune``'s argument checks, a stage's provenance check) need no tensors.
"""
from __future__ import annotations

import json
import os

import torch
from safetensors import safe_open

from lasp.errors import LaspError, MaskError
from lasp.locks import locked
from lasp.languages import check_language_code
from lasp.masks.provenance import legacy_record

FORMAT = "lasp-masks"
FORMAT_VERSION = 1
CONFIG_NAME = "mask_config.json"
# set-wide fields that stay set-wide only while every language agrees on them (else "mixed": see provenance)
_SET_WIDE = ("base_model", "scorer", "data", "requested_sparsity", "scope", "pattern", "method", "targets", "seed")


def mask_file_name(lang: str) -> str:
    return f"masks.{lang}.safetensors"


def _check_language_code(lang: str, where: str = "") -> None:
    # a language names a file inside the set's folder: nothing that could leave it ('../x', '/', ...)
    try:
        check_language_code(lang, where)
    except LaspError as err:
        raise MaskError(f"{err}; it cannot name a mask file") from None


def mask_files_in(directory: str | os.PathLike) -> list[str]:
    """Mask files (``masks.*.safetensors``) in ``directory``."""
    directory = os.fspath(directory)
    if not os.path.isdir(directory):
        return []
    return sorted(f for f in os.listdir(directory) if f.startswith("masks.") and f.endswith(".safetensors"))


def check_mask_dir(directory: str | os.PathLike | None) -> None:
    """Refuse a folder holding mask files but no mask_config.json: not ours to search into and overwrite."""
    if directory and not os.path.isfile(os.path.join(directory, CONFIG_NAME)):
        files = mask_files_in(directory)
        if files:
            raise MaskError(f"{directory} holds mask files ({', '.join(files[:3])}) but no {CONFIG_NAME}, so "
                            "lasp cannot tell what made them and will not overwrite them; point masks.dir "
                            "(or --out) at another folder, or restore the config")


def _merge_old(config: dict, old: dict) -> None:
    """Keep an existing set's other languages with their own records; set-wide fields only when uniform."""
    old_records = old.get("provenance") or {}
    for lang in old["languages"]:
        if lang in config["languages"]:
            continue
        config["languages"].append(lang)
        config["sparsity"][lang] = (old.get("sparsity") or {}).get(lang)
        if "kept" in old:
            config["kept"][lang] = old["kept"].get(lang)
        config["provenance"][lang] = old_records.get(lang) or legacy_record(old, lang)
        if lang in (old.get("checksums") or {}):
            config.setdefault("checksums", {})[lang] = old["checksums"][lang]
    for key in _SET_WIDE:
        values = []
        for lang in config["languages"]:
            rec = config["provenance"][lang]
            values.append(rec.get("sparsity") if key == "requested_sparsity" else rec.get(key))
        if len({json.dumps(v, sort_keys=True, default=str) for v in values}) > 1:
            config[key] = "mixed"  # per-language values: config["provenance"][lang]
        elif key in config or key in old:
            config[key] = values[0] if key != "requested_sparsity" else config.get(key)


def _check_counts(kept: int, sparsity_now: float, lang: str, config: dict, path: str) -> None:
    """A language's kept count (and the sparsity it implies) must be what was recorded when the set was written."""
    recorded = (config.get("kept") or {}).get(lang)
    if recorded is not None and int(recorded) != kept:
        raise MaskError(f"{path}: keeps {kept} weights but {CONFIG_NAME} records {recorded} (the file was "
                        "changed or is corrupt)")
    sparsity = (config.get("sparsity") or {}).get(lang)
    if sparsity is not None and abs(sparsity_now - float(sparsity)) > 1e-6:
        raise MaskError(f"{path}: sparsity is {sparsity_now:.6f} but {CONFIG_NAME} records "
                        f"{float(sparsity):.6f} (the file was changed or is corrupt)")


def stored_bytes(directory: str | os.PathLike) -> dict[str, int]:
    """Bytes on disk per language of a mask set (its own file), read from the folder."""
    directory = os.fspath(directory)
    config = _read_config(directory)
    return {lang: os.path.getsize(os.path.join(directory, mask_file_name(lang))) for lang in config["languages"]}


def remove_mask_set(directory: str | os.PathLike) -> None:
    """Delete a mask set's own files (its config and the mask files it lists); other files stay."""
    directory = os.fspath(directory)
    config = _read_config(directory)
    with locked(directory, "mask set"):
        for lang in config["languages"]:
            _check_language_code(lang, os.path.join(directory, CONFIG_NAME))
            path = os.path.join(directory, mask_file_name(lang))
            if os.path.isfile(path):
                os.remove(path)
        os.remove(os.path.join(directory, CONFIG_NAME))


def _read_config(directory: str) -> dict:
    path = os.path.join(directory, CONFIG_NAME)
    if not os.path.isdir(directory):
        raise MaskError(f"mask directory {directory} does not exist")
    if not os.path.isfile(path):
        raise MaskError(f"{directory} is not a mask set: {CONFIG_NAME} is missing")
    try:
        with open(path) as fh:
            config = json.load(fh)
    except (OSError, json.JSONDecodeError) as err:
        raise MaskError(f"{path}: cannot read mask config: {err}") from None
    if config.get("format") != FORMAT:
        raise MaskError(f"{path}: not a lasp mask config (format={config.get('format')!r})")
    if int(config.get("format_version", 0)) > FORMAT_VERSION:
        raise MaskError(f"{path}: format version {config['format_version']} is newer than this lasp "
                        f"understands ({FORMAT_VERSION}); upgrade lasp")
    for key in ("languages", "parameters"):
        if key not in config:
            raise MaskError(f"{path}: missing key {key!r}")
    return config


def _read_tensors(path: str) -> dict[str, torch.Tensor]:
    if not os.path.isfile(path):
        raise MaskError(f"mask file {path} is missing")
    try:
        with safe_open(path, framework="pt") as fh:
            return {key: fh.get_tensor(key) for key in fh.keys()}
    except Exception as err:  # safetensors raises several types for truncated/corrupt files
        raise MaskError(f"{path}: corrupt or truncated mask file ({type(err).__name__}: {err})") from None


read_config = _read_config

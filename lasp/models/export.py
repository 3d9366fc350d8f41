"""One language of a trained system as a plain Hugging Face model that ``transformers.pipeline`` loads alone.

``lasp export RUN --lang es --out DIR`` (and a fine-tuning stage with ``finetune.export_languages``, into
``final/<lang>/``) writes:

    config.json + model.safetensors   a Wav2Vec2ForCTC whose weights are W ⊙ M_es (lasp / random masks), the
                                      shared weights (shared system), or the shared weights plus es's adapters
                                      as transformers' own MMS adapter layers (adapters system)
    vocab.json, tokenizer_config.json, special_tokens_map.json   a Wav2Vec2CTCTokenizer over the CTC vocabulary
    preprocessor_config.json          a Wav2Vec2FeatureExtractor normalizing audio as training did

so ``pipeline("automatic-speech-recognition", model=DIR)`` transcribes es in a process that never imports lasp,
and its logits equal the masked model's for es.
"""
from __future__ import annotations

import copy
import json
import os
import shutil
from pathlib import Path

import torch

from lasp.data.text import Vocabulary
from lasp.errors import ConfigError
from lasp.io import TMP_PREFIX, atomic_write_json, ordinary_modes
from lasp.locks import LOCK_NAME, locked
from lasp.masked.model import MaskedModel
from lasp.models.adapters import LanguageAdapters
from lasp.models.features import feature_normalization, save_feature_extractor
from lasp.models.layout import system_dir_of
from lasp.models.system import System

EXPORT_RECORD = "lasp_export.json"  # what an export folder holds and which export wrote it


def language_model(system, lang: str) -> torch.nn.Module:
    """A plain Wav2Vec2ForCTC that computes what ``system`` computes for ``lang`` (a copy; system untouched)."""
    check_language(system, lang)
    wrapper = system.wrapper
    if system.added is not None and lang in system.added:
        return system.added.plain_model(lang, wrapper.merge_and_unload(lang))
    if isinstance(wrapper, MaskedModel):
        return wrapper.merge_and_unload(lang)
    if isinstance(wrapper, LanguageAdapters):
        return _adapters_model(system.model, wrapper, lang)
    return system.model


def check_language(system, lang: str) -> None:
    wrapper = system.wrapper
    if wrapper is not None and lang not in wrapper.languages:
        raise ConfigError(f"system {system.name!r} has no language {lang!r} (it has {', '.join(wrapper.languages)})")


def _adapters_model(model, adapters, lang: str) -> torch.nn.Module:
    """The shared model with ``lang``'s adapters as transformers' MMS adapter layers (``adapter_attn_dim``)."""
    from transformers import Wav2Vec2ForCTC

    if not getattr(model.config, "do_stable_layer_norm", False):
        raise ConfigError("exporting the adapters system needs a stable-layer-norm encoder (XLSR-style, "
                          "do_stable_layer_norm: true): transformers adds adapter layers only to those")
    config = copy.deepcopy(model.config)
    config.adapter_attn_dim = adapters.dim
    plain = Wav2Vec2ForCTC(config)
    state = dict(model.state_dict())
    for i, block in enumerate(adapters.adapters[lang]):
        state.update({f"wav2vec2.encoder.layers.{i}.adapter_layer.{k}": v for k, v in block.state_dict().items()})
    missing, unexpected = plain.load_state_dict(state, strict=False)
    if missing or unexpected:
        raise ConfigError(f"adapters export: weights do not fit (missing {missing[:2]}, unexpected {unexpected[:2]})")
    return plain


def export_language(system, vocab, lang: str, out_dir: str | os.PathLike, *, do_normalize: bool,
                    weights: str | os.PathLike | None = None) -> Path:
    """Write ``lang``'s plain model, tokenizer and feature extractor to ``out_dir`` (see the module docstring).

    ``weights``: a ``model.safetensors`` already holding exactly this language's model (the shared system's
    ``shared/``); it is hard-linked (copied where links are impossible) instead of written again.
    """
    out_dir = Path(out_dir)
    model = language_model(system, lang)
    if model.config.vocab_size != len(vocab):
        raise ConfigError(f"the model's CTC head has {model.config.vocab_size} outputs but vocab.json has "
                          f"{len(vocab)} tokens")
    out_dir.mkdir(parents=True, exist_ok=True)
    if weights is None:
        model.save_pretrained(os.fspath(out_dir))
    else:
        model.config.save_pretrained(os.fspath(out_dir))
        try:
            os.link(weights, out_dir / "model.safetensors")
        except OSError:
            shutil.copyfile(weights, out_dir / "model.safetensors")
    vocab.tokenizer(out_dir).save_pretrained(os.fspath(out_dir))
    ordinary_modes(out_dir)
    save_feature_extractor(os.fspath(out_dir), model.config, do_normalize)
    atomic_write_json(out_dir / EXPORT_RECORD, {"language": lang, "system": system.name})
    return out_dir


def export_run(run: str | os.PathLike, lang: str, out_dir: str | os.PathLike, *, force: bool = False) -> Path:
    """``lasp export``: ``run`` is a fine-tuned system directory (``final/``) or a stage run directory holding one.

    ``out_dir`` is a folder of its own: never the run, its system or anything inside or above them. It must be
    empty or new, or hold an earlier export: one that was stopped part-way is redone, a complete one is
    replaced with ``force`` (only the files it lists go). One export at a time per folder (a lock in it).
    """
    system_dir = system_dir_of(run)
    out_dir = Path(out_dir)
    _check_apart(out_dir, system_dir)
    if not (system_dir / "vocab.json").is_file():
        raise ConfigError(f"{system_dir} has no vocab.json; export a fine-tuned (CTC) system")
    system = System.from_pretrained(system_dir, head="ctc")
    system.train(False)
    check_language(system, lang)
    with locked(out_dir, "export folder"):
        kept = _clear_for_export(out_dir, force)
        # written first: a folder with this record saying "complete": false is an export stopped part-way
        atomic_write_json(out_dir / EXPORT_RECORD, {"complete": False, "language": lang, "kept": sorted(kept)})
        try:
            export_language(system, system.vocabulary(lang, Vocabulary.load(system_dir)), lang, out_dir,
                            do_normalize=feature_normalization(system_dir))
        except Exception:
            _remove(out_dir, {e.name for e in out_dir.iterdir()} - kept - {LOCK_NAME})
            raise
        files = sorted(e.name for e in out_dir.iterdir() if e.name not in kept | {LOCK_NAME, EXPORT_RECORD})
        atomic_write_json(out_dir / EXPORT_RECORD, {"language": lang, "system": system.name, "files": files})
    return out_dir


def _check_apart(out_dir: Path, system_dir: Path) -> None:
    """--out must not be the trained system or its run directory, nor lie inside or above either."""
    run_dir = system_dir.parent if system_dir.name == "final" else None
    out = out_dir.resolve()
    for what, path in (("the trained system", system_dir), ("its run directory", run_dir)):
        if path is None:
            continue
        path = path.resolve()
        if out == path or out.is_relative_to(path) or path.is_relative_to(out):
            where = "is" if out == path else "is inside" if out.is_relative_to(path) else "holds"
            raise ConfigError(f"--out {out_dir} {where} {what} {path}; an export goes to a folder of its own")


def _clear_for_export(out_dir: Path, force: bool) -> set[str]:
    """Make room in ``out_dir`` for an export, removing only what an earlier export wrote; returns the names
    of entries that stay (files that were there before that export)."""
    entries = {e.name for e in out_dir.iterdir() if e.name != LOCK_NAME}
    leftovers = {n for n in entries if n.startswith(f"{TMP_PREFIX}{EXPORT_RECORD}.")}  # a write stopped part-way
    if not entries - leftovers:
        _remove(out_dir, leftovers)
        return set()
    record_path = out_dir / EXPORT_RECORD
    try:
        record = json.loads(record_path.read_text(encoding="utf-8")) if record_path.is_file() else None
    except (OSError, ValueError):
        record = None
    if not isinstance(record, dict):
        raise ConfigError(f"{out_dir} is not empty and holds no lasp export ({EXPORT_RECORD}); lasp will not "
                          "write into it: choose another --out")
    if record.get("complete", True):
        if not force:
            raise ConfigError(f"{out_dir} holds an export ({record.get('language')}); choose another --out or "
                              "pass --force to replace it")
        listed = record.get("files")
        ours = set(listed) & entries if isinstance(listed, list) else entries  # (an export of an earlier lasp)
    else:  # stopped part-way: everything but what was there before it started
        ours = entries - set(record.get("kept") or ())
    _remove(out_dir, ours | leftovers | ({EXPORT_RECORD} & entries))
    return {e.name for e in out_dir.iterdir()} - {LOCK_NAME}


def _remove(directory: Path, names: set[str]) -> None:
    for name in names:
        path = directory / name
        if path.is_dir() and not path.is_symlink():
            shutil.rmtree(path)
        else:
            path.unlink(missing_ok=True)



"""One language of a trained system as a plain Hugging Face model that ``transformers.pipeline`` loads alone.

``lasp export RUN --lang es --out DIR`` (and every fine-tuning stage, into ``final/<lang>/``) writes:

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
import os
import shutil
from pathlib import Path

import torch

from lasp.data.text import Vocabulary
from lasp.errors import ConfigError
from lasp.io import atomic_write_json
from lasp.masked.model import MaskedModel
from lasp.models.adapters import LanguageAdapters
from lasp.models.features import feature_normalization, save_feature_extractor
from lasp.models.layout import system_dir_of
from lasp.models.system import System


def language_model(system, lang: str) -> torch.nn.Module:
    """A plain Wav2Vec2ForCTC that computes what ``system`` computes for ``lang`` (a copy; system untouched)."""
    wrapper = system.wrapper
    if wrapper is not None and lang not in wrapper.languages:
        raise ConfigError(f"system {system.name!r} has no language {lang!r} (it has {', '.join(wrapper.languages)})")
    if system.added is not None and lang in system.added:
        return system.added.plain_model(lang, wrapper.merge_and_unload(lang))
    if isinstance(wrapper, MaskedModel):
        return wrapper.merge_and_unload(lang)
    if isinstance(wrapper, LanguageAdapters):
        return _adapters_model(system.model, wrapper, lang)
    return system.model


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


def export_language(system, vocab, lang: str, out_dir: str | os.PathLike, *, do_normalize: bool) -> Path:
    """Write ``lang``'s plain model, tokenizer and feature extractor to ``out_dir`` (see the module docstring)."""
    out_dir = Path(out_dir)
    model = language_model(system, lang)
    if model.config.vocab_size != len(vocab):
        raise ConfigError(f"the model's CTC head has {model.config.vocab_size} outputs but vocab.json has "
                          f"{len(vocab)} tokens")
    out_dir.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(os.fspath(out_dir))
    vocab.tokenizer(out_dir).save_pretrained(os.fspath(out_dir))
    save_feature_extractor(os.fspath(out_dir), model.config, do_normalize)
    atomic_write_json(out_dir / "lasp_export.json", {"language": lang, "system": system.name})
    return out_dir


def export_run(run: str | os.PathLike, lang: str, out_dir: str | os.PathLike, *, force: bool = False) -> Path:
    """``lasp export``: ``run`` is a fine-tuned system directory (``final/``) or a stage run directory holding one."""
    system_dir = system_dir_of(run)
    out_dir = Path(out_dir)
    if out_dir.exists() and any(out_dir.iterdir()):
        if not force:
            raise ConfigError(f"{out_dir} exists and is not empty; choose another --out or pass --force")
        shutil.rmtree(out_dir)
    if not (system_dir / "vocab.json").is_file():
        raise ConfigError(f"{system_dir} has no vocab.json; export a fine-tuned (CTC) system")
    system = System.from_pretrained(system_dir, head="ctc")
    system.train(False)
    return export_language(system, system.vocabulary(lang, Vocabulary.load(system_dir)), lang, out_dir,
                           do_normalize=feature_normalization(system_dir))



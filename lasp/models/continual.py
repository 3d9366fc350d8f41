"""Languages added to a trained system afterwards: each owns its CTC output layer and vocabulary (and, in the
adapter baseline, its adapters), so nothing an earlier language reads is touched.

A system trained jointly has one CTC head over the joint character vocabulary. A language added later brings
characters that vocabulary lacks, and training the joint head for it would change every other language's logits.
So, as in MMS (one head and vocabulary per language), an added language gets a head of its own over its own
characters: rows of characters the joint vocabulary already has start as copies of the joint head's rows (what
the system learnt about them), rows of new characters start from the model's initializer. The joint head and
vocabulary stay exactly what they were for the languages trained with them. Decoding an added language can only
produce its own characters.

The head is selected by the active language through a forward hook on the model's ``lm_head`` (the joint head
runs and its output is replaced), so the Hugging Face model, its ``state_dict`` and ``shared/`` stay untouched.
The CTC loss of an added language is computed here with the model's own loss function: transformers checks the
labels against ``config.vocab_size``, the joint vocabulary's size.

On disk (``added/`` of a system folder): ``added.json`` (per language: its tokens, adapter width or null, how it
was added) and ``<lang>.safetensors`` (``head.weight``, ``head.bias`` and, for adapters, ``adapters.*``).
Loading reads every added language's file (a head is a few KiB to a few hundred KiB).
"""
from __future__ import annotations

import copy
import json
import os
from typing import Sequence

import torch
import torch.nn as nn
from safetensors import safe_open
from safetensors.torch import save_file
from transformers import Wav2Vec2ForCTC
from transformers.modeling_outputs import CausalLMOutput

from lasp.data.text import Vocabulary
from lasp.errors import ConfigError
from lasp.io import atomic_path, atomic_write_json
from lasp.languages import check_language_code
from lasp.models.adapters import LanguageAdapters

ADDED_CONFIG = "added.json"


def initial_head(joint_head: nn.Linear, joint_tokens: Sequence[str], tokens: Sequence[str], std: float,
                 seed: int) -> nn.Linear:
    """A head over ``tokens``: rows of tokens the joint vocabulary has are copies of the joint head's rows, the
    others are drawn like transformers initialises ``lm_head`` (normal(0, std) weights, zero bias)."""
    index = {t: i for i, t in enumerate(joint_tokens)}
    head = nn.Linear(joint_head.in_features, len(tokens), device=joint_head.weight.device,
                     dtype=joint_head.weight.dtype)
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        head.weight.copy_(torch.randn(head.weight.shape, generator=gen) * std)
        head.bias.zero_()
        for row, token in enumerate(tokens):
            if token in index:
                head.weight[row].copy_(joint_head.weight[index[token]])
                head.bias[row].copy_(joint_head.bias[index[token]])
    return head


class AddedLanguages(nn.Module):
    """The per-language parts of languages added to ``model`` after its joint training (see module docstring)."""

    def __init__(self, model: nn.Module):
        super().__init__()
        self.__dict__["model"] = model  # not a submodule: the model's weights are saved and moved by the System
        self.heads = nn.ModuleDict()
        self.tokens: dict[str, list[str]] = {}
        self.records: dict[str, dict] = {}
        self.__dict__["adapters"] = None  # LanguageAdapters of the languages added with adapters
        self._active: str | None = None
        self._hook = model.lm_head.register_forward_hook(self._own_head)

    # -- what is served
    @property
    def languages(self) -> list[str]:
        return list(self.heads)

    def __contains__(self, lang: str) -> bool:
        return lang in self.heads

    @property
    def active(self) -> str | None:
        return self._active

    def vocabulary(self, lang: str) -> Vocabulary:
        return Vocabulary(self.tokens[lang])

    def add(self, lang: str, tokens: Sequence[str], head: nn.Linear, *, adapter_dim: int | None = None,
            record: dict | None = None) -> None:
        """Serve ``lang`` with ``head`` over ``tokens`` (and fresh adapters of width ``adapter_dim``)."""
        check_language_code(lang, "added language")
        if lang in self.heads:
            raise ConfigError(f"language {lang!r} was already added")
        if head.out_features != len(tokens):
            raise ConfigError(f"head of {lang!r} has {head.out_features} outputs for {len(tokens)} tokens")
        self.heads[lang] = head
        self.tokens[lang] = list(tokens)
        self.records[lang] = dict(record or {})
        if adapter_dim is not None:
            self._add_adapters(lang, int(adapter_dim))
        self.records[lang]["adapter_dim"] = adapter_dim

    def _add_adapters(self, lang: str, dim: int) -> None:
        old = self.adapters
        if old is not None and old.dim != dim:
            raise ConfigError(f"added languages share one adapter width: {old.dim} already, {dim} asked for {lang!r}")
        langs = (old.languages if old is not None else []) + [lang]
        new = LanguageAdapters(self.model, langs, dim=dim, freeze_base=False)  # requires_grad is the caller's
        if old is not None:
            for l in old.languages:
                new.adapters[l].load_state_dict(old.adapters[l].state_dict())
            old.remove()
        self.__dict__["adapters"] = new

    def remove(self, lang: str) -> None:
        """Stop serving ``lang`` (its head, vocabulary and adapters go)."""
        del self.heads[lang]
        del self.tokens[lang]
        self.records.pop(lang, None)
        if self.adapters is not None and lang in self.adapters.languages:
            rest = [l for l in self.adapters.languages if l != lang]
            old = self.adapters
            old.remove()
            self.__dict__["adapters"] = None
            if rest:
                new = LanguageAdapters(self.model, rest, dim=old.dim, freeze_base=False)
                for l in rest:
                    new.adapters[l].load_state_dict(old.adapters[l].state_dict())
                self.__dict__["adapters"] = new

    # -- running
    def set_language(self, langs: str | Sequence[str] | None) -> None:
        if langs is None:
            lang = None
        elif isinstance(langs, str):
            lang = langs if langs in self.heads else None
        else:
            present = list(dict.fromkeys(langs))
            added = [l for l in present if l in self.heads]
            if added and len(present) > 1:
                raise ConfigError(f"language {added[0]!r} was added with its own output layer: it runs one language "
                                  f"per batch (this batch mixes {', '.join(present)}); set data.mixed=false")
            lang = added[0] if added else None
        self._active = lang
        if self.adapters is not None:
            self.adapters.set_language(lang if lang in self.adapters.languages else None)

    def _own_head(self, module, args, output):
        if self._active is None:
            return output
        return self.heads[self._active](args[0])

    def forward_ctc(self, runner, inputs: dict) -> CausalLMOutput:
        """``runner(**inputs)`` with the active added language's head, and its CTC loss when labels are given
        (what ``Wav2Vec2ForCTC.forward`` computes, without its check against the joint vocabulary's size)."""
        inputs = dict(inputs)
        labels = inputs.pop("labels", None)
        out = runner(**inputs)
        logits = out.logits
        loss = None
        if labels is not None:
            model = self.model
            values = inputs["input_values"]
            attention = inputs.get("attention_mask")
            if attention is None:
                attention = torch.ones_like(values, dtype=torch.long)
            lengths = model._get_feat_extract_output_lengths(attention.sum(-1)).to(torch.long)
            loss = model.loss_function(logits=logits, labels=labels, logit_lengths=lengths,
                                       blank_token_id=model.config.pad_token_id,
                                       reduction=model.config.ctc_loss_reduction,
                                       zero_infinity=model.config.ctc_zero_infinity)
        return CausalLMOutput(loss=loss, logits=logits)

    # -- training and checkpoints
    def parameters_of(self, lang: str) -> list[tuple[str, nn.Parameter]]:
        """``lang``'s own trainable tensors (head, adapters) by their name in ``<lang>.safetensors``."""
        out = [(f"head.{n}", p) for n, p in self.heads[lang].named_parameters()]
        if self.adapters is not None and lang in self.adapters.languages:
            out += [(f"adapters.{n}", p) for n, p in self.adapters.adapters[lang].named_parameters()]
        return out

    def tensors(self) -> dict[str, torch.Tensor]:
        """Every added language's tensors, ``<lang>/<name>`` (what a training checkpoint holds)."""
        return {f"{lang}/{name}": p for lang in self.languages for name, p in self.parameters_of(lang)}

    def load_tensors(self, tensors: dict[str, torch.Tensor], where: str = "checkpoint") -> None:
        mine = self.tensors()
        if set(tensors) != set(mine):
            odd = sorted(set(mine) - set(tensors)) or sorted(set(tensors) - set(mine))
            raise ConfigError(f"{where}: added-language tensors do not fit ({odd[0]})")
        with torch.no_grad():
            for name, p in mine.items():
                if tensors[name].shape != p.shape:
                    raise ConfigError(f"{where}: {name} has shape {list(tensors[name].shape)}, expected "
                                      f"{list(p.shape)}")
                p.copy_(tensors[name])

    # -- files
    def save(self, directory: str | os.PathLike) -> None:
        directory = os.fspath(directory)
        os.makedirs(directory, exist_ok=True)
        for lang in self.languages:
            tensors = {name: p.detach().cpu().contiguous() for name, p in self.parameters_of(lang)}
            with atomic_path(os.path.join(directory, f"{lang}.safetensors")) as tmp:
                save_file(tensors, tmp, metadata={"format": "lasp-added-language", "language": lang})
        atomic_write_json(os.path.join(directory, ADDED_CONFIG),
                          {"languages": {l: {"tokens": self.tokens[l], **self.records[l]} for l in self.languages}},
                          ensure_ascii=False)

    @classmethod
    def load(cls, model: nn.Module, directory: str | os.PathLike) -> "AddedLanguages":
        directory = os.fspath(directory)
        path = os.path.join(directory, ADDED_CONFIG)
        try:
            with open(path, encoding="utf-8") as fh:
                config = json.load(fh)["languages"]
        except (OSError, json.JSONDecodeError, KeyError, TypeError) as err:
            raise ConfigError(f"{path}: cannot read the added languages ({err})") from None
        added = cls(model)
        device = model.lm_head.weight.device
        for lang, entry in config.items():
            check_language_code(lang, path)
            file = os.path.join(directory, f"{lang}.safetensors")
            try:
                with safe_open(file, framework="pt") as fh:
                    tensors = {k: fh.get_tensor(k) for k in fh.keys()}
            except Exception as err:  # safetensors raises several types for missing/corrupt files
                raise ConfigError(f"{file}: cannot read language {lang!r} ({type(err).__name__}: {err})") from None
            head = nn.Linear(model.lm_head.in_features, len(entry["tokens"]), device=device,
                             dtype=model.lm_head.weight.dtype)
            record = {k: v for k, v in entry.items() if k not in ("tokens", "adapter_dim")}
            added.add(lang, entry["tokens"], head, adapter_dim=entry.get("adapter_dim"), record=record)
            own = dict(added.parameters_of(lang))
            if set(tensors) != set(own):
                odd = sorted(set(own) - set(tensors)) or sorted(set(tensors) - set(own))
                raise ConfigError(f"{file}: tensors do not fit language {lang!r} ({odd[0]})")
            added.load_tensors({**added.tensors(), **{f"{lang}/{k}": v for k, v in tensors.items()}}, where=file)
        return added

    # -- export
    def plain_model(self, lang: str, merged: nn.Module) -> nn.Module:
        """A plain ``Wav2Vec2ForCTC`` computing ``lang``: ``merged``'s weights (the masks already applied), the
        language's head and vocabulary size, its adapters as transformers' MMS adapter layers."""
        config = copy.deepcopy(merged.config)
        config.vocab_size = len(self.tokens[lang])
        state = {k: v for k, v in merged.state_dict().items() if not k.startswith("lm_head.")}
        state.update({f"lm_head.{k}": v for k, v in self.heads[lang].state_dict().items()})
        if self.adapters is not None and lang in self.adapters.languages:
            if not getattr(config, "do_stable_layer_norm", False):
                raise ConfigError("exporting a language added with adapters needs a stable-layer-norm encoder "
                                  "(do_stable_layer_norm: true): transformers adds adapter layers only to those")
            config.adapter_attn_dim = self.adapters.dim
            for i, block in enumerate(self.adapters.adapters[lang]):
                state.update({f"wav2vec2.encoder.layers.{i}.adapter_layer.{k}": v
                              for k, v in block.state_dict().items()})
        plain = Wav2Vec2ForCTC(config)
        missing, unexpected = plain.load_state_dict(state, strict=False)
        if missing or unexpected:
            raise ConfigError(f"export of {lang!r}: weights do not fit (missing {missing[:2]}, "
                              f"unexpected {unexpected[:2]})")
        return plain.to(merged.lm_head.weight.device)

"""Structured sub-networks: per-language masks over attention heads and feed-forward neurons.

Where :mod:`lasp.search.pruning` keeps arbitrary weights, a structured mask keeps whole
heads (rows of q/k/v, columns of out_proj) and whole FFN neurons (rows of
intermediate_dense, columns of output_dense) per layer, so a language's
sub-network can be exported as a physically smaller *dense* model.

Scoring uses torch-pruning: its dependency graph, traced through the model,
couples q/k/v/out_proj of a layer (and the two FFN projections) into one
pruning group, and a group importance criterion (magnitude or first-order
Taylor, accumulated over one language's batches) scores every channel of the
group. A head's score is the sum over its channels. The weight-normed
positional conv has its parametrization removed on a private copy before
tracing (torch-pruning cannot trace parametrized modules).

A structured mask also converts to ordinary per-weight masks
(:meth:`StructuredMasks.to_language_masks`), so it trains through
:class:`lasp.masked.model.MaskedModel` like any other mask set, and the exported
model gives the same outputs as the masked model for that language.
"""
from __future__ import annotations

import copy
import json
import os
from dataclasses import dataclass, field
from typing import Iterable, Mapping

import torch
import torch.nn as nn
from torch.nn.utils import parametrize

from lasp.errors import ConfigError, MaskError
from lasp.io import atomic_write_json, ordinary_modes
from lasp.masks.language_masks import LanguageMasks
from lasp.models.load import encoder_layers

IMPORTANCES = ("taylor", "magnitude", "random")
STRUCTURE_FILE = "structured_masks.json"
EXPORT_FILE = "lasp_structure.json"
FORMAT_VERSION = 1


def _layer_sizes(model: nn.Module) -> tuple[int, int, int, int]:
    """(layers, heads, head_dim, ffn) of the unpruned model, from its config."""
    cfg = model.config
    return (cfg.num_hidden_layers, cfg.num_attention_heads, cfg.hidden_size // cfg.num_attention_heads,
            cfg.intermediate_size)


def _fold_parametrizations(model: nn.Module) -> None:
    """Replace every weight-parametrized conv/linear by a plain module holding the computed weight.

    ``remove_parametrizations`` is not used: a deep copy shares its dynamically created
    module class with the original, and removing the parametrization from the copy
    deletes the ``weight`` property of that shared class, breaking the caller's model.
    """
    for name, module in list(model.named_modules()):
        if not parametrize.is_parametrized(module, "weight"):
            continue
        if not isinstance(module, (nn.Conv1d, nn.Linear)):
            raise ConfigError(f"{name}: cannot fold the weight parametrization of a {type(module).__name__}")
        if isinstance(module, nn.Conv1d):
            plain = nn.Conv1d(module.in_channels, module.out_channels, module.kernel_size, stride=module.stride,
                              padding=module.padding, dilation=module.dilation, groups=module.groups,
                              bias=module.bias is not None, padding_mode=module.padding_mode)
        else:
            plain = nn.Linear(module.in_features, module.out_features, bias=module.bias is not None)
        plain = plain.to(device=module.parametrizations.weight.original1.device,
                         dtype=module.parametrizations.weight.original1.dtype)
        with torch.no_grad():
            plain.weight.copy_(module.weight)
            if module.bias is not None:
                plain.bias.copy_(module.bias)
        plain.train(module.training)
        parent_name, _, attr = name.rpartition(".")
        setattr(model.get_submodule(parent_name) if parent_name else model, attr, plain)


def prepare_for_tracing(model: nn.Module) -> nn.Module:
    """A private copy torch-pruning can trace: weight norm folded into a plain weight, eager attention."""
    traced = copy.deepcopy(model)
    _fold_parametrizations(traced)
    # SDPA hides q·kᵀ inside one op; the eager path exposes the matmuls that couple q, k, v and out_proj.
    traced.config._attn_implementation = "eager"
    return traced


def dependency_graph(traced: nn.Module, samples: int = 4000):
    import torch_pruning as tp

    example = {"input_values": torch.zeros(1, samples, device=next(traced.parameters()).device)}
    was_training = traced.training
    traced.eval()
    with torch.enable_grad():  # torch-pruning traces through autograd
        graph = tp.DependencyGraph().build_dependency(traced, example_inputs=example,
                                                      output_transform=lambda o: o[0])
    traced.train(was_training)
    return graph


def _importance(kind: str):
    import torch_pruning as tp

    if kind == "taylor":
        return tp.importance.GroupTaylorImportance()
    if kind == "magnitude":
        return tp.importance.GroupMagnitudeImportance(p=2)
    raise ConfigError(f"unknown structured importance {kind!r}; choose one of {', '.join(IMPORTANCES)}")


def _accumulate_gradients(model: nn.Module, batches: Iterable[Mapping], max_batches: int | None, lang: str) -> None:
    model.zero_grad(set_to_none=True)
    seen = 0
    for batch in batches:
        if max_batches is not None and seen >= max_batches:
            break
        inputs = {k: v for k, v in batch.items() if k != "langs"}
        out = model(**inputs)
        if getattr(out, "loss", None) is None:
            raise ConfigError(f"language {lang}: the model returned no loss; Taylor importance needs batches "
                              "with labels (CTC) or mask/negative indices (pre-training)")
        out.loss.backward()
        seen += 1
    if seen == 0:
        raise ConfigError(f"language {lang}: no batches to score with")


def score_structures(model: nn.Module, batches: Iterable[Mapping] | None = None, importance: str = "taylor",
                     max_batches: int | None = None, seed: int = 0, lang: str = "?") -> dict[str, torch.Tensor]:
    """Importance of every head and FFN neuron: ``{"heads": [layers, H], "neurons": [layers, F]}`` (fp32)."""
    layers, heads, head_dim, ffn = _layer_sizes(model)
    if importance == "random":
        gen = torch.Generator().manual_seed(seed)
        return {"heads": torch.rand(layers, heads, generator=gen), "neurons": torch.rand(layers, ffn, generator=gen)}
    criterion = _importance(importance)
    traced = prepare_for_tracing(model)
    graph = dependency_graph(traced)
    if importance == "taylor":
        traced.train()
        _accumulate_gradients(traced, batches if batches is not None else [], max_batches, lang)
    import torch_pruning as tp

    head_scores, neuron_scores = [], []
    for layer in encoder_layers(traced):
        q = layer.attention.q_proj
        group = graph.get_pruning_group(q, tp.prune_linear_out_channels, idxs=list(range(q.out_features)))
        channel = criterion(group).detach().float().cpu()
        head_scores.append(channel.reshape(heads, head_dim).sum(1))
        ff = layer.feed_forward.intermediate_dense
        group = graph.get_pruning_group(ff, tp.prune_linear_out_channels, idxs=list(range(ff.out_features)))
        neuron_scores.append(criterion(group).detach().float().cpu())
    return {"heads": torch.stack(head_scores), "neurons": torch.stack(neuron_scores)}


def _keep_top(scores: torch.Tensor, sparsity: float) -> torch.Tensor:
    """Per row, keep the highest-scoring ``(1 - sparsity)`` fraction (at least one)."""
    width = scores.shape[1]
    keep = max(1, int(round(width * (1.0 - sparsity))))
    top = torch.topk(scores, keep, dim=1).indices
    return torch.zeros_like(scores, dtype=torch.bool).scatter_(1, top, True)


@dataclass
class StructuredMasks:
    """Kept heads ``bool[layers, H]`` and neurons ``bool[layers, F]`` per language."""

    heads: dict[str, torch.Tensor]
    neurons: dict[str, torch.Tensor]
    head_dim: int
    metadata: dict = field(default_factory=dict)

    @property
    def languages(self) -> list[str]:
        return list(self.heads)

    def _require(self, lang: str) -> None:
        if lang not in self.heads:
            raise MaskError(f"unknown language {lang!r}; loaded: {', '.join(self.languages)}")

    def weight_masks(self, lang: str) -> dict[str, torch.Tensor]:
        """Per-weight bool masks (canonical parameter names) equivalent to this language's structure."""
        self._require(lang)
        out: dict[str, torch.Tensor] = {}
        for i, (heads, neurons) in enumerate(zip(self.heads[lang], self.neurons[lang])):
            channels = heads.repeat_interleave(self.head_dim)
            hidden = channels.numel()
            prefix = f"encoder.layers.{i}."
            for proj in ("q_proj", "k_proj", "v_proj"):
                out[f"{prefix}attention.{proj}.weight"] = channels[:, None].expand(hidden, hidden).clone()
            out[f"{prefix}attention.out_proj.weight"] = channels[None, :].expand(hidden, hidden).clone()
            ffn = neurons.numel()
            out[f"{prefix}feed_forward.intermediate_dense.weight"] = neurons[:, None].expand(ffn, hidden).clone()
            out[f"{prefix}feed_forward.output_dense.weight"] = neurons[None, :].expand(hidden, ffn).clone()
        return out

    def to_language_masks(self, base_model: str | None = None):
        """An ordinary :class:`lasp.masks.language_masks.LanguageMasks`, trainable through the masked model."""
        return LanguageMasks.from_dense({lang: self.weight_masks(lang) for lang in self.languages},
                                        base_model=base_model, extra={"structured": self.metadata})

    def summary(self, lang: str) -> dict[str, float]:
        self._require(lang)
        return {"heads_kept": float(self.heads[lang].float().mean()),
                "neurons_kept": float(self.neurons[lang].float().mean())}

    def save(self, directory: str | os.PathLike) -> str:
        os.makedirs(directory, exist_ok=True)
        path = os.path.join(directory, STRUCTURE_FILE)
        data = {
            "format_version": FORMAT_VERSION, "head_dim": self.head_dim, "metadata": self.metadata,
            "languages": {lang: {"heads": [row.nonzero().flatten().tolist() for row in self.heads[lang]],
                                 "neurons": [row.nonzero().flatten().tolist() for row in self.neurons[lang]],
                                 "num_heads": self.heads[lang].shape[1], "ffn": self.neurons[lang].shape[1]}
                          for lang in self.languages},
        }
        atomic_write_json(path, data, indent=1)
        return path

    @classmethod
    def load(cls, directory: str | os.PathLike) -> "StructuredMasks":
        path = os.path.join(directory, STRUCTURE_FILE)
        try:
            with open(path) as fh:
                data = json.load(fh)
            heads, neurons = {}, {}
            for lang, entry in data["languages"].items():
                heads[lang] = _from_indices(entry["heads"], entry["num_heads"], f"{path}: {lang} heads")
                neurons[lang] = _from_indices(entry["neurons"], entry["ffn"], f"{path}: {lang} neurons")
            return cls(heads, neurons, int(data["head_dim"]), data.get("metadata", {}))
        except FileNotFoundError as err:
            raise MaskError(f"{path}: no structured mask file") from err
        except (KeyError, TypeError, ValueError, json.JSONDecodeError) as err:
            raise MaskError(f"{path}: malformed structured masks ({err})") from err


def _from_indices(rows: list[list[int]], width: int, where: str) -> torch.Tensor:
    out = torch.zeros(len(rows), width, dtype=torch.bool)
    for i, kept in enumerate(rows):
        if not kept or min(kept) < 0 or max(kept) >= width:
            raise MaskError(f"{where}: layer {i} keeps {kept!r}; need 1..{width} indices in [0, {width})")
        out[i, kept] = True
    return out


def make_structured_masks(model: nn.Module, batches_by_lang: Mapping[str, Iterable[Mapping] | None],
                          importance: str = "taylor", head_sparsity: float = 0.25, ffn_sparsity: float = 0.5,
                          max_batches: int | None = None, seed: int = 0) -> StructuredMasks:
    """Score heads and neurons per language and keep the top ``1 - sparsity`` of each in every layer."""
    for name, value in (("head_sparsity", head_sparsity), ("ffn_sparsity", ffn_sparsity)):
        if not 0.0 <= value < 1.0:
            raise ConfigError(f"{name} must be in [0, 1), got {value}")
    if importance not in IMPORTANCES:
        raise ConfigError(f"unknown structured importance {importance!r}; choose one of {', '.join(IMPORTANCES)}")
    heads, neurons = {}, {}
    for i, (lang, batches) in enumerate(batches_by_lang.items()):
        scores = score_structures(model, batches, importance, max_batches, seed=seed + i, lang=lang)
        heads[lang] = _keep_top(scores["heads"], head_sparsity)
        neurons[lang] = _keep_top(scores["neurons"], ffn_sparsity)
    meta = {"importance": importance, "head_sparsity": head_sparsity, "ffn_sparsity": ffn_sparsity,
            "max_batches": max_batches}
    return StructuredMasks(heads, neurons, _layer_sizes(model)[2], meta)


def export_structured(model: nn.Module, masks: StructuredMasks, lang: str) -> nn.Module:
    """A physically smaller dense copy of ``model`` holding only ``lang``'s heads and neurons.

    Pruned through torch-pruning's dependency groups, so every coupled layer
    (q/k/v rows, out_proj columns, both FFN projections) shrinks together.
    """
    import torch_pruning as tp

    masks._require(lang)
    layers, heads, head_dim, ffn = _layer_sizes(model)
    if tuple(masks.heads[lang].shape) != (layers, heads) or tuple(masks.neurons[lang].shape) != (layers, ffn):
        raise MaskError(f"structured masks of {lang} have heads {tuple(masks.heads[lang].shape)} / neurons "
                        f"{tuple(masks.neurons[lang].shape)}, the model needs ({layers}, {heads}) / ({layers}, {ffn})")
    small = prepare_for_tracing(model)
    graph = dependency_graph(small)
    for i, layer in enumerate(encoder_layers(small)):
        dropped_heads = (~masks.heads[lang][i]).nonzero().flatten().tolist()
        if dropped_heads:
            idxs = [h * head_dim + d for h in dropped_heads for d in range(head_dim)]
            graph.get_pruning_group(layer.attention.q_proj, tp.prune_linear_out_channels, idxs=idxs).prune()
        layer.attention.num_heads = int(masks.heads[lang][i].sum())
        dropped = (~masks.neurons[lang][i]).nonzero().flatten().tolist()
        if dropped:
            graph.get_pruning_group(layer.feed_forward.intermediate_dense, tp.prune_linear_out_channels,
                                    idxs=dropped).prune()
    small.config._attn_implementation = model.config._attn_implementation
    return small


def structure_of(model: nn.Module) -> list[dict[str, int]]:
    return [{"heads": int(layer.attention.q_proj.out_features // (model.config.hidden_size
                                                                 // model.config.num_attention_heads)),
             "ffn": int(layer.feed_forward.intermediate_dense.out_features)} for layer in encoder_layers(model)]


def save_structured_model(model: nn.Module, directory: str | os.PathLike) -> str:
    """Save an exported model: the HF checkpoint plus the per-layer head/neuron counts it needs to rebuild."""
    model.save_pretrained(directory)
    ordinary_modes(directory)
    path = os.path.join(directory, EXPORT_FILE)
    atomic_write_json(path, {"format_version": FORMAT_VERSION, "layers": structure_of(model)}, indent=1)
    return str(directory)


def load_structured_model(directory: str | os.PathLike) -> nn.Module:
    """Rebuild an exported model: the config's full-size model, layers shrunk to the saved sizes, weights loaded."""
    import transformers
    from safetensors.torch import load_file

    path = os.path.join(directory, EXPORT_FILE)
    if not os.path.isfile(path):
        raise ConfigError(f"{directory}: no {EXPORT_FILE}; not a structured export")
    with open(path) as fh:
        layout = json.load(fh)["layers"]
    config = transformers.AutoConfig.from_pretrained(directory, local_files_only=True)
    arch = (config.architectures or ["Wav2Vec2Model"])[0]
    model = getattr(transformers, arch)(config)
    # the export folded the positional conv's weight norm into a plain weight; do the same before loading
    _fold_parametrizations(model)
    head_dim = config.hidden_size // config.num_attention_heads
    hidden = config.hidden_size
    for layer, sizes in zip(encoder_layers(model), layout):
        att, ff = layer.attention, layer.feed_forward
        inner = sizes["heads"] * head_dim
        for proj in ("q_proj", "k_proj", "v_proj"):
            setattr(att, proj, nn.Linear(hidden, inner))
        att.out_proj = nn.Linear(inner, hidden)
        att.num_heads = sizes["heads"]
        ff.intermediate_dense = nn.Linear(hidden, sizes["ffn"])
        ff.output_dense = nn.Linear(sizes["ffn"], hidden)
    weights = os.path.join(directory, "model.safetensors")
    state = load_file(weights)
    missing, unexpected = model.load_state_dict(state, strict=False)
    if missing or unexpected:
        raise ConfigError(f"{weights}: does not match the saved structure (missing {missing[:3]}, "
                          f"unexpected {unexpected[:3]})")
    return model

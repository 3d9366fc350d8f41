"""Parameter accounting: what N languages cost under lasp masks vs adapters, LoRA and copies.

Every count comes from a model built on the ``meta`` device (shapes only, no
memory), so real XLSR-53 shapes cost nothing:

* **shared model** — one backbone (the bare encoder, no pre-training or CTC head)
  for all languages;
* **full fine-tune ×N** — one backbone per language;
* **MMS adapters** — the ``Wav2Vec2AttnAdapterLayer`` modules transformers adds
  with ``adapter_attn_dim=d`` (layer norm + d-dim bottleneck after every encoder
  layer; Pratap et al., 2023), counted from a real ``Wav2Vec2ForCTC``;
  transformers only builds them in stable-layer-norm layers, so for post-norm
  configs they are counted on a stable-layer-norm copy (same shapes);
* **CTC head** — listed on its own row: one per language in MMS, one shared head
  over a joint vocabulary for the other methods;
* **bottleneck adapters** — Houlsby et al. (2019): two adapters per layer (after
  attention and after the FFN), each a down and an up projection with biases;
* **LoRA** — rank-r updates of the same target modules lasp masks, counted by
  peft's ``get_nb_trainable_parameters()`` when peft is installed, else r·(in+out)
  per target Linear; the ``source`` column says which;
* **lasp masks** — no new weights: one bit per targeted weight per language
  (bit-packed, raw); with a mask set, also as lasp stores it (the weights every
  language keeps once plus each language's delta, coded: :mod:`lasp.masks.store`),
  the weights unique to one language and the weights shared by all.

Stored bytes assume ``bytes_per_param`` per weight (4 = fp32).
"""
from __future__ import annotations

import math
import os
import warnings
from typing import Any, Mapping, Sequence

import torch
import torch.nn as nn
import transformers
from transformers import PretrainedConfig, Wav2Vec2Config

from lasp.analysis.overlap import compute_overlap
from lasp.analysis.plots import plot_parameter_bars
from lasp.analysis.tables import format_table, human_bytes, human_count, write_csv, write_json
from lasp.errors import ConfigError, MaskError
from lasp.io import atomic_write
from lasp.masks.bits import packed_shape
from lasp.masks.codecs import DEFAULT_CODEC
from lasp.masks.language_masks import LanguageMasks
from lasp.masks.store import coded_sizes
from lasp.masks.targets import canonical_parameters, owner_module, select_targets
from lasp.models.layout import model_dir
from lasp.models.load import PRESETS, is_preset, preset_config

COLUMNS = (
    "method", "setting", "languages", "shared_params", "per_language_params", "language_specific_params",
    "total_params", "per_language_bytes", "total_bytes", "per_language_storage_pct",
    "mask_bits_per_language", "unique_weights_per_language", "shared_by_all_weights", "source",
)


def resolve_config(model_name_or_config: Any) -> PretrainedConfig:
    """A config from a preset name, a local checkpoint directory, a config, or a model."""
    if isinstance(model_name_or_config, PretrainedConfig):
        return model_name_or_config
    if isinstance(model_name_or_config, nn.Module) and hasattr(model_name_or_config, "config"):
        return model_name_or_config.config
    name = os.fspath(model_name_or_config)
    if is_preset(name):
        return preset_config(name)
    if os.path.isdir(name):
        name = os.fspath(model_dir(name))  # a trained system directory keeps its checkpoint in shared/
        if not os.path.isfile(os.path.join(name, "config.json")):
            raise ConfigError(f"{name}: no config.json; not a Hugging Face checkpoint directory")
        return transformers.AutoConfig.from_pretrained(name, local_files_only=True)
    raise ConfigError(f"model {name!r} is neither a local checkpoint directory nor a preset ({', '.join(PRESETS)})")


def meta_backbone(config: PretrainedConfig) -> nn.Module:
    """The bare encoder (no heads) of ``config`` with every weight on the meta device."""
    with torch.device("meta"):
        return transformers.AutoModel.from_config(config)


def numel(module_or_params: Any) -> int:
    params = module_or_params.parameters() if isinstance(module_or_params, nn.Module) else module_or_params
    return sum(p.numel() for p in params)


def mms_adapter_counts(config: PretrainedConfig, adapter_dim: int, vocab_size: int | None = None) -> dict[str, Any]:
    """Per-language MMS adapter and CTC-head parameters, counted on a meta ``Wav2Vec2ForCTC``.

    Returns ``{"adapter": int, "head": int, "vocab_size": int, "source": str}``.
    """
    if config.model_type != "wav2vec2":
        raise ConfigError(f"MMS adapters exist for wav2vec2 models only, not {config.model_type!r}")
    kwargs = config.to_dict()
    vocab = int(vocab_size if vocab_size is not None else config.vocab_size)
    kwargs.update(adapter_attn_dim=int(adapter_dim), vocab_size=vocab)
    source = "transformers Wav2Vec2AttnAdapterLayer"
    if not kwargs.get("do_stable_layer_norm"):
        kwargs["do_stable_layer_norm"] = True
        source += " (on a stable-layer-norm copy)"
    for key in ("model_type", "transformers_version", "architectures"):
        kwargs.pop(key, None)
    with torch.device("meta"):
        model = transformers.Wav2Vec2ForCTC(Wav2Vec2Config(**kwargs))
    adapters = [m for m in model.modules() if isinstance(m, transformers.models.wav2vec2.modeling_wav2vec2.
                                                           Wav2Vec2AttnAdapterLayer)]
    return {"adapter": numel(p for m in adapters for p in m.parameters()), "head": numel(model.lm_head),
            "vocab_size": vocab, "source": source}


def bottleneck_adapter_count(config: PretrainedConfig, adapter_dim: int) -> int:
    """Houlsby adapters: 2 per layer, each H·d + d (down) + d·H + H (up)."""
    h, d = int(config.hidden_size), int(adapter_dim)
    return int(config.num_hidden_layers) * 2 * (2 * h * d + d + h)


def _linear_targets(model: nn.Module, names: Sequence[str]) -> tuple[list[str], list[str]]:
    """Module names of the targets that are Linear weights, and the targets LoRA cannot adapt."""
    modules, skipped = [], []
    for name in names:
        module, attr = owner_module(model, name)
        if isinstance(module, nn.Linear) and attr == "weight":
            modules.append(name.rsplit(".", 1)[0])
        else:
            skipped.append(name)
    return modules, skipped


def lora_count(model: nn.Module, target_names: Sequence[str], rank: int, use_peft: bool | None = None) -> tuple[int, str]:
    """LoRA parameters for rank ``rank`` on the Linear targets; ``(count, source)``.

    ``model`` must be a bare encoder whose module names are the canonical names
    (as :func:`meta_backbone` builds). ``use_peft``: None = peft if importable.
    """
    if rank < 1:
        raise ConfigError(f"LoRA rank must be ≥ 1, got {rank}")
    modules, skipped = _linear_targets(model, target_names)
    if not modules:
        raise ConfigError("LoRA: none of the targeted parameters is a Linear weight")
    note = f"; {len(skipped)} non-Linear target(s) not adapted" if skipped else ""
    reason = "peft not used"
    if use_peft is None:
        try:
            import peft  # noqa: F401
            use_peft = True
        except ImportError:
            use_peft, reason = False, "peft not installed"
    if not use_peft:
        count = 0
        for module_name in modules:
            linear = model.get_submodule(module_name)
            count += rank * (linear.in_features + linear.out_features)
        return count, f"formula r·(in+out) ({reason})" + note
    import copy

    import peft

    with torch.device("meta"), warnings.catch_warnings():
        # peft injects in place; a deep copy of a meta model costs nothing and keeps the caller's model clean.
        # (peft calls a transformers method deprecated in 5.x; the FutureWarning says nothing about lasp.)
        warnings.simplefilter("ignore", FutureWarning)
        wrapped = peft.get_peft_model(copy.deepcopy(model),
                                      peft.LoraConfig(r=rank, lora_alpha=2 * rank, target_modules=modules))
    trainable, _ = wrapped.get_nb_trainable_parameters()
    return int(trainable), f"peft {peft.__version__} get_nb_trainable_parameters" + note


def _mask_shapes(masks: Any) -> dict[str, tuple[int, ...]]:
    if hasattr(masks, "shapes"):
        return {n: tuple(s) for n, s in masks.shapes.items()}
    if not masks:
        raise MaskError("the mask set holds no language")
    first = next(iter(masks.values()))
    return {n: tuple(t.shape) for n, t in first.items()}


def _mask_languages(masks: Any) -> list[str]:
    return list(masks.languages) if hasattr(masks, "languages") else list(masks)


def check_masks_fit(model: nn.Module, masks: Any) -> dict[str, tuple[int, ...]]:
    """The mask shapes, after checking every masked parameter exists in ``model`` with that shape."""
    params = canonical_parameters(model)
    shapes = _mask_shapes(masks)
    for name, shape in shapes.items():
        if name not in params:
            raise MaskError(f"masked parameter {name!r} does not exist in {type(model).__name__}")
        if tuple(params[name].shape) != shape:
            raise MaskError(f"masked parameter {name!r} has shape {shape} but the model's is {tuple(params[name].shape)}")
    return shapes


def _row(method: str, setting: str, n: int, shared: int, per_lang: int, per_lang_bytes: int,
         bpp: int, backbone: int, source: str, **extra: Any) -> dict[str, Any]:
    row = {
        "method": method, "setting": setting, "languages": n, "shared_params": shared,
        "per_language_params": per_lang, "language_specific_params": n * per_lang,
        "total_params": shared + n * per_lang, "per_language_bytes": per_lang_bytes,
        "total_bytes": shared * bpp + n * per_lang_bytes,
        "per_language_storage_pct": 100.0 * per_lang_bytes / (backbone * bpp),
        "mask_bits_per_language": None, "unique_weights_per_language": None, "shared_by_all_weights": None,
        "source": source,
    }
    row.update(extra)
    return row


def parameter_table(model_name_or_config: Any, n_languages: int | None = None, masks: Any = None,
                    adapter_dims: Sequence[int] = (16,), lora_ranks: Sequence[int] = (8,),
                    vocab_size: int | None = None, targets: Any = None, bytes_per_param: int = 4,
                    use_peft: bool | None = None) -> list[dict[str, Any]]:
    """Rows (dicts with the keys in :data:`COLUMNS`) comparing the methods for ``n_languages``.

    ``masks``: a LanguageMasks or {lang: {name: bool tensor}}; its parameters are
    the targets (else ``targets`` patterns, default: lasp's default targets), and
    ``n_languages`` defaults to its number of languages.
    """
    config = resolve_config(model_name_or_config)
    if n_languages is None:
        if masks is None:
            raise ConfigError("give the number of languages (or a mask set to take it from)")
        n_languages = len(_mask_languages(masks))
    n = int(n_languages)
    if n < 1:
        raise ConfigError(f"number of languages must be ≥ 1, got {n}")
    if bytes_per_param < 1:
        raise ConfigError(f"bytes_per_param must be ≥ 1, got {bytes_per_param}")
    bpp = int(bytes_per_param)
    model = meta_backbone(config)
    backbone = numel(model)
    if masks is not None:
        shapes = check_masks_fit(model, masks)
    else:
        shapes = {name: tuple(p.shape) for name, p in select_targets(model, targets).items()}

    rows = [
        _row("shared model", "", n, backbone, 0, 0, bpp, backbone, "meta-device model"),
        _row("full fine-tune", f"×{n}", n, 0, backbone, backbone * bpp, bpp, backbone, "meta-device model"),
    ]
    heads: list[dict[str, Any]] = []
    for d in adapter_dims:
        if int(d) < 1:
            raise ConfigError(f"adapter dimension must be ≥ 1, got {d}")
        if config.model_type == "wav2vec2":
            mms = mms_adapter_counts(config, int(d), vocab_size)
            rows.append(_row("MMS adapters", f"d={d}", n, backbone, mms["adapter"], mms["adapter"] * bpp, bpp,
                             backbone, mms["source"] + "; CTC head not included"))
            heads.append(mms)
    for d in adapter_dims:
        count = bottleneck_adapter_count(config, int(d))
        rows.append(_row("bottleneck adapters", f"d={d}", n, backbone, count, count * bpp, bpp, backbone,
                         "formula (Houlsby: 2 per layer, down+up with biases)"))
    for r in lora_ranks:
        count, source = lora_count(model, list(shapes), int(r), use_peft)
        rows.append(_row("LoRA", f"r={r}", n, backbone, count, count * bpp, bpp, backbone, source))

    bits = sum(math.prod(s) for s in shapes.values())
    mask_bytes = sum(math.prod(packed_shape(s)) for s in shapes.values())
    extra: dict[str, Any] = {"mask_bits_per_language": bits}
    source = f"{len(shapes)} targeted tensors, bit-packed"
    if masks is not None:
        stats = compute_overlap(masks)
        unique = stats.unique_per_language
        extra["unique_weights_per_language"] = round(sum(unique) / len(unique))
        extra["shared_by_all_weights"] = stats.sharing.shared_by_all
        langs = len(stats.languages)
        source += f"; unique/shared from the mask set ({langs} languages)"
    rows.append(_row("lasp masks", "1 bit/weight", n, backbone, 0, mask_bytes, bpp, backbone, source, **extra))
    if masks is not None:
        rows.append(_coded_row(masks, n, backbone, bpp, extra))
    if heads:
        head = heads[0]
        rows.append(_row("CTC head", f"vocab {head['vocab_size']}", n, 0, head["head"], head["head"] * bpp, bpp,
                         backbone, "lm_head of Wav2Vec2ForCTC: per language in MMS; shared by the other methods"))
    return rows


def _coded_row(masks: Any, n: int, backbone: int, bpp: int, extra: dict) -> dict[str, Any]:
    """The mask set as lasp stores it: the weights most languages keep once, each language's delta, coded
    (:mod:`lasp.masks.store`); per language = the whole set's coded bits over its languages."""
    if not isinstance(masks, LanguageMasks):
        masks = LanguageMasks.from_dense(masks)
    packed = {lang: masks.packed(lang) for lang in masks.languages}
    # what a save writes: the majority core, or none when that codes smaller (lasp.masks.store)
    sizes = min((coded_sizes(packed, DEFAULT_CODEC, core) for core in ("majority", "none")),
                key=lambda s: s["core"] + sum(s["deltas"].values()))
    total = sizes["core"] + sum(sizes["deltas"].values())
    per_language = round(total / len(masks))
    source = (f"stored as a core ({sizes['core']:,} B) + per-language deltas "
              f"({round(sum(sizes['deltas'].values()) / len(masks)):,} B mean), {DEFAULT_CODEC}; "
              f"{8 * per_language / masks.numel():.3f} bits/weight/language on this set")
    return _row("lasp masks", f"core + deltas, {DEFAULT_CODEC}", n, backbone, 0, per_language, bpp, backbone,
                source, **extra)


def display_rows(rows: Sequence[Mapping[str, Any]]) -> tuple[list[str], list[list[str]]]:
    """Header and human-readable cells for the markdown/terminal table."""
    header = ["method", "setting", "shared params", "per language", f"total ({rows[0]['languages']} langs)",
              "stored / language", "stored total", "stored % of model / lang", "notes"]
    body = []
    for r in rows:
        notes = [r["source"]]
        if r.get("unique_weights_per_language") is not None:
            notes.append(f"unique weights/lang {r['unique_weights_per_language']:,}, "
                         f"shared by all {r['shared_by_all_weights']:,}")
        body.append([r["method"], r["setting"], human_count(r["shared_params"]),
                     human_count(r["per_language_params"]) if r["method"] != "lasp masks"
                     else f"{human_count(r['mask_bits_per_language'])} bits",
                     human_count(r["total_params"]), human_bytes(r["per_language_bytes"]), human_bytes(r["total_bytes"]),
                     f"{r['per_language_storage_pct']:.3f}%", "; ".join(notes)])
    return header, body


def format_markdown(rows: Sequence[Mapping[str, Any]]) -> str:
    """The parameter table as a GitHub markdown table."""
    header, body = display_rows(rows)
    return format_table(header, body, markdown=True)


def write_parameter_report(rows: Sequence[Mapping[str, Any]], out_dir: str | os.PathLike,
                           plots: bool = True) -> dict[str, str]:
    """``params.md``, ``params.csv``, ``params.json`` and (if ``plots``) ``params.png`` in ``out_dir``."""
    out_dir = os.fspath(out_dir)
    os.makedirs(out_dir, exist_ok=True)
    files = {"markdown": os.path.join(out_dir, "params.md")}
    atomic_write(files["markdown"], format_markdown(rows) + "\n")
    files["csv"] = write_csv(rows, os.path.join(out_dir, "params.csv"), COLUMNS)
    files["json"] = write_json(list(rows), os.path.join(out_dir, "params.json"))
    if plots:
        shown = [r for r in rows if r["method"] != "shared model"]
        files["plot"] = plot_parameter_bars(shown, os.path.join(out_dir, "params.png"))
    return files

"""What made a mask set, and the check that refuses to mix masks made differently.

Every language of a mask set carries a record (scorer, method, sparsity, pattern, scope, targets, data manifest +
sha256, base model + a hash of its weight files, lasp version). Reusing a set whose records disagree with the
recipe is an error that shows both sides, unless the recipe says ``masks.reuse: true``.
"""
from __future__ import annotations

import hashlib
import os
from typing import Any, Iterable, Mapping

from lasp import __version__
from lasp.errors import MaskError
from lasp.io import sha256_file
from lasp.masks.targets import select_targets

# Weight files of a local model folder whose bytes identify the base model.
_WEIGHT_SUFFIXES = (".safetensors", ".bin", ".pt")



def model_fingerprint(name: str | None) -> str | None:
    """sha256 over a local model folder's weight files (names and bytes); None for a preset name."""
    if not name or not os.path.isdir(name):
        return None
    files = sorted(f for f in os.listdir(name) if f.endswith(_WEIGHT_SUFFIXES)
                   and os.path.isfile(os.path.join(name, f)))
    if not files:
        return None
    h = hashlib.sha256()
    for f in files:
        h.update(f.encode() + b"\0" + sha256_file(os.path.join(name, f)).encode())
    return h.hexdigest()


_noted_weights: dict[str, str] = {}  # base model name -> sha256 of its targeted weights (this process)


def targeted_weights_sha256(model, targets=None) -> str:
    """sha256 over the targeted weights of a model in memory (canonical names, dtypes, shapes, bytes).

    Canonical names make the hash of a pre-training model equal that of the CTC model loaded from the same
    weights; it identifies base models that have no weight files (presets built from a seed).
    """
    import torch

    h = hashlib.sha256()
    for name, p in sorted(select_targets(model, targets).items()):
        t = p.detach().to("cpu").contiguous().reshape(-1)
        h.update(f"{name}\0{t.dtype}\0{tuple(p.shape)}\0".encode())
        h.update(t.view(torch.uint8).numpy().tobytes())
    return h.hexdigest()


def note_base_weights(name: str, model, targets=None) -> str:
    """Remember the targeted-weights hash of the model a mask search is about to run on (by its name)."""
    _noted_weights[name] = targeted_weights_sha256(model, targets)
    return _noted_weights[name]


def data_fingerprint(path: str | None) -> str | None:
    return sha256_file(path) if path and os.path.isfile(path) else None


# ---------------------------------------------------------------------------------------------- mask sets
def mask_record(metadata: Mapping, lang: str) -> dict:
    """The provenance record of one language of a freshly made mask set (from its search metadata)."""
    sparsity = metadata.get("requested_sparsity")
    if isinstance(sparsity, Mapping):
        sparsity = sparsity.get(lang)
    base, data = metadata.get("base_model"), metadata.get("data")
    targets = metadata.get("targets", "default")
    return {
        "scorer": metadata.get("scorer"),
        "method": metadata.get("method", "oneshot"),
        "sparsity": sparsity,
        "pattern": metadata.get("pattern", "unstructured"),
        "scope": metadata.get("scope", "per-tensor"),
        "layer_sparsity": metadata.get("layer_sparsity"),
        "targets": list(targets) if isinstance(targets, (list, tuple)) else targets,
        "seed": metadata.get("seed"),
        "data": os.path.abspath(data) if data and os.path.isfile(data) else data,
        "data_sha256": data_fingerprint(data),
        "base_model": os.path.abspath(base) if base and os.path.isdir(base) else base,
        "base_model_sha256": model_fingerprint(base),
        "base_model_targets_sha256": _noted_weights.get(base) if isinstance(base, str) else None,
        "lasp_version": __version__,
    }


def legacy_record(config: Mapping, lang: str) -> dict:
    """A record built from the set-wide fields of a mask set written before per-language records."""
    meta = dict(config)
    meta.setdefault("requested_sparsity", (config.get("sparsity") or {}).get(lang))
    rec = {k: meta.get(k) for k in ("scorer", "base_model", "data", "scope", "pattern", "seed", "targets")}
    rec["method"] = meta.get("method", "oneshot")
    rec["sparsity"] = meta.get("requested_sparsity")
    rec["lasp_version"] = meta.get("lasp_version")
    return rec


def expected_record(masks_cfg, data_path: str | None, init: str | None, model=None) -> dict:
    """What the recipe's ``masks`` section (and its data / starting model) would make.

    ``model``: the starting model, given when the set must have been searched on exactly its weights (their
    hashes are then compared); None when the stage starts from a model trained from the set's base model."""
    rec: dict[str, Any] = {"method": masks_cfg.method, "pattern": masks_cfg.pattern, "scope": masks_cfg.scope,
                           "targets": list(masks_cfg.targets) if masks_cfg.targets else "default"}
    if masks_cfg.method == "oneshot":
        rec["scorer"] = masks_cfg.scorer
    if masks_cfg.pattern == "unstructured":
        rec["sparsity"] = masks_cfg.sparsity
    rec["layer_sparsity"] = list(masks_cfg.layer_sparsity) if masks_cfg.layer_sparsity else None
    rec["data"] = os.path.abspath(data_path) if data_path else None
    rec["data_sha256"] = data_fingerprint(data_path)
    rec["base_model"] = os.path.abspath(init) if init and os.path.isdir(init) else init
    if model is not None:
        rec["base_model_targets_sha256"] = targeted_weights_sha256(model, masks_cfg.targets)
        rec["base_model_sha256"] = model_fingerprint(init)
    return rec


def _same(key: str, recorded: Any, wanted: Any) -> bool:
    if key == "sparsity" and recorded is not None and wanted is not None:
        return abs(float(recorded) - float(wanted)) < 1e-9
    return recorded == wanted


def compare_records(recorded: Mapping, wanted: Mapping) -> list[str]:
    """Keys on which a mask record disagrees with what the recipe asks for.

    The data manifest is compared by content (a moved corpus is the same data). The base model is compared by
    its weights whenever the recipe's side carries their hashes (see :func:`expected_record`): a copy of the
    folder is the same base model, other weights under any name are not.
    """
    bad = []
    for key in ("method", "scorer", "sparsity", "pattern", "scope", "targets"):
        if key in wanted and key in recorded and recorded[key] is not None and not _same(key, recorded[key],
                                                                                          wanted[key]):
            bad.append(key)
    # null is a setting here (one sparsity in every layer), so it is compared too; records older than the key lack it
    if "layer_sparsity" in recorded and "layer_sparsity" in wanted and recorded["layer_sparsity"] != wanted["layer_sparsity"]:
        bad.append("layer_sparsity")
    if recorded.get("data_sha256") and wanted.get("data_sha256"):
        if recorded["data_sha256"] != wanted["data_sha256"]:
            bad.append("data")
    for key in ("base_model_targets_sha256", "base_model_sha256"):
        if recorded.get(key) and wanted.get(key) and recorded[key] != wanted[key]:
            bad.append("base_model")
            break
    return bad


def _show(rec: Mapping, keys: Iterable[str]) -> str:
    parts = []
    for k in keys:
        if k == "data":
            parts.append(f"data={rec.get('data')} (sha256 {str(rec.get('data_sha256'))[:12]})")
        elif k == "base_model":
            digest = rec.get("base_model_targets_sha256") or rec.get("base_model_sha256")
            parts.append(f"base_model={rec.get('base_model')} (weights sha256 {str(digest)[:12]})")
        else:
            parts.append(f"{k}={rec.get(k)}")
    return ", ".join(parts)


def check_mask_provenance(directory: str | os.PathLike, records: Mapping[str, Mapping], wanted: Mapping,
                          languages: Iterable[str], reuse: bool) -> None:
    """Raise :class:`MaskError` when a language's record disagrees with the recipe (unless ``reuse``)."""
    if reuse:
        return
    for lang in languages:
        rec = records.get(lang)
        if rec is None:
            continue
        bad = compare_records(rec, wanted)
        if bad:
            raise MaskError(
                f"mask set {directory} was made differently from what this recipe asks for language {lang!r}: "
                f"the set has {_show(rec, bad)}; the recipe asks {_show(wanted, bad)}. Point masks.dir at "
                "another folder (or leave it unset: each run gets its own masks), or set masks.reuse=true to "
                "use this set anyway")

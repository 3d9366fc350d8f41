"""What made a mask set or a run, and the checks that refuse to mix work made differently.

Mask sets: every language carries a record (scorer, method, sparsity, pattern,
scope, targets, data manifest + sha256, base model + a hash of its weight files,
lasp version). Reusing a set whose records disagree with the recipe is an error
that shows both sides, unless the recipe says ``masks.reuse: true``.

Run directories: the recipe keys a stage depends on are recorded in
``<run_dir>/run.json`` when the stage starts. Resuming with any of them changed
is an error listing the keys; ``<stage>.resume_allow`` names keys that may change
(e.g. ``[max_steps, max_minutes]``).
"""
from __future__ import annotations

import hashlib
import json
import os
import re
import tempfile
from pathlib import Path
from typing import Any, Iterable, Mapping, Sequence

from lasp import __version__
from lasp.errors import ConfigError, DataError, MaskError

RUN_RECORD = "run.json"
# Language codes name files and folders: letters, digits, '-' and '_' only (zh-CN, sv-SE, rm-sursilv, es_419).
LANG_PATTERN = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_-]{0,31}$")
# Weight files of a local model folder whose bytes identify the base model.
_WEIGHT_SUFFIXES = (".safetensors", ".bin", ".pt")
_hash_cache: dict[tuple, str] = {}


def check_language_code(lang: Any, where: str = "") -> str:
    if not isinstance(lang, str) or not LANG_PATTERN.match(lang):
        prefix = f"{where}: " if where else ""
        raise DataError(f"{prefix}language code {lang!r} is not valid (letters, digits, '-', '_'; at most 32 "
                        "characters, no '.', '/' or spaces)")
    return lang


def sha256_file(path: str | os.PathLike, chunk: int = 1 << 20) -> str:
    path = os.fspath(path)
    st = os.stat(path)
    key = (os.path.abspath(path), st.st_size, st.st_mtime_ns)
    if key in _hash_cache:
        return _hash_cache[key]
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        while block := fh.read(chunk):
            h.update(block)
    _hash_cache[key] = h.hexdigest()
    return _hash_cache[key]


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

    from lasp.targets import select_targets

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


def check_language_rows(manifest: str | None, languages: Sequence[str], minimum: int, key: str) -> None:
    """Every language a mask is searched for needs ``minimum`` rows: a stray tag must not become a sub-network."""
    if not manifest or minimum <= 0:
        return
    from lasp.data.manifest import read_manifest

    counts: dict[str, int] = {}
    for utt in read_manifest(manifest):
        counts[utt.lang] = counts.get(utt.lang, 0) + 1
    for lang in languages:
        if counts.get(lang, 0) == 0:
            raise DataError(f"{manifest}: no usable utterance of language {lang!r}; languages present: "
                            f"{', '.join(sorted(counts)) or 'none'}")
        if counts.get(lang, 0) < minimum:
            raise DataError(f"{manifest}: language {lang!r} has {counts.get(lang, 0)} row(s), fewer than "
                            f"{key}={minimum} needed to search its mask; fix or drop those rows, choose the "
                            f"languages to use, or lower {key}")


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
    """What the recipe's ``masks`` section (and its data / starting model) would make."""
    rec: dict[str, Any] = {"method": masks_cfg.method, "pattern": masks_cfg.pattern, "scope": masks_cfg.scope,
                           "targets": list(masks_cfg.targets) if masks_cfg.targets else "default"}
    if masks_cfg.method == "oneshot":
        rec["scorer"] = masks_cfg.scorer
    if masks_cfg.pattern == "unstructured":
        rec["sparsity"] = masks_cfg.sparsity
    rec["data"] = os.path.abspath(data_path) if data_path else None
    rec["data_sha256"] = data_fingerprint(data_path)
    rec["base_model"] = os.path.abspath(init) if init and os.path.isdir(init) else init
    if model is not None:
        rec["base_model_targets_sha256"] = targeted_weights_sha256(model, masks_cfg.targets)
    return rec


def _same(key: str, recorded: Any, wanted: Any) -> bool:
    if key == "sparsity" and recorded is not None and wanted is not None:
        return abs(float(recorded) - float(wanted)) < 1e-9
    return recorded == wanted


def compare_records(recorded: Mapping, wanted: Mapping) -> list[str]:
    """Keys on which a mask record disagrees with what the recipe asks for.

    The data manifest is compared by content (a moved corpus is the same data). The base model is compared
    only when the set was searched on the very model this stage starts from: masks searched on a base model
    and carried into a later stage (whose starting weights were trained further) are meant to differ there.
    """
    bad = []
    for key in ("method", "scorer", "sparsity", "pattern", "scope", "targets"):
        if key in wanted and key in recorded and recorded[key] is not None and not _same(key, recorded[key],
                                                                                          wanted[key]):
            bad.append(key)
    if recorded.get("data_sha256") and wanted.get("data_sha256"):
        if recorded["data_sha256"] != wanted["data_sha256"]:
            bad.append("data")
    if (recorded.get("base_model_sha256") and recorded.get("base_model") == wanted.get("base_model")
            and wanted.get("base_model")):
        now = model_fingerprint(wanted["base_model"])
        if now and now != recorded["base_model_sha256"]:
            bad.append("base_model")
    if ("base_model" not in bad and recorded.get("base_model_targets_sha256")
            and wanted.get("base_model_targets_sha256") and recorded.get("base_model") == wanted.get("base_model")
            and recorded["base_model_targets_sha256"] != wanted["base_model_targets_sha256"]):
        bad.append("base_model")
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


# ---------------------------------------------------------------------------------------------- run records
_NEVER_COMPARED_TOP = {"threads", "device", "cpu_onednn", "output_dir", "evaluate", "extra"}
_NEVER_COMPARED_STAGE = {"resume", "resume_allow", "run_dir"}


def _flatten(obj: Any, prefix: str = "") -> dict[str, Any]:
    if isinstance(obj, Mapping):
        out: dict[str, Any] = {}
        for k, v in obj.items():
            out.update(_flatten(v, f"{prefix}{k}."))
        return out
    return {prefix[:-1]: obj}


def stage_recipe(cfg_dict: Mapping, stage: str, system: str, init: str | None) -> dict[str, Any]:
    """The flattened recipe keys a training stage's result depends on."""
    keep: dict[str, Any] = {"seed": cfg_dict.get("seed"), "model": cfg_dict.get("model"),
                            "data": {k: v for k, v in (cfg_dict.get("data") or {}).items() if k != "test"},
                            stage: {k: v for k, v in (cfg_dict.get(stage) or {}).items()
                                    if k not in _NEVER_COMPARED_STAGE}}
    if system in ("lasp", "random"):
        keep["masks"] = cfg_dict.get("masks")
    if system == "adapters":
        keep["adapters"] = cfg_dict.get("adapters")
    flat = _flatten(keep)
    flat[f"{stage}.init (resolved)"] = init
    return flat


def _allowed(key: str, stage: str, allow: Iterable[str]) -> bool:
    for a in allow:
        full = a if "." in a else f"{stage}.{a}"
        if key == full or key.startswith(full + "."):
            return True
    return False


def check_run_record(run_dir: str | os.PathLike, stage: str, recipe: Mapping[str, Any], allow: Iterable[str],
                     resuming: bool, write: bool = True) -> list[str]:
    """Compare ``recipe`` with the run's record when resuming; (re)write the record. Returns allowed changes."""
    path = Path(run_dir) / RUN_RECORD
    recipe = json.loads(json.dumps(dict(recipe), default=str))  # compare as stored (tuples -> lists, ...)
    old = None
    if path.is_file():
        try:
            old = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, ValueError) as err:
            raise ConfigError(f"{path}: cannot read the run record ({err}); it records the recipe this run "
                              "started with: restore it, or start the run in a new directory") from None
    changed: list[str] = []
    if resuming and old is not None and old.get("stage") == stage:
        before = old.get("recipe", {})
        keys = sorted(set(before) | set(recipe))
        changed = [k for k in keys if before.get(k, "<absent>") != recipe.get(k, "<absent>")]
        refused = [k for k in changed if not _allowed(k, stage, allow)]
        if refused:
            shown = "; ".join(f"{k}: {before.get(k, '<absent>')!r} -> {recipe.get(k, '<absent>')!r}"
                              for k in refused[:8])
            more = f" (and {len(refused) - 8} more)" if len(refused) > 8 else ""
            raise ConfigError(
                f"{run_dir} was started with a different recipe; changed: {shown}{more}. Resume with the "
                f"original settings, start over in another run_dir (or with {stage}.resume=false), or allow "
                f"the keys with {stage}.resume_allow=[{', '.join(k.removeprefix(stage + '.') for k in refused)}]")
    if write:
        Path(run_dir).mkdir(parents=True, exist_ok=True)
        record = {"stage": stage, "lasp_version": __version__, "recipe": dict(recipe),
                  "allowed_changes": sorted(set((old or {}).get("allowed_changes", [])) | set(changed))}
        fd, tmp = tempfile.mkstemp(dir=run_dir, prefix=".tmp-run-", suffix=".json")
        with os.fdopen(fd, "w", encoding="utf-8") as fh:
            json.dump(record, fh, indent=1, default=str)
            fh.write("\n")
        os.replace(tmp, path)
    return changed

"""The on-disk side of a mask set: the file format, config reading, integrity checks, merging, removal.

Format version 2 (written since the shared core; format-1 folders, one file per language, still load)::

    mask_config.json                   format, languages, parameters {name: shape}, sparsity, kept counts,
                                       provenance per language, and ``storage``: the codec, the core file and
                                       each language's file with their sha256 (checked on every load)
    masks-core.<digest>.safetensors    the core: the weights most languages of the set keep, stored once
    masks.<lang>.<digest>.safetensors  the language's delta: where its mask differs from the core

Each file holds one uint8 tensor per parameter name: the packed bits (:mod:`lasp.masks.bits`) of that tensor,
coded by the set's codec (:mod:`lasp.masks.codecs`). A language's mask is ``core XOR delta``; loading one
language reads the core and its own file.

Which core: the weights kept by a strict majority of the languages (``kept_by: majority``), or none when that
codes smaller (languages that share little, such as the random-mask control's independent masks). Against it a
language's delta holds the weights it keeps that most languages drop and those it drops that most keep. Masks of
one model's languages overlap a lot but not completely, and this leaves far fewer set bits to code than the
intersection would (the weights every language keeps, whose deltas hold everything else a language keeps): on
the six-language benchmark-like set of docs/continual.md the entropy bound is 0.60 bits per weight and language
against 0.82 (and 1.0 for 50 % masks coded one by one). Both decode the same way: with the intersection as the
core, ``core | delta`` equals ``core ^ delta``.

File names carry a digest of their content, so a save never overwrites a file
the current config points to: it writes the new files, then ``mask_config.json`` (the commit), then removes the
files the old config pointed to. A save that is killed or hits a full disk leaves the old set intact plus files
no config names; ``.lasp-mask-save.json`` lists them, and the next save (or ``check_mask_dir``, under the set's
lock) removes them.

Everything else here works on paths and plain dicts, so checks that run before any model is loaded (``lasp
prune``'s argument checks, a stage's provenance check) need no tensors.
"""
from __future__ import annotations

import hashlib
import json
import os

import numpy as np
import torch
from safetensors import safe_open
from safetensors.torch import save_file

from lasp.errors import LaspError, MaskError
from lasp.io import TMP_PREFIX, atomic_path, atomic_write_json, read_json_if_present, read_json_object, sha256_file
from lasp.locks import locked
from lasp.languages import check_language_code
from lasp.masks.bits import intersection_packed, pack_bits, packed_shape, unpack_bits
from lasp.masks.codecs import CODECS, decode, encode
from lasp.masks.provenance import legacy_record

FORMAT = "lasp-masks"
FORMAT_VERSION = 2
CONFIG_NAME = "mask_config.json"
SAVE_MARKER = ".lasp-mask-save.json"
CORE_PREFIX = "masks-core."
# set-wide fields that stay set-wide only while every language agrees on them (else "mixed": see provenance)
_SET_WIDE = ("base_model", "scorer", "data", "requested_sparsity", "scope", "pattern", "method", "targets", "seed")


def mask_file_name(lang: str) -> str:
    """A language's file in a format-1 set."""
    return f"masks.{lang}.safetensors"


def _check_language_code(lang: str, where: str = "") -> None:
    # a language names a file inside the set's folder: nothing that could leave it ('../x', '/', ...)
    try:
        check_language_code(lang, where)
    except LaspError as err:
        raise MaskError(f"{err}; it cannot name a mask file") from None


def mask_files_in(directory: str | os.PathLike) -> list[str]:
    """Mask files (``masks.*.safetensors``, ``masks-core.*.safetensors``) in ``directory``."""
    directory = os.fspath(directory)
    if not os.path.isdir(directory):
        return []
    return sorted(f for f in os.listdir(directory) if f.startswith(("masks.", CORE_PREFIX))
                  and f.endswith(".safetensors"))


def _lasp_made(path: str) -> bool:
    """A safetensors file whose header says lasp wrote it as a mask file."""
    try:
        with safe_open(path, framework="pt") as fh:
            return (fh.metadata() or {}).get("format") == FORMAT
    except Exception:  # not a safetensors file at all
        return False


def files_of(config: dict) -> list[str]:
    """The files a mask config points to (format 1: one per language; 2: the core and one per language)."""
    storage = config.get("storage")
    if not storage:
        return [mask_file_name(lang) for lang in config["languages"]]
    return [storage["core"]["file"], *storage["files"].values()]


def recover_interrupted_save(directory: str | os.PathLike) -> list[str]:
    """Remove what a killed or failed save left behind (files no config names, temporary files); returns them.

    Runs under the set's lock, so never while another process saves.
    """
    directory = os.fspath(directory)
    marker = os.path.join(directory, SAVE_MARKER)
    # a save killed while it wrote the marker itself leaves only the marker's temporary file
    marker_temps = [n for n in os.listdir(directory) if n.startswith(TMP_PREFIX + SAVE_MARKER)]
    if not os.path.isfile(marker) and not marker_temps:
        return []
    with locked(directory, "mask set"):
        listed = read_json_if_present(marker)
        config_path = os.path.join(directory, CONFIG_NAME)
        keep = set(files_of(_read_config(directory))) if os.path.isfile(config_path) else set()
        removed = []
        for name in [*listed.get("writing", []), *listed.get("replacing", [])]:
            if os.path.basename(name) == name and name not in keep and os.path.isfile(os.path.join(directory, name)):
                os.remove(os.path.join(directory, name))
                removed.append(name)
        for name in os.listdir(directory):
            if name.startswith((TMP_PREFIX + "masks", TMP_PREFIX + CONFIG_NAME, TMP_PREFIX + SAVE_MARKER)):
                os.remove(os.path.join(directory, name))
                removed.append(name)
        if os.path.isfile(marker):
            os.remove(marker)
    return removed


def check_mask_dir(directory: str | os.PathLike | None, replace: bool = False) -> None:
    """Recover a save lasp left unfinished, then refuse a folder holding mask files but no mask_config.json:
    not ours to search into and overwrite. ``replace`` (``--force``) removes such files when every one of them
    says lasp wrote it (a set whose save was killed before saves were recoverable)."""
    if not directory or not os.path.isdir(directory):
        return
    recover_interrupted_save(directory)
    if os.path.isfile(os.path.join(directory, CONFIG_NAME)):
        return
    files = mask_files_in(directory)
    if not files:
        return
    ours = all(_lasp_made(os.path.join(directory, f)) for f in files)
    if replace and ours:
        with locked(directory, "mask set"):
            for f in files:
                os.remove(os.path.join(directory, f))
        return
    hint = ("; they are lasp mask files left by an interrupted save: --force removes them" if ours else
            "; point masks.dir (or --out) at another folder, or restore the config")
    raise MaskError(f"{directory} holds mask files ({', '.join(files[:3])}) but no {CONFIG_NAME}, so "
                    f"lasp cannot tell what made them and will not overwrite them{hint}")


# ------------------------------------------------------------------------------------------------ writing
def _digest(blobs: dict[str, bytes]) -> str:
    h = hashlib.sha256()
    for name in sorted(blobs):
        h.update(name.encode() + b"\0" + len(blobs[name]).to_bytes(8, "little") + blobs[name])
    return h.hexdigest()[:16]


def _write_coded(directory: str, name: str, blobs: dict[str, bytes], metadata: dict) -> str:
    """Write one coded file (atomically) and return its sha256. A file already there under this name holds the
    same coded bits (the name is their digest; renames are atomic): it is kept, never rewritten, because the
    current config may name it and the same bits need not give the same bytes (safetensors writes its metadata
    in no fixed order)."""
    path = os.path.join(directory, name)
    if os.path.isfile(path):
        return sha256_file(path)
    tensors = {key: torch.frombuffer(bytearray(blob), dtype=torch.uint8) if blob else torch.zeros(0, dtype=torch.uint8)
               for key, blob in blobs.items()}
    with atomic_path(path) as tmp:
        save_file(tensors, tmp, metadata={"format": FORMAT, **metadata})
        return sha256_file(tmp)


CORES = ("majority", "none", "intersection")


def core_of(packed: dict[str, dict[str, torch.Tensor]], core: str = "majority") -> dict[str, torch.Tensor]:
    """The packed core a set is stored against: the weights a strict majority of the languages keep, none (each
    language stored as it is), or the weights every language keeps (``intersection``)."""
    langs = list(packed)
    if core == "none":
        return {n: torch.zeros_like(t) for n, t in packed[langs[0]].items()}
    if core == "intersection":
        return {n: intersection_packed([packed[l][n] for l in langs]) for n in packed[langs[0]]}
    if core != "majority":
        raise MaskError(f"unknown core {core!r}; choose one of {', '.join(CORES)}")
    out = {}
    for n, first in packed[langs[0]].items():
        flat = (first.numel() * 8,)  # padding bits are 0 in every language, so 0 in the core too
        votes = sum(unpack_bits(packed[l][n].reshape(-1), flat).to(torch.int16) for l in langs)
        out[n] = pack_bits(2 * votes > len(langs)).reshape(first.shape)
    return out


def coded_sizes(packed: dict[str, dict[str, torch.Tensor]], codec: str, core: str = "majority") -> dict:
    """Bytes of the coded bits, without the files' headers: ``{"core", "deltas": {lang}, "alone": {lang}}``;
    ``alone`` is each language coded by itself (no core), for comparison."""
    base = core_of(packed, core)
    size = lambda tensors: sum(len(encode(t.numpy(), codec)) for t in tensors.values())  # noqa: E731
    return {"core": size(base),
            "deltas": {l: size({n: m[n] ^ base[n] for n in m}) for l, m in packed.items()},
            "alone": {l: size(m) for l, m in packed.items()}}


def _smaller_layout(packed: dict, names: list[str], codec: str) -> tuple[str, dict, dict]:
    """(kind, core blobs, {lang: delta blobs}) of the majority core, or of no core when the languages share too
    little for a core to pay (independent masks, e.g. the random-mask control): whichever codes smaller."""
    best = None
    for kind in ("majority", "none"):
        core = core_of(packed, kind)
        core_blobs = {n: encode(core[n].numpy(), codec) for n in names}
        deltas = {lang: {n: encode((m[n] ^ core[n]).numpy(), codec) for n in names} for lang, m in packed.items()}
        size = sum(map(len, core_blobs.values())) + sum(len(b) for d in deltas.values() for b in d.values())
        if best is None or size < best[0]:
            best = (size, kind, core_blobs, deltas)
    return best[1:]


def write_set(directory: str | os.PathLike, packed: dict[str, dict[str, torch.Tensor]], codec: str,
              replacing: list[str]) -> tuple[dict, dict[str, str]]:
    """Write the core and every language's delta of ``packed`` ({lang: {name: packed uint8}}) into
    ``directory``; returns the config's ``storage`` block and each language file's sha256. Call
    :func:`commit_set` next.

    ``.lasp-mask-save.json`` first lists the files this save writes and the ones it will replace (``replacing``),
    so an interrupted save can be cleaned up (:func:`recover_interrupted_save`).
    """
    if codec not in CODECS:
        raise MaskError(f"unknown mask codec {codec!r}; choose one of {', '.join(CODECS)}")
    directory = os.fspath(directory)
    langs = list(packed)
    names = list(packed[langs[0]])
    kept_by, core_blobs, deltas = _smaller_layout(packed, names, codec)
    core_file = f"{CORE_PREFIX}{_digest(core_blobs)}.safetensors"
    files = {lang: f"masks.{lang}.{_digest(deltas[lang])}.safetensors" for lang in langs}
    atomic_write_json(os.path.join(directory, SAVE_MARKER),
                      {"pid": os.getpid(), "writing": [core_file, *files.values()], "replacing": replacing})
    core_sha = _write_coded(directory, core_file, core_blobs, {"kind": "core", "codec": codec})
    checksums = {}
    for lang in langs:
        checksums[lang] = _write_coded(directory, files[lang], deltas[lang],
                                       {"kind": "delta", "codec": codec, "language": lang, "core": core_file})
    return {"layout": "core+delta", "codec": codec, "core": {"file": core_file, "sha256": core_sha,
                                                             "kept_by": kept_by},
            "files": files}, checksums


def commit_set(directory: str | os.PathLike, config: dict) -> None:
    """Write ``mask_config.json`` (the set now is what it names), then remove the files it no longer names."""
    directory = os.fspath(directory)
    atomic_write_json(os.path.join(directory, CONFIG_NAME), config)
    recover_interrupted_save(directory)


# ------------------------------------------------------------------------------------------------ reading
def _read_coded(path: str, shapes: dict[str, tuple[int, ...]], codec: str, kind: str) -> dict[str, torch.Tensor]:
    if not os.path.isfile(path):
        raise MaskError(f"mask file {path} is missing")
    try:
        with safe_open(path, framework="pt") as fh:
            meta = fh.metadata() or {}
            blobs = {key: fh.get_tensor(key) for key in fh.keys()}
    except Exception as err:  # safetensors raises several types for truncated/corrupt files
        raise MaskError(f"{path}: corrupt or truncated mask file ({type(err).__name__}: {err})") from None
    if meta.get("kind") != kind or meta.get("codec") != codec:
        raise MaskError(f"{path}: a {meta.get('kind')} file coded {meta.get('codec')}, expected {kind} / {codec}")
    odd = sorted(set(blobs) ^ set(shapes))
    if odd:
        raise MaskError(f"{path}: {'no mask for' if odd[0] in shapes else 'unexpected'} parameter {odd[0]}")
    out = {}
    for name, shape in shapes.items():
        size = int(np.prod(packed_shape(shape)))
        try:
            flat = decode(blobs[name].numpy().tobytes(), codec, size)
        except MaskError as err:
            raise MaskError(f"{path}: {name}: {err}") from None
        out[name] = torch.from_numpy(flat).reshape(packed_shape(shape))
    return out


def _verified(path: str, expected: str | None) -> str:
    if expected is not None and os.path.isfile(path) and sha256_file(path) != expected:
        raise MaskError(f"{path}: corrupt or changed: its sha256 differs from the one {CONFIG_NAME} records; "
                        "restore the file or search this language's mask again")
    return path


def read_core(directory: str, config: dict) -> dict[str, torch.Tensor] | None:
    """The packed core of a format-2 set (None for format 1)."""
    storage = config.get("storage")
    if not storage:
        return None
    shapes = {name: tuple(shape) for name, shape in config["parameters"].items()}
    core = storage["core"]
    return _read_coded(_verified(os.path.join(directory, core["file"]), core.get("sha256")), shapes,
                       storage["codec"], "core")


def read_language(directory: str, config: dict, lang: str, core: dict | None) -> tuple[dict[str, torch.Tensor], str]:
    """``lang``'s packed masks and the path they came from (format 2: ``core ^ delta``)."""
    storage = config.get("storage")
    expected = (config.get("checksums") or {}).get(lang)
    if not storage:
        path = _verified(os.path.join(directory, mask_file_name(lang)), expected)
        return _read_tensors(path), path
    name = storage["files"].get(lang)
    if name is None or os.path.basename(name) != name:
        raise MaskError(f"{os.path.join(directory, CONFIG_NAME)}: no valid file recorded for language {lang!r}")
    path = _verified(os.path.join(directory, name), expected)
    shapes = {n: tuple(shape) for n, shape in config["parameters"].items()}
    delta = _read_coded(path, shapes, storage["codec"], "delta")
    return {n: core[n] ^ delta[n] for n in shapes}, path


def language_file(directory: str | os.PathLike, lang: str) -> str:
    """The path of ``lang``'s own file in a mask set (format 2: its delta; format 1: its whole mask)."""
    directory = os.fspath(directory)
    storage = _read_config(directory).get("storage")
    return os.path.join(directory, storage["files"][lang] if storage else mask_file_name(lang))


def stored_bytes(directory: str | os.PathLike) -> dict:
    """Bytes on disk of a mask set: ``{"core": n, "languages": {lang: n}, "total": n}`` (format 1: no core)."""
    directory = os.fspath(directory)
    config = _read_config(directory)
    storage = config.get("storage")
    langs = {lang: os.path.getsize(os.path.join(directory, storage["files"][lang] if storage else mask_file_name(lang)))
             for lang in config["languages"]}
    core = os.path.getsize(os.path.join(directory, storage["core"]["file"])) if storage else 0
    return {"core": core, "languages": langs, "total": core + sum(langs.values())}


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


def remove_mask_set(directory: str | os.PathLike) -> None:
    """Delete a mask set's own files (its config and the mask files it names); other files stay."""
    directory = os.fspath(directory)
    config = _read_config(directory)
    with locked(directory, "mask set"):
        for lang in config["languages"]:
            _check_language_code(lang, os.path.join(directory, CONFIG_NAME))
        for name in files_of(config):
            path = os.path.join(directory, name)
            if os.path.basename(name) == name and os.path.isfile(path):
                os.remove(path)
        os.remove(os.path.join(directory, CONFIG_NAME))


def _read_config(directory: str) -> dict:
    path = os.path.join(directory, CONFIG_NAME)
    if not os.path.isdir(directory):
        raise MaskError(f"mask directory {directory} does not exist")
    if not os.path.isfile(path):
        raise MaskError(f"{directory} is not a mask set: {CONFIG_NAME} is missing")
    config = read_json_object(path, "lasp mask config", MaskError)
    if config.get("format") != FORMAT:
        raise MaskError(f"{path}: not a lasp mask config (format={config.get('format')!r})")
    version = config.get("format_version", 0)
    if isinstance(version, bool) or not isinstance(version, int):
        raise MaskError(f"{path}: 'format_version' must be an integer, got {version!r}")
    if version > FORMAT_VERSION:
        raise MaskError(f"{path}: format version {version} is newer than this lasp understands ({FORMAT_VERSION}); "
                        "upgrade lasp")
    for key, kind in (("languages", list), ("parameters", dict)):
        if key not in config:
            raise MaskError(f"{path}: missing key {key!r}")
        if not isinstance(config[key], kind) or (kind is list and not all(isinstance(x, str) for x in config[key])):
            what = "a list of language codes" if kind is list else "a mapping of parameter name to shape"
            raise MaskError(f"{path}: key {key!r} must be {what}, got {config[key]!r:.80}")
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

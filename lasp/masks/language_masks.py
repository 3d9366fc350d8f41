"""LanguageMasks: one boolean mask per language over named model parameters.

A mask set on disk is a directory (the format: :mod:`lasp.masks.store`)::

    mask_config.json                   format version, base model, languages, parameter names and shapes,
                                       sparsity per language, scorer, data, packing; per language: what made
                                       it (``provenance``), its file's sha256 and kept count, checked on every
                                       load; the codec and files (``storage``)
    masks-core.<digest>.safetensors    the weights most languages keep, stored once
    masks.<lang>.<digest>.safetensors  where the language's mask differs from them

Masks stay bit-packed in memory (1 bit per weight, layout of :mod:`lasp.masks.bits`)
and are unpacked only when a language's boolean masks are asked for, so many
languages can be resident at once. Loading one language reads the core and its file.
"""
from __future__ import annotations

import os
from typing import Iterable, Mapping

import torch

from lasp import __version__
from lasp.masks.bits import intersection_packed, iou_packed, pack_bits, packed_shape, popcount, union_packed, unpack_bits
from lasp.errors import MaskError
from lasp.locks import locked
from lasp.masks.codecs import DEFAULT_CODEC
from lasp.masks.provenance import legacy_record, mask_record
from lasp.masks.targets import canonical_parameters

from lasp.masks.store import (CONFIG_NAME, FORMAT, FORMAT_VERSION, _check_counts, _check_language_code, _merge_old,
                              _read_config, check_mask_dir, commit_set, files_of, read_core, read_language,
                              recover_interrupted_save, write_set)


class LanguageMasks:
    """Per-language boolean masks over the same set of named parameters."""

    def __init__(
        self,
        packed: Mapping[str, Mapping[str, torch.Tensor]],
        shapes: Mapping[str, Iterable[int]],
        metadata: Mapping | None = None,
    ):
        self._shapes = {name: tuple(int(d) for d in shape) for name, shape in shapes.items()}
        self._packed: dict[str, dict[str, torch.Tensor]] = {}
        self.metadata: dict = dict(metadata or {})
        for lang, tensors in packed.items():
            _check_language_code(lang)
            self._packed[lang] = self._checked(lang, tensors, where=f"language {lang!r}")

    # ------------------------------------------------------------------ construction
    @classmethod
    def from_dense(
        cls,
        masks: Mapping[str, Mapping[str, torch.Tensor]],
        *,
        base_model: str | None = None,
        scorer: str | None = None,
        data: str | None = None,
        sparsity=None,
        extra: Mapping | None = None,
    ) -> "LanguageMasks":
        """Build from ``{lang: {parameter name: bool tensor}}``; every language must cover the same names."""
        if not masks:
            raise MaskError("a mask set needs at least one language")
        first = next(iter(masks.values()))
        shapes = {name: tuple(m.shape) for name, m in first.items()}
        packed = {}
        for lang, tensors in masks.items():
            if set(tensors) != set(shapes):
                missing = sorted(set(shapes) - set(tensors)) or sorted(set(tensors) - set(shapes))
                raise MaskError(f"language {lang!r} covers different parameters than the others: {missing[0]}")
            packed[lang] = {}
            for name, m in tensors.items():
                if tuple(m.shape) != shapes[name]:
                    raise MaskError(f"language {lang!r}: mask for {name} has shape {tuple(m.shape)}, "
                                    f"expected {shapes[name]}")
                packed[lang][name] = pack_bits(m.detach().to("cpu", torch.bool).contiguous())
        return cls.from_packed(packed, shapes, base_model=base_model, scorer=scorer, data=data, sparsity=sparsity,
                               extra=extra)

    @classmethod
    def from_packed(
        cls,
        packed: Mapping[str, Mapping[str, torch.Tensor]],
        shapes: Mapping[str, Iterable[int]],
        *,
        base_model: str | None = None,
        scorer: str | None = None,
        data: str | None = None,
        sparsity=None,
        extra: Mapping | None = None,
    ) -> "LanguageMasks":
        """Build from ``{lang: {parameter name: packed uint8 tensor}}`` (see :mod:`lasp.masks.bits`) and the
        parameters' shapes, with the same metadata as :meth:`from_dense`."""
        if not packed:
            raise MaskError("a mask set needs at least one language")
        meta = {"base_model": base_model, "scorer": scorer, "data": data}
        if sparsity is not None:
            meta["requested_sparsity"] = sparsity
        meta.update(extra or {})
        return cls(packed, shapes, meta)

    def _checked(self, lang: str, tensors: Mapping[str, torch.Tensor], where: str) -> dict[str, torch.Tensor]:
        names, given = set(self._shapes), set(tensors)
        if given - names:
            raise MaskError(f"{where}: unexpected parameter {sorted(given - names)[0]} (not in the mask set)")
        if names - given:
            raise MaskError(f"{where}: no mask for parameter {sorted(names - given)[0]}")
        out = {}
        for name in self._shapes:
            t = tensors[name]
            expected = packed_shape(self._shapes[name])
            if t.dtype != torch.uint8 or tuple(t.shape) != expected:
                raise MaskError(f"{where}: packed mask of {name} is {t.dtype}{list(t.shape)}, "
                                f"expected torch.uint8{list(expected)}")
            out[name] = t
        return out

    # ------------------------------------------------------------------ access
    @property
    def languages(self) -> list[str]:
        return list(self._packed)

    @property
    def parameter_names(self) -> list[str]:
        return list(self._shapes)

    @property
    def shapes(self) -> dict[str, tuple[int, ...]]:
        return dict(self._shapes)

    def numel(self) -> int:
        """Number of masked parameters (per language)."""
        return sum(int(torch.Size(s).numel()) for s in self._shapes.values())

    def _require(self, lang: str) -> dict[str, torch.Tensor]:
        if lang not in self._packed:
            known = ", ".join(self.languages) or "none"
            raise MaskError(f"unknown language {lang!r}; this mask set has: {known}")
        return self._packed[lang]

    def __contains__(self, lang: str) -> bool:
        return lang in self._packed

    def __len__(self) -> int:
        return len(self._packed)

    def __getitem__(self, lang: str) -> dict[str, torch.Tensor]:
        """``{parameter name: bool tensor}`` for ``lang`` (unpacked on demand)."""
        return {name: unpack_bits(p, self._shapes[name]) for name, p in self._require(lang).items()}

    def packed(self, lang: str) -> dict[str, torch.Tensor]:
        return dict(self._require(lang))

    def subset(self, languages: Iterable[str]) -> "LanguageMasks":
        return LanguageMasks({l: self._require(l) for l in languages}, self._shapes, self.metadata)

    def merged(self, other: "LanguageMasks") -> "LanguageMasks":
        """This set's languages followed by ``other``'s (each keeps its own provenance record); a language in
        both, or masks over other parameters, is an error."""
        if other.shapes != self._shapes:
            raise MaskError("cannot merge mask sets over different parameters")
        both = [l for l in other.languages if l in self._packed]
        if both:
            raise MaskError(f"language {both[0]!r} is in both mask sets")
        records = {**self.records(), **other.records()}
        meta = {**self.metadata, "provenance": records}
        meta.pop("available_languages", None)
        packed = {**{l: self._packed[l] for l in self.languages}, **{l: other.packed(l) for l in other.languages}}
        return LanguageMasks(packed, self._shapes, meta)

    # ------------------------------------------------------------------ statistics
    def kept(self, lang: str) -> int:
        return sum(popcount(p) for p in self._require(lang).values())

    def density(self, lang: str) -> float:
        """Fraction of masked parameters that ``lang`` keeps."""
        return self.kept(lang) / max(self.numel(), 1)

    def sparsity(self, lang: str) -> float:
        return 1.0 - self.density(lang)

    def tensor_density(self, lang: str) -> dict[str, float]:
        return {
            name: popcount(p) / max(int(torch.Size(self._shapes[name]).numel()), 1)
            for name, p in self._require(lang).items()
        }

    # ------------------------------------------------------------------ set algebra (on packed bits)
    def _reduce(self, languages: Iterable[str], op) -> dict[str, torch.Tensor]:
        languages = list(languages)
        if not languages:
            raise MaskError("set operation over an empty list of languages")
        return {name: unpack_bits(op([self._require(l)[name] for l in languages]), self._shapes[name])
                for name in self._shapes}

    def union(self, languages: Iterable[str] | None = None) -> dict[str, torch.Tensor]:
        return self._reduce(self.languages if languages is None else languages, union_packed)

    def intersection(self, languages: Iterable[str] | None = None) -> dict[str, torch.Tensor]:
        return self._reduce(self.languages if languages is None else languages, intersection_packed)

    def shared_by_all(self) -> dict[str, torch.Tensor]:
        return self.intersection(self.languages)

    def difference(self, a: str | Iterable[str], b: str | Iterable[str]) -> dict[str, torch.Tensor]:
        """Weights kept by ``a`` (a language, or the union of several) and by none of ``b``."""
        return {name: unpack_bits(bits, self._shapes[name]) for name, bits in self.difference_bits(a, b).items()}

    def exclusive(self, lang: str, others: Iterable[str] | None = None) -> dict[str, torch.Tensor]:
        """Weights only ``lang`` keeps: its mask minus every other language's (or minus ``others``')."""
        others = [l for l in (self.languages if others is None else others) if l != lang]
        if not others:
            return self[lang]
        return self.difference(lang, others)

    def union_bits(self, languages: Iterable[str]) -> dict[str, torch.Tensor]:
        """``∪ M_l`` over ``languages`` as packed bits (the layout of :mod:`lasp.masks.bits`)."""
        languages = list(languages)
        if not languages:
            raise MaskError("set operation over an empty list of languages")
        return {name: union_packed([self._require(l)[name] for l in languages]) for name in self._shapes}

    def difference_bits(self, a: str | Iterable[str], b: str | Iterable[str]) -> dict[str, torch.Tensor]:
        """:meth:`difference` as packed bits."""
        plus = self.union_bits([a] if isinstance(a, str) else a)
        b = [b] if isinstance(b, str) else list(b)
        if not b:
            return plus
        minus = self.union_bits(b)
        return {name: plus[name] & ~minus[name] for name in self._shapes}

    def count(self, dense_or_bits: Mapping[str, torch.Tensor]) -> int:
        """Set bits of a result of the set operations (bool tensors or packed bits)."""
        return sum(int(t.sum()) if t.dtype == torch.bool else popcount(t) for t in dense_or_bits.values())

    def iou(self, a: str, b: str) -> float:
        """|A∧B| / |A∨B| over all parameters, counted on the packed bits (NaN if both are empty, as in
        lasp.analysis.overlap)."""
        pa, pb = self._require(a), self._require(b)
        return iou_packed([pa[n] for n in self._shapes], [pb[n] for n in self._shapes])

    def summary(self) -> str:
        lines = [f"{len(self)} languages × {len(self._shapes)} tensors ({self.numel():,} masked parameters each)"]
        for lang in self.languages:
            lines.append(f"  {lang:>8}  density {self.density(lang):.4f}  sparsity {self.sparsity(lang):.4f}")
        return "\n".join(lines)

    # ------------------------------------------------------------------ model fit
    def validate(self, model: torch.nn.Module) -> None:
        """Raise :class:`MaskError` naming the first parameter that the model lacks or shapes differently."""
        params = canonical_parameters(model)
        for name, shape in self._shapes.items():
            if name not in params:
                raise MaskError(f"mask parameter {name} does not exist in {type(model).__name__}")
            if tuple(params[name].shape) != shape:
                raise MaskError(f"mask parameter {name} has shape {list(shape)} but the model's is "
                                f"{list(params[name].shape)}")

    # ------------------------------------------------------------------ disk format
    def records(self) -> dict[str, dict]:
        """Per-language provenance: what made each language's mask (scorer, sparsity, data, base model, ...)."""
        stored = self.metadata.get("provenance") or {}
        return {lang: dict(stored.get(lang) or mask_record(self.metadata, lang)) for lang in self.languages}

    def config(self) -> dict:
        records = self.records()
        meta = {k: v for k, v in self.metadata.items()
                if k not in ("format", "format_version", "lasp_version", "provenance", "checksums", "kept",
                             "available_languages", "verified_languages", "storage")}
        return {
            "format": FORMAT,
            "format_version": FORMAT_VERSION,
            "lasp_version": __version__,
            **meta,
            "languages": self.languages,
            "parameters": {name: list(shape) for name, shape in self._shapes.items()},
            "sparsity": {lang: round(self.sparsity(lang), 6) for lang in self.languages},
            "kept": {lang: self.kept(lang) for lang in self.languages},
            "provenance": records,
            "packing": {"dtype": "uint8", "axis": -1, "bitorder": "little", "bits_per_weight": 1},
        }

    def save(self, directory: str | os.PathLike, mode: str = "merge", codec: str = DEFAULT_CODEC) -> str:
        """Write the mask set (format of :mod:`lasp.masks.store`, bits coded by ``codec``).

        ``mode="merge"``: languages of an existing set there that this one does not have are kept, each with
        its own provenance record (set-wide fields become ``"mixed"`` where languages disagree);
        ``"new"``: refuse a folder that already holds a mask set. A folder with mask files but no config is
        refused, unless an interrupted lasp save left them (they are removed first). One writer at a time (a
        lock in the folder). The config is written last: a save that fails part-way leaves the set as it was.
        """
        if mode not in ("merge", "new"):
            raise MaskError(f"unknown save mode {mode!r}")
        if not self.languages:
            raise MaskError("a mask set needs at least one language")
        directory = os.fspath(directory)
        os.makedirs(directory, exist_ok=True)
        with locked(directory, "mask set"):
            check_mask_dir(directory)
            config = self.config()
            packed = {lang: self._packed[lang] for lang in self.languages}
            existing_path = os.path.join(directory, CONFIG_NAME)
            replacing = []
            if os.path.isfile(existing_path):
                old = _read_config(directory)
                if mode == "new":
                    raise MaskError(f"{directory} already holds a mask set ({', '.join(old['languages'])})")
                if old["parameters"] != config["parameters"]:
                    raise MaskError(f"{directory} holds masks over different parameters; choose another directory")
                kept_old = [lang for lang in old["languages"] if lang not in packed]
                if kept_old:  # the core is the whole set's: the kept languages are re-coded against the new one
                    previous = LanguageMasks.load(directory, kept_old)
                    packed.update({lang: previous.packed(lang) for lang in kept_old})
                _merge_old(config, old)
                replacing = files_of(old)
            try:
                config["storage"], config["checksums"] = write_set(directory, packed, codec, replacing)
                commit_set(directory, config)
            except BaseException:
                recover_interrupted_save(directory)  # keeps what the config names: the old set, or the new one
                raise
        return directory

    @classmethod
    def load(cls, directory: str | os.PathLike, languages: Iterable[str] | None = None) -> "LanguageMasks":
        """Read a mask set; only the core and the files of ``languages`` (default: all) are opened.

        Each file's sha256 and kept count are checked against ``mask_config.json`` (a changed byte is an
        error naming the file); every language name must be a plain code (it names a file in this folder).
        Sets in format 1 (one file per language, no core) load as well.
        """
        directory = os.fspath(directory)
        config = _read_config(directory)
        known = config["languages"]
        for lang in known:
            _check_language_code(lang, f"{os.path.join(directory, CONFIG_NAME)}: languages")
        wanted = list(known) if languages is None else list(languages)
        for lang in wanted:
            if lang not in known:
                raise MaskError(f"unknown language {lang!r} in {directory}; it has: {', '.join(known)}")
        shapes = {name: tuple(shape) for name, shape in config["parameters"].items()}
        metadata = {k: v for k, v in config.items() if k not in ("languages", "parameters", "sparsity", "packing",
                                                                  "checksums", "kept", "storage")}
        metadata["provenance"] = {lang: (config.get("provenance") or {}).get(lang) or legacy_record(config, lang)
                                  for lang in known}
        metadata["available_languages"] = list(known)
        # sets written before checksums were recorded are read, not verified
        metadata["verified_languages"] = [l for l in wanted if (config.get("checksums") or {}).get(l)]
        masks = cls({}, shapes, metadata)
        core = read_core(directory, config) if wanted else None
        for lang in wanted:
            tensors, path = read_language(directory, config, lang, core)
            masks._packed[lang] = masks._checked(lang, tensors, where=path)
            _check_counts(masks.kept(lang), masks.sparsity(lang), lang, config, path)
        return masks

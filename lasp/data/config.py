"""The ``data`` section of a recipe: manifests, batching and language sampling, and the checks of its values.

The data package owns this section so that it takes its own settings without importing the recipe loader.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

from lasp.errors import ConfigError


@dataclass
class DataConfig:
    """Which manifests and languages a stage reads, how rows become batches, how languages are sampled."""

    train: str | None = field(default=None, metadata={
        "help": "training manifest (JSON lines: audio, text, lang); required by pretrain and finetune"})
    valid: str | None = field(default=None, metadata={"help": "validation manifest (optional)"})
    test: str | None = field(default=None, metadata={"help": "test manifest; required by evaluate"})
    languages: list[str] = field(default_factory=list, metadata={
        "help": "languages to use; empty = every language in the training manifest"})
    vocab: str | None = field(default=None, metadata={
        "help": "folder holding vocab.json; built from the training transcripts and saved there when missing"})
    max_seconds: float = field(default=15.0, metadata={
        "help": "utterances longer than this many seconds are dropped (training and `data info`)"})
    on_bad: Literal["skip", "error"] = field(default="skip", metadata={
        "help": "a bad row (missing/unreadable audio, empty text): skip and count it, or stop with an error"})
    alpha: float = field(default=0.5, metadata={
        "help": "language sampling exponent: p(lang) proportional to (n_lang/N)^alpha (XLSR: 0.5)"})
    batch_size: int | None = field(default=4, metadata={
        "help": "utterances per batch and rank; null = use max_batch_seconds"})
    max_batch_seconds: float | None = field(default=None, metadata={
        "help": "audio seconds per batch (duration-bounded batches); null = use batch_size"})
    mixed: bool = field(default=False, metadata={
        "help": "false: each batch holds one language (needed for language-adaptive pre-training)"})
    num_workers: int = field(default=0, metadata={
        "help": "DataLoader worker processes decoding and collating batches; 0 = in the training process"})
    prefetch_factor: int = field(default=2, metadata={
        "help": "batches each worker prepares ahead (ignored with num_workers 0)"})

    def check(self) -> None:
        """Value checks the types cannot express; a ConfigError names the recipe key (``data.<key>``)."""
        if self.batch_size is None and self.max_batch_seconds is None:
            raise ConfigError("key 'data.batch_size' and data.max_batch_seconds cannot both be null")
        if self.batch_size is not None and self.batch_size < 1:
            raise ConfigError("key 'data.batch_size' must be >= 1")
        if self.max_batch_seconds is not None and self.max_batch_seconds <= 0:
            raise ConfigError(f"key 'data.max_batch_seconds' must be > 0, got {self.max_batch_seconds}")
        if self.max_seconds <= 0:
            raise ConfigError("key 'data.max_seconds' must be > 0")
        if self.alpha < 0:
            raise ConfigError(f"key 'data.alpha' must be >= 0, got {self.alpha}")
        if len(set(self.languages)) != len(self.languages):
            raise ConfigError("key 'data.languages' lists a language twice")
        if self.num_workers < 0:
            raise ConfigError(f"key 'data.num_workers' must be >= 0, got {self.num_workers}")
        if self.prefetch_factor < 1:
            raise ConfigError(f"key 'data.prefetch_factor' must be >= 1, got {self.prefetch_factor}")

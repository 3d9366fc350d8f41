"""The `lasp` commands in the order a user meets them, the module that parses each, and its line of help.

`lasp --help` reads only this table: a command's module, and the library it imports (torch, transformers), loads
when that command runs, so `lasp --help` answers at once.
"""
from __future__ import annotations

COMMANDS: dict[str, tuple[str, str]] = {
    "data": ("data", "import corpora, synthesize the demo corpus, inspect manifests"),
    "masks": ("masks", "make, inspect, compare and combine mask sets (prune, info, overlap, size, union, "
                       "intersection, difference, exclusive)"),
    "pretrain": ("train", "continued wav2vec 2.0 pre-training (shared or language-adaptive)"),
    "finetune": ("train", "multilingual CTC fine-tuning (shared, lasp, random masks or adapters)"),
    "evaluate": ("train", "greedy CTC decoding; per-language CER/WER files"),
    "validate": ("recipe", "check a recipe (keys, types, values) without running anything"),
    "run": ("run", "the whole pipeline: corpus, base model, masks, language-adaptive pre-training, fine-tuning "
                   "and evaluation of every system, report"),
    "report": ("run", "(re)write the report of a `lasp run` from its stage outputs"),
    "add-language": ("continual", "add a language to a trained masked system, leaving every other language's "
                                  "outputs bit-identical (its own mask weights and output layer)"),
    "remove-language": ("continual", "drop a language from a trained masked system; the others are unchanged"),
    "export": ("export", "write one language of a fine-tuned system as a plain Wav2Vec2ForCTC with its tokenizer "
                         "and feature extractor (loads in transformers without lasp)"),
    "params": ("params", "parameter and storage cost of N languages: lasp masks vs adapters, LoRA and "
                         "per-language copies"),
    "bench": ("bench", "what a mask costs per training step (steps) and how fast the input pipeline feeds a "
                       "model (data)"),
}

# spellings of earlier versions, still accepted with a one-line note
RENAMED: dict[tuple[str, ...], tuple[str, ...]] = {
    ("prune",): ("masks", "prune"),
    ("overlap",): ("masks", "overlap"),
    ("data", "bench"): ("bench", "data"),
}

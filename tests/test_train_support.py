"""Helpers for the training tests: a tiny on-disk corpus and a fast recipe (plus a check of both)."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import soundfile as sf

from lasp.config.recipe import load_recipe

WORDS = {"es": ["ala", "bola", "casa"], "de": ["ab", "dach", "ei"], "ru": ["ом", "да", "мир"]}

# a very small encoder so a training step takes milliseconds on one CPU thread
FAST_MODEL = [
    "model.overrides={hidden_size: 32, num_hidden_layers: 2, num_attention_heads: 2, intermediate_size: 64, "
    "conv_dim: [16, 16, 16, 16, 16, 16, 16], codevector_dim: 16, proj_codevector_dim: 16, "
    "num_codevectors_per_group: 8, num_conv_pos_embeddings: 16, num_conv_pos_embedding_groups: 4}",
]


def make_corpus(root: Path, langs=("es", "de"), n_train: int = 6, n_test: int = 3, seed: int = 0) -> dict:
    """Noise-burst 'speech' (one tone per character) with transcripts; returns {split: manifest path}."""
    rng = np.random.default_rng(seed)
    root = Path(root)
    (root / "wav").mkdir(parents=True, exist_ok=True)
    out = {}
    for split, n in (("train", n_train), ("test", n_test)):
        rows = []
        for lang in langs:
            for i in range(n):
                words = [WORDS[lang][(i + k) % 3] for k in range(1 + i % 2)]
                text = " ".join(words)
                chunks = [np.sin(2 * np.pi * (200 + 37 * (ord(c) % 20)) * np.arange(1600) / 16000) for c in text]
                audio = (0.3 * np.concatenate(chunks) + 0.01 * rng.standard_normal(1600 * len(text)))
                path = root / "wav" / f"{split}-{lang}-{i}.wav"
                sf.write(path, audio.astype(np.float32), 16000)
                rows.append({"audio": f"wav/{path.name}", "text": text, "lang": lang,
                             "duration": len(audio) / 16000})
        manifest = root / f"{split}.jsonl"
        manifest.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows), encoding="utf-8")
        out[split] = manifest
    return out


def fast_recipe(root: Path, manifests: dict, *extra: str):
    root = Path(root)
    return load_recipe(None, [
        *FAST_MODEL, "threads=1", "device=cpu", f"output_dir={root / 'runs'}",
        f"data.train={manifests['train']}", f"data.test={manifests['test']}", "data.batch_size=2",
        "pretrain.num_negatives=5", "pretrain.mask_time_length=2", "pretrain.mask_time_prob=0.5",
        "masks.max_batches=2", "masks.sparsity=0.5", "masks.scorer=magnitude", "masks.min_utterances=2",
        "pretrain.log_every=1", "finetune.log_every=1", "finetune.optim.lr=1e-3", "pretrain.optim.lr=1e-3",
        "finetune.optim.schedule=linear-warmup", "finetune.optim.warmup_steps=2",
        *extra,
    ])


def test_corpus_and_recipe_are_usable(tmp_path):
    from lasp.data.manifest import read_manifest

    manifests = make_corpus(tmp_path, langs=("es", "ru"), n_train=2, n_test=1)
    utts = read_manifest(manifests["train"])
    assert [u.lang for u in utts] == ["es", "es", "ru", "ru"]
    assert all(Path(u.audio).is_file() for u in utts)
    cfg = fast_recipe(tmp_path, manifests)
    assert cfg.model.overrides["hidden_size"] == 32
    assert cfg.data.train == str(manifests["train"])

"""Helpers for the data-layer tests: synthetic signals, audio files, a Common Voice release layout, tiny configs."""
from __future__ import annotations

import os

import numpy as np
import soundfile as sf

CV_HEADER = ["client_id", "path", "sentence_id", "sentence", "sentence_domain", "up_votes", "down_votes", "age",
             "gender", "accents", "variant", "locale", "segment"]


def tone(seconds: float = 1.0, sr: int = 16000, seed: int = 0, freq: float = 220.0) -> np.ndarray:
    """A speech-ish test signal: an amplitude-modulated harmonic tone plus a little noise (float32)."""
    t = np.arange(int(seconds * sr)) / sr
    rng = np.random.default_rng(seed)
    x = 0.3 * np.sin(2 * np.pi * freq * t) * (0.6 + 0.4 * np.sin(2 * np.pi * 3 * t))
    x += 0.1 * np.sin(2 * np.pi * 3 * freq * t) + 0.005 * rng.standard_normal(t.size)
    return x.astype(np.float32)


def write_audio(path: str, signal: np.ndarray, sr: int = 16000, fmt: str | None = None) -> str:
    os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
    fmt = fmt or os.path.splitext(path)[1][1:].upper()
    sf.write(path, signal, sr, format=fmt)
    return path


def make_commonvoice(root: str, langs: dict[str, list[str]], *, sr: int = 48000, missing: tuple[str, ...] = ()) -> str:
    """ROOT/<lang>/{train,dev,test}.tsv with Common Voice's header and mp3 clips; clips named in ``missing``
    are listed in the TSV but not written. Rows are split 60/20/20 in order."""
    for li, (lang, sentences) in enumerate(langs.items()):
        lang_dir = os.path.join(root, lang)
        os.makedirs(os.path.join(lang_dir, "clips"), exist_ok=True)
        rows = []
        for i, sentence in enumerate(sentences):
            clip = f"common_voice_{lang}_{1000 + i}.mp3"
            if clip not in missing:
                write_audio(os.path.join(lang_dir, "clips", clip), tone(0.6 + 0.1 * i, sr, seed=i, freq=150 + 40 * li),
                            sr, "MP3")
            rows.append([f"c{i:04x}", clip, f"s{i}", sentence, "", "2", "0", "", "", "", "", lang, ""])
        cut1, cut2 = int(len(rows) * 0.6), int(len(rows) * 0.8)
        for split, part in (("train", rows[:cut1]), ("dev", rows[cut1:cut2]), ("test", rows[cut2:])):
            with open(os.path.join(lang_dir, f"{split}.tsv"), "w", encoding="utf-8") as fh:
                fh.write("\t".join(CV_HEADER) + "\n")
                for row in part:
                    fh.write("\t".join(row) + "\n")
    return root


def tiny_config(vocab_size: int = 32, **overrides):
    """A wav2vec2 config small enough for CPU tests (hidden 32, 2 layers, 320× downsampling)."""
    from transformers import Wav2Vec2Config

    kwargs = dict(
        hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64,
        conv_dim=(16, 16, 16), conv_stride=(5, 8, 8), conv_kernel=(10, 8, 8), num_conv_pos_embeddings=16,
        num_conv_pos_embedding_groups=2, feat_extract_norm="layer", do_stable_layer_norm=True,
        codevector_dim=16, proj_codevector_dim=16, num_codevectors_per_group=8, num_codevector_groups=2,
        vocab_size=vocab_size, pad_token_id=0, ctc_loss_reduction="mean",
    )
    kwargs.update(overrides)
    return Wav2Vec2Config(**kwargs)

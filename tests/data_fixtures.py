"""Helpers for the data-layer tests: synthetic signals, audio files, a Common Voice release layout, tiny configs."""
from __future__ import annotations

from lasp.bench.cv_fixture import CV_HEADER, make_commonvoice, tone, write_audio  # noqa: F401  (the tests' names)


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

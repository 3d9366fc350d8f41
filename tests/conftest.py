"""Shared fixtures: tiny wav2vec2 models built from config, random mask sets, pre-training batches."""
from __future__ import annotations

import os

import numpy as np
import pytest
import torch

os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("MPLBACKEND", "Agg")
# Without a GPU the Triton kernels run under the interpreter. Triton reads this when kernels are
# defined, so it must be set before any test module imports lasp.masked.kernels.
if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")
torch.set_num_threads(1)


def pytest_collection_modifyitems(config, items):
    """Tests marked ``gpu`` skip without CUDA, unless LASP_GPU_TESTS_DEVICE=cpu asks for their CPU dry run."""
    if torch.cuda.is_available() or os.environ.get("LASP_GPU_TESTS_DEVICE") == "cpu":
        return
    skip = pytest.mark.skip(reason="needs a CUDA GPU (make gpu-check)")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip)


def make_pretrain_batch(model, batch_size=2, samples=8000, seed=0, mask_prob=0.5, span=2):
    """Random audio + the mask/negative indices Wav2Vec2ForPreTraining needs for its loss."""
    from transformers.models.wav2vec2.modeling_wav2vec2 import _compute_mask_indices, _sample_negative_indices

    gen = torch.Generator().manual_seed(seed)
    audio = torch.randn(batch_size, samples, generator=gen)
    frames = int(model._get_feat_extract_output_lengths(torch.tensor(samples)))
    np.random.seed(seed)
    mask = _compute_mask_indices((batch_size, frames), mask_prob=mask_prob, mask_length=span, min_masks=2)
    negatives = _sample_negative_indices((batch_size, frames), model.config.num_negatives, mask_time_indices=mask)
    return {
        "input_values": audio,
        "mask_time_indices": torch.tensor(mask, dtype=torch.bool),
        "sampled_negative_indices": torch.tensor(negatives, dtype=torch.long),
    }


def make_ctc_batch(vocab_size, batch_size=2, samples=8000, label_len=5, seed=0):
    gen = torch.Generator().manual_seed(seed)
    return {
        "input_values": torch.randn(batch_size, samples, generator=gen),
        "labels": torch.randint(1, vocab_size, (batch_size, label_len), generator=gen),
    }


@pytest.fixture
def tiny_pretraining():
    from lasp.models.load import load_model

    torch.manual_seed(0)
    return load_model("tiny", head="pretraining")


@pytest.fixture
def tiny_ctc():
    from lasp.models.load import load_model

    torch.manual_seed(0)
    return load_model("tiny", head="ctc", vocab_size=12)


@pytest.fixture
def random_masks(tiny_ctc):
    from lasp.search.pruning import make_language_masks

    return make_language_masks(tiny_ctc, {"es": None, "de": None, "ru": None}, scorer="random",
                               sparsity=0.5, seed=1, progress=False)

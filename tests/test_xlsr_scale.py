"""Scoring and pruning at real XLSR-53 shapes on a CPU machine (slow: deselected unless run with ``-m slow``).

Prints wall time and peak resident memory; run with
``.venv/bin/python -m pytest -m slow -s tests/test_xlsr_scale.py``.
"""
import resource
import time

import pytest
import torch

from conftest import make_pretrain_batch

pytestmark = [pytest.mark.slow, pytest.mark.timeout(3600)]


def test_score_and_prune_xlsr53_preset():
    from lasp.models.load import count_parameters, load_model
    from lasp.search.pruning import make_language_masks

    torch.manual_seed(0)
    start = time.perf_counter()
    model = load_model("xlsr-53", head="pretraining")
    built = time.perf_counter() - start
    batches = [make_pretrain_batch(model, batch_size=1, samples=32000, seed=s) for s in (0, 1)]
    start = time.perf_counter()
    masks = make_language_masks(model, {"sw": batches}, scorer="taylor", sparsity=0.5, progress=False)
    scored = time.perf_counter() - start
    peak_gib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20
    assert masks.numel() == 24 * (4 * 1024 * 1024 + 2 * 1024 * 4096)
    assert masks.sparsity("sw") == pytest.approx(0.5, abs=1e-6)
    print(f"\nxlsr-53 preset: {count_parameters(model) / 1e6:.1f}M params, built in {built:.1f}s; "
          f"taylor scoring of 2 batches (1 × 2 s audio) + 50% per-tensor pruning: {scored:.1f}s; "
          f"peak RSS {peak_gib:.2f} GiB")

"""The pre-training objective of the models lasp loads: a codevector no frame can choose keeps the gradient finite."""
from __future__ import annotations

import math

import torch

from conftest import make_pretrain_batch
from lasp.models.load import load_model
from lasp.models.objective import batch_loss, codevector_perplexity


def test_an_unreachable_codevector_leaves_the_gradient_finite(tmp_path):
    """With the quantizer's projection scaled up, most codevectors' softmax underflows to exactly 0 in float32 (as
    with random xlsr-53 weights or a collapsed codebook); the diversity loss's gradient stays finite and the
    perplexity keeps wav2vec 2.0's definition. Holds for a preset and for a checkpoint read from disk."""
    torch.manual_seed(0)
    load_model("tiny", head="pretraining").save_pretrained(tmp_path)
    for model in (load_model("tiny", head="pretraining"), load_model(str(tmp_path), head="pretraining")):
        model.train()
        with torch.no_grad():
            model.quantizer.weight_proj.weight.mul_(1000.0)
        batch = make_pretrain_batch(model, batch_size=2, samples=8000, seed=0)
        out, loss, _ = batch_loss(model, batch)
        loss.backward()
        grad = model.quantizer.weight_proj.weight.grad
        assert torch.isfinite(loss) and torch.isfinite(grad).all() and grad.abs().sum() > 0

    probs = torch.tensor([[[1.0, 0.0, 0.0, 0.0]], [[0.0, 1.0, 0.0, 0.0]], [[0.5, 0.5, 0.0, 0.0]]])
    # masked frames 0 and 1: p̄ = (0.5, 0.5, 0, 0), two codevectors used -> perplexity 2
    mask = torch.tensor([[True, True, False]])
    assert math.isclose(float(codevector_perplexity(probs, mask)), 2.0, rel_tol=1e-5)
    # no mask: group 0 uses two codevectors evenly (2), group 1 always the same one (1); groups add up
    two_groups = torch.tensor([[[1.0, 0.0, 0.0, 0.0], [0.0, 0.0, 1.0, 0.0]],
                               [[0.0, 1.0, 0.0, 0.0], [0.0, 0.0, 1.0, 0.0]]])
    assert math.isclose(float(codevector_perplexity(two_groups)), 3.0, rel_tol=1e-5)

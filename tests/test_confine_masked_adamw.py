"""Confinement inside the optimizer: masked AdamW, accumulation across languages, mixed batches."""
import os

import pytest
import torch

from conftest import make_ctc_batch
from lasp.masks.bits import pack_bits
from lasp.masked.confine import ConfinedOptimizer, masked_adamw_step
from lasp.masked.kernels import native
from lasp.masked.model import MaskedModel


def _bits_equal(a, b):
    return torch.equal(a.view(torch.int32), b.view(torch.int32))


def _train(mm, optimizer, plan, seed=0):
    """``plan``: one list of micro-batches per step, each micro-batch a list of per-example languages."""
    for i, micro in enumerate(plan):
        optimizer.zero_grad()
        for j, langs in enumerate(micro):
            mm.set_language(langs if len(set(langs)) > 1 else langs[0])
            batch = make_ctc_batch(12, batch_size=len(langs), samples=4000, seed=100 * seed + 10 * i + j)
            mm(**batch).loss.backward()
        optimizer.step()


def _outside_unchanged(mm, before, langs):
    union = mm.union_mask(langs)
    return all(_bits_equal(p.detach()[~union[n]], before[n][~union[n]]) for n, p in mm.targets.items())


@pytest.mark.parametrize("native_loops", [True, False])
def test_accumulation_over_languages_trains_their_union_only(tiny_ctc, random_masks, monkeypatch, native_loops):
    if not native_loops:
        monkeypatch.setattr(native, "usable", lambda *t: False)  # the torch-op path (GPU, non-fp32)
    mm = MaskedModel(tiny_ctc, random_masks).train()
    optimizer = ConfinedOptimizer(torch.optim.AdamW(tiny_ctc.parameters(), lr=1e-2, weight_decay=0.1), mm)
    _train(mm, optimizer, [[["ru"]]])  # momentum and second moments exist everywhere ru trains
    before = {n: p.detach().clone() for n, p in mm.targets.items()}
    # one step accumulating an es micro-batch, then a de micro-batch: the step trains es ∪ de, not only de
    _train(mm, optimizer, [[["es"], ["de"]]], seed=1)
    assert _outside_unchanged(mm, before, ["es", "de"])
    es_only = {n: m & ~random_masks["de"][n] for n, m in random_masks["es"].items()}
    assert sum(int((p.detach()[es_only[n]] != before[n][es_only[n]]).sum()) for n, p in mm.targets.items()) > 0


def test_mixed_unsorted_batch_is_confined_bitwise(tiny_ctc, random_masks):
    mm = MaskedModel(tiny_ctc, random_masks).train()
    optimizer = ConfinedOptimizer(torch.optim.AdamW(tiny_ctc.parameters(), lr=1e-2, weight_decay=0.1), mm)
    _train(mm, optimizer, [[["ru", "ru"]]])
    before = {n: p.detach().clone() for n, p in mm.targets.items()}
    _train(mm, optimizer, [[["de", "es", "de"]]], seed=2)
    assert _outside_unchanged(mm, before, ["es", "de"])


def _two_languages(mm, optimizer):
    _train(mm, optimizer, [[["es"]]])
    before = {n: p.detach().clone() for n, p in mm.targets.items()}
    moments = {n: optimizer.state[p]["exp_avg"].clone() for n, p in mm.targets.items()}
    _train(mm, optimizer, [[["de"]]], seed=3)
    return before, moments


def test_confinement_keeps_weights_and_moments_of_other_languages(tiny_ctc, random_masks):
    mm = MaskedModel(tiny_ctc, random_masks).train()
    inner = torch.optim.AdamW(tiny_ctc.parameters(), lr=1e-2, weight_decay=0.1)
    before, moments = _two_languages(mm, ConfinedOptimizer(inner, mm))
    outside = {n: ~m for n, m in mm.union_mask(["de"]).items()}
    for name, p in mm.targets.items():
        assert _bits_equal(p.detach()[outside[name]], before[name][outside[name]]), name
        assert _bits_equal(inner.state[p]["exp_avg"][outside[name]], moments[name][outside[name]]), name


def test_the_same_check_fails_without_confinement(tiny_ctc, random_masks):
    # a plain AdamW lets es's momentum and the weight decay move weights de does not use
    mm = MaskedModel(tiny_ctc, random_masks).train()
    inner = torch.optim.AdamW(tiny_ctc.parameters(), lr=1e-2, weight_decay=0.1)
    before, moments = _two_languages(mm, inner)
    outside = {n: ~m for n, m in mm.union_mask(["de"]).items()}
    assert not all(_bits_equal(p.detach()[outside[n]], before[n][outside[n]]) for n, p in mm.targets.items())
    assert not all(_bits_equal(inner.state[p]["exp_avg"][outside[n]], moments[n][outside[n]])
                   for n, p in mm.targets.items())


def _use_path(path, monkeypatch):
    """Make masked_adamw_step take ``path`` on CPU tensors: the C loops, the Triton kernel (interpreted) or torch
    ops."""
    from lasp.masked.kernels import triton_adamw, triton_cast

    if path == "native" and not native.available():
        pytest.skip(native.status())
    if path != "native":
        monkeypatch.setattr(native, "usable", lambda *t: False)
    if path == "triton":
        pytest.importorskip("triton")
        if os.environ.get("TRITON_INTERPRET") != "1":
            pytest.skip("TRITON_INTERPRET is not set")
        monkeypatch.setattr(triton_cast, "usable", lambda *t: all(x.is_contiguous() for x in t))
    else:
        monkeypatch.setattr(triton_adamw, "usable", lambda *t: False)


@pytest.mark.parametrize("path", ["native", "triton", "torch"])
def test_masked_adamw_equals_adamw_inside_the_union(path, monkeypatch):
    _use_path(path, monkeypatch)
    gen = torch.Generator().manual_seed(0)
    p = torch.nn.Parameter(torch.randn(16, 1030, generator=gen))  # a row longer than one Triton block
    q = torch.nn.Parameter(p.detach().clone())
    reference = torch.optim.AdamW([q], lr=1e-2, weight_decay=0.1)
    keep = torch.rand(16, 1030, generator=gen) < 0.5
    state, group = {p: {}}, reference.param_groups[0]
    for _ in range(3):
        g = torch.randn(16, 1030, generator=gen) * keep
        p.grad, q.grad = g.clone(), g.clone()
        reference.step()
        old = p.detach().clone()
        moments = {k: state[p][k].clone() for k in ("exp_avg", "exp_avg_sq")} if state[p] else None
        with torch.no_grad():
            masked_adamw_step([p], [pack_bits(keep)], state, group)
        assert _bits_equal(p.detach()[~keep], old[~keep])
        if moments is not None:
            assert all(_bits_equal(state[p][k][~keep], moments[k][~keep]) for k in moments)
    torch.testing.assert_close(p.detach()[keep], q.detach()[keep], rtol=1e-6, atol=1e-6)
    torch.testing.assert_close(state[p]["exp_avg"][keep], reference.state[q]["exp_avg"][keep])
    torch.testing.assert_close(state[p]["exp_avg_sq"][keep], reference.state[q]["exp_avg_sq"][keep])


@pytest.mark.parametrize("path", ["native", "torch"])
def test_confined_step_needs_at_most_5_percent_more_memory_than_a_dense_step(path, monkeypatch):
    """The base preset (95 M parameters): the bytes a confined AdamW step allocates at its peak stay within 5 % of
    the model's training state (weights, gradients, moments) above what torch's fused AdamW allocates."""
    from peak_memory import peak_bytes
    from lasp.masks.language_masks import LanguageMasks
    from lasp.masks.targets import select_targets
    from lasp.models.load import load_model

    _use_path(path, monkeypatch)
    torch.manual_seed(0)
    model = load_model("base", head="pretraining")
    params = list(model.parameters())
    gen = torch.Generator().manual_seed(1)
    masks = LanguageMasks.from_dense({lang: {n: torch.rand(p.shape, generator=gen) < 0.5
                                             for n, p in select_targets(model).items()} for lang in ("es", "de")})
    mm = MaskedModel(model, masks)
    dense = torch.optim.AdamW(params, lr=1e-4, fused=True)
    confined = ConfinedOptimizer(torch.optim.AdamW(params, lr=1e-4, fused=True), mm)
    for p in params:
        p.grad = torch.randn(p.shape, generator=gen)
    for optimizer in (dense, confined):  # the first step creates the moments
        optimizer.step(**({"languages": ["es"]} if optimizer is confined else {}))
    dense_peak = peak_bytes(dense.step)
    confined_peak = peak_bytes(lambda: confined.step(languages=["es", "de"]))
    state = sum(p.numel() * 4 * 4 for p in params)  # weight, gradient and two moments in fp32
    assert confined_peak <= dense_peak + 0.05 * state, (confined_peak / 2**20, dense_peak / 2**20, state / 2**20)


def test_other_optimizers_use_the_snapshot_fallback(tiny_ctc, random_masks):
    mm = MaskedModel(tiny_ctc, random_masks).train()
    optimizer = ConfinedOptimizer(torch.optim.SGD(tiny_ctc.parameters(), lr=1e-2, momentum=0.9,
                                                  weight_decay=0.1), mm)
    assert not optimizer.fused
    before = {n: p.detach().clone() for n, p in mm.targets.items()}
    _train(mm, optimizer, [[["es"]], [["de"]]])
    assert _outside_unchanged(mm, before, ["es", "de"])


def test_unions_are_cached_as_packed_bits(tiny_ctc, random_masks):
    mm = MaskedModel(tiny_ctc, random_masks)
    bits = mm.union_bits(["es", "de"])
    assert all(t.dtype == torch.uint8 for t in bits.values())
    assert mm.union_bits(["de", "es"]) is bits  # one cache entry per set of languages
    for name, m in mm.union_mask(["es", "de"]).items():
        assert torch.equal(m, random_masks["es"][name] | random_masks["de"][name])


def test_evaluation_between_steps_does_not_widen_the_union(tiny_ctc, random_masks):
    mm = MaskedModel(tiny_ctc, random_masks).train()
    optimizer = ConfinedOptimizer(torch.optim.AdamW(tiny_ctc.parameters(), lr=1e-2, weight_decay=0.1), mm)
    _train(mm, optimizer, [[["es"]], [["ru"]]])
    before = {n: p.detach().clone() for n, p in mm.targets.items()}
    optimizer.zero_grad()
    mm.set_language("de")
    mm(**make_ctc_batch(12, batch_size=1, samples=4000, seed=7)).loss.backward()
    with torch.no_grad(), mm.language("es"):  # an evaluation pass in the middle of the step
        mm(**make_ctc_batch(12, batch_size=1, samples=4000, seed=8))
    assert optimizer.step_languages() == ("de",)
    optimizer.step()
    assert _outside_unchanged(mm, before, ["de"])

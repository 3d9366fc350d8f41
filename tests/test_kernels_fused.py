"""Fused Triton masked linear against an fp64 reference: compiled on a GPU when one is present, otherwise
on CPU under the Triton interpreter.

TRITON_INTERPRET must be set before the kernels are defined; ``lasp.kernels``
imports Triton lazily, so setting it at collection time is enough.
"""
import os

import pytest
import torch

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"
if DEVICE == "cpu":
    os.environ["TRITON_INTERPRET"] = "1"

pytest.importorskip("triton")

from conftest import make_ctc_batch  # noqa: E402
from lasp.bits import pack_bits  # noqa: E402
from lasp.errors import ConfigError  # noqa: E402
from lasp.kernels import masked_linear, resolve_mode  # noqa: E402


def _problem(batch, steps, in_f, out_f, langs, seed, density=0.5):
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(batch, steps, in_f, generator=gen, dtype=torch.float64)
    w = torch.randn(out_f, in_f, generator=gen, dtype=torch.float64)
    b = torch.randn(out_f, generator=gen, dtype=torch.float64)
    masks = torch.rand(langs, out_f, in_f, generator=gen) < density
    dy = torch.randn(batch, steps, out_f, generator=gen, dtype=torch.float64)
    return x, w, b, masks, dy


def _fp64_truth(x, w, b, masks, dy, lang=None, row_lang=None):
    """y, dX, dW, db computed by hand in fp64 (not through autograd of the reference)."""
    per_row = torch.full((x.shape[0],), lang) if row_lang is None else row_lang
    m = masks[per_row].to(x.dtype)  # [B, out, in]
    wm = w * m
    y = torch.einsum("bti,boi->bto", x, wm) + b
    dx = torch.einsum("bto,boi->bti", dy, wm)
    dw = (torch.einsum("bto,bti->boi", dy, x) * m).sum(0)
    return y, dx, dw, dy.sum((0, 1))


def _run_fused(x, w, b, masks, dy, dtype, **which):
    xx, ww, bb = (t.to(DEVICE, dtype).requires_grad_() for t in (x, w, b))
    which = {k: v.to(DEVICE) if torch.is_tensor(v) else v for k, v in which.items()}
    y = masked_linear(xx, ww, bb, pack_bits(masks).to(DEVICE), mode="fused", **which)
    y.backward(dy.to(DEVICE, dtype))
    return tuple(t.cpu() for t in (y, xx.grad, ww.grad, bb.grad))


def _rounded(*tensors, dtype):
    return [t.to(dtype).to(torch.float64) for t in tensors]


CASES = [
    # batch, steps, in, out, languages, row_lang (None: one language for the batch)
    (3, 13, 29, 23, 2, None),             # odd sizes, K not a multiple of 8 (padded bits)
    (2, 40, 48, 33, 1, None),             # 80 rows: several row tiles and the split-M dW path
    (5, 9, 40, 37, 4, [2, 0, 2, 1, 0]),    # mixed, language 3 unused (empty segment)
    (6, 15, 24, 17, 3, [1, 1, 1, 1, 1, 1]),  # mixed path with a single language present
    (7, 11, 32, 20, 8, [7, 3, 0, 3, 5, 7, 6]),  # 77 rows, 5 segments, split-M over segments
]


@pytest.mark.parametrize("dtype,tol", [(torch.float32, 1e-5), (torch.bfloat16, 2e-2)])
@pytest.mark.parametrize("case", CASES)
def test_fused_matches_fp64(case, dtype, tol):
    batch, steps, in_f, out_f, langs, row_lang = case
    x, w, b, masks, dy = _problem(batch, steps, in_f, out_f, langs, seed=sum(case[:4]))
    which = {"lang": langs - 1} if row_lang is None else {"row_lang": torch.tensor(row_lang)}
    got = _run_fused(x, w, b, masks, dy, dtype, **which)
    # the truth uses the same (rounded) inputs, so only accumulation/output rounding is measured
    truth = _fp64_truth(*_rounded(x, w, b, dtype=dtype), masks, _rounded(dy, dtype=dtype)[0], lang=which.get("lang"),
                        row_lang=which.get("row_lang"))
    for name, g, t in zip(("y", "dX", "dW", "db"), got, truth):
        assert g.dtype == dtype, name
        err = (g.double() - t).abs().max().item()
        assert err <= tol * max(1.0, t.abs().max().item()), (name, err)


def test_dw_is_zero_outside_the_languages_in_the_batch():
    x, w, b, masks, dy = _problem(4, 5, 24, 16, 3, seed=3)
    row_lang = torch.tensor([0, 2, 2, 0])
    _, _, dw, _ = _run_fused(x, w, b, masks, dy, torch.float32, row_lang=row_lang)
    outside = ~(masks[0] | masks[2])
    assert outside.any() and torch.count_nonzero(dw[outside]) == 0
    assert torch.count_nonzero(dw[masks[0] | masks[2]]) > 0


def test_matches_reference_mode_and_mask_of_each_row():
    x, w, b, masks, _ = _problem(4, 6, 16, 12, 3, seed=5)
    bits = pack_bits(masks)
    row_lang = torch.tensor([2, 0, 1, 2])
    x, w, b, bits, row_lang = (t.to(DEVICE) for t in (x.float(), w.float(), b.float(), bits, row_lang))
    fused = masked_linear(x, w, b, bits, row_lang=row_lang, mode="fused")
    ref = masked_linear(x, w, b, bits, row_lang=row_lang, mode="reference")
    torch.testing.assert_close(fused, ref, rtol=1e-5, atol=1e-5)
    # row 2 is language 1: its output must not depend on weights outside mask 1
    w2 = w.clone()
    w2[~masks[1]] = 1e3
    again = masked_linear(x, w2, b, bits, row_lang=row_lang, mode="fused")
    torch.testing.assert_close(again[2], fused[2], rtol=1e-5, atol=1e-5)
    assert (again[0] - fused[0]).abs().max() > 1.0


def test_autocast_bf16_gives_bf16_output_and_fp32_weight_grad():
    x, w, b, masks, _ = _problem(2, 7, 16, 8, 2, seed=9)
    bits = pack_bits(masks).to(DEVICE)
    masks = masks.to(DEVICE)
    outs = {}
    for mode in ("fused", "reference"):
        xx, ww, bb = (t.to(DEVICE, torch.float32).requires_grad_() for t in (x, w, b))
        with torch.autocast(DEVICE, dtype=torch.bfloat16):
            y = masked_linear(xx, ww, bb, bits, lang=1, mode=mode)
        y.float().square().sum().backward()
        outs[mode] = (y, ww.grad)
    (yf, gf), (yr, gr) = outs["fused"], outs["reference"]
    assert yf.dtype == torch.bfloat16 and gf.dtype == torch.float32
    torch.testing.assert_close(yf.float(), yr.float(), rtol=2e-2, atol=2e-2)
    torch.testing.assert_close(gf, gr, rtol=3e-2, atol=5e-1)
    assert torch.count_nonzero(gf[~masks[1]]) == 0


def test_segment_plan_covers_every_row_once():
    from lasp.kernels.triton_masked import build_plan

    row_lang = torch.tensor([3, 0, 3, 3, 1, 0])
    plan = build_plan(row_lang, rows_per_example=5, num_langs=5, block_m=4)
    assert sorted(plan.perm.tolist()) == list(range(30))
    # sorted rows are grouped by language, in language order, examples kept in order
    assert plan.perm[:10].tolist() == list(range(5, 10)) + list(range(25, 30))
    assert plan.seg_start.tolist() == [0, 10, 15, 15, 30] and plan.seg_end.tolist() == [10, 15, 15, 30, 30]
    covered = []
    for start, end, lang in zip(plan.tile_start.tolist(), plan.tile_end.tolist(), plan.tile_lang.tolist()):
        assert end - start <= 4
        assert plan.seg_start[lang] <= start and end <= plan.seg_end[lang] or start == end
        covered.extend(range(start, end))
    assert sorted(covered) == list(range(30))


def test_dispatch_and_errors(monkeypatch):
    x = torch.randn(2, 3, 16)
    w = torch.randn(4, 16)
    bits = pack_bits(torch.ones(2, 4, 16, dtype=torch.bool))
    assert resolve_mode("auto", torch.device("cpu")) == "reference"
    assert resolve_mode("fused", torch.device("cpu")) == "fused"
    with pytest.raises(ValueError, match="unknown masked-linear mode 'fast'"):
        masked_linear(x, w, None, bits, lang=0, mode="fast")
    with pytest.raises(ValueError, match="language index 2 out of range for 2 loaded languages"):
        masked_linear(x, w, None, bits, lang=2, mode="fused")
    with pytest.raises(ValueError, match=r"bits must be uint8 \[L, 4, 2\]"):
        masked_linear(x, w, None, bits[:, :3], lang=0, mode="fused")
    with pytest.raises(ValueError, match="row_lang has shape"):
        masked_linear(x, w, None, bits, row_lang=torch.tensor([0, 1, 1]), mode="fused")
    monkeypatch.delenv("TRITON_INTERPRET", raising=False)
    with pytest.raises(ConfigError, match="needs Triton and a CUDA device"):
        masked_linear(x, w, None, bits, lang=0, mode="fused")


def test_masked_model_fused_matches_reference_and_confines_updates():
    from lasp.confine import ConfinedOptimizer
    from lasp.masked import MaskedModel
    from lasp.models import load_model
    from lasp.pruning import make_language_masks

    torch.manual_seed(0)
    model = load_model("tiny", head="ctc", vocab_size=12, hidden_size=32, intermediate_size=48,
                       num_attention_heads=2, num_hidden_layers=1, mask_time_prob=0.0).to(DEVICE)
    masks = make_language_masks(model, {"es": None, "de": None, "ru": None}, scorer="random", sparsity=0.5,
                                seed=1, progress=False)
    batch = {k: v.to(DEVICE) for k, v in make_ctc_batch(12, batch_size=3, samples=3000, seed=0).items()}
    grads = {}
    for mode in ("reference", "fused"):
        mm = MaskedModel(model, masks, mode=mode).train()
        mm.set_language(["es", "de", "es"])
        model.zero_grad()
        torch.manual_seed(1)  # same dropout draws in both modes
        mm(**batch).loss.backward()
        grads[mode] = {n: p.grad.clone() for n, p in mm.targets.items()}
        mm.unload()
    for name in grads["reference"]:
        torch.testing.assert_close(grads["fused"][name], grads["reference"][name], rtol=1e-3, atol=1e-5)

    mm = MaskedModel(model, masks, mode="fused").train()
    optimizer = ConfinedOptimizer(torch.optim.AdamW(model.parameters(), lr=1e-2, weight_decay=0.1), mm)
    for i, langs in enumerate([["ru"], ["es", "de", "es"]]):
        before = {n: p.detach().clone() for n, p in mm.targets.items()}
        mm.set_language(langs if len(langs) > 1 else langs[0])
        optimizer.zero_grad()
        step_batch = make_ctc_batch(12, batch_size=len(langs), samples=3000, seed=i)
        mm(**{k: v.to(DEVICE) for k, v in step_batch.items()}).loss.backward()
        optimizer.step()
        union = mm.union_mask(set(langs))
        moved = 0
        for name, p in mm.targets.items():
            assert torch.equal(p.detach()[~union[name]], before[name][~union[name]]), (i, name)
            moved += int((p.detach()[union[name]] != before[name][union[name]]).sum())
        assert moved > 0

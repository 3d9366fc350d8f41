"""The masked cast (MaskedLinear / lasp.masked.kernels.cast) against fp64 truth, and the module swap's guarantees."""
import copy
import pickle

import pytest
import torch
import torch.nn as nn

from lasp.masks.bits import pack_bits
from lasp.masked.kernels.linear import masked_linear, resolve_mode
from lasp.masked.kernels.cast import segments_of
from lasp.masked.model import MaskedModel
from lasp.masked.layers import MaskedLinear


def _problem(batch, steps, in_f, out_f, langs, seed, density=0.5):
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(batch, steps, in_f, generator=gen, dtype=torch.float64)
    w = torch.randn(out_f, in_f, generator=gen, dtype=torch.float64)
    b = torch.randn(out_f, generator=gen, dtype=torch.float64)
    masks = torch.rand(langs, out_f, in_f, generator=gen) < density
    dy = torch.randn(batch, steps, out_f, generator=gen, dtype=torch.float64)
    return x, w, b, masks, dy


def _fp64_truth(x, w, b, masks, dy, row_lang):
    """y, dX, dW, db by hand in fp64 (per-example masks, no autograd)."""
    m = masks[torch.tensor(row_lang)].double()  # [B, out, in]
    wm = w * m
    y = torch.einsum("bti,boi->bto", x, wm) + b
    dx = torch.einsum("bto,boi->bti", dy, wm)
    dw = (torch.einsum("bto,bti->boi", dy, x) * m).sum(0)
    return y, dx, dw, dy.sum((0, 1))


CASES = [
    # batch, steps, in, out, languages, per-example languages
    (3, 5, 29, 23, 2, [1, 1, 1]),            # single language, K not a multiple of 8 (padded bits)
    (4, 3, 40, 16, 3, [0, 0, 2, 2]),          # mixed, already grouped (slices, no permutation)
    (5, 4, 24, 17, 4, [2, 0, 2, 1, 0]),       # mixed, unsorted rows (regrouped and put back)
    (7, 2, 32, 20, 8, [7, 3, 0, 3, 5, 7, 6]),
]


@pytest.mark.parametrize("case", CASES)
def test_cast_matches_fp64(case):
    batch, steps, in_f, out_f, langs, row_lang = case
    x, w, b, masks, dy = _problem(batch, steps, in_f, out_f, langs, seed=sum(case[:4]))
    truth = _fp64_truth(x, w, b, masks, dy, row_lang)
    xx, ww, bb = (t.float().requires_grad_() for t in (x, w, b))
    which = {"lang": row_lang[0]} if len(set(row_lang)) == 1 else {"row_lang": row_lang}
    y = masked_linear(xx, ww, bb, pack_bits(masks), mode="cast", **which)
    y.backward(dy.float())
    for name, got, want in zip(("y", "dX", "dW", "db"), (y, xx.grad, ww.grad, bb.grad), truth):
        assert got.dtype == torch.float32, name
        torch.testing.assert_close(got.double(), want, rtol=1e-5, atol=1e-4, msg=name)
    union = masks[sorted(set(row_lang))].any(0)
    assert torch.count_nonzero(ww.grad[~union]) == 0


def test_segments_are_slices_when_grouped_and_a_permutation_otherwise():
    grouped = segments_of([2, 2, 0, 1, 1])
    assert grouped.order is None and grouped.spans == ((0, 2, 2), (2, 3, 0), (3, 5, 1))
    mixed = segments_of([1, 0, 1, 2])
    assert mixed.order == (0, 2, 1, 3) and mixed.spans == ((0, 2, 1), (2, 3, 0), (3, 4, 2))


def test_autocast_bf16_masks_the_cast_and_returns_fp32_weight_grad():
    x, w, b, masks, _ = _problem(2, 7, 16, 8, 2, seed=9)
    xx, ww = x.float().requires_grad_(), w.float().requires_grad_()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        y = masked_linear(xx, ww, None, pack_bits(masks), lang=1, mode="cast")
    y.float().square().sum().backward()
    assert y.dtype == torch.bfloat16 and ww.grad.dtype == torch.float32
    assert torch.count_nonzero(ww.grad[~masks[1]]) == 0
    want = torch.nn.functional.linear(xx.detach().bfloat16(), (ww.detach() * masks[1]).bfloat16())
    torch.testing.assert_close(y.detach(), want)


def test_dispatch_never_picks_triton():
    for device in ("cpu", "cuda"):
        assert resolve_mode("auto", torch.device(device)) == "cast"
    with pytest.raises(ValueError, match="unknown masked-linear mode 'fused'"):
        resolve_mode("fused", torch.device("cpu"))


def _audio(batch=2, samples=5000, seed=0):
    return torch.randn(batch, samples, generator=torch.Generator().manual_seed(seed))


def test_module_swap_is_visible_and_keeps_state_dict(tiny_ctc, random_masks):
    keys = list(tiny_ctc.state_dict())
    q = tiny_ctc.wav2vec2.encoder.layers[0].attention.q_proj
    mm = MaskedModel(tiny_ctc, random_masks)
    swapped = tiny_ctc.wav2vec2.encoder.layers[0].attention.q_proj
    assert isinstance(swapped, MaskedLinear) and swapped.weight is q.weight and swapped.bias is q.bias
    assert "MaskedLinear(in_features=" in repr(tiny_ctc)
    assert list(tiny_ctc.state_dict()) == keys  # masks are non-persistent buffers
    plain = mm.unload()
    back = plain.wav2vec2.encoder.layers[0].attention.q_proj
    assert type(back) is nn.Linear and back.weight is q.weight and list(plain.state_dict()) == keys


def test_deepcopy_computes_with_its_own_weights(tiny_ctc, random_masks):
    mm = MaskedModel(tiny_ctc, random_masks).eval()
    x = _audio()
    mm.set_language("de")
    with torch.no_grad():
        before = mm(input_values=x).logits  # fills the masked-weight caches of the original
        twin = copy.deepcopy(mm)
        torch.testing.assert_close(twin(input_values=x).logits, before)
        for p in twin.targets.values():
            p.mul_(0.5)
        changed = twin(input_values=x).logits
        assert (changed - before).abs().max() > 1e-3  # the copy uses its own (changed) weights
        torch.testing.assert_close(mm(input_values=x).logits, before)  # and the original is untouched
        with twin.language("es"):
            torch.testing.assert_close(twin(input_values=x).logits,
                                       twin.merge_and_unload("es").eval()(input_values=x).logits, rtol=0, atol=1e-5)


class _Net(nn.Module):
    # the HF wav2vec2 model itself cannot be pickled (torch refuses parametrized modules: the weight-normed
    # positional conv), so pickling is checked on a small model with a Linear and an opt-in LayerNorm target
    def __init__(self):
        super().__init__()
        self.proj = nn.Linear(12, 8)
        self.norm = nn.LayerNorm(8)

    def forward(self, x):
        return self.norm(self.proj(x))


def test_pickle_roundtrip_computes_with_the_copys_weights():
    from lasp.masks.language_masks import LanguageMasks

    torch.manual_seed(0)
    net = _Net()
    gen = torch.Generator().manual_seed(1)
    masks = LanguageMasks.from_dense({lang: {"proj.weight": torch.rand(8, 12, generator=gen) < 0.5,
                                             "norm.weight": torch.rand(8, generator=gen) < 0.5}
                                      for lang in ("es", "de")})
    mm = MaskedModel(net, masks)
    x = torch.randn(3, 12, generator=gen)
    with torch.no_grad(), mm.language("es"):
        before = mm(x)
        twin = pickle.loads(pickle.dumps(mm))
        torch.testing.assert_close(twin(x), before)
        twin.model.proj.weight.mul_(2.0)
        twin.model.norm.weight.add_(1.0)
        assert (twin(x) - before).abs().max() > 1e-3
        torch.testing.assert_close(mm(x), before)
        torch.testing.assert_close(twin(x), twin.merge_and_unload("es")(x), rtol=0, atol=1e-6)


def test_cached_copy_follows_weight_updates(tiny_ctc, random_masks):
    mm = MaskedModel(tiny_ctc, random_masks).eval()
    x = _audio()
    with torch.no_grad(), mm.language("ru"):
        mm(input_values=x)
        for p in mm.targets.values():
            p.add_(0.01)  # in place, as an optimizer step does
        torch.testing.assert_close(mm(input_values=x).logits,
                                   mm.merge_and_unload("ru").eval()(input_values=x).logits, rtol=0, atol=1e-5)


def test_mixed_unsorted_batch_equals_per_language_runs_with_grads(tiny_ctc, random_masks):
    mm = MaskedModel(tiny_ctc, random_masks).eval()
    x = _audio(4)
    langs = ["ru", "es", "ru", "de"]
    mm.set_language(langs)
    out = mm(input_values=x).logits
    out.square().sum().backward()
    mixed_grads = {n: p.grad.clone() for n, p in mm.targets.items()}
    tiny_ctc.zero_grad()
    for i, lang in enumerate(langs):
        mm.set_language(lang)
        single = mm(input_values=x[i:i + 1]).logits
        torch.testing.assert_close(out[i], single[0], rtol=1e-4, atol=1e-5)
        single.square().sum().backward()
    for name, p in mm.targets.items():
        torch.testing.assert_close(mixed_grads[name], p.grad, rtol=1e-4, atol=1e-5)


def test_triton_masked_cast_kernel_under_the_interpreter():
    pytest.importorskip("triton")
    import os

    from lasp.masked.kernels import triton_cast

    if not torch.cuda.is_available() and os.environ.get("TRITON_INTERPRET") != "1":
        pytest.skip("no GPU and TRITON_INTERPRET is not set")
    device = "cuda" if torch.cuda.is_available() else "cpu"
    gen = torch.Generator().manual_seed(4)
    for rows, cols, src, dst in ((5, 1030, torch.float32, torch.bfloat16), (3, 13, torch.bfloat16, torch.float32)):
        x = torch.randn(rows, cols, generator=gen).to(device, src)
        keep = torch.rand(rows, cols, generator=gen) < 0.5
        out = torch.empty(rows, cols, dtype=dst, device=device)
        triton_cast.masked_convert(x, pack_bits(keep).to(device), out)
        got = out.cpu()
        assert torch.count_nonzero(got[~keep]) == 0
        # the interpreter's bf16 conversion may round differently from torch's: compare within one bf16 ulp
        torch.testing.assert_close(got.float(), (x.cpu().to(dst) * keep).float(), rtol=8e-3, atol=1e-6)
    assert not triton_cast.usable(torch.zeros(2, 8))  # never a Triton path on CPU tensors


def _triton_on_cpu(monkeypatch):
    """Route the masked cast through the Triton kernel on CPU tensors (the interpreter), as it runs on a GPU."""
    pytest.importorskip("triton")
    import os

    from lasp.masked.kernels import cast, native, triton_cast

    if os.environ.get("TRITON_INTERPRET") != "1":
        pytest.skip("TRITON_INTERPRET is not set")
    monkeypatch.setattr(native, "usable", lambda *t: False)
    monkeypatch.setattr(triton_cast, "usable", lambda *t: all(x.is_contiguous() for x in t))
    assert cast.triton_cast is triton_cast


def test_triton_cast_rewriting_a_saved_copy_is_caught_in_backward(tiny_ctc, random_masks, monkeypatch):
    """Forward es, switch to de, forward de, one backward of both: de's masked copy reuses es's buffer, so es's
    saved weights would silently be de's. The kernel bumps the buffer's version: autograd refuses."""
    _triton_on_cpu(monkeypatch)
    from conftest import make_ctc_batch

    mm = MaskedModel(tiny_ctc, random_masks).train()
    batch = make_ctc_batch(12, batch_size=1, samples=4000)
    mm.set_language("es")
    loss_es = mm(**batch).loss
    mm.set_language("de")
    loss_de = mm(**batch).loss
    with pytest.raises(RuntimeError, match="modified by an inplace operation"):
        (loss_es + loss_de).backward()

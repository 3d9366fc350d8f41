"""On a CUDA GPU (``pytest -m gpu``, part of ``make gpu-check``): the masked cast in bf16 against fp64, the confined
step (bit-identical outside the union, no memory beyond the optimizer's), bf16 and fp16 fine-tuning steps, the
Triton cast's saved-copy check, and the XLSR-53 recipe's micro-batches within one 80 GB H100.

Without CUDA these tests skip. ``LASP_GPU_TESTS_DEVICE=cpu`` runs them on CPU with tiny shapes instead: that only
proves the tests themselves run (speed, memory and the Triton kernels need the GPU)."""
from __future__ import annotations

import math
import os
from dataclasses import dataclass
from pathlib import Path

import pytest
import torch

from conftest import make_ctc_batch, make_pretrain_batch
from lasp.config.recipe import load_recipe
from lasp.masked.confine import ConfinedOptimizer
from lasp.masked.kernels import triton_adamw, triton_cast
from lasp.masked.kernels.linear import masked_linear
from lasp.masked.kernels.reference import masked_linear_reference
from lasp.masked.model import MaskedModel
from lasp.masks.bits import pack_bits
from lasp.masks.language_masks import LanguageMasks
from lasp.masks.targets import select_targets
from lasp.models.load import load_model
from lasp.models.system import build_system
from lasp.train.loop import Batch, train_loop
from lasp.train.metrics_log import read_metrics
from lasp.train.precision import enable_activation_checkpointing
from peak_memory import peak_bytes

pytestmark = pytest.mark.gpu
RECIPE = Path(__file__).resolve().parents[1] / "recipes" / "xlsr53_commonvoice.yaml"
H100_BYTES = 80 * 10**9  # an H100's 80 GB


@dataclass
class Setup:
    device: torch.device
    full: bool  # XLSR-53 shapes (a GPU) or tiny ones (the CPU dry run)

    @property
    def preset(self) -> str:
        return "xlsr-53" if self.full else "tiny"


@pytest.fixture
def gpu() -> Setup:
    if os.environ.get("LASP_GPU_TESTS_DEVICE") == "cpu":
        return Setup(torch.device("cpu"), full=False)
    return Setup(torch.device("cuda", 0), full=True)


def _peak(fn, device: torch.device) -> int:
    """Bytes allocated by ``fn`` at its peak, above what was allocated before."""
    if device.type != "cuda":
        return peak_bytes(fn)
    torch.cuda.synchronize(device)
    torch.cuda.reset_peak_memory_stats(device)
    before = torch.cuda.memory_allocated(device)
    fn()
    torch.cuda.synchronize(device)
    return torch.cuda.max_memory_allocated(device) - before


def _rel(a: torch.Tensor, b: torch.Tensor) -> float:
    a, b = a.detach().double(), b.detach().double()
    return float((a - b).norm() / b.norm().clamp(min=1e-30))


def _random_masks(model, languages, seed=0, density=0.5) -> LanguageMasks:
    gen = torch.Generator().manual_seed(seed)
    return LanguageMasks.from_dense({lang: {n: torch.rand(p.shape, generator=gen) < density
                                            for n, p in select_targets(model).items()} for lang in languages})


def test_masked_cast_in_bf16_matches_fp64(gpu):
    """Output, dX and dW of the masked cast under bf16 autocast within bf16 accuracy of an fp64 reference, one
    language and mixed batches (grouped and not); dW exactly zero outside a single language's mask."""
    device = gpu.device
    shapes = ((1024, 1024), (1024, 4096), (4096, 1024)) if gpu.full else ((64, 64), (64, 256), (256, 64))
    gen = torch.Generator().manual_seed(0)
    for in_f, out_f in shapes:
        weight = torch.randn(out_f, in_f, generator=gen).div_(in_f ** 0.5).to(device).requires_grad_()
        bias = torch.randn(out_f, generator=gen).to(device).requires_grad_()
        keep = torch.rand(3, out_f, in_f, generator=gen) < 0.5
        bits = pack_bits(keep).to(device)
        if device.type == "cuda":
            assert triton_cast.usable(weight.detach(), bits[0], torch.empty_like(weight, dtype=torch.bfloat16))
        for which in ({"lang": 1}, {"row_lang": [0, 0, 1, 1, 2, 2, 2, 2]}, {"row_lang": [2, 0, 1, 0, 2, 1, 0, 2]}):
            x = torch.randn(8, 50, in_f, generator=gen).to(device).requires_grad_()
            dy = torch.randn(8, 50, out_f, generator=gen).to(device)
            with torch.autocast(device.type, dtype=torch.bfloat16):
                y = masked_linear(x, weight, bias, bits, mode="cast", **which)
            assert y.dtype == torch.bfloat16
            y.backward(dy.to(y.dtype))
            got = (y.detach(), x.grad, weight.grad, bias.grad)
            x64, w64, b64 = (t.detach().double().requires_grad_() for t in (x, weight, bias))
            ref_which = which if "lang" in which else {"row_lang": torch.tensor(which["row_lang"], device=device)}
            y64 = masked_linear_reference(x64, w64, b64, bits, **ref_which)
            y64.backward(dy.double())
            for name, a, b in zip(("y", "dx", "dw", "db"), got, (y64, x64.grad, w64.grad, b64.grad)):
                assert _rel(a, b) < 1e-2, (in_f, out_f, which, name, _rel(a, b))
            if "lang" in which:
                assert torch.count_nonzero(weight.grad[~keep[1].to(device)]) == 0
            x.grad = weight.grad = bias.grad = None


def test_confined_step_is_bitwise_outside_the_union_and_needs_no_extra_memory(gpu):
    """A bf16 step on es and de (mixed batch) after a step on ru: weights and both moments outside M_es ∪ M_de keep
    their bits; the confined optimizer step allocates at most 5 % of the training state beyond the optimizer's."""
    device = gpu.device
    torch.manual_seed(0)
    model = load_model(gpu.preset, head="pretraining", layerdrop=0.0).to(device).train()
    masks = _random_masks(model, ["es", "de", "ru"])
    mm = MaskedModel(model, masks)
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = ConfinedOptimizer(torch.optim.AdamW(params, lr=1e-3, weight_decay=0.1, fused=True), mm)
    batch = {k: v.to(device) for k, v in make_pretrain_batch(model, batch_size=4, samples=32000, seed=1).items()}
    if device.type == "cuda":
        name, p = next(iter(mm.targets.items()))
        assert triton_adamw.usable(p.detach(), p.detach(), p.detach(), p.detach(), mm.union_bits(["es"])[name])

    def step(langs):
        optimizer.zero_grad(set_to_none=True)
        mm.set_language(langs)
        with torch.autocast(device.type, dtype=torch.bfloat16):
            loss = mm(**batch).loss
        loss.backward()
        return _peak(optimizer.step, device)

    step("ru")
    before = {n: (p.detach().clone(), optimizer.state[p]["exp_avg"].clone(), optimizer.state[p]["exp_avg_sq"].clone())
              for n, p in mm.targets.items()}
    extra = step(["es", "es", "de", "de"])
    union = mm.union_mask(["es", "de"])
    moved = 0
    for n, p in mm.targets.items():
        outside = ~union[n]
        now = (p.detach(), optimizer.state[p]["exp_avg"], optimizer.state[p]["exp_avg_sq"])
        for a, b in zip(now, before[n]):
            assert torch.equal(a[outside].view(torch.int32), b[outside].view(torch.int32)), n
        moved += int((now[0][~outside] != before[n][0][~outside]).sum())
    assert moved > 0
    state = sum(p.numel() * 4 * 4 for p in params)  # weights, gradients and two moments in fp32
    assert extra <= 0.05 * state, (extra / 2**20, state / 2**20)


class _Stream:
    def __init__(self, device, vocab):
        self.device, self.vocab = device, vocab

    def next(self, i):
        batch = make_ctc_batch(self.vocab, batch_size=4, samples=16000, label_len=8, seed=i)
        return Batch({k: v.to(self.device) for k, v in batch.items()}, ["es", "es", "de", "de"])

    def state_dict(self):
        return {}

    def load_state_dict(self, state):
        pass


@pytest.mark.parametrize("precision", ["bf16", "fp16"])
def test_a_finetuning_step_in_bf16_and_fp16(gpu, tmp_path, precision):
    """The training loop on the device: masked CTC steps under autocast; fp16 through the gradient scaler (its
    first steps may overflow at the initial scale and are skipped), bf16 without."""
    from lasp.train import distributed as D

    device = gpu.device
    torch.manual_seed(0)
    model = load_model("tiny" if not gpu.full else "base", head="ctc", vocab_size=32, ctc_loss_reduction="mean",
                       mask_time_prob=0.0).to(device)
    system = build_system("lasp", model, ["es", "de"], masks=_random_masks(model, ["es", "de"]))
    stage = load_recipe(None, ["finetune.optim.schedule=constant", "finetune.log_every=1", "finetune.max_steps=12",
                               f"finetune.precision={precision}", "finetune.optim.lr=1e-4"]).finetune
    result = train_loop(system=system, stream=_Stream(device, 32), stage=stage, run_dir=tmp_path, progress=False,
                        loss_fn=lambda s, b, k: (s(**b.inputs).loss, 1.0, {}), info=D.DistInfo(device=device))
    records = [r for r in read_metrics(tmp_path) if r["kind"] == "train"]
    assert math.isfinite(result.last_loss) and math.isfinite(records[-1]["grad_norm"])
    assert result.skipped_nonfinite == 0 if precision == "bf16" else result.skipped_nonfinite < 8
    copies = [c for m in system.wrapper.masked_modules() for _, c in m._copies.values()]
    assert copies and {c.dtype for c in copies} == {torch.bfloat16 if precision == "bf16" else torch.float16}


def test_triton_cast_rewriting_a_saved_copy_is_caught_in_backward(gpu):
    """Forward es, switch to de, forward de, one backward: autograd refuses the rewritten masked copy."""
    device = gpu.device
    torch.manual_seed(0)
    model = load_model("tiny", head="ctc", vocab_size=12).to(device).train()
    mm = MaskedModel(model, _random_masks(model, ["es", "de"]))
    batch = {k: v.to(device) for k, v in make_ctc_batch(12, batch_size=1, samples=4000).items()}
    with torch.autocast(device.type, dtype=torch.bfloat16):
        mm.set_language("es")
        loss_es = mm(**batch).loss
        mm.set_language("de")
        loss_de = mm(**batch).loss
    with pytest.raises(RuntimeError, match="modified by an inplace operation"):
        (loss_es + loss_de).backward()


@pytest.mark.parametrize("stage", ["pretrain", "finetune"])
def test_the_xlsr53_recipe_micro_batch_fits_an_80_gb_h100(gpu, stage):
    """One masked step at the recipe's batch (data.max_batch_seconds of 15 s utterances, its precision and
    activation checkpointing, the confined AdamW) peaks below 80 GB."""
    cfg = load_recipe(RECIPE)
    sc = getattr(cfg, stage)
    device = gpu.device
    seconds = cfg.data.max_seconds if gpu.full else 1.0
    count = int(cfg.data.max_batch_seconds // cfg.data.max_seconds) if gpu.full else 2
    torch.manual_seed(0)
    head = "pretraining" if stage == "pretrain" else "ctc"
    extra = {} if stage == "pretrain" else {"vocab_size": 64, "ctc_loss_reduction": "mean"}
    model = load_model(gpu.preset, head=head, **{**cfg.model.overrides, **extra}).to(device)
    if stage == "finetune" and sc.freeze_feature_encoder:
        model.freeze_feature_encoder()
    if sc.activation_checkpointing:
        enable_activation_checkpointing(model)
    languages = cfg.data.languages[:2]  # a batch holds one language: the others' masks cost bits only
    system = build_system("lasp", model, languages, masks=_random_masks(model, languages))
    samples = int(16000 * seconds)
    if stage == "pretrain":
        model.config.num_negatives = sc.num_negatives
        batch = make_pretrain_batch(model, batch_size=count, samples=samples, mask_prob=sc.mask_time_prob,
                                    span=sc.mask_time_length)
    else:
        batch = make_ctc_batch(64, batch_size=count, samples=samples, label_len=int(12 * seconds))
    batch = {k: v.to(device) for k, v in batch.items()}
    params = [p for _, p in system.named_trainable()]
    optimizer = system.wrap_optimizer(torch.optim.AdamW(params, lr=1e-5, fused=True))
    system.train(True)
    system.set_language(languages[0])

    def step():
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=sc.precision in ("auto", "bf16")):
            loss = system(**batch).loss
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    step()  # optimizer state exists from here on, as in training
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        torch.cuda.reset_peak_memory_stats(device)
        step()
        peak = torch.cuda.max_memory_allocated(device)
        print(f"\n{stage}: {count} x {seconds:g} s, peak {peak / 1e9:.1f} GB (budget {H100_BYTES / 1e9:.0f} GB)")
        assert peak < 0.95 * H100_BYTES  # headroom for the allocator's fragmentation and cuBLAS workspaces
    else:
        step()

"""``lasp bench``: what a language mask costs over the dense model, per GEMM and per training step.

Two groups of measurements on whatever device is present:

- ``layer``: one Linear's training GEMMs (forward + dX + dW) for the XLSR-53 shapes
  (1024→1024, 1024→4096, 4096→1024) at several token counts — dense ``F.linear``,
  ``reference`` (unpack + multiply), ``fused`` (Triton, CUDA only), single-language and
  mixed 2/4/8-language batches (the reference mixed path is the loop over languages);
  on CUDA also the 2:4 semi-structured inference GEMM against dense.
- ``step``: a whole pre-training step (forward, backward, confined AdamW) of the
  xlsr-53 preset on CUDA or the base preset on CPU, through :class:`MaskedModel`.

Timing: warm-up calls, then the median of ``repeats`` calls, each timed with CUDA
events on a GPU (perf_counter on CPU). Every row carries its ratio to the matching
dense row. ``size="ci"`` shrinks everything so the command runs in seconds on a CPU.
"""
from __future__ import annotations

import json
import statistics
import time
from dataclasses import asdict, dataclass
from typing import Callable

import torch
import torch.nn.functional as F

from lasp.bits import pack_bits
from lasp.errors import ConfigError
from lasp.kernels import fused_supported, masked_linear

XLSR_SHAPES = ((1024, 1024), (1024, 4096), (4096, 1024))
SIZES = ("auto", "ci", "full")


@dataclass
class BenchRow:
    group: str
    shape: str
    tokens: int
    variant: str
    ms: float | None = None
    ratio: float | None = None
    note: str = ""


def time_ms(fn: Callable[[], object], device: torch.device, warmup: int = 3, repeats: int = 10) -> float:
    """Median wall time of ``fn`` in milliseconds (CUDA events on a GPU)."""
    for _ in range(warmup):
        fn()
    times = []
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        for _ in range(repeats):
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            fn()
            end.record()
            torch.cuda.synchronize(device)
            times.append(start.elapsed_time(end))
    else:
        for _ in range(repeats):
            t0 = time.perf_counter()
            fn()
            times.append((time.perf_counter() - t0) * 1e3)
    return statistics.median(times)


def _fused_ok(device: torch.device) -> bool:
    # the fused kernels are a GPU path; on CPU they only run under the Triton interpreter (tests)
    return device.type == "cuda" and fused_supported(device)


def _layer_rows(device, dtype, shapes, token_counts, mixes, warmup, repeats, density, seed) -> list[BenchRow]:
    gen = torch.Generator().manual_seed(seed)
    rows: list[BenchRow] = []
    fused = _fused_ok(device)
    langs = max(mixes, default=1)
    for in_f, out_f in shapes:
        weight = torch.randn(out_f, in_f, generator=gen).to(device, dtype).requires_grad_()
        bias = torch.zeros(out_f, device=device, dtype=dtype, requires_grad=True)
        bits = pack_bits(torch.rand(max(langs, 1), out_f, in_f, generator=gen) < density).to(device)
        shape = f"{in_f}->{out_f}"
        for tokens in token_counts:
            x = torch.randn(tokens, in_f, generator=gen).to(device, dtype).requires_grad_()
            dy = torch.randn(tokens, out_f, generator=gen).to(device, dtype)

            def step(call):
                def run():
                    weight.grad = x.grad = bias.grad = None
                    call().backward(dy)
                return run

            dense = time_ms(step(lambda: F.linear(x, weight, bias)), device, warmup, repeats)
            rows.append(BenchRow("layer", shape, tokens, "dense", dense, 1.0))
            variants = [("single", {"lang": 0}, 1)]
            for k in mixes:
                examples = max(k, 8)
                while tokens % examples:
                    examples //= 2
                if examples < k:
                    continue
                row_lang = (torch.arange(examples) % k).to(device)
                variants.append((f"mixed-{k}", {"row_lang": row_lang, "examples": examples}, k))
            for label, kw, _ in variants:
                kw = dict(kw)
                examples = kw.pop("examples", None)
                xin = x.view(examples, tokens // examples, in_f) if examples else x
                dyin = dy.view(examples, tokens // examples, out_f) if examples else dy
                for mode in ("reference", "fused"):
                    name = f"{mode} {label}"
                    if mode == "fused" and not fused:
                        rows.append(BenchRow("layer", shape, tokens, name, note=f"skipped: fused kernels need "
                                             f"CUDA + Triton (device is {device.type})"))
                        continue

                    def run(mode=mode, kw=kw, xin=xin, dyin=dyin):
                        weight.grad = x.grad = bias.grad = None
                        masked_linear(xin, weight, bias, bits, mode=mode, **kw).backward(dyin)

                    ms = time_ms(run, device, warmup, repeats)
                    rows.append(BenchRow("layer", shape, tokens, name, ms, ms / dense))
            rows.extend(_semi_structured_rows(device, weight.detach(), x.detach(), shape, tokens, warmup, repeats))
    return rows


def _semi_structured_rows(device, weight, x, shape, tokens, warmup, repeats) -> list[BenchRow]:
    from lasp.kernels.semi_structured import semi_structured_supported

    if not semi_structured_supported(device):
        return [BenchRow("2:4", shape, tokens, "2:4 inference", note="skipped: needs a CUDA GPU with sparse "
                         "tensor cores")]
    from torch.sparse import to_sparse_semi_structured

    w = weight.half()
    keep = torch.zeros_like(w, dtype=torch.bool)
    keep[:, 0::4] = keep[:, 1::4] = True  # a 2:4 pattern; speed does not depend on which two are kept
    w = w * keep
    xs = x.half()
    with torch.no_grad():
        dense = time_ms(lambda: F.linear(xs, w), device, warmup, repeats)
        sparse_w = to_sparse_semi_structured(w)
        sparse = time_ms(lambda: F.linear(xs, sparse_w), device, warmup, repeats)
    return [BenchRow("2:4", shape, tokens, "dense fp16 inference", dense, 1.0),
            BenchRow("2:4", shape, tokens, "2:4 inference", sparse, sparse / dense,
                     note=f"speed-up {dense / sparse:.2f}x")]


def _pretrain_batch(model, batch_size: int, samples: int, seed: int, device) -> dict:
    from transformers.models.wav2vec2.modeling_wav2vec2 import _compute_mask_indices, _sample_negative_indices
    import numpy as np

    gen = torch.Generator().manual_seed(seed)
    frames = int(model._get_feat_extract_output_lengths(torch.tensor(samples)))
    np.random.seed(seed)
    mask = _compute_mask_indices((batch_size, frames), mask_prob=0.65, mask_length=min(10, frames - 1), min_masks=2)
    negatives = _sample_negative_indices((batch_size, frames), model.config.num_negatives, mask_time_indices=mask)
    return {"input_values": torch.randn(batch_size, samples, generator=gen).to(device),
            "mask_time_indices": torch.tensor(mask, dtype=torch.bool, device=device),
            "sampled_negative_indices": torch.tensor(negatives, dtype=torch.long, device=device)}


def _step_rows(device, preset, batch_size, samples, mixes, warmup, repeats, density, seed) -> list[BenchRow]:
    from lasp.confine import ConfinedOptimizer
    from lasp.masked import MaskedModel
    from lasp.masks import LanguageMasks
    from lasp.models import load_model
    from lasp.targets import select_targets

    torch.manual_seed(seed)
    model = load_model(preset, head="pretraining").to(device).train()
    gen = torch.Generator().manual_seed(seed)
    n_langs = max([*mixes, 1])
    langs = [f"l{i}" for i in range(n_langs)]
    masks = LanguageMasks.from_dense({lang: {name: torch.rand(p.shape, generator=gen) < density
                                             for name, p in select_targets(model).items()} for lang in langs},
                                     base_model=preset)
    batch = _pretrain_batch(model, batch_size, samples, seed, device)
    amp = device.type == "cuda"
    tokens = int(batch["mask_time_indices"].numel())
    rows: list[BenchRow] = []
    variants = [("dense", None, "reference")]
    for mode in ("reference", "fused"):
        variants.append((f"{mode} single", langs[0], mode))
        for k in mixes:
            if k <= batch_size:
                variants.append((f"{mode} mixed-{k}", [langs[i % k] for i in range(batch_size)], mode))
    dense_ms = None
    for label, active, mode in variants:
        if mode == "fused" and not _fused_ok(device):
            rows.append(BenchRow("step", preset, tokens, label, note=f"skipped: fused kernels need CUDA + Triton "
                                 f"(device is {device.type})"))
            continue
        mm = MaskedModel(model, masks, mode=mode)
        opt = ConfinedOptimizer(torch.optim.AdamW(model.parameters(), lr=1e-6), mm)
        mm.set_language(active)

        def run():
            opt.zero_grad()
            with torch.autocast(device.type, dtype=torch.bfloat16, enabled=amp):
                loss = mm(**batch).loss
            loss.backward()
            opt.step()

        ms = time_ms(run, device, warmup, repeats)
        mm.unload()
        if dense_ms is None:
            dense_ms = ms
        rows.append(BenchRow("step", preset, tokens, label, ms, ms / dense_ms))
    return rows


def run_bench(size: str = "auto", device: str | torch.device | None = None, warmup: int | None = None,
              repeats: int | None = None, layers: bool = True, step: bool = True, density: float = 0.5,
              seed: int = 0) -> list[BenchRow]:
    """Run the benchmark; ``size`` "ci" is seconds on CPU, "full" is the XLSR-53 sizes ("auto": full on CUDA)."""
    if size not in SIZES:
        raise ConfigError(f"unknown bench size {size!r}; choose one of {', '.join(SIZES)}")
    device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ConfigError("--device cuda requested but no CUDA GPU is visible")
    if size == "auto":
        size = "full" if device.type == "cuda" else "ci"
    ci = size == "ci"
    warmup = warmup if warmup is not None else (1 if ci else 5)
    repeats = repeats if repeats is not None else (3 if ci else 20)
    dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
    mixes = (2, 4, 8)
    rows: list[BenchRow] = []
    if layers:
        shapes = ((64, 64), (64, 256), (256, 64)) if ci else XLSR_SHAPES
        tokens = (256,) if ci else (2048, 8192, 16384)
        rows += _layer_rows(device, dtype, shapes, tokens, mixes, warmup, repeats, density, seed)
    if step:
        if ci:
            preset, batch_size, samples = "tiny", 8, 4000
        else:
            preset = "xlsr-53" if device.type == "cuda" else "base"
            batch_size, samples = (8, 16000 * 4) if device.type == "cuda" else (8, 16000)
        rows += _step_rows(device, preset, batch_size, samples, mixes, warmup, repeats, density, seed)
    return rows


def format_table(rows: list[BenchRow]) -> str:
    header = f"{'group':<6} {'shape':<12} {'tokens':>7} {'variant':<22} {'ms':>10} {'x dense':>8}  note"
    lines = [header, "-" * len(header)]
    for r in rows:
        ms = f"{r.ms:10.3f}" if r.ms is not None else f"{'-':>10}"
        ratio = f"{r.ratio:8.3f}" if r.ratio is not None else f"{'-':>8}"
        lines.append(f"{r.group:<6} {r.shape:<12} {r.tokens:>7} {r.variant:<22} {ms} {ratio}  {r.note}".rstrip())
    return "\n".join(lines)


def write_json(rows: list[BenchRow], path: str, device: torch.device | str | None = None) -> None:
    device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu"
    data = {"device": name, "torch": torch.__version__, "rows": [asdict(r) for r in rows]}
    with open(path, "w") as fh:
        json.dump(data, fh, indent=1)

"""Triton kernels for ``y = x (W ⊙ M_lang)ᵀ + b`` that read bit-packed masks in registers.

Three kernels, one per GEMM of a Linear layer's training step:

- forward ``Y = X (W ⊙ M)ᵀ``: each program owns a ``BM × BN`` tile of ``Y``; the W tile
  it loads is multiplied by the unpacked bit tile before ``tl.dot`` — ``W ⊙ M`` never
  exists in memory;
- ``dX = dY (W ⊙ M)``: the same, tiled over ``dX``;
- ``dW = Σ_seg M_seg ⊙ (dY_segᵀ X_seg)``: each program owns a ``BN × BK`` tile of ``dW``,
  accumulates ``dY_segᵀ X_seg`` of one language segment in fp32 registers, applies that
  language's bits once per segment and adds it to the output tile.

Mixed-language batches (the way grouped GEMM / multi-LoRA kernels serve many adapters)
are described by a :class:`SegmentPlan`: rows are grouped by language through a
permutation that the kernels apply while loading (no copy of ``X``/``dY`` is made),
and every forward/dX program handles one row tile of one segment. The plan is built
on the device without a host synchronisation.

Import this module only through :mod:`lasp.kernels` (it imports Triton). Under
``TRITON_INTERPRET=1`` the kernels run on CPU tensors (tests); there ``tl.dot`` on
bf16/fp16 is unreliable, so operands are cast to fp32 first (``DOT_FP32``).
"""
from __future__ import annotations

import os
from dataclasses import dataclass

import torch
import triton
import triton.language as tl

INTERPRET = os.environ.get("TRITON_INTERPRET", "0") not in ("", "0")


@dataclass(frozen=True)
class Blocks:
    """Tile sizes of the three kernels (rows × out-features × in-features) and launch shape."""

    bm: int
    bn: int
    bk: int
    warps: int
    stages: int


def blocks_for(dtype: torch.dtype) -> Blocks:
    """Tile sizes by operand dtype: 128×128×64 for 16-bit (tensor-core friendly), smaller for fp32."""
    if INTERPRET:
        return Blocks(16, 16, 16, 1, 1)
    if dtype in (torch.bfloat16, torch.float16):
        return Blocks(128, 128, 64, 8, 3)
    return Blocks(64, 64, 32, 4, 3)


@dataclass(frozen=True)
class SegmentPlan:
    """Rows of a mixed-language batch grouped by language.

    ``perm[i]`` is the original row of sorted row ``i``; segment ``s`` (language ``s``)
    covers sorted rows ``seg_start[s]:seg_end[s]``; forward/dX tile ``t`` covers sorted
    rows ``tile_start[t]:tile_end[t]`` of language ``tile_lang[t]`` (empty tiles exit
    at once). All int32 tensors on the batch's device.
    """

    perm: torch.Tensor
    seg_start: torch.Tensor
    seg_end: torch.Tensor
    tile_start: torch.Tensor
    tile_end: torch.Tensor
    tile_lang: torch.Tensor
    block_m: int


def build_plan(row_lang: torch.Tensor, rows_per_example: int, num_langs: int, block_m: int) -> SegmentPlan:
    """Plan for ``x`` flattened to ``[B * rows_per_example, in]`` whose example ``i`` has language ``row_lang[i]``.

    Uses only device ops (stable sort, scatter-add, cumsum, searchsorted), so building
    it does not wait for the GPU; the number of tiles is bounded on the host by
    ``ceil(M / BM) + min(L, B)``.
    """
    device = row_lang.device
    row_lang = row_lang.to(torch.int64)
    batch = row_lang.shape[0]
    rows = batch * rows_per_example
    order = torch.sort(row_lang, stable=True).indices
    perm = (order[:, None] * rows_per_example + torch.arange(rows_per_example, device=device)).reshape(-1)
    counts = torch.zeros(num_langs, dtype=torch.int64, device=device)
    counts.scatter_add_(0, row_lang, torch.full_like(row_lang, rows_per_example))
    seg_end = torch.cumsum(counts, 0)
    seg_start = seg_end - counts
    tiles_per = (counts + block_m - 1) // block_m
    tile_cum = torch.cumsum(tiles_per, 0)
    first_tile = tile_cum - tiles_per
    max_tiles = (rows + block_m - 1) // block_m + min(num_langs, batch)
    t = torch.arange(max_tiles, device=device)
    seg = torch.searchsorted(tile_cum, t, right=True)
    seg_c = seg.clamp(max=num_langs - 1)
    tile_start = seg_start[seg_c] + (t - first_tile[seg_c]) * block_m
    tile_end = torch.where(seg < num_langs, torch.minimum(seg_end[seg_c], tile_start + block_m), tile_start)
    i32 = torch.int32
    return SegmentPlan(perm.to(i32), seg_start.to(i32), seg_end.to(i32), tile_start.to(i32), tile_end.to(i32),
                       seg_c.to(i32), block_m)


@triton.jit
def _keep_bits(bits_ptr, rn, rk, KB, ok):
    """Unpack the mask bits of a ``[len(rn), len(rk)]`` weight tile: bit ``k & 7`` of byte ``k >> 3`` of row ``n``."""
    byte = tl.load(bits_ptr + rn[:, None] * KB + (rk[None, :] >> 3), mask=ok, other=0)
    return ((byte >> (rk[None, :] & 7).to(tl.uint8)) & 1) != 0


@triton.jit
def _rows_of_tile(pid_m, M, lang, perm_ptr, tile_start_ptr, tile_end_ptr, tile_lang_ptr,
                  BM: tl.constexpr, SEGMENTED: tl.constexpr):
    if SEGMENTED:
        start = tl.load(tile_start_ptr + pid_m)
        end = tl.load(tile_end_ptr + pid_m)
        lg = tl.load(tile_lang_ptr + pid_m)
    else:
        start = pid_m * BM
        end = M
        lg = lang
    rm = start + tl.arange(0, BM)
    row_ok = rm < end
    if SEGMENTED:
        rows = tl.load(perm_ptr + rm, mask=row_ok, other=0)
    else:
        rows = rm
    return start, end, lg, rows.to(tl.int64), row_ok


@triton.jit(do_not_specialize=["lang"])
def _fwd_kernel(x_ptr, w_ptr, b_ptr, bits_ptr, y_ptr,
                perm_ptr, tile_start_ptr, tile_end_ptr, tile_lang_ptr,
                M, N, K, KB, lang,
                sxm, sxk, swn, swk, sym, syn,
                HAS_BIAS: tl.constexpr, SEGMENTED: tl.constexpr, DOT_FP32: tl.constexpr,
                PRECISION: tl.constexpr, BM: tl.constexpr, BN: tl.constexpr, BK: tl.constexpr):
    pid_m = tl.program_id(0)
    pid_n = tl.program_id(1)
    start, end, lg, rows, row_ok = _rows_of_tile(pid_m, M, lang, perm_ptr, tile_start_ptr, tile_end_ptr,
                                                 tile_lang_ptr, BM, SEGMENTED)
    if start >= end:
        return
    rn = pid_n * BN + tl.arange(0, BN)
    n_ok = rn < N
    lang_bits = bits_ptr + tl.cast(lg, tl.int64) * N * KB
    acc = tl.zeros([BM, BN], dtype=tl.float32)
    for k0 in range(0, K, BK):
        rk = k0 + tl.arange(0, BK)
        k_ok = rk < K
        x = tl.load(x_ptr + rows[:, None] * sxm + rk[None, :] * sxk, mask=row_ok[:, None] & k_ok[None, :], other=0.0)
        w_ok = n_ok[:, None] & k_ok[None, :]
        w = tl.load(w_ptr + rn[:, None] * swn + rk[None, :] * swk, mask=w_ok, other=0.0)
        w = tl.where(_keep_bits(lang_bits, rn, rk, KB, w_ok), w, tl.zeros_like(w))
        if DOT_FP32:
            x = x.to(tl.float32)
            w = w.to(tl.float32)
        acc = tl.dot(x, tl.trans(w), acc, input_precision=PRECISION)
    if HAS_BIAS:
        acc += tl.load(b_ptr + rn, mask=n_ok, other=0.0).to(tl.float32)[None, :]
    tl.store(y_ptr + rows[:, None] * sym + rn[None, :] * syn, acc.to(y_ptr.dtype.element_ty),
             mask=row_ok[:, None] & n_ok[None, :])


@triton.jit(do_not_specialize=["lang"])
def _dx_kernel(dy_ptr, w_ptr, bits_ptr, dx_ptr,
               perm_ptr, tile_start_ptr, tile_end_ptr, tile_lang_ptr,
               M, N, K, KB, lang,
               sdm, sdn, swn, swk, sxm, sxk,
               SEGMENTED: tl.constexpr, DOT_FP32: tl.constexpr, PRECISION: tl.constexpr,
               BM: tl.constexpr, BN: tl.constexpr, BK: tl.constexpr):
    pid_m = tl.program_id(0)
    pid_k = tl.program_id(1)
    start, end, lg, rows, row_ok = _rows_of_tile(pid_m, M, lang, perm_ptr, tile_start_ptr, tile_end_ptr,
                                                 tile_lang_ptr, BM, SEGMENTED)
    if start >= end:
        return
    rk = pid_k * BK + tl.arange(0, BK)
    k_ok = rk < K
    lang_bits = bits_ptr + tl.cast(lg, tl.int64) * N * KB
    acc = tl.zeros([BM, BK], dtype=tl.float32)
    for n0 in range(0, N, BN):
        rn = n0 + tl.arange(0, BN)
        n_ok = rn < N
        dy = tl.load(dy_ptr + rows[:, None] * sdm + rn[None, :] * sdn, mask=row_ok[:, None] & n_ok[None, :],
                     other=0.0)
        w_ok = n_ok[:, None] & k_ok[None, :]
        w = tl.load(w_ptr + rn[:, None] * swn + rk[None, :] * swk, mask=w_ok, other=0.0)
        w = tl.where(_keep_bits(lang_bits, rn, rk, KB, w_ok), w, tl.zeros_like(w))
        if DOT_FP32:
            dy = dy.to(tl.float32)
            w = w.to(tl.float32)
        acc = tl.dot(dy, w, acc, input_precision=PRECISION)
    tl.store(dx_ptr + rows[:, None] * sxm + rk[None, :] * sxk, acc.to(dx_ptr.dtype.element_ty),
             mask=row_ok[:, None] & k_ok[None, :])


@triton.jit(do_not_specialize=["lang", "num_segs", "split"])
def _dw_kernel(dy_ptr, x_ptr, bits_ptr, dw_ptr,
               perm_ptr, seg_start_ptr, seg_end_ptr,
               M, N, K, KB, lang, num_segs, split,
               sdm, sdn, sxm, sxk, sws, swn, swk,
               SEGMENTED: tl.constexpr, DOT_FP32: tl.constexpr, PRECISION: tl.constexpr,
               BM: tl.constexpr, BN: tl.constexpr, BK: tl.constexpr):
    pid_n = tl.program_id(0)
    pid_k = tl.program_id(1)
    pid_s = tl.program_id(2)
    rn = pid_n * BN + tl.arange(0, BN)
    rk = pid_k * BK + tl.arange(0, BK)
    n_ok = rn < N
    k_ok = rk < K
    w_ok = n_ok[:, None] & k_ok[None, :]
    acc = tl.zeros([BN, BK], dtype=tl.float32)
    for s in range(0, num_segs):
        if SEGMENTED:
            start = tl.load(seg_start_ptr + s)
            end = tl.load(seg_end_ptr + s)
            lg = s
        else:
            start = 0
            end = M
            lg = lang
        # split-M: program pid_s takes one BM-aligned chunk of every segment, so that
        # short-and-wide dW shapes still fill the GPU; partial sums are added by the caller.
        chunk = tl.cdiv(tl.cdiv(end - start, split), BM) * BM
        lo = start + pid_s * chunk
        hi = tl.minimum(end, lo + chunk)
        part = tl.zeros([BN, BK], dtype=tl.float32)
        for m0 in range(lo, hi, BM):
            rm = m0 + tl.arange(0, BM)
            row_ok = rm < hi
            if SEGMENTED:
                rows = tl.load(perm_ptr + rm, mask=row_ok, other=0).to(tl.int64)
            else:
                rows = rm.to(tl.int64)
            dyt = tl.load(dy_ptr + rows[None, :] * sdm + rn[:, None] * sdn, mask=row_ok[None, :] & n_ok[:, None],
                          other=0.0)
            x = tl.load(x_ptr + rows[:, None] * sxm + rk[None, :] * sxk, mask=row_ok[:, None] & k_ok[None, :],
                        other=0.0)
            if DOT_FP32:
                dyt = dyt.to(tl.float32)
                x = x.to(tl.float32)
            part = tl.dot(dyt, x, part, input_precision=PRECISION)
        if hi > lo:
            lang_bits = bits_ptr + tl.cast(lg, tl.int64) * N * KB
            acc += tl.where(_keep_bits(lang_bits, rn, rk, KB, w_ok), part, 0.0)
    tl.store(dw_ptr + pid_s * sws + rn[:, None] * swn + rk[None, :] * swk, acc.to(dw_ptr.dtype.element_ty),
             mask=w_ok)


def _precision(dtype: torch.dtype) -> str:
    if INTERPRET or dtype != torch.float32:
        return "ieee"
    return "tf32" if torch.backends.cuda.matmul.allow_tf32 else "ieee"


def _plan_args(plan: SegmentPlan | None, x: torch.Tensor):
    if plan is None:
        return x, x, x, x  # never read: SEGMENTED=False
    return plan.perm, plan.tile_start, plan.tile_end, plan.tile_lang


def _num_tiles(plan: SegmentPlan | None, rows: int, bm: int) -> int:
    return plan.tile_start.shape[0] if plan is not None else triton.cdiv(rows, bm)


def forward(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None, bits: torch.Tensor,
            lang: int, plan: SegmentPlan | None) -> torch.Tensor:
    """``Y[M, N]`` for ``x[M, K]`` (2-D), ``weight[N, K]``, ``bits[L, N, ceil(K/8)]``."""
    M, K = x.shape
    N = weight.shape[0]
    cfg = blocks_for(x.dtype)
    y = torch.empty((M, N), dtype=x.dtype, device=x.device)
    if M == 0:
        return y
    grid = (_num_tiles(plan, M, cfg.bm), triton.cdiv(N, cfg.bn))
    _fwd_kernel[grid](
        x, weight, bias if bias is not None else weight, bits, y, *_plan_args(plan, x),
        M, N, K, bits.shape[-1], lang,
        x.stride(0), x.stride(1), weight.stride(0), weight.stride(1), y.stride(0), y.stride(1),
        HAS_BIAS=bias is not None, SEGMENTED=plan is not None, DOT_FP32=INTERPRET, PRECISION=_precision(x.dtype),
        BM=cfg.bm, BN=cfg.bn, BK=cfg.bk, num_warps=cfg.warps, num_stages=cfg.stages)
    return y


def grad_input(dy: torch.Tensor, weight: torch.Tensor, bits: torch.Tensor, lang: int,
               plan: SegmentPlan | None) -> torch.Tensor:
    """``dX[M, K] = dY (W ⊙ M_row)`` with each row's own language."""
    M, N = dy.shape
    K = weight.shape[1]
    cfg = blocks_for(dy.dtype)
    dx = torch.empty((M, K), dtype=dy.dtype, device=dy.device)
    if M == 0:
        return dx
    # dX tiles the output over K (cfg.bn wide) and reduces over N (cfg.bk deep).
    grid = (_num_tiles(plan, M, cfg.bm), triton.cdiv(K, cfg.bn))
    _dx_kernel[grid](
        dy, weight, bits, dx, *_plan_args(plan, dy),
        M, N, K, bits.shape[-1], lang,
        dy.stride(0), dy.stride(1), weight.stride(0), weight.stride(1), dx.stride(0), dx.stride(1),
        SEGMENTED=plan is not None, DOT_FP32=INTERPRET, PRECISION=_precision(dy.dtype),
        BM=cfg.bm, BN=cfg.bk, BK=cfg.bn, num_warps=cfg.warps, num_stages=cfg.stages)
    return dx


def _split_for(device: torch.device, tiles: int, rows: int, bm: int) -> int:
    """How many row chunks dW is split into: enough programs for ~2 waves, never chunks under 4 tiles."""
    if INTERPRET or device.type != "cuda":
        return 1 if rows < 4 * bm else 2  # the interpreter still exercises the split path on bigger tests
    sms = torch.cuda.get_device_properties(device).multi_processor_count
    want = max(1, (2 * sms + tiles - 1) // tiles)
    return max(1, min(want, 8, rows // (4 * bm)))


def grad_weight(dy: torch.Tensor, x: torch.Tensor, bits: torch.Tensor, lang: int, plan: SegmentPlan | None,
                weight_dtype: torch.dtype) -> torch.Tensor:
    """``dW[N, K] = Σ_seg M_seg ⊙ (dY_segᵀ X_seg)``, in ``weight_dtype``."""
    M, N = dy.shape
    K = x.shape[1]
    cfg = blocks_for(x.dtype)
    # dW tiles the output as (N: cfg.bm, K: cfg.bn) and reduces over rows cfg.bk deep.
    bn, bk, bm = cfg.bm, cfg.bn, cfg.bk
    tiles = triton.cdiv(N, bn) * triton.cdiv(K, bk)
    split = _split_for(x.device, tiles, M, bm) if M > 0 else 1
    if split == 1:
        out = torch.empty((1, N, K), dtype=weight_dtype, device=x.device)
    else:
        out = torch.empty((split, N, K), dtype=torch.float32, device=x.device)
    num_segs = plan.seg_start.shape[0] if plan is not None else 1
    perm = plan.perm if plan is not None else x
    seg_start = plan.seg_start if plan is not None else x
    seg_end = plan.seg_end if plan is not None else x
    grid = (triton.cdiv(N, bn), triton.cdiv(K, bk), split)
    _dw_kernel[grid](
        dy, x, bits, out, perm, seg_start, seg_end,
        M, N, K, bits.shape[-1], lang, num_segs, split,
        dy.stride(0), dy.stride(1), x.stride(0), x.stride(1), out.stride(0), out.stride(1), out.stride(2),
        SEGMENTED=plan is not None, DOT_FP32=INTERPRET, PRECISION=_precision(x.dtype),
        BM=bm, BN=bn, BK=bk, num_warps=cfg.warps, num_stages=cfg.stages)
    if split == 1:
        return out[0]
    return out.sum(0).to(weight_dtype)

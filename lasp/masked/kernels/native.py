"""Fused CPU loops that read bit-packed masks directly: masked copy, in-place gradient mask, masked AdamW.

Why native code on CPU: every masked operation is memory-bound, and with torch ops each one costs several
passes over the weights (unpack the bits, convert, multiply) plus temporaries. These loops read each weight
once and the mask as bits (1/32 of an fp32 weight's bytes), so the masked cast costs one copy and the
confined AdamW costs what torch's fused CPU AdamW costs. The C source is compiled once per machine with the
system C compiler (``cc``) into ``$LASP_CACHE`` (default ``~/.cache/lasp``) and loaded with ctypes.

When no compiler is present, :func:`available` is False, :func:`status` says why, and callers use the
equivalent torch-op path (same results, slower); ``MaskedModel.summary()`` and ``lasp bench`` report which.

Layout of the bits: :mod:`lasp.masks.bits` (row-major, ``ceil(cols / 8)`` bytes per row, LSB first).
Only contiguous fp32 CPU tensors go through here.
"""
from __future__ import annotations

import ctypes
import hashlib
import os
import platform
import shutil
import subprocess
import tempfile
import threading
from concurrent.futures import ThreadPoolExecutor

import torch

_SOURCE = r"""
#include <stdint.h>
#include <string.h>
#include <math.h>

/* LANES[byte][t]: all ones when bit t of byte is set. Expanding a mask byte through this 8 KiB table turns
   every loop below into straight 8-wide vector code (no per-element shifts or branches). */
static uint32_t LANES[256][8];
__attribute__((constructor)) static void lasp_init_lanes(void) {
    for (int b = 0; b < 256; b++) for (int t = 0; t < 8; t++) LANES[b][t] = ((b >> t) & 1) ? 0xffffffffu : 0u;
}

static inline uint32_t keep_at(const uint8_t* bits, int64_t j) { return LANES[bits[j >> 3]][j & 7]; }
static inline float fsel(uint32_t keep, float a, float b) {   /* keep ? a : b, bit for bit */
    uint32_t ua, ub; memcpy(&ua, &a, 4); memcpy(&ub, &b, 4);
    uint32_t r = (ua & keep) | (ub & ~keep); float f; memcpy(&f, &r, 4); return f;
}

/* out = bit ? w : 0 (bit patterns, so exact); one row of bits per weight row */
void lasp_masked_copy_f32(const uint32_t* w, const uint8_t* bits, uint32_t* out,
                          int64_t r0, int64_t r1, int64_t cols) {
    const int64_t nb = (cols + 7) / 8;
    for (int64_t r = r0; r < r1; r++) {
        const uint32_t* wr = w + r * cols; uint32_t* o = out + r * cols; const uint8_t* b = bits + r * nb;
        int64_t j = 0;
        for (; j + 8 <= cols; j += 8) {
            const uint32_t* keep = LANES[b[j >> 3]];
            for (int t = 0; t < 8; t++) o[j + t] = wr[j + t] & keep[t];
        }
        for (; j < cols; j++) o[j] = wr[j] & keep_at(b, j);
    }
}

/* g = bit ? g : 0 in place */
void lasp_mask_f32(uint32_t* g, const uint8_t* bits, int64_t r0, int64_t r1, int64_t cols) {
    const int64_t nb = (cols + 7) / 8;
    for (int64_t r = r0; r < r1; r++) {
        uint32_t* gr = g + r * cols; const uint8_t* b = bits + r * nb;
        int64_t j = 0;
        for (; j + 8 <= cols; j += 8) {
            const uint32_t* keep = LANES[b[j >> 3]];
            for (int t = 0; t < 8; t++) gr[j + t] &= keep[t];
        }
        for (; j < cols; j++) gr[j] &= keep_at(b, j);
    }
}

/* AdamW (torch's formula, decoupled weight decay) on the entries whose bit is set; every other entry of
   p, m and v keeps its exact bits. Outside-union entries are computed and discarded (branch-free), so the
   loop vectorizes; one pass over p, g, m, v, like torch's fused CPU AdamW. */
void lasp_masked_adamw_f32(float* restrict p, const float* restrict g, float* restrict m, float* restrict v,
                           const uint8_t* restrict bits,
                           int64_t r0, int64_t r1, int64_t cols, double lr, double beta1, double beta2, double eps,
                           double wd, double bc1, double bc2_sqrt, int maximize) {
    const int64_t nb = (cols + 7) / 8;
    const float decay = (float)(1.0 - lr * wd), b2 = (float)beta2, omb1 = (float)(1.0 - beta1),
                omb2 = (float)(1.0 - beta2), step = (float)(lr / bc1), inv_c2 = (float)(1.0 / bc2_sqrt), e = (float)eps,
                sign = maximize ? -1.0f : 1.0f;
    for (int64_t r = r0; r < r1; r++) {
        float* restrict pr = p + r * cols; const float* restrict gr = g + r * cols;
        float* restrict mr = m + r * cols; float* restrict vr = v + r * cols;
        const uint8_t* b = bits + r * nb;
        int64_t j = 0;
        for (; j + 8 <= cols; j += 8) {
            const uint32_t* keep = LANES[b[j >> 3]];
            for (int t = 0; t < 8; t++) {
                const float gj = sign * gr[j + t], m0 = mr[j + t], v0 = vr[j + t], p0 = pr[j + t];
                const float mj = m0 + omb1 * (gj - m0);
                const float vj = b2 * v0 + omb2 * gj * gj;
                const float pj = p0 * decay - step * (mj / (sqrtf(vj) * inv_c2 + e));
                mr[j + t] = fsel(keep[t], mj, m0);
                vr[j + t] = fsel(keep[t], vj, v0);
                pr[j + t] = fsel(keep[t], pj, p0);
            }
        }
        for (; j < cols; j++) {
            const uint32_t keep = keep_at(b, j);
            const float gj = sign * gr[j], m0 = mr[j], v0 = vr[j], p0 = pr[j];
            const float mj = m0 + omb1 * (gj - m0);
            const float vj = b2 * v0 + omb2 * gj * gj;
            const float pj = p0 * decay - step * (mj / (sqrtf(vj) * inv_c2 + e));
            mr[j] = fsel(keep, mj, m0);
            vr[j] = fsel(keep, vj, v0);
            pr[j] = fsel(keep, pj, p0);
        }
    }
}
"""

# -fno-math-errno lets sqrtf vectorize; -march=native: the library is keyed on this CPU (see _machine_key).
# No OpenMP: a second OpenMP runtime next to torch's spins its idle threads against torch's own pool (on a
# shared 2-core machine that made whole steps 40 % slower); rows are split over a small thread pool instead.
_FLAGS = ("-O3", "-march=native", "-fno-math-errno", "-fPIC", "-shared")
_LOCK = threading.Lock()
_STATE: dict[str, object] = {}


def _cache_dir() -> str:
    return os.environ.get("LASP_CACHE") or os.path.join(os.path.expanduser("~"), ".cache", "lasp")


def _machine_key() -> str:
    # -march=native code is only valid on the CPU it was built for: key the library on the CPU's flags.
    flags = ""
    try:
        with open("/proc/cpuinfo") as fh:
            for line in fh:
                if line.startswith(("flags", "model name")):
                    flags += line
                if line.startswith("flags"):
                    break
    except OSError:
        flags = platform.processor()
    return hashlib.sha256((_SOURCE + " ".join(_FLAGS) + flags + platform.machine()).encode()).hexdigest()[:16]


def _build() -> ctypes.CDLL:
    compiler = os.environ.get("CC") or shutil.which("cc") or shutil.which("gcc")
    if not compiler:
        raise RuntimeError("no C compiler (cc/gcc) on PATH")
    directory = os.path.join(_cache_dir(), "native")
    os.makedirs(directory, exist_ok=True)
    lib = os.path.join(directory, f"lasp_masked_{_machine_key()}.so")
    if not os.path.isfile(lib):
        with tempfile.TemporaryDirectory(dir=directory) as tmp:
            src = os.path.join(tmp, "lasp_masked.c")
            with open(src, "w") as fh:
                fh.write(_SOURCE)
            out = os.path.join(tmp, "lib.so")
            cmd = [compiler, *_FLAGS, src, "-o", out, "-lm"]
            done = subprocess.run(cmd, capture_output=True, text=True)
            if done.returncode != 0:
                raise RuntimeError(f"compiling the masked CPU kernels failed: {done.stderr.strip()[:300]}")
            os.replace(out, lib)  # atomic: a concurrent build of the same source is harmless
    dll = ctypes.CDLL(lib)
    i64, f64, vp, ci = ctypes.c_int64, ctypes.c_double, ctypes.c_void_p, ctypes.c_int
    dll.lasp_masked_copy_f32.argtypes = [vp, vp, vp, i64, i64, i64]
    dll.lasp_mask_f32.argtypes = [vp, vp, i64, i64, i64]
    dll.lasp_masked_adamw_f32.argtypes = [vp, vp, vp, vp, vp, i64, i64, i64, f64, f64, f64, f64, f64, f64, f64, ci]
    return dll


def _lib() -> ctypes.CDLL | None:
    if "lib" not in _STATE:
        with _LOCK:
            if "lib" not in _STATE:
                if os.environ.get("LASP_NATIVE", "1") == "0":
                    _STATE.update(lib=None, why="disabled by LASP_NATIVE=0")
                else:
                    try:
                        _STATE.update(lib=_build(), why="compiled C loops")
                    except (RuntimeError, OSError) as err:
                        _STATE.update(lib=None, why=str(err))
    return _STATE["lib"]  # type: ignore[return-value]


def available() -> bool:
    return _lib() is not None


def status() -> str:
    """One line: whether the native CPU loops are in use, and why not if they are not."""
    _lib()
    return ("native CPU loops: " + str(_STATE["why"])) if _STATE["lib"] is not None else \
        f"native CPU loops unavailable ({_STATE['why']}); using torch ops"


def usable(*tensors: torch.Tensor) -> bool:
    """True when every tensor is a contiguous fp32 (or uint8 bits) CPU tensor and the library loaded."""
    for t in tensors:
        if t.device.type != "cpu" or not t.is_contiguous() or t.dtype not in (torch.float32, torch.uint8):
            return False
    return available()


def _rows_cols(t: torch.Tensor) -> tuple[int, int]:
    cols = t.shape[-1] if t.dim() else 1
    return t.numel() // max(cols, 1), cols


def _ptr(t: torch.Tensor) -> int:
    return t.data_ptr()


def _bump(*tensors: torch.Tensor) -> None:
    # writes through raw pointers are invisible to autograd's version counters; tell it, so a graph that
    # saved one of these tensors refuses to use stale values
    for t in tensors:
        torch.autograd.graph.increment_version(t)


_POOL: dict[int, ThreadPoolExecutor] = {}
_MIN_SPLIT = 1 << 18  # elements below which one thread does the whole tensor


def _over_rows(fn, rows: int, cols: int, *args) -> None:
    """``fn(*args, r0, r1, cols, ...)`` over row blocks, split across torch's thread count.

    ctypes releases the GIL for the call, so the blocks run in parallel; idle pool threads sleep on a queue.
    """
    threads = min(torch.get_num_threads(), rows)
    if threads <= 1 or rows * cols < _MIN_SPLIT:
        fn(*args[0], 0, rows, cols, *args[1])
        return
    pool = _POOL.get(threads)
    if pool is None:
        pool = _POOL[threads] = ThreadPoolExecutor(threads - 1, thread_name_prefix="lasp-native")
    bounds = [rows * i // threads for i in range(threads + 1)]
    futures = [pool.submit(fn, *args[0], bounds[i], bounds[i + 1], cols, *args[1]) for i in range(1, threads)]
    fn(*args[0], bounds[0], bounds[1], cols, *args[1])
    for future in futures:
        future.result()


def masked_copy(weight: torch.Tensor, bits: torch.Tensor, out: torch.Tensor) -> torch.Tensor:
    rows, cols = _rows_cols(weight)
    _over_rows(_lib().lasp_masked_copy_f32, rows, cols, (_ptr(weight), _ptr(bits), _ptr(out)), ())
    _bump(out)
    return out


def mask_(grad: torch.Tensor, bits: torch.Tensor) -> torch.Tensor:
    rows, cols = _rows_cols(grad)
    _over_rows(_lib().lasp_mask_f32, rows, cols, (_ptr(grad), _ptr(bits)), ())
    _bump(grad)
    return grad


def masked_adamw_(param: torch.Tensor, grad: torch.Tensor, exp_avg: torch.Tensor, exp_avg_sq: torch.Tensor,
                  bits: torch.Tensor, *, lr: float, beta1: float, beta2: float, eps: float, weight_decay: float,
                  bias_correction1: float, bias_correction2_sqrt: float, maximize: bool) -> None:
    rows, cols = _rows_cols(param)
    _over_rows(_lib().lasp_masked_adamw_f32, rows, cols,
               (_ptr(param), _ptr(grad), _ptr(exp_avg), _ptr(exp_avg_sq), _ptr(bits)),
               (lr, beta1, beta2, eps, weight_decay, bias_correction1, bias_correction2_sqrt, int(maximize)))
    _bump(param, exp_avg, exp_avg_sq)

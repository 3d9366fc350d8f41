"""`lasp bench`: dense vs masked training steps (and GEMMs on a GPU) with one PASS/FAIL line per goal."""
from __future__ import annotations

import argparse


def bench_command(args: argparse.Namespace) -> int:
    from lasp.bench.steps import format_table, run_bench, write_json

    modes = tuple(m.strip() for m in args.modes.split(",") if m.strip())
    result = run_bench(size=args.size, device=args.device, warmup=args.warmup, repeats=args.repeats,
                       layers=not args.no_layers, step=not args.no_step, density=args.density, seed=args.seed,
                       modes=modes, threads=args.threads)
    print(format_table(result))
    if args.json:
        write_json(result, args.json, device=args.device)
        print(f"wrote {args.json}")
    return 0


def register(subparsers) -> None:
    parser = subparsers.add_parser(
        "bench", help="time dense vs masked training steps (single and mixed languages); PASS/FAIL per goal",
        description="Interleaved whole training steps, dense vs masked (medians with IQR, forward+backward and "
                    "optimizer separately, peak memory on CUDA), per-GEMM TFLOP/s on CUDA, and one PASS/FAIL line "
                    "per speed goal (GPU goals print as pending without a CUDA device).")
    parser.add_argument("--size", choices=("auto", "ci", "full"), default="auto",
                        help="ci: tiny preset (seconds on CPU); full: xlsr-53 at 2k/8k/16k tokens on CUDA, base "
                             "preset (batch 8 x 0.5 s, fp32) on CPU; auto: full on CUDA, ci on CPU")
    parser.add_argument("--device", default=None, help="cuda or cpu (default: cuda when present)")
    parser.add_argument("--warmup", type=int, default=None, help="untimed steps of each variant before timing")
    parser.add_argument("--repeats", type=int, default=None, help="timed rounds (one step of every variant each)")
    parser.add_argument("--modes", default="cast,reference", help="masked modes to time, comma-separated")
    parser.add_argument("--density", type=float, default=0.5, help="fraction of weights the random masks keep")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=None, help="torch intra-op threads (CPU; default: torch's)")
    parser.add_argument("--no-layers", action="store_true", help="skip the per-GEMM benchmark")
    parser.add_argument("--no-step", action="store_true", help="skip the whole training-step benchmark")
    parser.add_argument("--json", default=None, help="also write rows and goals to this JSON file")
    parser.set_defaults(handler=bench_command)

"""`lasp bench`: masked-linear and training-step timings against dense on the present device."""
from __future__ import annotations

import argparse


def bench_command(args: argparse.Namespace) -> int:
    from lasp.bench import format_table, run_bench, write_json

    rows = run_bench(size=args.size, device=args.device, warmup=args.warmup, repeats=args.repeats,
                     layers=not args.no_layers, step=not args.no_step, density=args.density, seed=args.seed)
    print(format_table(rows))
    if args.json:
        write_json(rows, args.json, device=args.device)
        print(f"wrote {args.json}")
    return 0


def register(subparsers) -> None:
    parser = subparsers.add_parser(
        "bench", help="time dense vs masked (reference / fused, single and mixed languages) linears and steps",
        description="Median timings (after warm-up; CUDA events on a GPU) of one Linear's training GEMMs for the "
                    "XLSR-53 shapes and of a whole pre-training step, dense vs masked, with ratios to dense.")
    parser.add_argument("--size", choices=("auto", "ci", "full"), default="auto",
                        help="ci: tiny shapes and the tiny preset (seconds on CPU); full: XLSR-53 shapes, 2k-16k "
                             "tokens, xlsr-53 step on CUDA / base on CPU; auto: full on CUDA, ci on CPU")
    parser.add_argument("--device", default=None, help="cuda or cpu (default: cuda when present)")
    parser.add_argument("--warmup", type=int, default=None, help="untimed calls before timing")
    parser.add_argument("--repeats", type=int, default=None, help="timed calls; the median is reported")
    parser.add_argument("--density", type=float, default=0.5, help="fraction of weights the random masks keep")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--no-layers", action="store_true", help="skip the per-layer GEMM benchmark")
    parser.add_argument("--no-step", action="store_true", help="skip the whole training-step benchmark")
    parser.add_argument("--json", default=None, help="also write the rows to this JSON file")
    parser.set_defaults(handler=bench_command)

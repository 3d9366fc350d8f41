"""`lasp bench steps`: dense vs masked training steps (and GEMMs on a GPU) with one PASS/FAIL line per goal;
`lasp bench data MANIFEST`: how fast decoding and collating feed a model."""
from __future__ import annotations

import argparse

from lasp.bench.data import measure
from lasp.bench.steps import format_table, run_bench, write_json
from lasp.config.recipe import load_recipe


def steps_command(args: argparse.Namespace) -> int:
    modes = tuple(m.strip() for m in args.modes.split(",") if m.strip())
    result = run_bench(size=args.size, device=args.device, warmup=args.warmup, repeats=args.repeats,
                       layers=not args.no_layers, step=not args.no_step, density=args.density, seed=args.seed,
                       modes=modes, threads=args.threads, precision=args.precision)
    print(format_table(result))
    if args.json:
        write_json(result, args.json, device=args.device)
        print(f"wrote {args.json}")
    return 0


def data_command(args: argparse.Namespace) -> int:
    overrides = [f"data.batch_size={args.batch_size}"] if args.batch_size else []
    cfg = load_recipe(args.recipe, [*overrides, *args.overrides])
    workers = [int(w) for w in args.workers.split(",") if w.strip()]
    print(f"{args.manifest}: decode + collate ({args.batches} batches of {cfg.data.batch_size}, "
          f"model {cfg.model.name})")
    for result in measure(cfg, args.manifest, workers=workers, batches=args.batches):
        print("  " + result.line())
    return 0


def register(sub, name: str, help_text: str) -> None:
    p = sub.add_parser(name, help=help_text, description=help_text)
    actions = p.add_subparsers(dest="bench_command", metavar="ACTION")
    p.set_defaults(handler=lambda args: (p.print_help(), 2)[1])
    s = actions.add_parser(
        "steps", help="time dense vs masked training steps (single and mixed languages); PASS/FAIL per goal "
                      "(the default: `lasp bench` alone runs this)",
        description="Interleaved whole training steps, dense vs masked (medians with IQR, forward+backward and "
                    "optimizer separately, peak memory on CUDA), per-GEMM TFLOP/s on CUDA, and one PASS/FAIL line "
                    "per speed goal (GPU goals print as pending without a CUDA device).")
    s.add_argument("--size", choices=("auto", "ci", "full"), default="auto",
                   help="ci: tiny preset (seconds on CPU); full: xlsr-53 at 2k/8k/16k tokens on CUDA, base "
                        "preset (batch 8 x 0.5 s, fp32) on CPU; auto: full on CUDA, ci on CPU")
    s.add_argument("--device", default=None, help="cuda or cpu (default: cuda when present)")
    s.add_argument("--warmup", type=int, default=None, help="untimed steps of each variant before timing")
    s.add_argument("--repeats", type=int, default=None, help="timed rounds (one step of every variant each)")
    s.add_argument("--modes", default="cast,reference", help="masked modes to time, comma-separated")
    s.add_argument("--density", type=float, default=0.5, help="fraction of weights the random masks keep")
    s.add_argument("--seed", type=int, default=0)
    s.add_argument("--threads", type=int, default=None, help="torch intra-op threads (CPU; default: torch's)")
    s.add_argument("--precision", choices=("auto", "fp32", "bf16"), default="auto",
                   help="bf16 autocast or fp32; auto: bf16 on CUDA, fp32 on CPU (what the goals are stated for)")
    s.add_argument("--no-layers", action="store_true", help="skip the per-GEMM benchmark")
    s.add_argument("--no-step", action="store_true", help="skip the whole training-step benchmark")
    s.add_argument("--json", default=None, help="also write rows and goals to this JSON file")
    s.set_defaults(handler=steps_command)
    d = actions.add_parser("data", help="decode + collate throughput (seconds of audio per second) per worker count")
    d.add_argument("manifest")
    d.add_argument("overrides", nargs="*", metavar="key=value",
                   help="recipe overrides, e.g. model.name=/path/to/xlsr-53 data.max_seconds=20")
    d.add_argument("--recipe", help="recipe whose data, model and pre-training masking settings apply")
    d.add_argument("--workers", default="0,2", help="comma-separated DataLoader worker counts")
    d.add_argument("--batches", type=int, default=40, help="batches per worker count (the first is not timed)")
    d.add_argument("--batch-size", type=int, help="utterances per batch (data.batch_size)")
    d.set_defaults(handler=data_command)

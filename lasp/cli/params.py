"""`lasp params --model M --languages N`: what N languages cost under lasp masks, adapters, LoRA and copies."""
from __future__ import annotations

import argparse
import csv
import sys

from lasp.analysis.params import COLUMNS, format_markdown, parameter_table, write_parameter_report
from lasp.errors import ConfigError
from lasp.masks.language_masks import LanguageMasks


def _int_list(text: str, option: str) -> list[int]:
    values = []
    for item in text.split(","):
        item = item.strip()
        if not item:
            continue
        if not item.isdigit() or int(item) < 1:
            raise ConfigError(f"{option}: {item!r} is not a positive integer (expected e.g. 16,64)")
        values.append(int(item))
    return values


def params_command(args: argparse.Namespace) -> int:
    masks = None
    if args.masks:
        masks = LanguageMasks.load(args.masks)
    if args.languages is None and masks is None:
        raise ConfigError("--languages N is required without --masks")
    rows = parameter_table(
        args.model, args.languages, masks=masks, adapter_dims=_int_list(args.adapter_dim, "--adapter-dim"),
        lora_ranks=_int_list(args.lora_rank, "--lora-rank"), vocab_size=args.vocab_size,
        targets=args.targets, bytes_per_param=args.bytes_per_param, use_peft=False if args.no_peft else None,
    )
    if args.format == "csv":
        writer = csv.DictWriter(sys.stdout, fieldnames=list(COLUMNS), extrasaction="ignore")
        writer.writeheader()
        writer.writerows(rows)
    else:
        print(f"parameters for {rows[0]['languages']} languages on {args.model} "
              f"({args.bytes_per_param} bytes per stored weight)")
        print(format_markdown(rows))
    if args.out:
        files = write_parameter_report(rows, args.out, plots=not args.no_plots)
        print("\nfiles:", file=sys.stderr if args.format == "csv" else sys.stdout)
        for key, path in files.items():
            print(f"  {key:8s}  {path}", file=sys.stderr if args.format == "csv" else sys.stdout)
    return 0


def register(sub, name: str, help_text: str) -> None:
    p = sub.add_parser(name, help=help_text, description=help_text)
    p.add_argument("--model", required=True, help="preset (tiny, base, xlsr-53) or local checkpoint directory; "
                                                  "built on the meta device, no weights are allocated")
    p.add_argument("--masks", help="mask-set directory: its targets, unique and shared-by-all weights")
    p.add_argument("--languages", type=int, help="number of languages N (default: those of --masks)")
    p.add_argument("--adapter-dim", default="16", help="comma-separated adapter bottleneck sizes (default 16)")
    p.add_argument("--lora-rank", default="8", help="comma-separated LoRA ranks (default 8)")
    p.add_argument("--vocab-size", type=int, help="CTC vocabulary size for the head row (default: the config's)")
    p.add_argument("--targets", nargs="*", default=None,
                   help="target regexes or groups when no --masks is given (default: encoder Linears)")
    p.add_argument("--bytes-per-param", type=int, default=4, help="stored bytes per weight (4 = fp32, 2 = fp16)")
    p.add_argument("--no-peft", action="store_true", help="count LoRA by formula even if peft is installed")
    p.add_argument("--format", default="markdown", choices=["markdown", "csv"], help="table printed to stdout")
    p.add_argument("--out", help="directory for params.md, params.csv, params.json and params.png")
    p.add_argument("--no-plots", action="store_true")
    p.set_defaults(handler=params_command)

"""`lasp add-language RUN --lang xx --data train.jsonl --out NEW` and `lasp remove-language RUN --lang xx --out NEW`:
serve one more (or one fewer) language without changing what the system computes for the others."""
from __future__ import annotations

import argparse

from lasp.train.add_language import add_language, remove_language


def add_command(args: argparse.Namespace) -> int:
    final = add_language(args.run, args.lang, args.data, args.out, dev=args.dev, test=args.test,
                         overrides=args.overrides)
    print(f"wrote {final}: serves the earlier languages bit for bit, and {args.lang} "
          f"(lasp export {args.out} --lang {args.lang} --out DIR for a plain model)")
    return 0


def remove_command(args: argparse.Namespace) -> int:
    remove_language(args.run, args.lang, args.out)
    return 0


def register(sub, name: str, help_text: str) -> None:
    p = sub.add_parser(name, help=help_text, description=help_text)
    p.add_argument("run", help="a trained masked system: a fine-tuning run directory or its final/ (only read)")
    p.add_argument("--lang", required=True, help="language code")
    p.add_argument("--out", required=True, help="the new run directory (must not hold a finished system)")
    if name == "add-language":
        p.add_argument("--data", required=True, help="training manifest of the new language (its rows are used)")
        p.add_argument("--dev", help="validation manifest (data.valid)")
        p.add_argument("--test", help="test manifest: every language the new system serves is evaluated into "
                                      "OUT/eval")
        p.add_argument("--set", dest="overrides", nargs="+", default=[], metavar="KEY=VALUE",
                       help="changes to RUN's recipe (final/recipe.yaml), e.g. --set finetune.max_steps=500 "
                            "add_language.rule=adapter")
        p.set_defaults(handler=add_command, resumable=True)
    else:
        p.set_defaults(handler=remove_command)

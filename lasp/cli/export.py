"""`lasp export RUN --lang es --out DIR`: one language as a plain model + processor for transformers."""
from __future__ import annotations

import argparse

from lasp.models.export import export_run


def export_command(args: argparse.Namespace) -> int:
    out = export_run(args.run, args.lang, args.out, force=args.force)
    print(f"exported {args.lang}: {out} (load with transformers.pipeline('automatic-speech-recognition', "
          f"model='{out}'))")
    return 0


def register(sub, name: str, help_text: str) -> None:
    p = sub.add_parser(name, help=help_text, description=help_text)
    p.add_argument("run", help="a fine-tuning run directory, or its final/ folder")
    p.add_argument("--lang", required=True, help="language code to export")
    p.add_argument("--out", required=True, help="output directory (must be empty or new)")
    p.add_argument("--force", action="store_true", help="replace a non-empty --out")
    p.set_defaults(handler=export_command)

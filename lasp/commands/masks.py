"""`lasp masks info DIR` and `lasp prune ...`: make and inspect mask sets."""
from __future__ import annotations

import argparse

from lasp.masks import LanguageMasks


def iou_table(masks: LanguageMasks) -> str:
    langs = masks.languages
    width = max(6, *(len(l) for l in langs))
    lines = [" " * width + "".join(f"{l:>{width + 1}}" for l in langs)]
    for a in langs:
        lines.append(f"{a:>{width}}" + "".join(f"{masks.iou(a, b):>{width + 1}.3f}" for b in langs))
    return "\n".join(lines)


def masks_info(args: argparse.Namespace) -> int:
    masks = LanguageMasks.load(args.mask_dir, languages=args.languages.split(",") if args.languages else None)
    meta = masks.metadata
    print(f"mask set {args.mask_dir}: base model {meta.get('base_model')}, scorer {meta.get('scorer')}, "
          f"scope {meta.get('scope')}, pattern {meta.get('pattern')}")
    print(masks.summary())
    print("\nwhat made each language (files verified against their recorded sha256)")
    for lang, rec in masks.records().items():
        print(f"  {lang:>8}  {rec.get('method')}/{rec.get('scorer')} sparsity {rec.get('sparsity')} "
              f"{rec.get('pattern')} {rec.get('scope')}  data {rec.get('data')}  base {rec.get('base_model')}")
    if len(masks) > 1:
        print("\npairwise IoU |A∧B|/|A∨B|")
        print(iou_table(masks))
    return 0


def prune_command(args: argparse.Namespace) -> int:
    from lasp.mask_search import prune_from_manifest
    from lasp.prune_checks import check_prune_request

    check_prune_request(args.out, args.data, sparsity=args.sparsity, pattern=args.pattern,
                        languages=args.langs.split(",") if args.langs else None,
                        min_utterances=args.min_utterances, existing=args.existing)

    masks = prune_from_manifest(
        model=args.model, manifest=args.data, out=args.out, scorer=args.scorer, sparsity=args.sparsity,
        scope=args.scope, pattern=args.pattern, batches=args.batches, batch_size=args.batch_size,
        languages=args.langs.split(",") if args.langs else None, targets=args.targets, seed=args.seed,
        on_bad=args.on_bad, head=args.head, method=args.method, imp_rounds=args.imp_rounds,
        imp_steps=args.imp_steps, imp_lr=args.imp_lr,
    )
    print(masks.summary())
    print(f"wrote {args.out}")
    return 0


def register(sub) -> None:
    p = sub.add_parser("masks", help="inspect mask sets")
    msub = p.add_subparsers(dest="masks_command", metavar="ACTION")
    info = msub.add_parser("info", help="languages, density per language, pairwise IoU")
    info.add_argument("mask_dir")
    info.add_argument("--languages", help="comma-separated subset to load")
    info.set_defaults(handler=masks_info)
    p.set_defaults(handler=lambda args: (p.print_help(), 2)[1])

    q = sub.add_parser("prune", help="score every language of a manifest and write its mask set")
    q.add_argument("--model", required=True, help="preset (tiny, base, xlsr-53) or local checkpoint directory")
    q.add_argument("--data", required=True, help="manifest (JSON lines with audio, text, lang)")
    q.add_argument("--out", required=True, help="mask-set directory to write")
    q.add_argument("--method", default="oneshot", choices=["oneshot", "imp"],
                   help="oneshot: score once and prune; imp: iterative magnitude pruning with rewinding")
    q.add_argument("--imp-rounds", type=int, default=3, help="imp: prune/rewind rounds")
    q.add_argument("--imp-steps", type=int, default=50, help="imp: training steps per round")
    q.add_argument("--imp-lr", type=float, default=5e-4, help="imp: Adam learning rate")
    q.add_argument("--scorer", default="taylor", choices=["magnitude", "taylor", "fisher", "random"])
    q.add_argument("--sparsity", type=float, default=None,
                   help="fraction of targeted weights removed (default 0.5; implied by an n:m pattern)")
    q.add_argument("--scope", default="per-tensor", choices=["per-tensor", "global"])
    q.add_argument("--pattern", default="unstructured", help="unstructured or n:m, e.g. 2:4")
    q.add_argument("--batches", type=int, default=8, help="batches scored per language")
    q.add_argument("--batch-size", type=int, default=4)
    q.add_argument("--langs", help="comma-separated languages (default: all in the manifest)")
    q.add_argument("--targets", nargs="*", default=None, help="target regexes or groups (default: encoder Linears)")
    q.add_argument("--head", default="auto", choices=["auto", "pretraining", "ctc"],
                   help="loss for gradient scorers: pre-training (no transcripts) or CTC (auto: pre-training)")
    q.add_argument("--on-bad", default="skip", choices=["skip", "error"], help="policy for unusable rows")
    q.add_argument("--seed", type=int, default=0)
    q.add_argument("--min-utterances", type=int, default=20, help="rows a language needs to get a mask")
    how = q.add_mutually_exclusive_group()
    how.add_argument("--append", dest="existing", action="store_const", const="append", default="refuse",
                     help="--out holds a mask set: add (or replace) these languages, keep the others")
    how.add_argument("--force", dest="existing", action="store_const", const="replace",
                     help="--out holds a mask set: replace it")
    q.set_defaults(handler=prune_command)

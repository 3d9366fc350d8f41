"""`lasp masks prune | info | overlap`: make a mask set, see what it holds, measure how much its languages share."""
from __future__ import annotations

import argparse
import json
import os

from lasp.analysis.overlap_report import overlap_analysis, specificity_summary
from lasp.analysis.stability import format_stability, search_stability
from lasp.analysis.tables import write_json
from lasp.cli.options import add_existing_flags, add_explain, print_explain
from lasp.config.recipe import load_recipe
from lasp.device import apply_cpu_settings
from lasp.errors import ConfigError
from lasp.masks.language_masks import LanguageMasks
from lasp.search.checks import check_prune_request
from lasp.search.methods import prune_to_dir


def iou_table(masks) -> str:
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


# `lasp prune` flag -> recipe key; a flag left out keeps the recipe's value (or the schema default)
PRUNE_KEYS = {"method": "masks.method", "scorer": "masks.scorer", "sparsity": "masks.sparsity",
              "scope": "masks.scope", "pattern": "masks.pattern", "batches": "masks.max_batches",
              "imp_rounds": "masks.imp_rounds", "imp_steps": "masks.imp_steps", "imp_lr": "masks.imp_lr",
              "lass_steps": "masks.lass_steps", "lass_lr": "masks.lass_lr", "lass_criterion": "masks.lass_criterion",
              "batch_size": "data.batch_size", "on_bad": "data.on_bad", "seed": "seed", "data": "data.train",
              "min_utterances": "masks.min_utterances"}


def prune_command(args: argparse.Namespace) -> int:
    if args.explain:
        return print_explain()
    if not args.out:
        raise ConfigError("lasp masks prune needs --out DIR (the mask-set directory to write)")
    # values are JSON (a YAML subset): strings stay strings ("2:4" is not read as the base-60 number 124)
    overrides = [f"{key}={json.dumps(getattr(args, flag))}" for flag, key in PRUNE_KEYS.items()
                 if getattr(args, flag) is not None]
    if args.targets is not None:
        overrides.append(f"masks.targets={json.dumps(args.targets)}")
    if args.model is not None:
        overrides.append(f"model.name={json.dumps(args.model)}")
    cfg = load_recipe(args.recipe, overrides)
    # the recipe's CPU settings, as every training stage applies them: `lasp run` gives a mask search one thread
    apply_cpu_settings(cfg.threads, cfg.cpu_onednn)
    languages = args.langs.split(",") if args.langs else None
    # everything that would waste the scoring is checked first (XLSR-53: about a minute per language)
    check_prune_request(args.out, cfg.data.train, languages=languages, min_utterances=cfg.masks.min_utterances,
                        existing=args.existing)
    masks = prune_to_dir(cfg, cfg.model.name, args.out, languages=languages,
                         head=args.head)
    print(masks.summary())
    print(specificity_summary(masks))
    skipped = {l: n for l, n in masks.metadata.get("skipped_nonfinite", {}).items() if n}
    if skipped:
        print("batches skipped for a non-finite loss: " + ", ".join(f"{l} {n}" for l, n in skipped.items()))
    print(f"wrote {args.out}")
    return 0


def overlap_command(args: argparse.Namespace) -> int:
    languages = [l for l in args.languages.split(",") if l] if args.languages else None
    masks = LanguageMasks.load(args.mask_dir, languages=languages)
    result = overlap_analysis(masks, args.out, families=args.families, n_permutations=args.permutations,
                              seed=args.seed, plots=not args.no_plots, progress=True)
    print(f"mask set {args.mask_dir}")
    print(result.summary)
    if args.against:
        stability = search_stability(masks, LanguageMasks.load(args.against, languages=languages))
        path = write_json({"against": args.against, **stability}, os.path.join(args.out, "stability.json"))
        print(f"against {args.against} ({path}):")
        print(format_stability(stability))
    return 0


def register(sub, name: str, help_text: str) -> None:
    p = sub.add_parser(name, help=help_text, description=help_text)
    msub = p.add_subparsers(dest="masks_command", metavar="ACTION")
    p.set_defaults(handler=lambda args: (p.print_help(), 2)[1])

    q = msub.add_parser("prune", help="score every language of a manifest and write its mask set",
                       description="Search a mask set exactly as pretrain/finetune search it for the same recipe: "
                                   "flags override the recipe's keys (masks.*, data.*, seed, model.name).")
    q.add_argument("--recipe", help="YAML recipe whose masks/data/pretrain masking settings apply (default: none)")
    q.add_argument("--model", help="preset (tiny, base, xlsr-53) or local checkpoint directory (model.name)")
    q.add_argument("--data", help="training manifest (data.train)")
    q.add_argument("--out", help="mask-set directory to write (required)")
    q.add_argument("--method", choices=["oneshot", "imp", "lass"],
                   help="oneshot: score once and prune; imp: iterative magnitude pruning with rewinding; "
                        "lass: adapt the shared model to each language, then prune")
    q.add_argument("--lass-steps", type=int, help="lass: adaptation steps per language")
    q.add_argument("--lass-lr", type=float, help="lass: Adam learning rate of the adaptation")
    q.add_argument("--lass-criterion", choices=["magnitude", "change"],
                   help="lass: prune the smallest adapted weights or the least-changed ones")
    q.add_argument("--imp-rounds", type=int, help="imp: prune/rewind rounds")
    q.add_argument("--imp-steps", type=int, help="imp: training steps per round")
    q.add_argument("--imp-lr", type=float, help="imp: Adam learning rate")
    q.add_argument("--scorer", choices=["magnitude", "taylor", "fisher", "random"])
    q.add_argument("--sparsity", type=float, help="fraction of targeted weights removed")
    q.add_argument("--scope", choices=["per-tensor", "global"])
    q.add_argument("--pattern", help="unstructured or n:m, e.g. 2:4")
    q.add_argument("--batches", type=int, help="batches scored per language (masks.max_batches)")
    q.add_argument("--batch-size", type=int, help="utterances per batch (data.batch_size)")
    q.add_argument("--langs", help="comma-separated languages (default: all in the manifest)")
    q.add_argument("--targets", nargs="*", default=None, help="target regexes or groups (default: encoder Linears)")
    q.add_argument("--head", default="auto", choices=["auto", "pretraining", "ctc"],
                   help="loss for gradient scorers (auto: CTC when the checkpoint has a trained CTC head and "
                        "vocab.json, else pre-training); a head the checkpoint lacks is an error")
    q.add_argument("--on-bad", choices=["skip", "error"], help="policy for unusable rows (data.on_bad)")
    q.add_argument("--seed", type=int)
    q.add_argument("--min-utterances", type=int, help="rows a language needs to get a mask (masks.min_utterances)")
    add_existing_flags(q, append_help="--out holds a mask set: add (or replace) these languages, keep the others",
                        force_help="--out holds a mask set: replace it")
    add_explain(q)
    q.set_defaults(handler=prune_command)

    info = msub.add_parser("info", help="languages, density per language, pairwise IoU")
    info.add_argument("mask_dir")
    info.add_argument("--languages", help="comma-separated subset to load")
    info.set_defaults(handler=masks_info)

    o = msub.add_parser("overlap", help="how much language masks share: IoU, LaSS overlap, clustering, plots")
    o.add_argument("mask_dir", help="mask-set directory (mask_config.json + masks.<lang>.safetensors)")
    o.add_argument("--out", required=True, help="directory for the CSV/JSON tables and PNG plots")
    o.add_argument("--families", help="YAML/JSON map language → family: within- vs across-family IoU, "
                                      "permutation test")
    o.add_argument("--languages", help="comma-separated subset of the mask set's languages")
    o.add_argument("--permutations", type=int, default=2000, help="permutations for the family test")
    o.add_argument("--seed", type=int, default=0)
    o.add_argument("--no-plots", action="store_true", help="tables only")
    o.add_argument("--against", metavar="MASK_DIR",
                   help="a second search of the same languages (e.g. another --seed): is each language's mask "
                        "closer to its own repeat than to the other languages' masks? (stability.json)")
    o.set_defaults(handler=overlap_command)

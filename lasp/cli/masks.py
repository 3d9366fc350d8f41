"""`lasp masks prune | info | overlap | size | union | intersection | difference | exclusive`: make a mask set, see
what it holds, measure how much its languages share and what it costs on disk, and combine its masks."""
from __future__ import annotations

import argparse
import json
import os

from lasp.analysis.mask_storage import format_storage, storage_table
from lasp.analysis.overlap_report import overlap_analysis, specificity_summary
from lasp.analysis.stability import format_stability, search_stability
from lasp.analysis.tables import write_json
from lasp.cli.options import add_existing_flags, add_explain, print_explain
from lasp.config.recipe import load_recipe
from lasp.device import apply_cpu_settings
from lasp.errors import ConfigError
from lasp.masks.codecs import CODECS
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
    checked = masks.metadata.get("verified_languages") or []
    unchecked = [l for l in masks.languages if l not in checked]
    verdict = ("files verified against their recorded sha256" if not unchecked else
               f"no sha256 recorded for {', '.join(unchecked)} (written by an earlier lasp): those files are "
               "not verified, only read")
    print(f"\nwhat made each language ({verdict})")
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


def _codes(text: str | None, option: str) -> list[str]:
    return [c.strip() for c in text.split(",") if c.strip()] if text else []


def size_command(args: argparse.Namespace) -> int:
    masks = LanguageMasks.load(args.mask_dir, languages=_codes(args.languages, "--languages") or None)
    codecs = _codes(args.codecs, "--codecs") or list(CODECS)
    unknown = [c for c in codecs if c not in CODECS]
    if unknown:
        raise ConfigError(f"--codecs: unknown codec {unknown[0]!r}; choose from {', '.join(CODECS)}")
    table = storage_table(masks, codecs, load_times=not args.no_load_times)
    print(f"mask set {args.mask_dir}")
    print(format_storage(table))
    if args.json:
        print(f"wrote {write_json({'mask_dir': args.mask_dir, **table}, args.json)}")
    return 0


def set_operation_command(args: argparse.Namespace) -> int:
    """union / intersection / difference / exclusive: count the result, and write it as a one-mask set."""
    op = args.masks_command
    langs = _codes(getattr(args, "langs", None), "--langs")
    if op in ("union", "intersection", "difference") and not langs:
        raise ConfigError(f"lasp masks {op} needs --langs a,b,...")
    masks = LanguageMasks.load(args.mask_dir)
    if op == "union":
        result, what = masks.union(langs), " ∪ ".join(langs)
    elif op == "intersection":
        result, what = masks.intersection(langs), " ∩ ".join(langs)
    elif op == "difference":
        minus = _codes(args.minus, "--minus")
        if not minus:
            raise ConfigError("lasp masks difference needs --minus c,d,... (the languages taken away)")
        result, what = masks.difference(langs, minus), f"({' ∪ '.join(langs)}) \\ ({' ∪ '.join(minus)})"
    else:
        result = masks.exclusive(args.lang)
        what = f"{args.lang} only (no other language of the set keeps them)"
    kept = masks.count(result)
    print(f"{what}: {kept:,} of {masks.numel():,} masked weights (density {kept / max(masks.numel(), 1):.4f})")
    if args.out:
        name = args.name or op
        derived = LanguageMasks.from_dense({name: result}, base_model=masks.metadata.get("base_model"),
                                           scorer=f"{op} of a mask set",
                                           extra={"derived_from": args.mask_dir, "operation": what})
        derived.save(args.out, mode="new")
        print(f"wrote {args.out} (one mask, named {name!r})")
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

    z = msub.add_parser("size", help="bytes on disk per codec (each language alone vs a shared core plus deltas) "
                                     "and the time to load one language")
    z.add_argument("mask_dir")
    z.add_argument("--languages", help="comma-separated subset to measure")
    z.add_argument("--codecs", help=f"comma-separated, from {', '.join(CODECS)} (default: all)")
    z.add_argument("--no-load-times", action="store_true", help="bytes only (no temporary sets written)")
    z.add_argument("--json", help="also write the numbers to this JSON file")
    z.set_defaults(handler=size_command)

    for op, text in (("union", "weights kept by any of --langs"),
                     ("intersection", "weights kept by every one of --langs"),
                     ("difference", "weights kept by --langs (any) and by none of --minus"),
                     ("exclusive", "weights only --lang keeps (no other language of the set)")):
        q = msub.add_parser(op, help=text, description=f"{text}: counted, and with --out written as a mask set "
                                                       "holding that one mask")
        q.add_argument("mask_dir")
        if op == "exclusive":
            q.add_argument("--lang", required=True)
        else:
            q.add_argument("--langs", help="comma-separated languages")
        if op == "difference":
            q.add_argument("--minus", help="comma-separated languages taken away")
        q.add_argument("--out", help="write the result here as a one-mask set")
        q.add_argument("--name", help=f"the result's name in that set (a language-code-like name; default {op})")
        q.set_defaults(handler=set_operation_command)

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

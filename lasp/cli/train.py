"""`lasp pretrain | finetune | evaluate | validate RECIPE [key=value ...]` (each also takes --explain)."""
from __future__ import annotations

import argparse
import json

from lasp.cli.options import add_explain, print_explain
from lasp.config.recipe import config_to_dict, load_recipe
from lasp.errors import ConfigError


def _add(sub, name: str, help_text: str, handler) -> argparse.ArgumentParser:
    p = sub.add_parser(name, help=help_text, description=help_text)
    p.add_argument("recipe", nargs="?", help="YAML recipe (omit with --explain to list every key)")
    p.add_argument("overrides", nargs="*", metavar="key=value",
                   help="override recipe keys, e.g. finetune.max_steps=100 data.languages=[es,de]")
    add_explain(p)
    p.set_defaults(handler=handler)
    return p


def _recipe(args, stage: str | None):
    """The recipe, fully checked, and (for a stage) its inputs/outputs checked before any model loads."""
    if args.recipe is None:
        raise ConfigError(f"give a recipe (e.g. lasp {args.command} recipes/finetune_tiny.yaml), "
                          "or --explain to list its keys")
    cfg = load_recipe(args.recipe, args.overrides)
    if stage is not None:
        from lasp.cli.preflight import check_stage

        check_stage(cfg, stage)
    return cfg


def _train_stage(args, stage: str) -> int:
    """Run ``pretrain`` or ``finetune`` (also under torchrun) and print where the model went."""
    if args.explain:
        return print_explain()
    from lasp.train import distributed as D

    if stage == "pretrain":
        from lasp.train.pretrain import pretrain as run_stage
    else:
        from lasp.train.finetune import finetune as run_stage
    cfg = _recipe(args, stage)
    path = run_stage(cfg)
    info = D.init_distributed(cfg.device)
    D.shutdown(info)
    if info.is_main:
        print(f"{'pre-trained' if stage == 'pretrain' else 'fine-tuned'} model: {path}")
        print(f"run directory (checkpoints, metrics.jsonl, tb/): {path.parent}")
    return 0


def _pretrain(args) -> int:
    return _train_stage(args, "pretrain")


def _finetune(args) -> int:
    return _train_stage(args, "finetune")


def _evaluate(args) -> int:
    if args.explain:
        return print_explain()
    from lasp.train.evaluate import evaluate, summary_lines

    results = evaluate(_recipe(args, "evaluate"))
    print("\n".join(summary_lines(results, results["out_dir"])))
    return 0


def _validate(args) -> int:
    if args.explain:
        return print_explain()
    cfg = _recipe(args, None)
    if args.json:
        print(json.dumps(config_to_dict(cfg), indent=2))
    else:
        print(f"{args.recipe}: ok")
    return 0


def register(subparsers) -> None:
    p = _add(subparsers, "pretrain", "continued wav2vec 2.0 pre-training (shared or language-adaptive)",
             _pretrain)
    p.set_defaults(resumable=True)
    p = _add(subparsers, "finetune", "multilingual CTC fine-tuning (shared, lasp, random masks or adapters)",
             _finetune)
    p.set_defaults(resumable=True)
    _add(subparsers, "evaluate", "greedy CTC decoding; per-language CER/WER files", _evaluate)
    v = _add(subparsers, "validate", "check a recipe (keys, types, values) without running anything", _validate)
    v.add_argument("--json", action="store_true", help="print the resolved recipe as JSON")

"""`lasp pretrain | finetune | evaluate | validate RECIPE [key=value ...]`."""
from __future__ import annotations

import argparse
import json

from lasp.config import explain, load_recipe


def _add(sub, name: str, help_text: str, handler) -> argparse.ArgumentParser:
    p = sub.add_parser(name, help=help_text, description=help_text)
    p.add_argument("recipe", nargs="?", help="YAML recipe (omit with --explain to list every key)")
    p.add_argument("overrides", nargs="*", metavar="key=value",
                   help="override recipe keys, e.g. finetune.max_steps=100 data.languages=[es,de]")
    p.set_defaults(handler=handler)
    return p


def _train_stage(args, stage: str) -> int:
    """Run ``pretrain`` or ``finetune`` (also under torchrun) and print where the model went."""
    from lasp.train import distributed as D

    if stage == "pretrain":
        from lasp.train.pretrain import pretrain as run_stage
    else:
        from lasp.train.finetune import finetune as run_stage
    cfg = load_recipe(args.recipe, args.overrides)
    path = run_stage(cfg)
    info = D.init_distributed(cfg.device)
    D.shutdown(info)
    if info.is_main:
        print(f"{'pre-trained' if stage == 'pretrain' else 'fine-tuned'} model: {path}")
    return 0


def _pretrain(args) -> int:
    return _train_stage(args, "pretrain")


def _finetune(args) -> int:
    return _train_stage(args, "finetune")


def _evaluate(args) -> int:
    from lasp.evaluate import evaluate, summary_lines

    results = evaluate(load_recipe(args.recipe, args.overrides))
    print("\n".join(summary_lines(results, results["out_dir"])))
    return 0


def _validate(args) -> int:
    if args.explain:
        print("\n".join(explain()))
        return 0
    if args.recipe is None:
        from lasp.errors import ConfigError

        raise ConfigError("give a recipe to validate (or --explain)")
    cfg = load_recipe(args.recipe, args.overrides)
    if args.json:
        from lasp.config import config_to_dict

        print(json.dumps(config_to_dict(cfg), indent=2))
    else:
        print(f"{args.recipe}: ok")
    return 0


def register(subparsers) -> None:
    _add(subparsers, "pretrain", "continued wav2vec 2.0 pre-training (shared or language-adaptive)", _pretrain)
    _add(subparsers, "finetune", "multilingual CTC fine-tuning (shared, lasp, random masks or adapters)", _finetune)
    _add(subparsers, "evaluate", "greedy CTC decoding; per-language CER/WER files", _evaluate)
    v = _add(subparsers, "validate", "check a recipe (keys, types, values) without running anything", _validate)
    v.add_argument("--explain", action="store_true", help="list every recipe key with its type and default")
    v.add_argument("--json", action="store_true", help="print the resolved recipe as JSON")

"""`lasp pretrain | finetune | evaluate RECIPE [key=value ...]` (each also takes --explain)."""
from __future__ import annotations

import argparse

from lasp.cli.preflight import check_stage
from lasp.cli.recipe import add_recipe_arguments, load_given_recipe, print_explain
from lasp.train import distributed as D
from lasp.train import evaluate as evaluation
from lasp.train import finetune as finetuning
from lasp.train import pretrain as pretraining


def _stage_recipe(args: argparse.Namespace, stage: str):
    """The recipe, with everything the stage reads or writes checked before any model loads."""
    cfg = load_given_recipe(args)
    check_stage(cfg, stage)
    return cfg


def train_command(args: argparse.Namespace) -> int:
    """Run ``pretrain`` or ``finetune`` (also under torchrun) and print where the model went."""
    if args.explain:
        return print_explain()
    stage = args.command
    cfg = _stage_recipe(args, stage)
    path = pretraining.pretrain(cfg) if stage == "pretrain" else finetuning.finetune(cfg)
    info = D.init_distributed(cfg.device)
    D.shutdown(info)
    if info.is_main:
        print(f"{'pre-trained' if stage == 'pretrain' else 'fine-tuned'} model: {path}")
        print(f"run directory (checkpoints, metrics.jsonl, tb/): {path.parent}")
    return 0


def evaluate_command(args: argparse.Namespace) -> int:
    if args.explain:
        return print_explain()
    results = evaluation.evaluate(_stage_recipe(args, "evaluate"))
    print("\n".join(evaluation.summary_lines(results, results["out_dir"])))
    return 0


def register(sub, name: str, help_text: str) -> None:
    p = sub.add_parser(name, help=help_text, description=help_text)
    add_recipe_arguments(p)
    if name == "evaluate":
        p.set_defaults(handler=evaluate_command)
    else:
        p.set_defaults(handler=train_command, resumable=True)

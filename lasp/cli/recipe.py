"""The recipe arguments every recipe command shares (RECIPE, key=value overrides, --explain), and
`lasp validate RECIPE`."""
from __future__ import annotations

import argparse
import json

from lasp.cli.options import add_explain, print_explain
from lasp.config.recipe import config_to_dict, load_recipe
from lasp.errors import ConfigError


def add_recipe_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("recipe", nargs="?", help="YAML recipe (omit with --explain to list every key)")
    p.add_argument("overrides", nargs="*", metavar="key=value",
                   help="override recipe keys, e.g. finetune.max_steps=100 data.languages=[es,de]")
    add_explain(p)


def load_given_recipe(args: argparse.Namespace):
    """The recipe named on the command line with its overrides, fully checked."""
    if args.recipe is None:
        raise ConfigError(f"give a recipe (e.g. lasp {args.command} recipes/finetune_tiny.yaml), "
                          "or --explain to list its keys")
    return load_recipe(args.recipe, args.overrides)


def validate_command(args: argparse.Namespace) -> int:
    if args.explain:
        return print_explain()
    cfg = load_given_recipe(args)
    if args.json:
        print(json.dumps(config_to_dict(cfg), indent=2))
    else:
        print(f"{args.recipe}: ok")
    return 0


def register(sub, name: str, help_text: str) -> None:
    p = sub.add_parser(name, help=help_text, description=help_text)
    add_recipe_arguments(p)
    p.add_argument("--json", action="store_true", help="print the resolved recipe as JSON")
    p.set_defaults(handler=validate_command)

"""`lasp run [RECIPE]` (the whole comparison; the offline demo by default) and `lasp report RECIPE`."""
from __future__ import annotations

import argparse
import shlex

from lasp.cli.preflight import check_output_dir, check_output_file
from lasp.cli.recipe import add_explain, print_explain
from lasp.config.recipe import load_recipe
from lasp.run.continual import continual_report_from_outputs, run_continual
from lasp.run.runner import clean, demo_recipe_path, report_from_outputs, run

DEFAULT_RECIPE = "demo"


def _load(args: argparse.Namespace):
    recipe = args.recipe or demo_recipe_path()
    return load_recipe(recipe, args.overrides)


def _command(args: argparse.Namespace) -> str:
    """The `lasp run` command line a report opens with."""
    return shlex.join(["lasp", "run", str(args.recipe or demo_recipe_path()), *args.overrides])


def _check_outputs(cfg) -> None:
    """Output paths usable before the first stage starts (one line naming the key otherwise)."""
    check_output_dir("output_dir", cfg.output_dir)
    settings = cfg.extra.get("run")
    if settings is not None:
        check_output_dir("run.corpus", settings.corpus)
        check_output_file("run.report", settings.report)


def run_command(args: argparse.Namespace) -> int:
    if args.explain:
        return print_explain()
    cfg = _load(args)
    _check_outputs(cfg)
    if args.fresh:
        clean(cfg)
    if "continual" in cfg.extra:  # train on some languages, then add the others one at a time
        run_continual(cfg, command=_command(args))
    else:
        run(cfg)
    return 0


def report_command(args: argparse.Namespace) -> int:
    if args.explain:
        return print_explain()
    cfg = _load(args)
    if "continual" in cfg.extra:
        print(continual_report_from_outputs(cfg, command=_command(args)))
    else:
        print(report_from_outputs(cfg))  # every seed's report and the seed summary with run.seeds
    return 0


def _add_common(p: argparse.ArgumentParser) -> None:
    p.add_argument("recipe", nargs="?", help="recipe with a 'run' section (default: the built-in offline demo, "
                                             "recipes/demo.yaml)")
    p.add_argument("overrides", nargs="*", metavar="KEY=VALUE", help="recipe overrides, e.g. run.parallel=1")
    add_explain(p)


def register(sub, name: str, help_text: str) -> None:
    p = sub.add_parser(name, help=help_text, description=help_text)
    _add_common(p)
    if name == "run":
        p.add_argument("--fresh", action="store_true", help="delete the previous run's output_dir first")
        p.set_defaults(handler=run_command, resumable=True)  # finished stages are skipped on a rerun
    else:
        p.set_defaults(handler=report_command)

"""`lasp run [RECIPE]` (the whole comparison; the offline demo by default) and `lasp report RECIPE`."""
from __future__ import annotations

import argparse
import shlex
from pathlib import Path

from lasp.cli.options import add_explain, print_explain
from lasp.cli.preflight import check_output_dir, check_output_file
from lasp.config.recipe import load_recipe
from lasp.run import runner
from lasp.run.continual import continual_report_from_outputs, run_continual


def _recipe_and_overrides(args: argparse.Namespace) -> tuple[str, list[str]]:
    """The recipe and its overrides: without a recipe (`lasp run run.parallel=1`) the first KEY=VALUE is an override
    of the built-in demo, not a recipe path."""
    recipe, overrides = args.recipe, list(args.overrides)
    if recipe is not None and "=" in recipe and not Path(recipe).exists():
        recipe, overrides = None, [recipe, *overrides]
    return str(recipe or runner.demo_recipe_path()), overrides


def _load(args: argparse.Namespace):
    return load_recipe(*_recipe_and_overrides(args))


def _command(args: argparse.Namespace) -> str:
    """The `lasp run` command line a report opens with."""
    recipe, overrides = _recipe_and_overrides(args)
    return shlex.join(["lasp", "run", recipe, *overrides])


def _check_outputs(cfg) -> None:
    """Output paths usable before the first stage starts (one line naming the key otherwise)."""
    check_output_dir("output_dir", cfg.output_dir)
    if cfg.run is not None:
        check_output_dir("run.corpus", cfg.run.corpus)
        check_output_file("run.report", cfg.run.report)


def run_command(args: argparse.Namespace) -> int:
    if args.explain:
        return print_explain()
    cfg = _load(args)
    _check_outputs(cfg)
    if cfg.continual is not None:  # train on some languages, then add the others one at a time
        run_continual(cfg, fresh=args.fresh, command=_command(args))
    else:
        runner.run(cfg, fresh=args.fresh)
    return 0


def report_command(args: argparse.Namespace) -> int:
    if args.explain:
        return print_explain()
    cfg = _load(args)
    if cfg.continual is not None:
        print(continual_report_from_outputs(cfg, command=_command(args)))
    else:
        print(runner.report_from_outputs(cfg))  # every seed's report and the seed summary with run.seeds
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
        p.add_argument("--fresh", action="store_true",
                       help="start over: first remove what an earlier `lasp run` made in output_dir (its "
                            "lasp_run.json lists it); the corpus and anything else there stay")
        p.set_defaults(handler=run_command, resumable=True)  # finished stages are skipped on a rerun
    else:
        p.set_defaults(handler=report_command)

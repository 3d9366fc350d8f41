"""Recipe keys are documented: --explain on every recipe command lists every key of every section with help."""
from __future__ import annotations

import dataclasses
import typing

import pytest

from lasp.cli import main
from lasp.config.recipe import RecipeConfig, _EXTRA_SECTIONS
from lasp.config.help import SECTIONS, help_for

RECIPE_COMMANDS = ["pretrain", "finetune", "evaluate", "validate", "run", "report", "masks prune"]


def schema_keys() -> dict[str, tuple[type, str]]:
    """Every dotted recipe key -> (schema class, field), the registered sections (run.*) included."""
    keys: dict[str, tuple[type, str]] = {}

    def walk(cls: type, prefix: str) -> None:
        hints = typing.get_type_hints(cls)
        for f in dataclasses.fields(cls):
            if cls is RecipeConfig and f.name == "extra":
                continue
            if dataclasses.is_dataclass(hints[f.name]):
                walk(hints[f.name], f"{prefix}{f.name}.")
            else:
                keys[prefix + f.name] = (cls, f.name)

    walk(RecipeConfig, "")
    for name, cls in _EXTRA_SECTIONS.items():
        if cls.__module__.startswith("lasp."):  # not sections other tests register
            walk(cls, f"{name}.")
    return keys


def test_every_schema_key_has_help():
    keys = schema_keys()
    assert "run.parallel" in keys and "finetune.optim.lr" in keys
    undocumented = [key for key, (cls, name) in keys.items() if len(help_for(cls, name).strip()) < 10]
    assert not undocumented, f"add one line of help to lasp/config_help.py for: {', '.join(undocumented)}"
    sections = {key.rsplit(".", 1)[0] if "." in key else "" for key in keys}
    assert sections <= set(SECTIONS), sections - set(SECTIONS)


@pytest.mark.parametrize("command", RECIPE_COMMANDS)
def test_explain_on_every_recipe_command(command, capsys):
    assert main([*command.split(), "--explain"]) == 0
    lines = capsys.readouterr().out.splitlines()
    keys = schema_keys()
    for key, (cls, name) in keys.items():
        at = [i for i, line in enumerate(lines) if line.startswith(f"{key}: ")]
        assert len(at) == 1, f"{key} listed {len(at)} times"
        entry, help_line = lines[at[0]], lines[at[0] + 1]
        assert " = " in entry  # type = default
        assert help_line.startswith("    ") and help_line.strip() == help_for(cls, name)
    headers = [line for line in lines if line.startswith("# ")]
    for section in ("model", "data", "masks", "adapters", "pretrain", "pretrain.optim", "finetune",
                    "finetune.optim", "evaluate", "run"):
        assert any(h.startswith(f"# {section}: ") for h in headers), section


def test_explain_shows_each_section_s_own_defaults(capsys):
    assert main(["finetune", "--explain"]) == 0
    out = capsys.readouterr().out
    assert "finetune.optim.schedule: 'tri-stage' | 'linear-warmup' | 'constant' = 'tri-stage'" in out
    assert "pretrain.optim.schedule: 'tri-stage' | 'linear-warmup' | 'constant' = 'linear-warmup'" in out


def test_a_recipe_command_without_recipe_or_explain_says_what_to_give(capsys):
    assert main(["finetune"]) == 1
    assert "give a recipe" in capsys.readouterr().err

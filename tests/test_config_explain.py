"""Recipe keys are documented: --explain on every recipe command lists every key of every section with the help
its schema field carries."""
from __future__ import annotations

import dataclasses
import typing

import pytest

from lasp.cli import main
from lasp.config.recipe import section_type
from lasp.config.schema import RecipeConfig

RECIPE_COMMANDS = ["pretrain", "finetune", "evaluate", "validate", "run", "report", "masks prune"]


def schema_keys() -> tuple[dict[str, dataclasses.Field], dict[str, dataclasses.Field]]:
    """(every dotted recipe key -> its field, every section -> the field holding it), walking the schema itself:
    nested sections, the optional run section, and one entry of run.variants (``run.variants[i].<key>``)."""
    keys: dict[str, dataclasses.Field] = {}
    sections: dict[str, dataclasses.Field] = {}

    def walk(cls: type, prefix: str) -> None:
        hints = typing.get_type_hints(cls)
        for f in dataclasses.fields(cls):
            section = section_type(hints[f.name])
            if section is not None:
                sections[prefix + f.name] = f
                walk(section, f"{prefix}{f.name}.")
                continue
            keys[prefix + f.name] = f
            if typing.get_origin(hints[f.name]) is list:
                (item,) = typing.get_args(hints[f.name])
                if dataclasses.is_dataclass(item):
                    walk(item, f"{prefix}{f.name}[i].")

    walk(RecipeConfig, "")
    return keys, sections


def test_every_schema_key_and_section_has_help():
    keys, sections = schema_keys()
    assert {"run.parallel", "finetune.optim.lr", "masks.sparsity", "data.alpha", "run.variants[i].score_on"} <= set(keys)
    assert {"masks", "data", "run", "pretrain.optim", "finetune.optim"} <= set(sections)
    undocumented = [key for key, f in {**keys, **sections}.items() if len(f.metadata.get("help", "").strip()) < 10]
    assert not undocumented, f"add metadata={{'help': ...}} to the schema fields: {', '.join(undocumented)}"


@pytest.mark.parametrize("command", RECIPE_COMMANDS)
def test_explain_on_every_recipe_command(command, capsys):
    assert main([*command.split(), "--explain"]) == 0
    lines = capsys.readouterr().out.splitlines()
    keys, sections = schema_keys()
    for key, f in keys.items():
        at = [i for i, line in enumerate(lines) if line.startswith(f"{key}: ")]
        assert len(at) == 1, f"{key} listed {len(at)} times"
        entry, help_line = lines[at[0]], lines[at[0] + 1]
        assert " = " in entry  # type = default
        assert help_line.startswith("    ") and help_line.strip() == f.metadata["help"]
    headers = [line for line in lines if line.startswith("# ")]
    assert headers[0] == "# top-level settings"
    for section, f in sections.items():
        assert f"# {section}: {f.metadata['help']}" in headers, section
    assert any(h.startswith("# run.variants[i]: One ablation of `lasp run`") for h in headers)


def test_explain_shows_each_section_s_own_defaults(capsys):
    assert main(["finetune", "--explain"]) == 0
    out = capsys.readouterr().out
    assert "finetune.optim.schedule: 'tri-stage' | 'linear-warmup' | 'constant' = 'tri-stage'" in out
    assert "pretrain.optim.schedule: 'tri-stage' | 'linear-warmup' | 'constant' = 'linear-warmup'" in out
    assert "# pretrain.optim: optimizer and learning-rate schedule of pre-training" in out
    assert "# finetune.optim: optimizer and learning-rate schedule of fine-tuning" in out
    assert "run.parallel: int = 2\n    stage processes running side by side, one thread each" in out
    assert "masks.sparsity: float = 0.5\n    fraction in [0, 1) of each targeted tensor" in out


def test_a_recipe_command_without_recipe_or_explain_says_what_to_give(capsys):
    assert main(["finetune"]) == 1
    assert "give a recipe" in capsys.readouterr().err

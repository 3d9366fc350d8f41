"""`lasp <command> --explain`: every recipe key with its type, default and help, section by section.

Everything printed comes from the schema itself: types from the annotations, defaults from a section's own
defaults, help and section headings from each field's ``metadata["help"]``.
"""
from __future__ import annotations

import dataclasses
import typing
from typing import Any

from lasp.config.recipe import section_type, type_name
from lasp.config.schema import RecipeConfig


def field_help(f: dataclasses.Field) -> str:
    """The help line of a schema field ('' if it has none)."""
    return f.metadata.get("help", "")


def explain() -> list[str]:
    """``# section: heading``, then per key ``key: type = default`` and an indented line of help.

    Defaults are those of a recipe that leaves the key out (a section's own defaults, so
    finetune.optim.schedule shows tri-stage). The keys of one entry of a list of sections (``run.variants``)
    are listed as ``run.variants[i].<key>`` under the first line of that section's docstring.
    """
    lines: list[str] = []

    def walk(cls: type, instance: Any, prefix: str, heading: str) -> None:
        hints = typing.get_type_hints(cls)
        fields = dataclasses.fields(cls)
        sections = {f.name: section_type(hints[f.name]) for f in fields}
        scalars = [f for f in fields if sections[f.name] is None]
        if scalars:
            section = prefix.rstrip(".")
            lines.append(f"# {section}: {heading}" if section else f"# {heading}")
        for f in scalars:
            lines.append(f"{prefix}{f.name}: {type_name(hints[f.name])} = {getattr(instance, f.name)!r}")
            lines.append(f"    {field_help(f)}")
            item = _list_item_section(hints[f.name])
            if item is not None:
                walk(item, item(), f"{prefix}{f.name}[i].", _summary(item))
        for f in fields:
            section = sections[f.name]
            if section is not None:
                value = getattr(instance, f.name)
                walk(section, value if value is not None else section(), f"{prefix}{f.name}.", field_help(f))

    walk(RecipeConfig, RecipeConfig(), "", "top-level settings")
    return lines


def _summary(cls: type) -> str:
    """The first line of a section class's docstring: the heading of one entry of a list of such sections."""
    return (cls.__doc__ or "").strip().splitlines()[0]


def _list_item_section(tp: Any) -> type | None:
    if typing.get_origin(tp) is list:
        (item,) = typing.get_args(tp)
        return item if dataclasses.is_dataclass(item) else None
    return None

"""A `lasp run` report read back as numbers: its markdown tables and image links, compared with the files the stages
wrote (eval-*/results.json, */final/train_summary.json, the test manifest). The end-to-end tests check these rather
than the report's sentences."""
from __future__ import annotations

import json
import re
from pathlib import Path

import pytest


def _cells(line: str) -> list[str]:
    return [c.strip() for c in line.strip().strip("|").split("|")]


def table(text: str, column: str) -> list[dict[str, str]]:
    """The rows of the first markdown table with a column headed ``column``, each as {header: cell}."""
    lines = text.splitlines()
    for i, line in enumerate(lines[:-1]):
        ruled = re.fullmatch(r"\|(\s*:?-+:?\s*\|)+", lines[i + 1])
        if line.startswith("|") and column in _cells(line) and ruled:
            header = _cells(line)
            rows = []
            for row in lines[i + 2:]:
                if not row.startswith("|"):
                    break
                cells = _cells(row)
                assert len(cells) == len(header), row
                rows.append(dict(zip(header, cells)))
            return rows
    raise AssertionError(f"the report has no table with a column {column!r}")


def rows_by(rows: list[dict[str, str]], key: str) -> dict[str, dict[str, str]]:
    out = {row[key]: row for row in rows}
    assert len(out) == len(rows), f"repeated {key} rows"
    return out


def read_results(out: Path, systems) -> dict[str, dict]:
    return {s: json.loads((out / f"eval-{s}" / "results.json").read_text()) for s in systems}


def check_error_rates(text: str, results: dict[str, dict], languages) -> None:
    """One row per system; every CER / WER cell and the macro CER equal the system's results.json (3 decimals)."""
    rows = rows_by(table(text, "**macro CER**"), "system")
    assert list(rows) == list(results)
    for system, result in results.items():
        for lang in languages:
            cer, wer = (float(v) for v in rows[system][f"{lang} CER / WER"].split(" / "))
            assert cer == pytest.approx(result["languages"][lang]["cer"], abs=5e-4), (system, lang)
            assert wer == pytest.approx(result["languages"][lang]["wer"], abs=5e-4), (system, lang)
        assert float(rows[system]["**macro CER**"].strip("*")) == pytest.approx(result["macro"]["cer"], abs=5e-4)
        assert float(rows[system]["macro WER"]) == pytest.approx(result["macro"]["wer"], abs=5e-4)


def check_scored(text: str, results: dict[str, dict], test_manifest: Path, languages) -> dict[str, int]:
    """One row per language: utterances listed in the test manifest, and scored per system as in results.json.
    Returns the listed counts."""
    listed: dict[str, int] = {}
    for line in test_manifest.read_text().splitlines():
        lang = json.loads(line)["lang"]
        listed[lang] = listed.get(lang, 0) + 1
    rows = rows_by(table(text, "test utterances listed"), "language")
    assert list(rows) == list(languages)
    for lang in languages:
        assert int(rows[lang]["test utterances listed"]) == listed[lang], lang
        for system, result in results.items():
            assert int(rows[lang][f"scored ({system})"]) == result["languages"][lang]["utterances"], (lang, system)
    return listed


def training_steps(text: str) -> dict[str, tuple[int | None, int | None]]:
    """(pre-training steps, fine-tuning steps) per system from the training table; None where it shows '–'."""
    def steps(cell: str) -> int | None:
        return None if cell == "–" else int(cell)

    return {s: (steps(r["pre-training steps"]), steps(r["fine-tuning steps"]))
            for s, r in rows_by(table(text, "fine-tuning steps"), "system").items()}


def linked_files(report: Path) -> list[Path]:
    """Every file the report links to (images, other reports), resolved against the report's folder."""
    links = re.findall(r"\]\(([^)\s]+)\)", report.read_text())
    return [(report.parent / link).resolve() for link in links if "://" not in link]

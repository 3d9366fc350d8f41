"""The report of the continual experiment (:mod:`lasp.run.continual`): what adding languages one at a time did.

* every language's CER at every step (step 0: the first languages trained jointly; step i: after adding the i-th
  language), with the hierarchical bootstrap interval of :mod:`lasp.analysis.stats` (seeds, then utterances);
* backward transfer: each earlier language's CER change at each step, and whether its every hypothesis is the
  same string as before (the update rule promises bit-identical outputs, so the change must be exactly 0), and
  the same for the control (the rule switched off);
* each added language's CER against training every language jointly from the start and against an MMS adapter
  added to the same frozen system, as paired differences with bootstrap intervals;
* the bytes each way of adding a language, read from the folders the stages wrote.
"""
from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Protocol, Sequence

from lasp.analysis.stats import cer_interval, compare
from lasp.analysis.tables import write_json
from lasp.analysis.utterances import read_eval_dir, read_recogs
from lasp.io import atomic_write
from lasp.masks.bits import packed_shape
from lasp.masks.store import stored_bytes

N_BOOT = 2000


class LanguageOrder(Protocol):
    """The order of the experiment (a recipe's ``continual`` section has it): the languages trained jointly
    first, then the ones added one at a time."""

    first: Sequence[str]
    add: Sequence[str]


def _steps(cont: LanguageOrder) -> list[tuple[str, str, list[str]]]:
    """(label, folder under a seed's output, languages served) of step 0 and every addition."""
    steps = [("0", "eval-first", list(cont.first))]
    for i, lang in enumerate(cont.add, 1):
        steps.append((f"+{lang}", f"add-{i}-{lang}/eval", list(cont.first) + list(cont.add[:i])))
    return steps


def _scores(run_dirs: Sequence[Path], folder: str, languages: Sequence[str]) -> dict | None:
    """{seed index: {lang: LanguageScores}} when every seed has evaluated ``folder``, else None."""
    out = {}
    for s, run in enumerate(run_dirs):
        if not (Path(run) / folder / "results.json").is_file():
            return None
        out[s] = read_eval_dir(Path(run) / folder, list(languages))
    return out


def _interval(scores: dict, lang: str | Sequence[str]) -> dict:
    mean, low, high = cer_interval(scores, lang, n_boot=N_BOOT)
    return {"cer": mean, "low": low, "high": high}


def _same_hypotheses(run_dirs: Sequence[Path], a: str, b: str, lang: str) -> bool:
    """Every utterance of ``lang`` decoded to the same string in evaluation folders ``a`` and ``b`` (all seeds)."""
    return all(read_recogs(Path(r) / a / f"recogs-{lang}.txt") == read_recogs(Path(r) / b / f"recogs-{lang}.txt")
               for r in run_dirs)


def _size(path: Path) -> int | None:
    return path.stat().st_size if path.is_file() else None


def _bytes_of_addition(run: Path, folder: str, lang: str, previous: str) -> dict | None:
    """What the system in ``folder`` stores beyond the one in ``previous`` for ``lang``: the growth of the whole
    stored mask set (adding a language shrinks the core, so every delta may grow), its raw mask bits, its own
    tensors (head, adapters), the shared model's size."""
    final, before = run / folder / "final", run / previous / "final"
    if not (final / "lasp_system.json").is_file() or not (before / "lasp_system.json").is_file():
        return None
    summary = json.loads((final / "train_summary.json").read_text(encoding="utf-8"))
    config = json.loads((final / "masks" / "mask_config.json").read_text(encoding="utf-8"))
    raw = sum(math.prod(packed_shape(shape)) for shape in config["parameters"].values())
    return {"mask": stored_bytes(final / "masks")["total"] - stored_bytes(before / "masks")["total"],
            "mask_raw": raw, "own": _size(final / "added" / f"{lang}.safetensors"),
            "shared_model": _size(final / "shared" / "model.safetensors"), "own_values": summary.get("own_values"),
            "exclusive_weights": summary.get("exclusive_weights")}


def _mean(values: list) -> float | None:
    values = [v for v in values if v is not None]
    return sum(values) / len(values) if values else None


def continual_summary(run_dirs: Sequence[Path], cont: LanguageOrder) -> dict:
    """Everything the report shows, as a plain mapping (what ``continual.json`` holds)."""
    run_dirs = [Path(r) for r in run_dirs]
    steps, table, scores = _steps(cont), {}, {}
    for label, folder, served in steps:
        got = _scores(run_dirs, folder, served)
        if got is not None:
            scores[label] = (folder, got)
            table[label] = {lang: _interval(got, lang) for lang in served}
    backward = []
    for (label, folder, served), (prev_label, prev_folder, prev_served) in zip(steps[1:], steps):
        if label in scores and prev_label in scores:
            for lang in prev_served:
                backward.append({"step": label, "language": lang,
                                 "change": table[label][lang]["cer"] - table[prev_label][lang]["cer"],
                                 "same_hypotheses": _same_hypotheses(run_dirs, folder, prev_folder, lang)})
    last = next((label for label, _, _ in reversed(steps) if label in scores), None)
    learned = {lang: "0" for lang in cont.first} | {lang: f"+{lang}" for lang in cont.add}
    bwt = None
    if last is not None and last != "0":
        earlier = [l for l, _, _ in steps]
        olds = [lang for lang in table[last] if earlier.index(learned[lang]) < earlier.index(last)]
        bwt = sum(table[last][l]["cer"] - table[learned[l]][l]["cer"] for l in olds) / len(olds)
    joint = _scores(run_dirs, "eval-joint", list(cont.first) + list(cont.add))
    new, control = {}, {}
    for i, lang in enumerate(cont.add, 1):
        label = f"+{lang}"
        rows = {}
        systems = {"lasp addition": scores.get(label, (None, None))[1],
                   "joint from the start": joint,
                   "MMS adapter, same frozen system": _scores(run_dirs, f"adapter-{lang}/eval", [lang]),
                   "rule off (shared weights train)": _scores(run_dirs, f"control-{lang}/eval", [lang])}
        for name, sc in systems.items():
            if sc is None:
                continue
            rows[name] = _interval(sc, lang)
            if name != "lasp addition" and systems["lasp addition"] is not None:
                c = compare(systems["lasp addition"], sc, [lang], names=("lasp addition", name), n_boot=N_BOOT)
                rows[name]["lasp_minus_this"] = {"difference": c.difference, "low": c.low, "high": c.high,
                                                 "verdict": c.verdict}
        previous = "finetune-first" if i == 1 else f"add-{i - 1}-{cont.add[i - 2]}"
        bytes_each = {name: [_bytes_of_addition(r, f"{prefix}{lang}", lang, previous) for r in run_dirs]
                      for name, prefix in (("lasp addition", f"add-{i}-"), ("MMS adapter, same frozen system",
                                                                             "adapter-"),
                                           ("rule off (shared weights train)", "control-"))}
        sizes = {}
        for name, per_seed in bytes_each.items():
            if all(b is not None for b in per_seed):
                sizes[name] = {k: _mean([b[k] for b in per_seed]) for k in per_seed[0]}
        new[lang] = {"cer": rows, "bytes": sizes}
        ctrl = _scores(run_dirs, f"control-{lang}/eval", list(cont.first))
        if ctrl is not None and "0" in scores:
            control[lang] = {}
            for old in cont.first:
                c = compare(ctrl, scores["0"][1], [old], names=(f"control-{lang}", "step 0"), n_boot=N_BOOT)
                control[lang][old] = {"change": c.difference, "low": c.low, "high": c.high, "verdict": c.verdict,
                                      "same_hypotheses": _same_hypotheses(run_dirs, f"control-{lang}/eval",
                                                                          "eval-first", old)}
    joint_bytes = [(_size(r / "finetune-joint" / "final" / "shared" / "model.safetensors"),
                    stored_bytes(r / "finetune-joint" / "final" / "masks")["total"])
                   if (r / "finetune-joint" / "final" / "lasp_system.json").is_file() else None for r in run_dirs]
    return {"seeds": len(run_dirs), "steps": [s[0] for s in steps], "table": table, "backward": backward,
            "backward_transfer": bwt, "new": new, "control": control,
            "joint_bytes": {"shared_model": _mean([b[0] for b in joint_bytes if b]),
                            "masks": _mean([b[1] for b in joint_bytes if b])} if all(joint_bytes) else None}


def _cell(entry: dict | None) -> str:
    if entry is None:
        return "–"
    return f"{entry['cer']:.3f} [{entry['low']:.3f}, {entry['high']:.3f}]"


def _kib(value) -> str:
    return "–" if value is None or (isinstance(value, float) and math.isnan(value)) else f"{value / 1024:,.1f} KiB"


def format_report(summary: dict, cont: LanguageOrder, command: str) -> str:
    steps = summary["steps"]
    langs = list(cont.first) + list(cont.add)
    lines = [f"# Continual languages: {', '.join(cont.first)}, then {', '.join('+' + l for l in cont.add)}", "",
             f"`{command}`", "",
             f"CER per language after each step (mean over {summary['seeds']} seed(s); 95 % hierarchical bootstrap "
             "interval over seeds and test utterances). Step 0 trains the first languages jointly; each `+x` "
             "step adds x to the previous step's system with `lasp add-language` (rule: exclusive weights).", "",
             "| language | " + " | ".join(f"step {s}" for s in steps) + " |",
             "|---|" + "---|" * len(steps)]
    for lang in langs:
        lines.append(f"| {lang} | " + " | ".join(_cell(summary["table"].get(s, {}).get(lang)) for s in steps) + " |")
    lines += ["", "## Backward transfer", ""]
    if summary["backward"]:
        moved = [b for b in summary["backward"] if b["change"] != 0 or not b["same_hypotheses"]]
        lines.append(f"Across {len(summary['backward'])} (step, earlier language) pairs: "
                     + ("every CER change is exactly 0 and every hypothesis string is unchanged."
                        if not moved else f"{len(moved)} pairs changed: "
                        + ", ".join(f"{b['language']} at {b['step']} ({b['change']:+.4f})" for b in moved)))
        if summary["backward_transfer"] is not None:
            lines.append(f"Backward transfer (mean CER change of the earlier languages from when each was "
                         f"learnt to the last step): {summary['backward_transfer']:+.6f}.")
    else:
        lines.append("(no addition evaluated yet)")
    for lang, per_old in summary["control"].items():
        lines += ["", f"With the rule switched off (`add_language.rule=shared`: adding {lang} trains its whole mask, "
                      "the unmasked weights and its head), the first languages' CER change against step 0, paired:",
                  "", "| language | change | 95 % interval | verdict | hypotheses unchanged |", "|---|---|---|---|---|"]
        for old, c in per_old.items():
            lines.append(f"| {old} | {c['change']:+.4f} | [{c['low']:+.4f}, {c['high']:+.4f}] | {c['verdict']} | "
                         f"{'yes' if c['same_hypotheses'] else 'no'} |")
    lines += ["", "## The added languages against joint training and MMS adapters", "",
              "Paired differences are lasp addition − the other (negative: the addition has the lower CER).", "",
              "| language | system | CER [95 % interval] | lasp addition − this | verdict |", "|---|---|---|---|---|"]
    for lang, entry in summary["new"].items():
        for name, row in entry["cer"].items():
            d = row.get("lasp_minus_this")
            lines.append(f"| {lang} | {name} | {_cell(row)} | "
                         + (f"{d['difference']:+.4f} [{d['low']:+.4f}, {d['high']:+.4f}] | {d['verdict']} |"
                            if d else "– | – |"))
    lines += ["", "## Extra bytes per added language", "",
              "What the new system stores beyond the previous one, read from the files (mean over seeds): the "
              "growth of the stored mask set (a core plus coded deltas; the raw bits of one mask for "
              "comparison), the language's own tensors (head; adapters). The exclusive rule trains weights at "
              "positions of the shared tensor no earlier language reads, so it stores no weight copy; the control "
              "changes shared weights, so keeping the earlier languages as they were needs a second copy of the "
              "shared model; joint training from the start retrains every weight.", "",
              "| language | way | mask set grows by | (raw mask bits) | own tensors | copy of the shared model | "
              "values trained |", "|---|---|---|---|---|---|---|"]
    for lang, entry in summary["new"].items():
        for name, b in entry["bytes"].items():
            copy = _kib(b["shared_model"]) if name.startswith("rule off") else "none"
            if name == "lasp addition":
                what = f"{int(b['exclusive_weights']):,} exclusive weights + {int(b['own_values']):,} head values"
            elif name.startswith("MMS"):
                what = f"{int(b['own_values']):,} (adapters + head)"
            else:
                what = "its whole mask, every unmasked weight, its head"
            lines.append(f"| {lang} | {name} | {_kib(b['mask'])} | {_kib(b['mask_raw'])} | {_kib(b['own'])} | "
                         f"{copy} | {what} |")
    if summary["joint_bytes"]:
        jb = summary["joint_bytes"]
        lines.append(f"| all | joint from the start | {_kib(jb['masks'])} (every language) | – | "
                     f"{_kib(jb['shared_model'])} (a new system) | every weight |")
    return "\n".join(lines) + "\n"


def write_continual_report(report: str | Path, cont: LanguageOrder, run_dirs: Sequence[Path],
                           wall_total: float | None = None, command: str = "lasp run RECIPE") -> Path:
    """The markdown ``report`` (opening with ``command``) and ``continual.json`` beside it."""
    summary = continual_summary(run_dirs, cont)
    if wall_total is not None:
        summary["wall_s"] = round(wall_total, 1)
    report = Path(report)
    report.parent.mkdir(parents=True, exist_ok=True)
    write_json(summary, report.parent / "continual.json")
    atomic_write(report, format_report(summary, cont, command))
    return report

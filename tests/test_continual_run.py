"""`lasp run` of the continual recipe: the stage graph, and the whole experiment at toy size through real stages."""
import json
from pathlib import Path

import pytest

from lasp.config.recipe import load_recipe
from lasp.errors import ConfigError
from lasp.run.continual import continual_settings, plan_continual, run_continual
from lasp.run.runner import run_settings

RECIPE = Path(__file__).resolve().parents[1] / "recipes" / "continual.yaml"


def test_recipe_opens_with_its_command_and_plans_the_chain(tmp_path):
    assert RECIPE.read_text().startswith("# lasp run recipes/continual.yaml")
    cfg = load_recipe(RECIPE, [f"output_dir={tmp_path}", "run.seeds=[]"])
    jobs = {j.name: j for j in plan_continual(cfg, run_settings(cfg), continual_settings(cfg, run_settings(cfg)),
                                              tmp_path / "stages.yaml")}
    assert jobs["add-1-it"].deps == ["finetune-first"] and jobs["add-2-tr"].deps == ["add-1-it"]
    # each baseline is added to the same frozen system as the lasp addition of its language
    assert jobs["adapter-tr"].deps == ["add-1-it"] and "add_language.rule=adapter" in jobs["adapter-tr"].argv
    assert "add_language.rule=shared" in jobs["control-it"].argv and "control-tr" not in jobs
    assert 'data.languages=["es", "pt", "de", "ru"]' in jobs["base"].argv
    assert 'data.languages=["es", "pt", "de", "ru", "it", "tr"]' in jobs["finetune-joint"].argv
    assert "--langs" in jobs["masks"].argv and "es,pt,de,ru,it,tr" in jobs["masks"].argv


def test_bad_continual_settings_are_named():
    for override, message in (("continual.add=[es]", "'es' is in both"), ("continual.add=[xx]", "continual.add: 'xx'"),
                              ("continual.add_steps=0", "add_steps")):
        cfg = load_recipe(RECIPE, [override])
        with pytest.raises(ConfigError, match=message):
            continual_settings(cfg, run_settings(cfg))


def test_toy_continual_run_end_to_end(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    cfg = load_recipe(RECIPE, [
        "output_dir=out", "masks.max_batches=1", "masks.min_utterances=2", "run.seeds=[]",
        "run.corpus=out/corpus", "run.languages=[es,de,ru]", "run.train_utterances=6", "run.test_utterances=2",
        "run.dev_utterances=1", "run.base_steps=2", "run.base_threads=1", "run.report=out/report.md",
        "pretrain.max_steps=2", "finetune.max_steps=3", "finetune.optim.warmup_steps=1",
        "pretrain.optim.warmup_steps=1", "pretrain.ckpt_every=2", "finetune.ckpt_every=3",
        "continual.first=[es,de]", "continual.add=[ru]", "continual.add_steps=2",
    ])
    report = run_continual(cfg, progress=False).read_text()
    summary = json.loads((tmp_path / "out" / "continual.json").read_text())
    assert summary["steps"] == ["0", "+ru"]
    # the update rule: no earlier language moved, not by one hypothesis
    assert {(b["language"], b["change"], b["same_hypotheses"]) for b in summary["backward"]} == \
        {("es", 0.0, True), ("de", 0.0, True)}
    assert summary["backward_transfer"] == 0.0
    assert set(summary["new"]["ru"]["cer"]) == {"lasp addition", "joint from the start",
                                                "MMS adapter, same frozen system", "rule off (shared weights train)"}
    assert "every CER change is exactly 0 and every hypothesis string is unchanged" in report
    assert "| ru | lasp addition |" in report and "Extra bytes per added language" in report


def _eval_dir(path: Path, hyps: dict[str, list[str]], refs: dict[str, list[str]]) -> None:
    from lasp.train.evaluate import score

    path.mkdir(parents=True)
    results = {"languages": {}}
    for lang, hs in hyps.items():
        (path / f"recogs-{lang}.txt").write_text("".join(f"{lang}{i}\t{r}\t{h}\n" for i, (r, h) in
                                                         enumerate(zip(refs[lang], hs))), encoding="utf-8")
        results["languages"][lang] = score(refs[lang], hs)
    (path / "results.json").write_text(json.dumps(results), encoding="utf-8")


def test_report_counts_every_changed_hypothesis(tmp_path):
    """Backward transfer from the evaluation folders: a changed hypothesis of an earlier language is reported, and
    its CER change enters the backward transfer."""
    from lasp.analysis.continual import continual_summary
    from lasp.config.schema import ContinualConfig

    refs = {"es": ["la casa", "el perro", "una mesa"], "de": ["das haus", "der hund", "ein tisch"],
            "ru": ["дом", "собака", "стол"]}
    first = {"es": ["la casa", "el pero", "una mesa"], "de": ["das haus", "der hund", "ein tisch"]}
    _eval_dir(tmp_path / "eval-first", first, refs)
    _eval_dir(tmp_path / "add-1-ru" / "eval", {**first, "de": ["das haus", "der hunt", "ein tisch"],
                                               "ru": ["дом", "собак", "стол"]}, refs)
    summary = continual_summary([tmp_path], ContinualConfig(first=["es", "de"], add=["ru"], control=False))
    moved = {b["language"]: (b["change"], b["same_hypotheses"]) for b in summary["backward"]}
    assert moved["es"] == (0.0, True)
    assert moved["de"][0] > 0 and moved["de"][1] is False
    assert summary["backward_transfer"] == pytest.approx(moved["de"][0] / 2)
    assert summary["table"]["+ru"]["ru"]["cer"] == pytest.approx(1 / 13)  # one deletion in 13 reference chars

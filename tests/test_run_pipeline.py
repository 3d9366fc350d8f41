"""`lasp run`: the stage graph, and the whole pipeline at toy size through the real stage processes."""
import json
from pathlib import Path

import pytest

from lasp.config.recipe import load_recipe
from lasp.errors import ConfigError
from lasp.run.inputs import corpus_kind, make_corpus
from lasp.run.runner import demo_recipe_path, plan_jobs, run, run_settings
from lasp.run.schedule import _progress
from lasp.run.seeds import spread_sentence
from report_tables import check_error_rates, check_scored, linked_files, read_results, training_steps


def test_lasp_run_without_a_recipe_runs_the_demo_shipped_inside_the_package(tmp_path, monkeypatch):
    import lasp
    import lasp.run.runner as runner
    from lasp.cli import main

    monkeypatch.chdir(tmp_path)
    started = []
    monkeypatch.setattr(runner, "run", lambda cfg, **kw: started.append(cfg))
    assert main(["run"]) == 0
    cfg = started[0]
    assert cfg.output_dir == "runs/demo" and cfg.model.name == "tiny"
    assert run_settings(cfg).systems == ["shared", "lasp", "random", "adapters"]
    # KEY=VALUE without a recipe overrides the demo (it is not read as a recipe path)
    assert main(["run", "run.parallel=1", "seed=3"]) == 0
    assert started[-1].run.parallel == 1 and started[-1].seed == 3 and started[-1].output_dir == "runs/demo"
    # inside the package (setup.cfg's package_data), so an installed lasp has it without the repository
    assert demo_recipe_path().relative_to(Path(lasp.__file__).parent).match("recipes/*.yaml")


def test_stage_graph(tmp_path):
    cfg = load_recipe(demo_recipe_path(), [f"output_dir={tmp_path}", f"masks.dir={tmp_path}/m"])
    jobs = {j.name: j for j in plan_jobs(cfg, run_settings(cfg), tmp_path / "stages.yaml")}
    assert set(jobs) == {"base", "masks", "pretrain-shared", "pretrain-lasp", "pretrain-random",
                         "finetune-shared", "finetune-lasp", "finetune-random", "finetune-adapters",
                         "evaluate-shared", "evaluate-lasp", "evaluate-random", "evaluate-adapters"}
    assert jobs["masks"].deps == ["base"] and jobs["pretrain-lasp"].deps == ["masks"]
    assert jobs["pretrain-shared"].deps == ["base"]
    # adapters are a fine-tuning method: they start from the shared model after the same pre-training
    assert jobs["finetune-adapters"].deps == ["pretrain-shared"]
    assert f"finetune.init={tmp_path}/pretrain-shared/final" in jobs["finetune-adapters"].argv
    assert jobs["evaluate-lasp"].deps == ["finetune-lasp"]
    assert "--scorer" in jobs["masks"].argv and "taylor" in jobs["masks"].argv


def test_progress_shows_steps_or_the_time_budget(tmp_path):
    cfg = load_recipe(demo_recipe_path(), [f"output_dir={tmp_path}"])
    jobs = {j.name: j for j in plan_jobs(cfg, run_settings(cfg), tmp_path / "stages.yaml")}
    # the demo trains every stage for a fixed number of steps
    assert _progress(jobs["base"], 170, 30.4) == f" step 170/{cfg.run.base_steps} (30s)"
    assert "pretrain.max_minutes=null" in jobs["base"].argv
    assert _progress(jobs["finetune-lasp"], 80, 24.0) == f" step 80/{cfg.finetune.max_steps} (24s)"
    assert _progress(jobs["masks"], None, 5.0) == " (5s)"
    # a stage with a wall-time budget shows progress against that budget
    cfg = load_recipe(demo_recipe_path(), [f"output_dir={tmp_path}", "run.base_minutes=2", "finetune.max_minutes=6"])
    jobs = {j.name: j for j in plan_jobs(cfg, run_settings(cfg), tmp_path / "stages.yaml")}
    assert "pretrain.max_minutes=2.0" in jobs["base"].argv
    assert _progress(jobs["base"], 170, 30.4) == " step 170 (30s of 120s)"
    assert _progress(jobs["finetune-lasp"], 80, 24.0) == " step 80 (24s of 360s)"


def test_every_pretraining_stage_is_scheduled_before_any_finetuning(tmp_path):
    cfg = load_recipe(demo_recipe_path(), [f"output_dir={tmp_path}"])
    names = [j.name for j in plan_jobs(cfg, run_settings(cfg), tmp_path / "stages.yaml")]
    kinds = [n.split("-")[0] for n in names]
    assert kinds == sorted(kinds, key=["base", "masks", "pretrain", "finetune", "evaluate"].index)
    assert names.index("pretrain-random") < names.index("finetune-shared")


def test_demo_systems_train_equal_steps():
    cfg = load_recipe(demo_recipe_path())
    assert cfg.finetune.max_minutes is None and cfg.pretrain.max_minutes is None
    assert cfg.run.base_minutes is None


def test_bad_run_settings_are_named_when_the_recipe_loads():
    for override, key in (("run.base_steps=0", "run.base_steps"), ("run.base_minutes=-1", "run.base_minutes"),
                          ("run.parallel=0", "run.parallel"), ("run.base_threads=0", "run.base_threads")):
        with pytest.raises(ConfigError, match=f"demo.yaml: key '{key}' must be"):
            load_recipe(demo_recipe_path(), [override])


def test_unknown_system_is_named():
    with pytest.raises(ConfigError, match=r"key 'run.systems\[1\]' must be one of 'shared', 'lasp', 'random', "
                                          r"'adapters', got 'lora'"):
        load_recipe(demo_recipe_path(), ["run.systems=[shared,lora]"])


def test_a_recipe_without_a_run_section_is_refused_by_lasp_run(tmp_path):
    cfg = load_recipe(None)
    assert cfg.run is None
    with pytest.raises(ConfigError, match="this recipe has no 'run' section"):
        run_settings(cfg)


@pytest.mark.e2e
def test_toy_run_end_to_end(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    cfg = load_recipe(demo_recipe_path(), [
        "output_dir=out", "masks.dir=out/masks-lasp", "masks.max_batches=1", "masks.min_utterances=2",
        "run.corpus=out/corpus", "run.languages=[es,de]", "run.train_utterances=6", "run.test_utterances=2",
        "run.dev_utterances=1", "run.base_minutes=1", "run.base_steps=3", "run.base_threads=1",
        "run.report=out/report.md", "pretrain.max_steps=2", "finetune.max_steps=3", "finetune.optim.warmup_steps=1",
        "pretrain.optim.warmup_steps=1", "pretrain.ckpt_every=2", "finetune.ckpt_every=3",
    ])
    report = run(cfg, progress=False)
    out = tmp_path / "out"
    text = report.read_text()
    systems, languages = ["shared", "lasp", "random", "adapters"], ["es", "de"]
    results = read_results(out, systems)
    for system in systems:
        assert set(results[system]["languages"]) == set(languages)
    check_error_rates(text, results, languages)  # a row per system, the numbers of results.json
    assert check_scored(text, results, out / "corpus/test.jsonl", languages) == {"es": 2, "de": 2}
    # every system fine-tunes the same 3 steps; adapters start from the shared pre-training, the others pre-train
    assert training_steps(text) == {"shared": (2, 3), "lasp": (2, 3), "random": (2, 3), "adapters": (None, 3)}
    for system in systems:
        summary = json.loads((out / f"finetune-{system}/final/train_summary.json").read_text())
        assert summary["step"] == 3
    assert json.loads((out / "base/final/train_summary.json").read_text())["step"] == 3  # run.base_steps
    assert (out / "finetune-lasp/final/es/config.json").is_file()
    linked = linked_files(report)
    assert (out / "overlap/iou_heatmap.png").resolve() in linked
    assert all(p.stat().st_size > 0 for p in linked)
    # the demo recipe quotes the seed-to-seed spread of the benchmark shipped with lasp
    assert spread_sentence(cfg, run_settings(cfg)) in text
    # a second run finds every stage done and only rewrites the report
    mtime = (out / "finetune-lasp/final/train_summary.json").stat().st_mtime
    run(cfg, progress=False)
    assert (out / "finetune-lasp/final/train_summary.json").stat().st_mtime == mtime


def test_a_local_checkpoint_is_the_base(tmp_path):
    ckpt = tmp_path / "xlsr"
    ckpt.mkdir()
    cfg = load_recipe(demo_recipe_path(), [f"output_dir={tmp_path}/out", f"masks.dir={tmp_path}/m",
                                           f"model.name={ckpt}"])
    jobs = {j.name: j for j in plan_jobs(cfg, run_settings(cfg), tmp_path / "stages.yaml")}
    assert "base" not in jobs
    assert jobs["masks"].deps == [] and jobs["pretrain-shared"].deps == []
    assert jobs["masks"].argv[jobs["masks"].argv.index("--model") + 1] == str(ckpt)
    assert f"pretrain.init={ckpt}" in jobs["pretrain-lasp"].argv


def test_corpus_rules(tmp_path):
    corpus = tmp_path / "c"
    corpus.mkdir()
    assert corpus_kind(corpus) == "empty"
    (corpus / "train.jsonl").write_text("")
    assert corpus_kind(corpus) == "user"
    # a user corpus without a test manifest: lasp does not complete it by synthesizing into it
    cfg = load_recipe(demo_recipe_path(), [f"run.corpus={corpus}"])
    with pytest.raises(ConfigError, match=f"{corpus}: has no test.jsonl"):
        make_corpus(cfg, run_settings(cfg))
    cfg = load_recipe(demo_recipe_path(), [f"run.corpus={tmp_path / 'none'}", "run.synthesize=never"])
    with pytest.raises(ConfigError, match="run.synthesize is 'never'"):
        make_corpus(cfg, run_settings(cfg))
    assert not (tmp_path / "none").exists()


def test_report_states_scored_and_unreadable_per_language(tmp_path):
    """The report reads results.json as evaluate writes it: per language, utterances scored and unreadable ones."""
    from lasp.run.report import coverage_section

    test = tmp_path / "test.jsonl"
    test.write_text("".join(json.dumps({"audio": f"{l}{i}.mp3", "text": "a", "lang": l}) + "\n"
                            for l in ("es", "de") for i in range(3)))
    lang = {"cer": 0.5, "wer": 1.0}
    results = {"lasp": {"languages": {
        "es": {**lang, "utterances": 2, "unreadable": [{"id": "es1", "audio": "/cv/es1.mp3",
                                                        "reason": "audio file not found"}]},
        "de": {**lang, "utterances": 3, "unreadable": []}}}}
    text = "\n".join(coverage_section(results, {"test": str(test)}, ["es", "de"]))
    assert "| es | 3 | 2 |" in text and "| de | 3 | 3 |" in text
    assert "- es `es1` (/cv/es1.mp3): audio file not found" in text
    results["lasp"]["languages"]["es"]["unreadable"] = []
    results["lasp"]["languages"]["es"]["utterances"] = 3
    assert "Every listed test utterance could be read." in "\n".join(
        coverage_section(results, {"test": str(test)}, ["es", "de"]))
    # an evaluation that drops utterances without reporting them is called out
    results["lasp"]["languages"]["de"]["utterances"] = 1
    text = "\n".join(coverage_section(results, {"test": str(test)}, ["es", "de"]))
    assert "neither scored nor reported unreadable (missing from the error rates): lasp de: 2." in text
    assert "Every listed" not in text

"""`lasp run` over several seeds, with low-resource languages and ablation variants; the benchmark recipe's plan."""
from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from lasp.config.recipe import load_recipe
from lasp.errors import ConfigError
from lasp.run.runner import demo_recipe_path, plan_run, report_from_outputs, run, run_settings
from lasp.run.seeds import SHIPPED_SUMMARY, spread_sentence
from report_tables import check_error_rates, linked_files, read_results, rows_by, table

BENCHMARK = Path(__file__).resolve().parents[1] / "recipes" / "benchmark.yaml"
TOY = ["output_dir=out", "masks.dir=null", "masks.max_batches=1", "masks.min_utterances=1", "run.corpus=out/corpus",
       "run.languages=[es,de]", "run.train_utterances=6", "run.test_utterances=2", "run.dev_utterances=1",
       "run.base_steps=2", "run.base_threads=1", "run.report=out/report.md", "run.systems=[shared,lasp]", "pretrain.max_steps=2",
       "finetune.max_steps=2", "finetune.optim.warmup_steps=1", "pretrain.optim.warmup_steps=1",
       "pretrain.ckpt_every=2", "finetune.ckpt_every=2"]


def _langs(manifest: Path) -> dict[str, int]:
    counts: dict[str, int] = {}
    for line in manifest.read_text().splitlines():
        lang = json.loads(line)["lang"]
        counts[lang] = counts.get(lang, 0) + 1
    return counts


@pytest.mark.e2e
@pytest.mark.timeout(1800)  # the longest test: 15 min on 2 cores shared with a dozen other jobs
def test_two_seeds_low_resource_and_a_lass_variant_end_to_end(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    cfg = load_recipe(demo_recipe_path(), TOY + [
        "run.seeds=[0,1]", "run.low_resource=[de]", "run.low_factor=3",
        "run.variants=[{name: lass, overrides: {masks.method: lass, masks.lass_steps: 2}, pretrain: false}]"])
    report = run(cfg, progress=False)
    text = report.read_text()
    out = tmp_path / "out"
    systems = ["shared", "lasp", "lass"]
    results = {seed: read_results(out / f"seed-{seed}", systems) for seed in (0, 1)}
    for seed in (0, 1):
        # low-resource: de gets train_utterances / low_factor of the training utterances, es all of them
        assert _langs(out / f"corpus/seed-{seed}/train.jsonl") == {"es": 6, "de": 2}
        assert json.loads((out / f"seed-{seed}/masks-lass/mask_config.json").read_text())["method"] == "lass"
        # a seed's report compares the systems; the variants are in the report over seeds
        check_error_rates((out / f"seed-{seed}/report.md").read_text(),
                          {s: results[seed][s] for s in ("shared", "lasp")}, ["es", "de"])
    # each seed draws its own corpus
    assert (out / "corpus/seed-0/train.jsonl").read_text() != (out / "corpus/seed-1/train.jsonl").read_text()
    summary = json.loads((out / "seeds_summary.json").read_text())
    assert summary["seeds"] == [0, 1] and summary["groups"] == {"high": ["es"], "low": ["de"]}
    # the summary aggregates each seed's results.json; the report shows its mean ± std, a row per system
    across = rows_by(table(text, "high macro (es)"), "system")
    assert list(across) == systems
    for system in systems:
        macro = summary["aggregates"][system]["macro"]
        assert macro["per_seed"] == pytest.approx([results[seed][system]["macro"]["cer"] for seed in (0, 1)])
        assert _mean_std(across[system]["macro CER"]) == pytest.approx((macro["mean"], macro["std"]), abs=5e-4)
    # a claim per comparison and language group, with the summary's differences
    claims = table(text, "verdict")
    assert {(r["claim"], r["languages"]) for r in claims} == {
        ("lasp < shared", "all"), ("lasp < shared", "high: es"), ("lasp < shared", "low: de"),
        ("lass vs lasp", "all"), ("lass vs lasp", "high: es"), ("lass vs lasp", "low: de")}
    assert sorted(float(r["difference"]) for r in claims) == pytest.approx(
        sorted(c["difference"] for c in summary["comparisons"]), abs=5e-5)
    ablations = rows_by(table(text, "vs reference"), "variant")
    assert list(ablations) == ["lasp", "lass"]
    lass = summary["aggregates"]["lass"]["macro"]
    assert (ablations["lass"]["sparsity"], ablations["lass"]["pre-training"]) == ("0.5", "no")
    assert _mean_std(ablations["lass"]["macro CER"]) == pytest.approx((lass["mean"], lass["std"]), abs=5e-4)
    assert list(rows_by(table(text, "unique share"), "mask set")) == ["lasp", "lass"]
    linked = linked_files(report)
    for name in ("seed-0/report.md", "seed-1/report.md", "cer_by_language.png", "cer_vs_sparsity.png"):
        assert (out / name).resolve() in linked, name
    assert all(p.stat().st_size > 0 for p in linked)
    # `lasp report` rewrites the same reports from the outputs alone
    (out / "report.md").unlink()
    (out / "seed-1/report.md").unlink()
    rewritten = report_from_outputs(cfg).read_text()
    assert rewritten.split("Total wall time")[0].rstrip() == text.split("Total wall time")[0].rstrip()
    check_error_rates((out / "seed-1/report.md").read_text(), {s: results[1][s] for s in ("shared", "lasp")},
                      ["es", "de"])


def _mean_std(cell: str) -> tuple[float, float]:
    mean, std = cell.split(" ± ")
    return float(mean), float(std)


def _encoder_weight(system: Path):
    from safetensors.torch import load_file

    from lasp.models.layout import model_dir

    return load_file(str(model_dir(system) / "model.safetensors"))["wav2vec2.encoder.layers.0.attention.k_proj.weight"]


@pytest.mark.e2e
@pytest.mark.timeout(1800)
def test_adapters_variant_and_masks_scored_with_ctc_on_the_shared_system_end_to_end(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    cfg = load_recipe(demo_recipe_path(), TOY + [
        "run.systems=[shared,lasp,adapters]",
        "run.variants=[{name: adapters-frozen, system: adapters, overrides: {adapters.freeze_base: true}},"
        " {name: ctc, score_on: shared, pretrain: false}]"])
    jobs = {j.name: j for j in plan_run(cfg)}
    # CTC scoring waits for the shared system and reads it; the adapters variant starts where adapters start
    assert jobs["masks-ctc"].deps == ["finetune-shared"]
    argv = jobs["masks-ctc"].argv
    assert argv[argv.index("--model") + 1] == "out/finetune-shared/final" and argv[argv.index("--head") + 1] == "ctc"
    assert "finetune.init=out/pretrain-shared/final" in jobs["finetune-adapters-frozen"].argv
    assert "finetune.system=adapters" in jobs["finetune-adapters-frozen"].argv
    assert "pretrain-adapters-frozen" not in jobs and "masks-adapters-frozen" not in jobs
    text = run(cfg, progress=False).read_text()
    out = tmp_path / "out"
    meta = json.loads((out / "masks-ctc/mask_config.json").read_text())
    assert meta["head"] == "ctc" and meta["base_model"] == "out/finetune-shared/final"
    # the frozen variant leaves the encoder where it started; the adapters system trains it
    start = _encoder_weight(out / "pretrain-shared/final")
    assert torch.equal(_encoder_weight(out / "finetune-adapters-frozen/final"), start)
    assert not torch.equal(_encoder_weight(out / "finetune-adapters/final"), start)
    check_error_rates(text, read_results(out, ["shared", "lasp", "adapters"]), ["es", "de"])
    claims = rows_by(table(text, "verdict"), "claim")
    summary = {c["claim"]: c for c in json.loads((out / "seeds_summary.json").read_text())["comparisons"]}
    assert list(claims) == ["lasp < shared", "lasp vs adapters", "adapters-frozen vs adapters", "ctc vs lasp"]
    for claim, row in claims.items():
        assert float(row["difference"]) == pytest.approx(summary[claim]["difference"], abs=5e-5), claim
    # an adapter variant is compared with the adapters system, a mask variant with lasp
    ablations = rows_by(table(text, "vs reference"), "variant")
    assert list(ablations) == ["lasp", "adapters-frozen", "ctc"]
    assert [(ablations[v]["sparsity"], ablations[v]["pre-training"]) for v in ("adapters-frozen", "ctc")] == [
        ("–", "no"), ("0.5", "no")]
    assert [ablations[v]["vs reference"].split(":")[0] for v in ("adapters-frozen", "ctc")] == ["adapters", "lasp"]
    assert list(rows_by(table(text, "unique share"), "mask set")) == ["lasp", "ctc"]  # frozen adapters: no masks


def test_low_resource_languages_get_a_fraction_of_the_training_utterances(tmp_path):
    from lasp.run.inputs import make_corpus
    from lasp.run.report import corpus_sentence

    cfg = load_recipe(demo_recipe_path(), [f"run.corpus={tmp_path}/c", "run.languages=[es,de,ru]",
                                           "run.low_resource=[de]", "run.train_utterances=10",
                                           "run.test_utterances=1", "run.dev_utterances=1"])
    settings = run_settings(cfg)
    manifests = make_corpus(cfg, settings)
    assert _langs(Path(manifests["train"])) == {"es": 10, "de": 2, "ru": 10}   # low_factor 5: 1/5 of the data
    assert _langs(Path(manifests["test"])) == {"es": 1, "de": 1, "ru": 1}      # every language tested alike
    assert "low-resource: de at 1/5" in corpus_sentence(settings, manifests)


def test_low_resource_language_must_be_a_run_language():
    with pytest.raises(ConfigError, match="key 'run.low_resource': 'fi' is not one of run.languages"):
        load_recipe(demo_recipe_path(), ["run.low_resource=[fi]"])


@pytest.mark.parametrize("variants, message", [
    ("[{name: shared}]", r"key 'run.variants\[0\].name': name 'shared' is taken"),
    ("[{name: x}, {name: x}]", r"key 'run.variants\[1\].name': name 'x' is taken"),
    ("[{name: Big}]", r"key 'run.variants\[0\].name' must be lower-case letters"),
    ("[{overrides: {masks.scorer: fisher}}]", r"key 'run.variants\[0\].name' must be lower-case letters"),
    ("[{name: x, overrides: {data.alpha: 1.0}}]", "key 'data.alpha' is not a masks"),
    ("[{name: x, overrides: {masks.dir: m}}]", "key 'masks.dir' is set by lasp run"),
    ("[{name: x, overrides: 3}]", r"key 'run.variants\[0\].overrides' expects dict"),
    ("[{name: x, pretrain: maybe}]", r"key 'run.variants\[0\].pretrain' expects bool \| null, got 'maybe'"),
    ("[{name: x, system: prompt}]", r"key 'run.variants\[0\].system' must be one of 'lasp', 'adapters'"),
    ("[{name: x, overrides: {adapters.dim: 8}}]", "key 'adapters.dim' is not a masks.*, pretrain.*, finetune"),
    ("[{name: x, system: adapters, overrides: {masks.sparsity: 0.3}}]",
     "key 'masks.sparsity' is not a adapters.*, finetune.* key for a adapters variant"),
    ("[{name: x, system: adapters, pretrain: false}]", "an adapters variant has no masks"),
    ("[{name: x, system: adapters, pretrain: true}]", "an adapters variant has no masks"),
    ("[{name: x, system: adapters, score_on: base}]", "an adapters variant has no masks"),
    ("[{name: x, score_on: dev}]", r"key 'run.variants\[0\].score_on' expects 'base' \| 'shared' \| null, got 'dev'"),
    ("[{name: x, scorer: fisher}]", r"unknown key 'run.variants\[0\].scorer'"),
    ("[3]", r"section 'run.variants\[0\]' must be a mapping"),
])
def test_bad_variants_are_refused_when_the_recipe_loads(variants, message):
    with pytest.raises(ConfigError, match="demo.yaml: .*" + message):
        load_recipe(demo_recipe_path(), [f"run.variants={variants}"])


def test_bad_seeds_and_variant_combinations_are_named():
    with pytest.raises(ConfigError, match="key 'run.seeds' must be distinct"):
        load_recipe(demo_recipe_path(), ["run.seeds=[0,0]"])
    with pytest.raises(ConfigError, match="score_on': shared needs the shared system"):
        load_recipe(demo_recipe_path(), ["run.variants=[{name: x, score_on: shared}]", "run.systems=[lasp]"])
    # an override's value is checked in the variant's own stage recipe, when the run is planned
    for variants, message in (("[{name: x, overrides: {masks.scorer: fancy}}]", "key 'masks.scorer' must be one of"),
                              ("[{name: x, system: adapters, overrides: {adapters.freeze_base: sometimes}}]",
                               "key 'adapters.freeze_base' expects bool")):
        cfg = load_recipe(demo_recipe_path(), [f"run.variants={variants}"])
        with pytest.raises(ConfigError, match=message):
            plan_run(cfg)


def test_variants_load_typed_and_round_trip(tmp_path):
    from lasp.config.recipe import save_recipe
    from lasp.run.variants import pretrains, scored_on_shared

    cfg = load_recipe(demo_recipe_path(), [
        "run.variants=[{name: no-pre, pretrain: false}, {name: ctc, score_on: shared},"
        " {name: frozen, system: adapters, overrides: {adapters.freeze_base: true}}]"])
    no_pre, ctc, frozen = cfg.run.variants
    assert (no_pre.name, no_pre.overrides, no_pre.system) == ("no-pre", {}, "lasp")
    assert [pretrains(v) for v in (no_pre, ctc, frozen)] == [False, True, False]
    assert [scored_on_shared(v) for v in (no_pre, ctc, frozen)] == [False, True, False]
    assert frozen.overrides == {"adapters.freeze_base": True}
    assert load_recipe(save_recipe(cfg, tmp_path / "recipe.yaml")) == cfg


def test_benchmark_recipe_plans_the_whole_study_without_running_it(tmp_path):
    cfg = load_recipe(BENCHMARK)
    settings = run_settings(cfg)
    assert BENCHMARK.read_text().startswith("# lasp run recipes/benchmark.yaml")
    assert settings.seeds == [0, 1, 2] and len(settings.languages) == 6 and len(settings.low_resource) == 2
    assert settings.systems == ["shared", "lasp", "random", "adapters"]
    jobs = {j.name: j for j in plan_run(cfg)}
    variants = ["magnitude", "fisher", "lass", "imp", "ctc-scored", "sparsity-0.3", "sparsity-0.7", "no-pretraining",
                "adapters-frozen"]
    for seed in (0, 1, 2):
        for name in settings.systems + variants:
            assert f"seed-{seed}/evaluate-{name}" in jobs and f"seed-{seed}/finetune-{name}" in jobs
        masks = jobs[f"seed-{seed}/masks-lass"].argv
        assert masks[masks.index("--method") + 1] == "lass"
        assert masks[masks.index("--out") + 1] == f"runs/benchmark/seed-{seed}/masks-lass"
        sparse = jobs[f"seed-{seed}/masks-sparsity-0.7"].argv
        assert sparse[sparse.index("--sparsity") + 1] == "0.7"
        scorer = jobs[f"seed-{seed}/masks-fisher"].argv
        assert scorer[scorer.index("--scorer") + 1] == "fisher"
        # pre-training off: fine-tuned from the base model through the lasp masks, no pre-training stage
        ft = jobs[f"seed-{seed}/finetune-no-pretraining"]
        assert f"finetune.init=runs/benchmark/seed-{seed}/base/final" in ft.argv
        assert f"masks.dir=runs/benchmark/seed-{seed}/masks-lasp" in ft.argv
        assert f"seed-{seed}/pretrain-no-pretraining" not in jobs and f"seed-{seed}/masks-no-pretraining" not in jobs
        assert "--seed" in jobs[f"seed-{seed}/masks"].argv
        assert jobs[f"seed-{seed}/masks"].argv[jobs[f"seed-{seed}/masks"].argv.index("--seed") + 1] == str(seed)
    # each seed synthesizes its own corpus
    assert "runs/benchmark/corpus/seed-1/train.jsonl" in jobs["seed-1/masks"].argv
    kinds = [n.split("/")[-1].split("-")[0] for n in jobs]
    assert kinds == sorted(kinds, key=["base", "masks", "pretrain", "finetune", "evaluate"].index)


def test_demo_quotes_the_spread_of_the_benchmark_shipped_with_lasp():
    cfg = load_recipe(demo_recipe_path())
    assert run_settings(cfg).spread_from == "lasp:benchmark"
    shipped = json.loads(SHIPPED_SUMMARY.read_text())
    assert shipped["seeds"] == [0, 1, 2] and set(shipped["groups"]) == {"high", "low"}
    text = spread_sentence(cfg, run_settings(cfg))
    lasp_std = shipped["aggregates"]["lasp"]["macro"]["std"]
    assert "the benchmark shipped with lasp" in text and "; 3 seeds," in text and f"lasp {lasp_std:.3f}" in text
    assert "lasp < shared" in text and "lasp < random" in text and "lasp vs adapters" in text


def test_demo_report_quotes_a_benchmark_spread_or_says_none_was_measured(tmp_path):
    cfg = load_recipe(demo_recipe_path(), [f"run.spread_from={tmp_path}/seeds_summary.json"])
    settings = run_settings(cfg)
    assert "no seed-to-seed spread was measured (there is no benchmark result" in spread_sentence(cfg, settings)
    summary = {"seeds": [0, 1, 2],
               "aggregates": {"shared": {"macro": {"mean": 0.3, "std": 0.0213}},
                              "lasp": {"macro": {"mean": 0.26, "std": 0.0117}}},
               "comparisons": [{"system": "lasp", "baseline": "shared", "scope": "all", "claim": "lasp < shared",
                                "difference": -0.04, "low": -0.07, "high": -0.01,
                                "verdict": "lower, interval excludes 0"}]}
    (tmp_path / "seeds_summary.json").write_text(json.dumps(summary))
    text = spread_sentence(cfg, settings)
    assert "3 seeds" in text and "shared 0.021, lasp 0.012" in text
    assert "lasp < shared -0.040 [-0.070, -0.010] (lower, interval excludes 0)" in text
    cfg = load_recipe(demo_recipe_path(), ["run.spread_from=null"])
    assert "no seed-to-seed spread was measured" in spread_sentence(cfg, run_settings(cfg))
    with pytest.raises(ConfigError, match="only built-in summary is 'lasp:benchmark'"):
        spread_sentence(cfg, run_settings(load_recipe(demo_recipe_path(), ["run.spread_from=lasp:bench"])))
    (tmp_path / "seeds_summary.json").write_text("[]")
    with pytest.raises(ConfigError, match="run.spread_from"):
        spread_sentence(load_recipe(demo_recipe_path(), [f"run.spread_from={tmp_path}/seeds_summary.json"]), settings)

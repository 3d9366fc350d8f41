"""`lasp run` over several base strengths (run.strengths): the plan, the checks, and one small run end to end."""
from __future__ import annotations

import json
import math
from pathlib import Path

import pytest

from lasp.analysis.stability import search_stability
from lasp.config.recipe import config_to_dict, load_recipe
from lasp.errors import ConfigError
from lasp.masks.language_masks import LanguageMasks
from lasp.run.runner import demo_recipe_path, plan_run, report_from_outputs, run
from lasp.train.run_record import RECIPE_SECTIONS, check_run_record, full_key, stage_recipe
from test_run_seeds import TOY

SCALING = Path(__file__).resolve().parents[1] / "recipes" / "scaling.yaml"


def test_scaling_recipe_plans_the_study_without_running_it():
    assert SCALING.read_text().startswith("# lasp run recipes/scaling.yaml")
    jobs = {j.name: j for j in plan_run(load_recipe(SCALING))}
    for seed in (0, 1):
        chain = [jobs[f"bases/seed-{seed}/base-tiny-{n}"] for n in (800, 3200, 12800)]
        # one pre-training per preset and seed, continued from strength to strength and kept at each step
        assert [j.deps for j in chain] == [[], [chain[0].name], [chain[1].name]]
        for job, steps in zip(chain, (800, 3200, 12800)):
            assert f"pretrain.max_steps={steps}" in job.argv and "pretrain.keep_at=[800, 3200, 12800]" in job.argv
            assert f"pretrain.run_dir=runs/scaling/bases/seed-{seed}/tiny" in job.argv
        assert jobs[f"bases/seed-{seed}/base-small-3200"].deps == []
        for strength, preset, steps in (("tiny-800", "tiny", 800), ("tiny-12800", "tiny", 12800),
                                        ("small-3200", "small", 3200)):
            masks = jobs[f"{strength}/seed-{seed}/masks"]
            assert masks.deps == [f"bases/seed-{seed}/base-{preset}-{steps}"]
            assert masks.argv[masks.argv.index("--model") + 1] == \
                f"runs/scaling/bases/seed-{seed}/{preset}/at-step-{steps}"
            for name in ("masks", "masks-ctc-scored", "masks-layers-0.3-0.7"):
                assert f"{strength}/seed-{seed}/repeat/{name}" in jobs
            for system in ("shared", "lasp", "random", "ctc-scored", "layers-0.3-0.7"):
                assert f"{strength}/seed-{seed}/evaluate-{system}" in jobs
    assert len(jobs) == 2 * (4 * 21 + 4)  # per seed: 4 strengths x 21 stages, and 4 base stages


@pytest.mark.parametrize("overrides, message", [
    (["run.strengths=[tiny800]"], r"'run.strengths\[0\]': 'tiny800' is not PRESET@STEPS"),
    (["run.strengths=[huge@800]"], "is not PRESET@STEPS with a preset of tiny, small"),
    (["run.strengths=[tiny@800, tiny@800]"], "names a strength twice"),
    (["run.strengths=[tiny@800]", "pretrain.optim.schedule=tri-stage"], "tri-stage decays over max_steps"),
    (["run.strengths=[tiny@800]", "run.base_minutes=5"], "run.base_minutes' must be null with run.strengths"),
    (["pretrain.keep_at=[5, 5]"], "'pretrain.keep_at' must be distinct steps >= 1"),
])
def test_bad_strengths_are_named_when_the_recipe_loads(overrides, message):
    with pytest.raises(ConfigError, match=message):
        load_recipe(SCALING, overrides)


def test_two_strengths_with_repeat_searches_and_a_layer_profile_end_to_end(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    cfg = load_recipe(demo_recipe_path(), TOY + [
        "run.strengths=[tiny@2, tiny@4]", "run.repeat_search=true", "run.systems=[shared,lasp,random]",
        "run.variants=[{name: layers, overrides: {masks.layer_sparsity: [0.25, 0.75]}}]", "pretrain.log_every=1"])
    run(cfg, progress=False)
    out = tmp_path / "out"
    base = out / "bases" / "tiny"
    # one base pre-training of 4 steps, kept at 2 and 4: every step trained once
    steps = [r["step"] for r in map(json.loads, (base / "metrics.jsonl").read_text().splitlines())
             if r.get("kind") == "train"]
    assert steps == [1, 2, 3, 4]
    for n in (2, 4):
        assert json.loads((base / f"at-step-{n}" / "train_summary.json").read_text())["step"] == n
        run_dir = out / f"tiny-{n}"
        meta = json.loads((run_dir / "masks-lasp" / "mask_config.json").read_text())
        assert meta["base_model"] == f"out/bases/tiny/at-step-{n}"
        assert LanguageMasks.load(run_dir / "repeat" / "masks-lasp").metadata["seed"] == 1000
        layers = LanguageMasks.load(run_dir / "masks-layers")["es"]
        assert [round(float(m.float().mean()), 2) for k, m in layers.items() if "q_proj" in k] == [0.75, 0.25]
        signals = json.loads((run_dir / "language_signal.json").read_text())
        assert set(signals) == {"lasp", "layers"}
        again = search_stability(LanguageMasks.load(run_dir / "masks-lasp"),
                                 LanguageMasks.load(run_dir / "repeat" / "masks-lasp"))
        assert signals["lasp"]["mean_signal"] == pytest.approx(again["mean_signal"])
        for system in ("shared", "lasp", "random", "layers"):
            assert (run_dir / f"eval-{system}" / "results.json").is_file()
    scaling = json.loads((out / "scaling.json").read_text())["strengths"]
    assert [(r["strength"], r["steps"]) for r in scaling] == [("tiny-2", 2), ("tiny-4", 4)]
    for r in scaling:
        signals = json.loads((out / r["strength"] / "language_signal.json").read_text())
        assert r["masks"]["lasp"]["signal"][0] == pytest.approx(signals["lasp"]["mean_signal"])
        assert math.isfinite(r["base_loss"]) and set(r["vs_random"]) == {"lasp", "layers"}
        lasp, random = r["cer"]["lasp"][0], r["cer"]["random"][0]
        assert r["vs_random"]["lasp"][0] == pytest.approx(lasp - random)
        # ML-SUPERB 2.0's figures per strength: one seed, so the worst language's CER is the largest in results.json
        for system in ("lasp", "random"):
            cers = [v["cer"] for v in json.loads((out / r["strength"] / f"eval-{system}" / "results.json")
                                                 .read_text())["languages"].values()]
            assert r["superb"]["worst"][system][0] == pytest.approx(max(cers))
        worst = r["superb"]["worst"]
        assert r["superb_vs_random"]["worst"]["lasp"][0] == pytest.approx(worst["lasp"][0] - worst["random"][0])
    assert (out / "scaling.png").stat().st_size > 0 and (out / "tiny-4" / "report.md").is_file()

    # `lasp report` while a strength is still running: the finished one's report, the other's figures so far
    (out / "tiny-4" / "eval-random" / "results.json").unlink()
    (out / "tiny-4" / "report.md").unlink()
    report = report_from_outputs(cfg).read_text()
    assert "| tiny-4 (running: 3 of 4 systems evaluated) | 4 |" in report
    assert (out / "tiny-2" / "report.md").is_file() and not (out / "tiny-4" / "report.md").exists()
    running = json.loads((out / "scaling.json").read_text())["strengths"][1]
    assert set(running["cer"]) == {"shared", "lasp", "layers"} and running["vs_random"] == {}
    assert running["masks"]["lasp"]["signal"] == scaling[1]["masks"]["lasp"]["signal"]


def test_a_base_chain_extended_by_another_strength_still_resumes(tmp_path):
    """Adding a strength changes what the base chain keeps (pretrain.keep_at), not how it trains: the chain's
    finished steps resume under the new plan instead of being refused."""
    def base_stage(strengths):
        cfg = load_recipe(SCALING, [f"run.strengths={strengths}", "run.seeds=[0]"])
        job = next(j for j in plan_run(cfg) if j.name.endswith("base-tiny-800"))
        overrides = job.argv[job.argv.index("pretrain") + 2:]
        stage_cfg = load_recipe(SCALING, overrides)
        return stage_cfg, stage_recipe(config_to_dict(stage_cfg), "pretrain", "shared", "tiny")

    run_dir = tmp_path / "tiny"
    _, first = base_stage("[tiny@800, tiny@3200]")
    check_run_record(run_dir, "pretrain", first, allow=[], resuming=False)
    extended, record = base_stage("[tiny@800, tiny@3200, tiny@12800]")
    allow = [full_key(a, "pretrain", RECIPE_SECTIONS) for a in extended.pretrain.resume_allow]
    assert check_run_record(run_dir, "pretrain", record, allow=allow, resuming=True) == ["pretrain.keep_at"]

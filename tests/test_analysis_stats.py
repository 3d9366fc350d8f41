"""Multi-seed statistics: paired bootstrap on planted data, aggregation, specificity, run-directory summary."""
import json
import math
import statistics

import numpy as np
import pytest
import torch

from lasp.analysis.overlap import compute_overlap, specificity
from lasp.analysis.overlap_report import overlap_analysis
from lasp.analysis.plots import plot_cer_vs_sparsity
from lasp.analysis.seeds import seed_summary, sweep_rows
from lasp.analysis.stats import HIGHER, LOWER, NO_DIFFERENCE, aggregate, compare, hierarchical_bootstrap, verdict
from lasp.analysis.utterances import LanguageScores, read_eval_dir, utterance_counts
from lasp.config.recipe import load_recipe, save_recipe
from lasp.errors import ConfigError, DataError
from lasp.train.evaluate import macro_average, score, write_language_files
from lasp.masks.language_masks import LanguageMasks
from lasp.run.runner import demo_recipe_path

LANGS = ["l0", "l1", "l2", "l3"]


def planted(rng, delta, seeds=3, utts=30):
    """Scores of systems A and B on the same utterances; A's error rate is B's + ``delta``.

    Languages differ in difficulty, seeds shift every language a little, and each utterance has a
    difficulty both systems share (so the pairing matters), as in a real evaluation.
    """
    a, b = {}, {}
    for s in range(seeds):
        shift = rng.normal(0, 0.03)
        a[s], b[s] = {}, {}
        for i, lang in enumerate(LANGS):
            chars = rng.integers(20, 60, size=utts)
            p = 0.25 + 0.05 * i + shift + rng.normal(0, 0.05, size=utts)
            ids = [f"{lang}-{u}" for u in range(utts)]
            a[s][lang] = LanguageScores(ids, rng.binomial(chars, np.clip(p + delta, 0.01, 0.99)), chars)
            b[s][lang] = LanguageScores(ids, rng.binomial(chars, np.clip(p, 0.01, 0.99)), chars)
    return a, b


def test_a_planted_difference_is_detected():
    a, b = planted(np.random.default_rng(0), delta=-0.04)
    c = compare(a, b, LANGS, names=("lasp", "shared"), n_boot=1000)
    assert c.high < 0 and c.verdict == LOWER
    assert c.low < -0.04 < c.high  # the interval covers the planted difference
    assert c.utterances == 3 * 4 * 30
    reverse = compare(b, a, LANGS, n_boot=1000)
    assert reverse.verdict == HIGHER
    assert reverse.difference == pytest.approx(-c.difference)


def test_equal_systems_are_not_declared_different():
    detected = 0
    for rep in range(40):
        a, b = planted(np.random.default_rng(100 + rep), delta=0.0)
        detected += compare(a, b, LANGS, n_boot=400, seed=rep).verdict != NO_DIFFERENCE
    assert detected <= 6  # ≤ 15 % at a nominal 5 %


def test_difference_is_the_macro_cer_difference_and_the_bootstrap_varies_every_level():
    a, b = planted(np.random.default_rng(1), delta=0.02)
    c = compare(a, b, LANGS, n_boot=200)
    want = np.mean([np.mean([a[s][l].cer - b[s][l].cer for l in LANGS]) for s in a])
    assert c.difference == pytest.approx(want, abs=1e-12)
    # one seed, one language: only utterances are resampled, and the replicates still spread
    cell = [[(a[0]["l0"].edits, a[0]["l0"].chars)]]
    reps = hierarchical_bootstrap(cell, n_boot=300, seed=0)
    assert reps.std() > 0
    # identical utterances: every replicate equals the statistic, at every level
    flat = [[(np.full(10, 3), np.full(10, 10)) for _ in range(3)] for _ in range(2)]
    assert np.allclose(hierarchical_bootstrap(flat, n_boot=50), 0.3)
    # languages differ, utterances within a language do not: only language draws spread the replicates
    langs = [[(np.full(10, k), np.full(10, 10)) for k in (1, 3, 5)]]
    assert hierarchical_bootstrap(langs, n_boot=200).std() > 0.03
    # seeds differ, nothing within a seed does: only seed draws spread them
    seeds = [[(np.full(10, k), np.full(10, 10))] * 2 for k in (1, 3, 5)]
    assert hierarchical_bootstrap(seeds, n_boot=200).std() > 0.03
    assert hierarchical_bootstrap(cell, n_boot=100, seed=5).tolist() == hierarchical_bootstrap(
        cell, n_boot=100, seed=5).tolist()


def test_verdict_strings():
    assert verdict(-0.2, -0.01) == "lower, interval excludes 0"
    assert verdict(0.01, 0.2) == "higher, interval excludes 0"
    assert verdict(-0.1, 0.1) == "no difference detected"


def test_compare_refuses_unpaired_utterances():
    a, b = planted(np.random.default_rng(2), delta=0.0)
    b[1]["l2"] = LanguageScores(["other"] + b[1]["l2"].ids[1:], b[1]["l2"].edits, b[1]["l2"].chars)
    with pytest.raises(DataError, match=r"seed 1, language l2 .*different utterances"):
        compare(a, b, LANGS)


def test_aggregation_across_seeds_matches_a_hand_computation():
    def cell(edits, chars):
        return LanguageScores([f"u{i}" for i in range(len(edits))], np.array(edits), np.array(chars))

    scores = {  # CER per (seed, language): l0 = 2/10, 3/10, 1/10;  l1 = 4/8, 2/8, 6/8
        0: {"l0": cell([1, 1], [5, 5]), "l1": cell([4], [8])},
        1: {"l0": cell([3, 0], [6, 4]), "l1": cell([2], [8])},
        2: {"l0": cell([0, 1], [5, 5]), "l1": cell([6], [8])},
    }
    agg = aggregate(scores, ["l0", "l1"], {"l0": "high", "l1": "low"})
    macro = [(0.2 + 0.5) / 2, (0.3 + 0.25) / 2, (0.1 + 0.75) / 2]
    assert agg["macro"]["per_seed"] == pytest.approx(macro)
    assert agg["macro"]["mean"] == pytest.approx(statistics.mean(macro))
    assert agg["macro"]["std"] == pytest.approx(statistics.stdev(macro))
    assert agg["languages"]["l1"]["mean"] == pytest.approx(0.5)
    assert agg["languages"]["l1"]["std"] == pytest.approx(0.25)
    assert agg["groups"]["high"]["mean"] == pytest.approx(0.2)
    assert agg["groups"]["low"]["std"] == pytest.approx(0.25)


def test_per_utterance_counts_add_up_to_evaluate_scores():
    refs = ["hola que tal", "buenos dias", "abc"]
    hyps = ["ola que tall", "", "abd e"]
    edits, chars = utterance_counts(refs, hyps)
    s = score(refs, hyps)
    assert int(chars.sum()) == s["chars"]
    assert int(edits.sum()) == s["char_substitutions"] + s["char_deletions"] + s["char_insertions"]
    assert edits.sum() / chars.sum() == pytest.approx(s["cer"])
    assert edits.tolist()[1] == len("buenos dias")


# ---------------------------------------------------------------- mask specificity
def _random(shapes, density, seed):
    g = torch.Generator().manual_seed(seed)
    return {n: torch.rand(s, generator=g) < d for (n, s), d in zip(shapes.items(), density)}


SHAPES = {"encoder.layers.0.attention.q_proj.weight": (64, 64),
          "encoder.layers.0.feed_forward.intermediate_dense.weight": (128, 64),
          "encoder.layers.1.attention.v_proj.weight": (64, 64)}


def test_random_masks_have_specificity_one_and_identical_masks_the_maximum():
    densities = [0.05, 0.5, 0.95]  # per tensor, so the per-tensor expectation differs from a global one
    rand = {lang: _random(SHAPES, densities, seed) for seed, lang in enumerate(["a", "b", "c"])}
    stats = compute_overlap(rand)
    sp = specificity(stats)
    assert sp["iou_ratio"] == pytest.approx(1.0, abs=0.03)
    assert sp["mean_unique_share"] == pytest.approx(sp["mean_random_unique_share"], abs=0.02)
    # a reference from the overall density alone would call these random masks specific-looking sharing
    d = stats.overall.kept[0] / stats.overall.numel
    assert sp["mean_iou"] > 1.3 * d / (2 - d)

    same = {lang: rand["a"] for lang in ["a", "b", "c"]}
    sp_same = specificity(compute_overlap(same))
    assert sp_same["mean_iou"] == 1.0
    assert sp_same["iou_ratio"] == pytest.approx(sp_same["max_iou_ratio"])
    assert sp_same["iou_ratio"] > 1.5 and sp["iou_ratio"] < sp["max_iou_ratio"]
    assert sp_same["mean_unique_share"] == 0.0


def test_overlap_report_carries_the_specificity(tmp_path):
    rand = {lang: _random(SHAPES, [0.3, 0.6, 0.5], seed) for seed, lang in enumerate(["es", "de", "tr"])}
    result = overlap_analysis(rand, out_dir=tmp_path, plots=False)
    saved = json.loads((tmp_path / "specificity.json").read_text())
    assert saved["iou_ratio"] == pytest.approx(result.specificity["iou_ratio"]) == pytest.approx(1.0, abs=0.05)
    assert saved["languages"] == ["es", "de", "tr"]
    assert f"ratio {result.specificity['iou_ratio']:.2f} (1 = chance level" in result.summary
    rows = (tmp_path / "languages.csv").read_text().splitlines()
    assert rows[0].endswith("random_unique_fraction_of_kept")


def test_language_masks_iou_is_the_analysis_iou():
    rand = {lang: _random(SHAPES, [0.3, 0.6, 0.5], seed) for seed, lang in enumerate(["es", "de"])}
    masks = LanguageMasks.from_dense(rand)
    assert masks.iou("es", "de") == compute_overlap(rand).iou[0][1]
    assert masks.iou("es", "es") == 1.0
    # one convention for the undefined case too (both masks empty): NaN, as in every analysis table
    empty = {lang: {n: torch.zeros(sh, dtype=torch.bool) for n, sh in SHAPES.items()} for lang in ("es", "de")}
    assert math.isnan(LanguageMasks.from_dense(empty).iou("es", "de"))
    assert math.isnan(compute_overlap(empty).iou[0][1])


# ---------------------------------------------------------------- run directories
def _hyp(ref: str, p: float, rng) -> str:
    return "".join(rng.choice(list("xyz")) if rng.random() < p else ch for ch in ref)


def write_run(root, seed, error_rates, langs=("es", "de", "tr"), low=("tr",), utts=25):
    """A finished `lasp run` directory as its writers leave it: recipe.yaml and eval-<system>/."""
    cfg = load_recipe(demo_recipe_path(), [f"seed={seed}"])
    run = cfg.run
    run.languages, run.low_resource, run.systems = list(langs), list(low), list(error_rates)
    out = root / f"seed{seed}"
    save_recipe(cfg, out / "recipe.yaml")
    rng = np.random.default_rng(seed)
    refs = {lang: ["".join(rng.choice(list("abcdefgh ")) for _ in range(rng.integers(15, 40))).strip() or "a"
                   for _ in range(utts)] for lang in langs}
    for system, rate in error_rates.items():
        per_lang = {}
        for lang in langs:
            ids = [f"{lang}_{i}" for i in range(utts)]
            hyps = [_hyp(r, rate, rng) for r in refs[lang]]
            per_lang[lang] = score(refs[lang], hyps)
            write_language_files(out / f"eval-{system}", lang, ids, refs[lang], hyps, per_lang[lang])
        results = {"system": system, "languages": per_lang, "macro": macro_average(per_lang)}
        (out / f"eval-{system}" / "results.json").write_text(json.dumps(results, indent=2))
    return out


def test_seed_summary_of_run_directories(tmp_path):
    rates = {"shared": 0.3, "lasp": 0.2, "random": 0.3, "adapters": 0.2}
    dirs = [write_run(tmp_path, s, rates) for s in (0, 1, 2)]
    summary = seed_summary(dirs, n_boot=500, out_dir=tmp_path / "summary")
    assert summary.seeds == [0, 1, 2]
    assert summary.groups == {"high": ["es", "de"], "low": ["tr"]}
    macro = [json.loads((d / "eval-lasp" / "results.json").read_text())["macro"]["cer"] for d in dirs]
    assert summary.aggregates["lasp"]["macro"]["mean"] == pytest.approx(statistics.mean(macro))
    assert summary.aggregates["lasp"]["macro"]["std"] == pytest.approx(statistics.stdev(macro))
    by_claim = {(c.claim, c.scope): c for c in summary.comparisons}
    claims = ("lasp < shared", "lasp < random", "lasp vs adapters")
    assert set(by_claim) == {(c, s) for c in claims for s in ("all", "high", "low")}
    assert by_claim[("lasp < shared", "all")].verdict == LOWER
    assert by_claim[("lasp < random", "high")].verdict == LOWER
    assert by_claim[("lasp vs adapters", "all")].verdict == NO_DIFFERENCE
    mean, low, high = summary.macro_intervals["lasp"]
    assert mean == pytest.approx(summary.aggregates["lasp"]["macro"]["mean"]) and low < mean < high
    assert summary.macro_intervals["shared"][1] > high  # lasp's planted advantage shows in the intervals too
    assert by_claim[("lasp < shared", "low")].languages == ["tr"]
    md = summary.markdown
    assert "| lasp < shared | all |" in md and "lower, interval excludes 0" in md
    assert "high macro (es, de)" in md
    assert sorted(summary.files) == ["cer_by_language", "json", "markdown"]
    assert open(summary.files["cer_by_language"], "rb").read(4) == b"\x89PNG"
    assert open(summary.files["markdown"], encoding="utf-8").read().strip() == md
    saved = json.loads((tmp_path / "summary" / "seeds_summary.json").read_text())
    assert saved["comparisons"][0]["verdict"] == summary.comparisons[0].verdict
    # equal systems in the same runs: nothing detected
    same = seed_summary(dirs, n_boot=500, claims=[("random", "shared")])
    assert same.comparisons[0].verdict == NO_DIFFERENCE


def _table_widths(markdown: str) -> list[set[int]]:
    """The cell counts of each markdown table's rows (header, rule and body)."""
    tables, rows = [], []
    for line in markdown.splitlines() + [""]:
        if line.startswith("|"):
            rows.append(line.strip().count("|") - 1)
        elif rows:
            tables.append(set(rows))
            rows = []
    return tables


@pytest.mark.parametrize("low", [("tr",), ()])
def test_seed_summary_tables_have_as_many_header_cells_as_body_cells(tmp_path, low):
    dirs = [write_run(tmp_path, s, {"shared": 0.3, "lasp": 0.2}, low=low, utts=5) for s in (0, 1)]
    tables = _table_widths(seed_summary(dirs, n_boot=20).markdown)
    assert tables and all(len(widths) == 1 for widths in tables), tables


def test_seed_summary_refuses_stale_or_repeated_runs(tmp_path):
    rates = {"shared": 0.3, "lasp": 0.2}
    d0, d1 = write_run(tmp_path, 0, rates), write_run(tmp_path, 1, rates)
    with pytest.raises(ConfigError, match="seed 0 is also the seed"):
        seed_summary([d0, d1, d0], n_boot=10)
    recogs = d0 / "eval-lasp" / "recogs-de.txt"
    lines = recogs.read_text().splitlines()
    ident, ref, _ = lines[0].split("\t")
    recogs.write_text("\n".join([f"{ident}\t{ref}\t", *lines[1:]]) + "\n")
    with pytest.raises(DataError, match="recogs-de.txt: CER recomputed"):
        read_eval_dir(d0 / "eval-lasp")
    with pytest.raises(ConfigError, match="recipe.yaml: missing"):
        seed_summary([tmp_path], n_boot=10)


def test_cer_vs_sparsity_plot(tmp_path):
    points = {}
    for k, sparsity in enumerate((0.3, 0.7)):
        dirs = [write_run(tmp_path / f"p{k}", s, {"shared": 0.3, "lasp": 0.1 + 0.2 * k}, utts=8) for s in (0, 1)]
        points[("oneshot", sparsity)] = seed_summary(dirs, n_boot=200, plots=False)
    rows = sweep_rows(points)
    assert [r["sparsity"] for r in rows] == [0.3, 0.7] and rows[0]["cer"] < rows[1]["cer"]
    assert rows[1]["cer"] == pytest.approx(points[("oneshot", 0.7)].aggregates["lasp"]["macro"]["mean"])
    rows += [{"method": "imp", "sparsity": s, "cer": 0.2 + s / 10} for s in (0.3, 0.5, 0.7)]  # no interval
    path = plot_cer_vs_sparsity(rows, tmp_path / "cer_vs_sparsity.png")
    assert path == str(tmp_path / "cer_vs_sparsity.png")
    assert (tmp_path / "cer_vs_sparsity.png").read_bytes()[:4] == b"\x89PNG"


def _scores(cers_by_seed: dict, chars: int = 100) -> dict:
    """One utterance per language with the given CER (edits out of ``chars`` characters)."""
    return {s: {lang: LanguageScores([f"{lang}-0"], np.array([round(c * chars)]), np.array([chars]))
                for lang, c in cers.items()} for s, cers in cers_by_seed.items()}


def test_worst_language_cer_and_cer_spread_against_hand_computed_values():
    from lasp.analysis.stats import cer_interval

    langs = ["es", "pt", "tr"]
    a = _scores({0: {"es": 0.20, "pt": 0.50, "tr": 0.30}, 1: {"es": 0.10, "pt": 0.20, "tr": 0.60}})
    b = _scores({0: {"es": 0.30, "pt": 0.40, "tr": 0.40}, 1: {"es": 0.20, "pt": 0.30, "tr": 0.30}})
    agg = aggregate(a, langs)
    # worst language: 0.5 (pt) in seed 0, 0.6 (tr) in seed 1; spread: population std of the three CERs
    assert agg["worst"]["per_seed"] == pytest.approx([0.5, 0.6]) and agg["worst_language"] == ["pt", "tr"]
    spread = [math.sqrt(((0.2 - 1 / 3) ** 2 + (0.5 - 1 / 3) ** 2 + (0.3 - 1 / 3) ** 2) / 3),
              math.sqrt(((0.1 - 0.3) ** 2 + (0.2 - 0.3) ** 2 + (0.6 - 0.3) ** 2) / 3)]
    assert agg["spread"]["per_seed"] == pytest.approx(spread)
    assert agg["worst"]["mean"] == pytest.approx(0.55) and agg["spread"]["mean"] == pytest.approx(sum(spread) / 2)
    mean, low, high = cer_interval(a, langs, statistic="worst", n_boot=300)
    # one utterance per cell: only the seeds vary, so the interval runs from one seed's figure to the other's
    assert mean == pytest.approx(0.55) and (low, high) == pytest.approx((0.5, 0.6))
    c = compare(a, b, langs, names=("lasp", "shared"), statistic="worst", n_boot=300)
    assert c.difference == pytest.approx(0.55 - 0.35) and c.statistic == "worst"   # b: 0.4 and 0.3
    assert (c.low, c.high) == pytest.approx((0.1, 0.3))  # seed 0: 0.5 − 0.4, seed 1: 0.6 − 0.3
    s = compare(a, b, langs, statistic="spread", n_boot=300)
    b_spread = [float(np.std([0.3, 0.4, 0.4])), float(np.std([0.2, 0.3, 0.3]))]
    assert s.difference == pytest.approx(sum(spread) / 2 - sum(b_spread) / 2)
    # macro CER is unchanged by the new figures
    assert compare(a, b, langs, n_boot=300).difference == pytest.approx((1 / 3 + 0.3) / 2 - (1.1 / 3 + 0.8 / 3) / 2)
    with pytest.raises(ValueError, match="unknown statistic 'median'"):
        compare(a, b, langs, statistic="median")

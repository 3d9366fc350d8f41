"""`lasp run`'s repeat search (run.repeat_search): the jobs it plans and the language signal it computes."""
from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from lasp.config.recipe import load_recipe
from lasp.masks.language_masks import LanguageMasks
from lasp.run.runner import demo_recipe_path, plan_run, run_settings
from lasp.run.signal import REPEAT_SEED_OFFSET, signal_rows, write_signals

LANGS = ["es", "de", "ru", "tr"]
NAMES = ["encoder.layers.0.attention.q_proj.weight", "encoder.layers.1.feed_forward.output_dense.weight"]


def _half(gen: torch.Generator, numel: int = 20000) -> torch.Tensor:
    mask = torch.zeros(numel, dtype=torch.bool)
    mask[torch.randperm(numel, generator=gen)[: numel // 2]] = True
    return mask.view(100, numel // 100)


def _masks(per_lang: dict) -> LanguageMasks:
    return LanguageMasks.from_dense(per_lang, scorer="taylor", sparsity={l: 0.5 for l in per_lang})


def _run(tmp_path: Path, variants: str = "[]"):
    cfg = load_recipe(demo_recipe_path(), [f"output_dir={tmp_path}", "masks.dir=null", "run.repeat_search=true",
                                           f"run.variants={variants}"])
    return cfg, run_settings(cfg)


def test_a_planted_language_signal_is_recovered_and_search_noise_reads_zero(tmp_path):
    gen = torch.Generator().manual_seed(0)
    own = {lang: {n: _half(gen) for n in NAMES} for lang in LANGS}
    cfg, settings = _run(tmp_path, "[{name: noise, overrides: {masks.scorer: fisher}}]")
    # lasp: the repeat finds each language's very mask again (a language-specific mask: signal 1 − 1/3);
    # noise: the repeat draws every mask anew (no language in them: signal 0)
    _masks(own).save(tmp_path / "masks-lasp")
    _masks(own).save(tmp_path / "repeat" / "masks-lasp")
    _masks({l: {n: _half(gen) for n in NAMES} for l in LANGS}).save(tmp_path / "masks-noise")
    _masks({l: {n: _half(gen) for n in NAMES} for l in LANGS}).save(tmp_path / "repeat" / "masks-noise")
    signals = write_signals(tmp_path, cfg, settings)
    assert set(signals) == {"lasp", "noise"}
    lasp, noise = signals["lasp"], signals["noise"]
    # two random halves of the same weights overlap in a quarter of them: IoU 1/3
    assert lasp["mean_same"] == pytest.approx(1.0) and lasp["mean_cross"] == pytest.approx(1 / 3, abs=0.01)
    assert lasp["mean_signal"] == pytest.approx(2 / 3, abs=0.01)
    assert all(v == pytest.approx(2 / 3, abs=0.01) for v in lasp["signal"].values())
    assert noise["mean_signal"] == pytest.approx(0.0, abs=0.01)
    assert json.loads((tmp_path / "language_signal.json").read_text())["lasp"]["mean_signal"] == \
        pytest.approx(lasp["mean_signal"])
    table = "\n".join(signal_rows([signals, signals], [0, 1]))
    assert "| lasp | 1.000 / 1.000 |" in table and "| noise |" in table


def test_a_mask_set_without_its_repeat_gives_no_signal(tmp_path):
    cfg, settings = _run(tmp_path)
    gen = torch.Generator().manual_seed(1)
    _masks({l: {n: _half(gen) for n in NAMES} for l in LANGS}).save(tmp_path / "masks-lasp")
    assert write_signals(tmp_path, cfg, settings) == {}
    assert not (tmp_path / "language_signal.json").exists()


def test_every_searched_mask_set_gets_a_repeat_search_on_other_batches(tmp_path):
    cfg, _ = _run(tmp_path, "[{name: fisher, overrides: {masks.scorer: fisher}}, {name: ctc, score_on: shared},"
                            " {name: same, pretrain: false}]")
    jobs = {j.name: j for j in plan_run(cfg)}
    for name, folder in (("masks", "masks-lasp"), ("masks-fisher", "masks-fisher"), ("masks-ctc", "masks-ctc")):
        first, repeat = jobs[name].argv, jobs[f"repeat/{name}"].argv
        assert repeat[repeat.index("--seed") + 1] == str(cfg.seed + REPEAT_SEED_OFFSET)
        assert repeat[repeat.index("--out") + 1] == str(tmp_path / "repeat" / folder)
        # everything else is the same search, on the same model, after the same stage
        differ = {first[i - 1] for i, (x, y) in enumerate(zip(first, repeat)) if x != y}
        assert differ == {"--seed", "--out"} and jobs[f"repeat/{name}"].deps == jobs[name].deps
    assert "repeat/masks-same" not in jobs  # a variant on the lasp masks has no search of its own

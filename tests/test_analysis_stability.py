"""Search stability: a language's mask against its own repeat vs against other languages' masks."""
import json

import pytest
import torch

from lasp.analysis.stability import search_stability
from lasp.cli import main
from lasp.errors import MaskError
from lasp.masks.language_masks import LanguageMasks

SHAPES = {"encoder.layers.0.fc.weight": (64, 48), "encoder.layers.1.fc.weight": (48, 64)}
LANGS = ["es", "de", "ru"]


def _draw(generator, density=0.5):
    return {n: torch.rand(s, generator=generator) < density for n, s in SHAPES.items()}


def _flip(mask, share, generator):
    return {n: m ^ (torch.rand(m.shape, generator=generator) < share) for n, m in mask.items()}


def repeated_search(language_specific: bool, seed: int = 0):
    """Two searches: each language's mask is its own pattern with 10 % search noise, or pure noise."""
    g = torch.Generator().manual_seed(seed)
    truth = {lang: _draw(g) for lang in LANGS}
    sets = []
    for _ in range(2):
        sets.append(LanguageMasks.from_dense({lang: _flip(truth[lang], 0.1, g) if language_specific else _draw(g)
                                              for lang in LANGS}))
    return sets


def test_language_specific_masks_have_a_signal_and_noise_has_none():
    a, b = repeated_search(language_specific=True)
    s = search_stability(a, b)
    # 10 % flips on each side: a language's repeat keeps IoU ≈ 0.70; other languages' masks ≈ 1/3 (chance)
    assert all(0.65 < s["same"][l] < 0.75 and 0.28 < s["cross"][l] < 0.39 for l in LANGS), s
    assert s["mean_signal"] > 0.25
    a, b = repeated_search(language_specific=False, seed=1)
    s = search_stability(a, b)
    assert abs(s["mean_signal"]) < 0.03 and abs(s["mean_same"] - 1 / 3) < 0.03, s


def test_stability_needs_the_same_parameters_and_two_common_languages():
    a, b = repeated_search(True)
    other = LanguageMasks.from_dense({l: {"encoder.layers.0.fc.weight": torch.ones(64, 48, dtype=torch.bool)}
                                      for l in LANGS})
    with pytest.raises(MaskError, match="cover different parameters .*encoder.layers.1.fc.weight"):
        search_stability(a, other)
    with pytest.raises(MaskError, match="share 1 language"):
        search_stability(a.subset(["es"]), b)


def test_overlap_against_a_second_search_writes_stability(tmp_path, capsys):
    a, b = repeated_search(True)
    a.save(tmp_path / "a")
    b.save(tmp_path / "b")
    rc = main(["masks", "overlap", str(tmp_path / "a"), "--out", str(tmp_path / "o"), "--no-plots", "--against",
               str(tmp_path / "b")])
    out = capsys.readouterr().out
    assert rc == 0 and "search stability: a language's mask vs its repeat IoU 0.700, vs other languages' 0.335" in out
    saved = json.loads((tmp_path / "o" / "stability.json").read_text())
    assert saved["against"] == str(tmp_path / "b") and saved["languages"] == LANGS

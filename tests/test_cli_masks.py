"""`lasp prune` on the tiny preset and a small synthesized manifest, then `lasp masks info`."""
import pytest

from lasp.cli import main
from lasp.masks.language_masks import LanguageMasks


@pytest.fixture(scope="module")
def small_corpus(tmp_path_factory):
    from lasp.data.synth import synthesize_corpus

    out = tmp_path_factory.mktemp("corpus")
    return synthesize_corpus(["es", "de"], out, utterances_per_lang=6, test_utterances=2, dev_utterances=2,
                             seed=0, workers=1)


def test_prune_then_info(small_corpus, tmp_path, capsys):
    out = tmp_path / "masks"
    code = main(["masks", "prune", "--model", "tiny", "--data", small_corpus["train"], "--min-utterances", "2", "--scorer", "taylor",
                 "--sparsity", "0.5", "--batches", "2", "--batch-size", "2", "--out", str(out)])
    assert code == 0
    masks = LanguageMasks.load(out)
    assert masks.languages == ["de", "es"]  # sorted, as the training stages order them
    assert masks.metadata["scorer"] == "taylor" and masks.metadata["base_model"] == "tiny"
    assert all(masks.sparsity(lang) == pytest.approx(0.5, abs=1e-6) for lang in masks.languages)
    capsys.readouterr()
    assert main(["masks", "info", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "density 0.5000" in printed and "pairwise IoU" in printed
    iou = masks.iou("es", "de")
    assert f"{iou:.3f}" in printed and 0.0 < iou < 1.0


def test_prune_two_four_global_errors(small_corpus, tmp_path, capsys):
    out = tmp_path / "m24"
    assert main(["masks", "prune", "--model", "tiny", "--data", small_corpus["train"], "--min-utterances", "2", "--scorer", "magnitude",
                 "--pattern", "2:4", "--out", str(out)]) == 0
    masks = LanguageMasks.load(out)
    m = next(iter(masks["es"].values()))
    assert (m.reshape(-1, 4).sum(1) == 2).all()
    capsys.readouterr()
    assert main(["masks", "prune", "--model", "tiny", "--data", small_corpus["train"], "--min-utterances", "2", "--langs", "es,sw",
                 "--scorer", "magnitude", "--out", str(tmp_path / "x")]) == 1
    assert "utterance of language 'sw'" in capsys.readouterr().err
    assert main(["masks", "info", str(tmp_path / "missing")]) == 1
    assert "does not exist" in capsys.readouterr().err


def test_prune_with_imp(small_corpus, tmp_path):
    out = tmp_path / "imp"
    assert main(["masks", "prune", "--model", "tiny", "--data", small_corpus["train"], "--min-utterances", "2", "--method", "imp",
                 "--imp-rounds", "2", "--imp-steps", "2", "--batches", "1", "--batch-size", "2",
                 "--sparsity", "0.4", "--out", str(out)]) == 0
    masks = LanguageMasks.load(out)
    assert masks.metadata["method"] == "imp" and masks.metadata["rounds"] == 2
    assert all(masks.sparsity(lang) == pytest.approx(0.4, abs=1e-4) for lang in masks.languages)

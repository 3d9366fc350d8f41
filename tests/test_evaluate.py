"""Evaluation: CER/WER equal jiwer's on hand-made hypotheses; greedy decoding; per-language files."""
from __future__ import annotations

import json

import jiwer
import pytest
import torch

from lasp.data.text import Vocabulary
from lasp.train.evaluate import evaluate_system, greedy_decode, macro_average, score, write_language_files

REFS = {"es": ["la casa azul", "una bola"], "de": ["ein dach", "ab und zu ab"]}
HYPS = {"es": ["la cosa azul", "una bola roja"], "de": ["ein", "ab und zu ab"]}


def test_score_matches_jiwer_on_hand_made_hypotheses():
    r = score(REFS["es"], HYPS["es"])
    assert r["wer"] == pytest.approx(jiwer.wer(REFS["es"], HYPS["es"]))
    assert r["cer"] == pytest.approx(jiwer.cer(REFS["es"], HYPS["es"]))
    # by hand: 1 substitution (casa→cosa) + 1 insertion (roja) over 5 reference words
    assert r["wer"] == pytest.approx(2 / 5)
    assert (r["word_substitutions"], r["word_insertions"], r["word_deletions"], r["words"]) == (1, 1, 0, 5)
    # characters: 1 substitution (a→o) + 5 insertions (" roja") over 20 reference characters
    assert r["chars"] == len("la casa azul") + len("una bola")
    assert r["cer"] == pytest.approx(6 / 20)


def test_macro_average_is_unweighted_mean_over_languages():
    per = {lang: score(REFS[lang], HYPS[lang]) for lang in REFS}
    m = macro_average(per)
    assert m["wer"] == pytest.approx((per["es"]["wer"] + per["de"]["wer"]) / 2)
    assert m["cer"] == pytest.approx((per["es"]["cer"] + per["de"]["cer"]) / 2)
    assert per["de"]["wer"] == pytest.approx(1 / 6)  # one deleted word of six


def test_empty_reference_is_an_error():
    from lasp.errors import DataError

    with pytest.raises(DataError, match="reference 1 is empty"):
        score(["a", " "], ["a", "b"])


def test_greedy_decode_merges_repeats_drops_blanks_and_trims_padding():
    vocab = Vocabulary.build(["ab"])  # <pad>=0 <unk>=1 |=2 a=3 b=4
    frames = [3, 3, 0, 3, 2, 4, 4, 0, 4, 2, 3]  # "aa_a|bb_b|a" with one frame of padding at the end
    logits = torch.full((1, len(frames), len(vocab)), -5.0)
    logits[0, torch.arange(len(frames)), torch.tensor(frames)] = 5.0
    assert greedy_decode(logits, vocab) == ["aa bb a"]
    assert greedy_decode(logits, vocab, lengths=[len(frames) - 2]) == ["aa bb"]


def test_language_files(tmp_path):
    r = score(REFS["de"], HYPS["de"])
    write_language_files(tmp_path, "de", ["u1", "u2"], REFS["de"], HYPS["de"], r)
    recogs = (tmp_path / "recogs-de.txt").read_text().splitlines()
    assert recogs == ["u1\tein dach\tein", "u2\tab und zu ab\tab und zu ab"]
    errs = (tmp_path / "errs-de.txt").read_text()
    assert errs.startswith("WER 0.1667 [ 1 / 6, 0 ins, 1 del, 0 sub ]")  # fractions, as in results.json
    assert "REF: ein dach" in errs
    summary = (tmp_path / "wer-summary-de.txt").read_text()
    assert "WER\t0.1667" in summary and "utterances\t2" in summary and "unreadable\t0" in summary


class _FixedSystem:
    """A 'model' whose logits spell out each utterance's reference (per language), to test the driver."""

    name = "fixed"

    def __init__(self, vocab, typo_lang):
        from types import SimpleNamespace

        self.vocab, self.typo_lang, self.lang = vocab, typo_lang, None
        self.texts: list[str] = []
        # one frame per 100 samples
        self.model = SimpleNamespace(config=SimpleNamespace(feat_extract_norm="group", conv_kernel=[100],
                                                            conv_stride=[100]))

    def set_language(self, lang):
        self.lang = lang

    def vocabulary(self, lang, joint):
        return joint

    def train(self, mode=True):
        pass

    def __call__(self, input_values):
        from types import SimpleNamespace

        T = input_values.shape[1] // 100
        logits = torch.full((input_values.shape[0], T, len(self.vocab)), -5.0)
        for b, text in enumerate(self.texts[: input_values.shape[0]]):
            if self.lang == self.typo_lang:
                text = text[:-1]
            ids = []
            for c in text:  # blank between characters so repeats survive
                ids += [self.vocab.encode(c)[0], 0]
            logits[b, torch.arange(len(ids)), torch.tensor(ids)] = 5.0
        self.texts = self.texts[input_values.shape[0]:]
        return SimpleNamespace(logits=logits)


class _Dataset:
    def __init__(self):
        self.items = [{"lang": l, "text": t, "id": f"{l}{i}", "input_values": torch.zeros(6000)}
                      for l in REFS for i, t in enumerate(REFS[l])]
        self.langs = [it["lang"] for it in self.items]
        self.durations = [1.0 + 0.01 * i for i in range(len(self.items))]

    def __len__(self):
        return len(self.items)

    def read(self, i):
        return self.items[i]


def test_evaluate_system_writes_every_language_and_results(tmp_path):
    ds = _Dataset()
    vocab = Vocabulary.build([t for ts in REFS.values() for t in ts])
    system = _FixedSystem(vocab, typo_lang="de")
    # decode order: languages sorted, then by duration (= item order here)
    system.texts = [t for lang in sorted(REFS) for t in REFS[lang]]
    results = evaluate_system(system, ds, vocab, out_dir=tmp_path, batch_size=3, normalize=True)
    assert results["languages"]["es"]["wer"] == 0.0 and results["languages"]["es"]["cer"] == 0.0
    de_hyps = ["ein dac", "ab und zu a"]
    assert results["languages"]["de"]["cer"] == pytest.approx(jiwer.cer(REFS["de"], de_hyps))
    assert results["languages"]["de"]["wer"] == pytest.approx(jiwer.wer(REFS["de"], de_hyps))
    saved = json.loads((tmp_path / "results.json").read_text())
    assert saved["macro"]["wer"] == pytest.approx(results["languages"]["de"]["wer"] / 2)
    for lang in REFS:
        for prefix in ("recogs", "errs", "wer-summary"):
            assert (tmp_path / f"{prefix}-{lang}.txt").is_file()

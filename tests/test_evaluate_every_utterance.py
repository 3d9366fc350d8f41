"""Evaluation scores every test utterance and names the ones it could not read."""
from __future__ import annotations

import json

import numpy as np
import soundfile as sf

from test_train_support import fast_recipe, make_corpus


def _test_manifest(root, corpus):
    """The corpus' Spanish test rows plus: an unseen character, a clip longer than data.max_seconds,
    a missing clip and an undecodable one."""
    rows = [json.loads(l) for l in corpus["test"].read_text().splitlines() if json.loads(l)["lang"] == "es"]
    t = np.arange(16000 * 2) / 16000
    sf.write(root / "wav" / "long.wav", (0.3 * np.sin(2 * np.pi * 220 * t)).astype(np.float32), 16000)
    (root / "wav" / "broken.wav").write_bytes(b"RIFF\x00\x00\x00\x00WAVEjunk" * 10)
    rows += [
        {"id": "unseen", "audio": rows[0]["audio"], "text": "ñandú casa", "lang": "es"},
        {"id": "long", "audio": "wav/long.wav", "text": "casa bola", "lang": "es"},
        {"id": "missing", "audio": "wav/nowhere.wav", "text": "ala", "lang": "es"},
        {"id": "broken", "audio": "wav/broken.wav", "text": "ala", "lang": "es"},
    ]
    path = root / "test-hard.jsonl"
    path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows), encoding="utf-8")
    return path, len(rows) - 2


def test_every_test_utterance_is_scored_and_unreadable_ones_are_named(tmp_path, capsys):
    from lasp.cli import main
    from lasp.config.recipe import save_recipe
    from lasp.train.finetune import finetune

    corpus = make_corpus(tmp_path / "corpus")
    test, readable = _test_manifest(tmp_path / "corpus", corpus)
    over = ["finetune.system=shared", "finetune.max_steps=2", "data.max_seconds=1.0", f"data.test={test}",
            "evaluate.languages=[es]"]
    cfg = fast_recipe(tmp_path, corpus, *over)
    finetune(cfg, progress=False)
    recipe = tmp_path / "r.yaml"
    save_recipe(cfg, recipe)
    capsys.readouterr()
    assert main(["evaluate", str(recipe)]) == 0
    printed = capsys.readouterr().out
    out = tmp_path / "runs" / "finetune-shared" / "eval"
    results = json.loads((out / "results.json").read_text())
    es = results["languages"]["es"]
    assert es["utterances"] == readable  # the unseen character and the long clip are scored too
    recogs = {l.split("\t")[0]: l.split("\t")[1] for l in (out / "recogs-es.txt").read_text().splitlines()}
    assert recogs["unseen"] == "ñandú casa" and recogs["long"] == "casa bola"
    assert len(recogs) == readable
    reasons = {u["id"]: u for u in es["unreadable"]}
    assert set(reasons) == {"missing", "broken"}
    assert "not found" in reasons["missing"]["reason"] and reasons["missing"]["audio"].endswith("nowhere.wav")
    assert "corrupt" in reasons["broken"]["reason"] and reasons["broken"]["audio"].endswith("broken.wav")
    assert 0.0 <= es["cer"] and isinstance(es["wer"], float)
    summary = (out / "wer-summary-es.txt").read_text()
    assert "unreadable\t2" in summary and "nowhere.wav" in summary
    # printed as fractions, with the counts and where the files went
    assert "(error rates as fractions)" in printed
    assert f"es      {es['cer']:>8.4f}{es['wer']:>8.4f}  {readable} (2 unreadable, see results.json)" in printed
    assert str(out) in printed

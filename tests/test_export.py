"""Exports: final/<lang>/ and `lasp export` give a plain model that transformers' pipeline loads without lasp,
and whose outputs equal the masked model's; the shared final/ folder does not load as a plain model."""
from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap

import numpy as np
import pytest
import torch

from lasp.cli import main
from test_train_support import fast_recipe, make_corpus

# runs in a fresh interpreter: only transformers, and a check that lasp never got imported
PIPELINE_SCRIPT = textwrap.dedent("""
    import json, sys
    import numpy as np, torch
    from transformers import pipeline
    asr = pipeline("automatic-speech-recognition", model=sys.argv[1], device=-1)
    audio = np.load(sys.argv[2])
    text = asr({"raw": audio.copy(), "sampling_rate": 16000})["text"]
    inputs = asr.feature_extractor(audio, sampling_rate=16000, return_tensors="pt")
    with torch.no_grad():
        logits = asr.model(**inputs).logits[0]
    assert not any(m == "lasp" or m.startswith("lasp.") for m in sys.modules), "lasp was imported"
    print(json.dumps({"text": text, "logits": logits.tolist(), "normalize": asr.feature_extractor.do_normalize}))
""")


@pytest.fixture(scope="module")
def finetuned(tmp_path_factory):
    from lasp.train.finetune import finetune

    root = tmp_path_factory.mktemp("export")
    corpus = make_corpus(root / "corpus")
    cfg = fast_recipe(root, corpus, "finetune.system=lasp", "finetune.max_steps=3", "finetune.optim.lr=5e-3",
                      "finetune.init=tiny", "masks.scorer=random", "finetune.export_languages=true")
    return finetune(cfg, progress=False), corpus


def _audio(corpus) -> np.ndarray:
    import soundfile as sf

    first = json.loads(open(corpus["test"], encoding="utf-8").readline())
    audio, sr = sf.read(os.path.join(os.path.dirname(corpus["test"]), first["audio"]), dtype="float32")
    assert sr == 16000
    return audio


def _without_lasp(export_dir, audio_path) -> dict:
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    proc = subprocess.run([sys.executable, "-c", PIPELINE_SCRIPT, str(export_dir), str(audio_path)],
                          cwd=os.path.dirname(audio_path), env=env, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return json.loads(proc.stdout.strip().splitlines()[-1])


def _masked_logits(final, lang, audio):
    """The masked model's logits for ``audio``, fed by lasp's own evaluation batching."""
    from lasp.data.collate import EvalCollator
    from lasp.models.features import feature_normalization
    from lasp.models.system import System

    system = System.from_pretrained(final, head="ctc")
    system.train(False)
    system.set_language(lang)
    collate = EvalCollator(system.model.config, normalize=feature_normalization(final))
    batch = collate([{"id": "x", "text": "", "lang": lang, "input_values": audio}])
    inputs = {k: batch[k] for k in ("input_values", "attention_mask") if k in batch}
    with torch.no_grad():
        return system(**inputs).logits[0]


@pytest.mark.e2e  # a fresh process without lasp
def test_final_language_export_runs_in_plain_transformers(finetuned, tmp_path):
    from lasp.data.text import Vocabulary

    final, corpus = finetuned
    audio = _audio(corpus)
    np.save(tmp_path / "clip.npy", audio)
    assert sorted(p.name for p in final.iterdir() if p.is_dir()) == ["de", "es", "masks", "shared"]
    out = _without_lasp(final / "es", tmp_path / "clip.npy")
    masked = _masked_logits(final, "es", audio)
    plain = torch.tensor(out["logits"])
    assert plain.shape == masked.shape
    torch.testing.assert_close(plain, masked, atol=1e-5, rtol=1e-5)
    assert out["text"] == Vocabulary.load(final).decode(masked.argmax(-1).tolist(), ctc=True)
    assert out["normalize"] is True  # the tiny preset is trained on normalized audio
    # the export is es's sub-network, not the dense shared model: de's export computes something else
    de = _masked_logits(final, "de", audio)
    assert not torch.allclose(de, masked, atol=1e-4)


def test_shared_final_folder_does_not_load_as_a_plain_model(finetuned):
    from transformers import AutoModelForCTC, Wav2Vec2ForCTC

    final, _ = finetuned
    for loader in (Wav2Vec2ForCTC, AutoModelForCTC):
        with pytest.raises((OSError, ValueError)):  # no weights or no config found: never a silent load
            loader.from_pretrained(str(final), local_files_only=True)
    marker = json.loads((final / "lasp_system.json").read_text())
    assert marker["system"] == "lasp" and marker["masks"] == "masks" and marker["model"] == "shared"


def test_lasp_export_command(finetuned, tmp_path, capsys):
    from safetensors.torch import load_file

    final, corpus = finetuned
    run_dir = final.parent
    assert main(["export", str(run_dir), "--lang", "de", "--out", str(tmp_path / "de")]) == 0
    a = load_file(str(tmp_path / "de" / "model.safetensors"))
    b = load_file(str(final / "de" / "model.safetensors"))
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    for name in ("vocab.json", "tokenizer_config.json", "preprocessor_config.json", "config.json"):
        assert (tmp_path / "de" / name).is_file(), name
    # weights outside M_de are exactly zero in the export
    from lasp.masks.language_masks import LanguageMasks

    masks = LanguageMasks.load(final / "masks", ["de"])
    for name, keep in masks["de"].items():
        assert torch.count_nonzero(a["wav2vec2." + name][~keep]) == 0, name
    capsys.readouterr()
    assert main(["export", str(run_dir), "--lang", "ru", "--out", str(tmp_path / "ru")]) == 1
    assert "no language 'ru'" in capsys.readouterr().err
    assert not (tmp_path / "ru").exists()  # refused before anything was written
    assert main(["export", str(run_dir), "--lang", "de", "--out", str(tmp_path / "de")]) == 1
    assert "holds an export (de)" in capsys.readouterr().err


def test_export_never_writes_into_the_run_or_a_folder_it_did_not_make(finetuned, tmp_path, capsys):
    from test_provenance_masks import tree_hashes

    final, _ = finetuned
    run_dir = final.parent
    before = tree_hashes(run_dir)
    for out in (run_dir, final, final / "de", run_dir.parent):
        assert main(["export", str(run_dir), "--lang", "es", "--out", str(out), "--force"]) == 1
        assert "an export goes to a folder of its own" in capsys.readouterr().err
    assert tree_hashes(run_dir) == before
    # a folder of the user's is not an export: --force does not make it one
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "notes.txt").write_text("mine\n")
    assert main(["export", str(run_dir), "--lang", "es", "--out", str(mine), "--force"]) == 1
    assert "holds no lasp export" in capsys.readouterr().err
    assert os.listdir(mine) == ["notes.txt"]
    # an export stopped part-way (a kill leaves its record saying so) is redone by the same command; --force
    # replaces a complete one, removing only the files it lists
    out = tmp_path / "es"
    assert main(["export", str(run_dir), "--lang", "es", "--out", str(out)]) == 0
    record = json.loads((out / "lasp_export.json").read_text())
    assert "model.safetensors" in record["files"] and "complete" not in record
    (out / "model.safetensors").write_bytes(b"half")
    (out / "lasp_export.json").write_text(json.dumps({"complete": False, "language": "es", "kept": []}))
    assert main(["export", str(run_dir), "--lang", "es", "--out", str(out)]) == 0
    (out / "README.md").write_text("added by the user\n")
    assert main(["export", str(run_dir), "--lang", "es", "--out", str(out), "--force"]) == 0
    assert (out / "README.md").read_text() == "added by the user\n"
    assert json.loads((out / "lasp_export.json").read_text())["files"] == record["files"]
    assert oct((out / "model.safetensors").stat().st_mode & 0o777) == oct(0o666 & ~_umask())


def _umask() -> int:
    current = os.umask(0)
    os.umask(current)
    return current


def test_a_shared_finetune_holds_one_model_file(tmp_path):
    """Every language of the shared system is the shared model: its final/<lang>/ folders link the one weights
    file (XLSR-53: 1.2 GB once, not once per language); without export_languages there are no such folders."""
    from lasp.train.finetune import finetune

    corpus = make_corpus(tmp_path / "corpus", n_train=2, n_test=1)
    common = ("finetune.system=shared", "finetune.max_steps=1", "finetune.init=tiny")
    final = finetune(fast_recipe(tmp_path, corpus, *common, "finetune.export_languages=true"), progress=False)
    weights = sorted(final.rglob("model.safetensors"))
    assert [w.parent.name for w in weights] == ["de", "es", "shared"]
    assert len({w.stat().st_ino for w in weights}) == 1
    final = finetune(fast_recipe(tmp_path, corpus, *common, f"finetune.run_dir={tmp_path / 'plain'}"), progress=False)
    assert [w.parent.name for w in final.rglob("model.safetensors")] == ["shared"]


def test_adapters_export_as_transformers_adapter_layers():
    """On an XLSR-style (stable layer norm) encoder, es's adapters become transformers' own adapter layers."""
    from data_fixtures import tiny_config
    from transformers import Wav2Vec2ForCTC

    from lasp.models.export import language_model
    from lasp.models.system import build_system

    torch.manual_seed(0)
    model = Wav2Vec2ForCTC(tiny_config(vocab_size=12))
    system = build_system("adapters", model, ["es", "de"], adapter_dim=4)
    for p in system.wrapper.adapters.parameters():
        torch.nn.init.normal_(p, std=0.3)
    system.train(False)
    x = torch.randn(1, 8000)
    for lang in ("es", "de"):
        system.set_language(lang)
        with torch.no_grad():
            want = system(input_values=x).logits
            got = language_model(system, lang).eval()(input_values=x).logits
        torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-5)

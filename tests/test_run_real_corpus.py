"""`lasp run` the way a user runs it: recipes/xlsr53_commonvoice.yaml, an imported Common Voice release and a local
checkpoint directory. The corpus is only read (hash before/after), lasp refuses to synthesize over it, the base is
the checkpoint itself, and the report describes this run rather than the demo."""
from __future__ import annotations

import hashlib
import json
from pathlib import Path

import pytest
from data_fixtures import make_commonvoice
from report_tables import check_error_rates, check_scored, read_results, training_steps

from lasp.cli import main
from lasp.config.recipe import load_recipe

pytestmark = pytest.mark.e2e

RECIPE = Path(__file__).resolve().parents[1] / "recipes" / "xlsr53_commonvoice.yaml"
# 15 rows per language: 9 train, 3 dev, 3 test. Test rows: an ordinary sentence, a clip that goes missing /
# unreadable, and a sentence with a character no training sentence has (ñ, ß) that evaluation must still score.
SENTENCES = {
    "es": ["la casa es roja", "el perro come", "una mesa alta", "vamos a la playa", "hoy hace sol", "me gusta leer",
           "dos gatos", "tres libros", "la luna sale", "el mar", "la mesa", "el gato", "la casa", "el sol",
           "el niño canta"],
    "de": ["das haus ist rot", "der hund isst", "ein hoher tisch", "wir gehen baden", "heute ist es warm",
           "ich lese gern", "zwei katzen", "drei hunde", "der mond geht", "das rad", "ein tisch", "der hund",
           "das haus", "der mond", "die straße"],
}
MISSING = "common_voice_es_1013.mp3"  # an es test clip deleted after the import
CORRUPT = "common_voice_de_1013.mp3"  # a de test clip overwritten with bytes no decoder reads


def _sha256(folder: Path) -> dict[str, str]:
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(folder.glob("*.jsonl"))}


def _overrides(tmp: Path, ckpt: Path, corpus: Path) -> list[str]:
    out = tmp / "run"
    return [
        "device=cpu", "threads=1", f"output_dir={out}", f"model.name={ckpt}", f"run.corpus={corpus}",
        f"run.report={out}/report.md", f"masks.dir={out}/masks", f"data.vocab={out}/vocab", "run.languages=[es,de]",
        "run.systems=[lasp]", "run.parallel=2", "masks.max_batches=1", "data.max_batch_seconds=20",
        "pretrain.max_steps=2", "pretrain.precision=fp32", "pretrain.num_negatives=10", "pretrain.ckpt_every=2",
        "pretrain.optim.warmup_steps=1", "finetune.max_steps=2", "finetune.precision=fp32", "finetune.ckpt_every=2",
        "evaluate.batch_size=4", "masks.min_utterances=2", "finetune.export_languages=true",
    ]


@pytest.fixture(scope="module")
def user_run(tmp_path_factory):
    """Import a Common Voice layout, break two test clips, save a tiny checkpoint, then `lasp run` the recipe."""
    from transformers import Wav2Vec2FeatureExtractor

    from lasp.data.commonvoice import import_commonvoice
    from lasp.models.load import load_model
    from lasp.run.runner import run

    tmp = tmp_path_factory.mktemp("usercorpus")
    root = make_commonvoice(str(tmp / "cv-release"), SENTENCES, sr=16000)
    corpus = tmp / "cv"
    import_commonvoice(root, ["es", "de"], corpus)
    (Path(root) / "es" / "clips" / MISSING).unlink()
    (Path(root) / "de" / "clips" / CORRUPT).write_bytes(b"\x00not an mp3\x00" * 64)
    ckpt = tmp / "xlsr-like"
    load_model("tiny", head="pretraining").save_pretrained(ckpt)
    Wav2Vec2FeatureExtractor(do_normalize=True, return_attention_mask=True).save_pretrained(ckpt)
    before = _sha256(corpus)
    files_before = sorted(p.name for p in corpus.iterdir())
    cfg = load_recipe(RECIPE, _overrides(tmp, ckpt, corpus))
    report = run(cfg, progress=False)
    return {"tmp": tmp, "ckpt": ckpt, "corpus": corpus, "before": before, "files_before": files_before,
            "report": report, "out": tmp / "run"}


def test_run_reads_a_user_corpus_and_checkpoint(user_run):
    out, corpus = user_run["out"], user_run["corpus"]
    assert _sha256(corpus) == user_run["before"] and len(user_run["before"]) == 3
    assert sorted(p.name for p in corpus.iterdir()) == user_run["files_before"]  # no synth.json, no audio/
    assert not (out / "base").exists()  # the checkpoint is the base: no base pre-training
    stages = load_recipe(out / "stages.yaml")
    assert stages.data.train == str(corpus / "train.jsonl")
    for system in ("lasp",):
        summary = json.loads((out / f"finetune-{system}" / "final" / "train_summary.json").read_text())
        assert summary["step"] == 2
        assert (out / f"finetune-{system}" / "final" / "es" / "preprocessor_config.json").is_file()
    masks = json.loads((out / "masks" / "mask_config.json").read_text())
    assert str(user_run["ckpt"]) in json.dumps(masks)  # masks were searched on the user's checkpoint
    # the normalization the checkpoint asks for travels to the exports
    fe = json.loads((out / "finetune-lasp" / "final" / "es" / "preprocessor_config.json").read_text())
    assert fe["do_normalize"] is True
    text = user_run["report"].read_text()
    assert str(corpus) in text and str(user_run["ckpt"]) in text  # the report names the corpus and base it used
    check_error_rates(text, read_results(out, ["lasp"]), ["es", "de"])
    # no base pre-training; the lasp system pre-trains and fine-tunes the recipe's steps
    assert training_steps(text) == {"lasp": (2, 2)}


def test_run_refuses_to_synthesize_over_a_user_corpus(user_run, capsys):
    corpus = user_run["corpus"]
    args = ["run", str(RECIPE), *_overrides(user_run["tmp"] / "again", user_run["ckpt"], corpus),
            "run.synthesize=always"]
    assert main(args) == 1
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and str(corpus) in err and "refusing to synthesize" in err
    assert _sha256(corpus) == user_run["before"]
    assert not (user_run["tmp"] / "again").exists()


def test_fresh_does_not_delete_a_user_corpus_inside_output_dir(user_run, tmp_path, capsys):
    import shutil

    corpus = tmp_path / "cv"
    shutil.copytree(user_run["corpus"], corpus)
    args = ["run", "--fresh", str(RECIPE), f"output_dir={tmp_path}", f"run.corpus={corpus}",
            f"model.name={user_run['ckpt']}"]
    main(args)  # it runs (and stops at the recipe's own min_utterances for these few rows)
    assert _sha256(corpus) == user_run["before"]


def test_every_test_utterance_is_scored_or_reported(user_run):
    out = user_run["out"]
    text = user_run["report"].read_text()
    results = read_results(out, ["lasp"])
    for system in ("lasp",):
        es, de = results[system]["languages"]["es"], results[system]["languages"]["de"]
        # 3 listed per language; one unreadable each; the one with an unseen character (ñ / ß) is scored
        assert es["utterances"] == 2 and de["utterances"] == 2
        assert [Path(r["audio"]).name for r in es["unreadable"]] == [MISSING]
        assert [Path(r["audio"]).name for r in de["unreadable"]] == [CORRUPT]
        assert all(r["reason"] for r in es["unreadable"] + de["unreadable"])
    assert MISSING in text and CORRUPT in text  # the report names the unreadable clips
    assert check_scored(text, results, user_run["corpus"] / "test.jsonl", ["es", "de"]) == {"es": 3, "de": 3}

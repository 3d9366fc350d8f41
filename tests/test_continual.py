"""Adding a language to a trained masked system, and removing one, leaves every other language's outputs
bit-identical; the rule switched off (`add_language.rule=shared`) changes them; the trained run is never written."""
from __future__ import annotations

import hashlib
import json
from pathlib import Path

import pytest
import torch

from lasp.cli import main
from test_train_support import fast_recipe, make_corpus


def tree(root: Path) -> dict[str, str]:
    """sha256 of every file under ``root`` (nothing excluded: not even a lock may appear)."""
    return {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(Path(root).rglob("*")) if p.is_file()}


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """A lasp system fine-tuned on es and de (ru is in the corpus but not trained)."""
    from lasp.train.finetune import finetune

    root = tmp_path_factory.mktemp("continual")
    corpus = make_corpus(root / "corpus", langs=("es", "de", "ru"))
    cfg = fast_recipe(root, corpus, "finetune.system=lasp", "finetune.max_steps=4", "finetune.optim.lr=5e-3",
                      "finetune.init=tiny", "masks.scorer=random", "data.languages=[es, de]",
                      "finetune.ckpt_every=100")
    return finetune(cfg, progress=False).parent, corpus


def logits_of(system_dir: Path, lang: str, corpus: dict) -> list[torch.Tensor]:
    """Logits of every test utterance of ``lang`` (one batch per utterance), as the system computes them."""
    from lasp.data.collate import EvalCollator
    from lasp.data.dataset import SpeechDataset
    from lasp.data.manifest import read_manifest
    from lasp.models.features import feature_normalization
    from lasp.models.layout import system_dir_of
    from lasp.models.system import System

    system_dir = system_dir_of(system_dir)
    system = System.from_pretrained(system_dir, head="ctc")
    system.train(False)
    system.set_language(lang)
    collate = EvalCollator(system.model.config, normalize=feature_normalization(system_dir))
    rows = [u for u in read_manifest(corpus["test"]) if u.lang == lang]
    ds = SpeechDataset(rows, vocab=None, max_seconds=None, min_seconds=None)
    out = []
    with torch.no_grad():
        for i in range(len(ds)):
            batch = collate([ds.read(i)])
            out.append(system(**{k: batch[k] for k in ("input_values", "attention_mask") if k in batch}).logits[0])
    return out


def bit_identical(a: list[torch.Tensor], b: list[torch.Tensor]) -> bool:
    return len(a) == len(b) and all(x.shape == y.shape and torch.equal(x.view(torch.int32), y.view(torch.int32))
                                    for x, y in zip(a, b))


def add(run: Path, out: Path, corpus: dict, *extra: str) -> int:
    return main(["add-language", str(run), "--lang", "ru", "--data", str(corpus["train"]), "--test",
                 str(corpus["test"]), "--out", str(out), "--set", "finetune.max_steps=4", "finetune.optim.lr=5e-2",
                 "finetune.optim.warmup_steps=1", "finetune.mask_time_prob=0", *extra])


def test_added_language_leaves_every_earlier_language_bit_identical(trained, tmp_path):
    run, corpus = trained
    before = tree(run)
    old = {lang: logits_of(run, lang, corpus) for lang in ("es", "de")}
    assert add(run, tmp_path / "new", corpus) == 0
    assert tree(run) == before  # the trained run is only read
    final = tmp_path / "new" / "final"
    for lang in ("es", "de"):
        assert bit_identical(old[lang], logits_of(final, lang, corpus)), lang
    # the new language is served, with its own output layer over its own characters
    ru = logits_of(final, "ru", corpus)
    ru_tokens = json.loads((final / "added" / "added.json").read_text(encoding="utf-8"))["languages"]["ru"]["tokens"]
    assert ru[0].shape[-1] == len(ru_tokens) and set("омдаир") <= set(ru_tokens)
    assert old["es"][0].shape[-1] != len(ru_tokens)
    # what trained: only ru's exclusive weights among the masked ones; every weight another language keeps is equal
    from lasp.masks.language_masks import LanguageMasks
    from safetensors.torch import load_file

    a = load_file(str(run / "final" / "shared" / "model.safetensors"))
    b = load_file(str(final / "shared" / "model.safetensors"))
    masks = LanguageMasks.load(final / "masks")
    assert masks.languages == ["de", "es", "ru"]
    exclusive = masks.exclusive("ru")
    changed = 0
    for key in a:
        name = key.removeprefix("wav2vec2.")
        if name in exclusive:
            assert torch.equal(a[key][~exclusive[name]], b[key][~exclusive[name]]), key
            changed += int((a[key] != b[key]).sum())
        else:
            assert torch.equal(a[key], b[key]), key
    assert changed > 0
    results = json.loads((tmp_path / "new" / "eval" / "results.json").read_text(encoding="utf-8"))
    assert sorted(results["languages"]) == ["de", "es", "ru"]


def test_pretraining_inside_the_mask_keeps_them_identical_too(trained, tmp_path):
    run, corpus = trained
    old = logits_of(run, "de", corpus)
    assert add(run, tmp_path / "pre", corpus, "add_language.pretrain=true", "pretrain.max_steps=3",
               "pretrain.optim.lr=5e-2", "pretrain.optim.warmup_steps=1") == 0
    assert (tmp_path / "pre" / "pretrain" / "checkpoints").is_dir()
    assert bit_identical(old, logits_of(tmp_path / "pre" / "final", "de", corpus))


def test_without_the_rule_earlier_languages_change(trained, tmp_path):
    run, corpus = trained
    old = logits_of(run, "es", corpus)
    assert add(run, tmp_path / "shared", corpus, "add_language.rule=shared") == 0
    assert not bit_identical(old, logits_of(tmp_path / "shared" / "final", "es", corpus))


def test_adapter_baseline_is_bit_identical_too_and_exports(trained, tmp_path):
    run, corpus = trained
    old = logits_of(run, "de", corpus)
    assert add(run, tmp_path / "ad", corpus, "add_language.rule=adapter", "adapters.dim=4") == 0
    final = tmp_path / "ad" / "final"
    assert bit_identical(old, logits_of(final, "de", corpus))
    from safetensors.torch import load_file

    ru = load_file(str(final / "added" / "ru.safetensors"))
    assert any(k.startswith("adapters.") for k in ru) and "head.weight" in ru


def test_remove_language_leaves_the_rest_bit_identical(trained, tmp_path):
    run, corpus = trained
    assert add(run, tmp_path / "three", corpus) == 0
    three = tmp_path / "three" / "final"
    before = tree(three)
    kept = {lang: logits_of(three, lang, corpus) for lang in ("de", "ru")}
    assert main(["remove-language", str(three), "--lang", "es", "--out", str(tmp_path / "two")]) == 0
    assert tree(three) == before
    two = tmp_path / "two" / "final"
    for lang in ("de", "ru"):
        assert bit_identical(kept[lang], logits_of(two, lang, corpus)), lang
    from lasp.models.system import System

    assert System.from_pretrained(two).languages == ["de", "ru"]
    # an added language goes with its head and vocabulary
    assert main(["remove-language", str(two), "--lang", "ru", "--out", str(tmp_path / "one")]) == 0
    one = System.from_pretrained(tmp_path / "one" / "final")
    assert one.languages == ["de"] and one.added is None
    assert bit_identical(kept["de"], logits_of(tmp_path / "one" / "final", "de", corpus))


def test_export_and_evaluate_work_on_the_new_run(trained, tmp_path):
    from lasp.config.recipe import load_recipe
    from lasp.train.evaluate import evaluate

    run, corpus = trained
    # scored with Taylor through ru's own head on ru's transcripts (the CTC loss), as the recipes do
    assert add(run, tmp_path / "new", corpus, "masks.scorer=taylor", "masks.max_batches=2") == 0
    final = tmp_path / "new" / "final"
    assert json.loads((tmp_path / "new" / "masks-search" / "mask_config.json").read_text())["scorer"] == "taylor"
    assert main(["export", str(tmp_path / "new"), "--lang", "ru", "--out", str(tmp_path / "ru")]) == 0
    from transformers import Wav2Vec2ForCTC

    plain = Wav2Vec2ForCTC.from_pretrained(str(tmp_path / "ru"))
    vocab = json.loads((tmp_path / "ru" / "vocab.json").read_text(encoding="utf-8"))
    assert plain.config.vocab_size == len(vocab) and "м" in vocab
    from lasp.data.collate import EvalCollator
    from lasp.data.dataset import SpeechDataset
    from lasp.data.manifest import read_manifest

    row = next(u for u in read_manifest(corpus["test"]) if u.lang == "ru")
    batch = EvalCollator(plain.config, normalize=True)([SpeechDataset([row], vocab=None).read(0)])
    with torch.no_grad():
        exported = plain.eval()(input_values=batch["input_values"]).logits[0]
    torch.testing.assert_close(exported, logits_of(final, "ru", corpus)[0], atol=1e-5, rtol=1e-5)
    cfg = load_recipe(None, [f"data.test={corpus['test']}", f"evaluate.model={final}",
                             f"evaluate.out_dir={tmp_path / 'ev'}", "device=cpu"])
    results = evaluate(cfg)
    assert sorted(results["languages"]) == ["de", "es", "ru"]


def test_refusals_name_the_problem(trained, tmp_path, capsys):
    run, corpus = trained
    assert main(["add-language", str(run), "--lang", "es", "--data", str(corpus["train"]),
                 "--out", str(tmp_path / "x")]) == 1
    assert "already serves 'es'" in capsys.readouterr().err
    assert main(["add-language", str(run), "--lang", "ru", "--data", str(corpus["train"]),
                 "--out", str(run / "inside")]) == 1
    assert "overlaps the trained system" in capsys.readouterr().err
    assert main(["remove-language", str(run), "--lang", "ru", "--out", str(tmp_path / "y")]) == 1
    assert "does not serve 'ru'" in capsys.readouterr().err

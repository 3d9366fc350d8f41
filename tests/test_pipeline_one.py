"""One input pipeline: a waveform becomes the same input_values in every stage; prune = automatic search."""
from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from lasp.masks.language_masks import LanguageMasks
from test_train_support import fast_recipe, make_corpus


def _checkpoint(root, cfg, normalize=True):
    """A local pre-training checkpoint (the tiny preset, saved) with its feature-extractor config."""
    from lasp.models.load import load_model

    torch.manual_seed(1)
    model = load_model("tiny", head="pretraining", **cfg.model.overrides)
    model.save_pretrained(root)
    (root / "preprocessor_config.json").write_text(json.dumps({"do_normalize": normalize}))
    return str(root)


def test_one_waveform_gets_identical_input_values_in_every_stage(tmp_path, monkeypatch):
    import lasp.train.evaluate as evaluate_mod
    import lasp.search.imp
    import lasp.search.scoring
    import lasp.train.finetune
    import lasp.train.pretrain
    from lasp.search.methods import prune_to_dir
    from lasp.models.objective import batch_loss, model_inputs

    corpus = make_corpus(tmp_path / "corpus", langs=("es",), n_train=1, n_test=1)
    cfg0 = fast_recipe(tmp_path, corpus)
    init = _checkpoint(tmp_path / "xlsr", cfg0)
    seen: dict[str, list[torch.Tensor]] = {}

    def recorder(stage, fn):
        def wrapped(model, batch, *args, **kwargs):
            seen.setdefault(stage, []).append(batch["input_values"].detach().cpu().clone())
            return fn(model, batch, *args, **kwargs)
        return wrapped

    monkeypatch.setattr(lasp.search.scoring, "batch_loss", recorder("score", batch_loss))
    monkeypatch.setattr(lasp.search.imp, "batch_loss", recorder("imp", batch_loss))
    monkeypatch.setattr(lasp.train.pretrain, "batch_loss", recorder("pretrain", batch_loss))
    monkeypatch.setattr(lasp.train.finetune, "batch_loss", recorder("finetune", batch_loss))
    def eval_inputs(batch, device=None):
        seen.setdefault("evaluate", []).append(batch["input_values"].detach().cpu().clone())
        return model_inputs(batch, device)

    monkeypatch.setattr(evaluate_mod, "model_inputs", eval_inputs)

    common = [f"model.name={init}", "masks.scorer=taylor", "masks.max_batches=1", "masks.imp_rounds=1",
              "masks.imp_steps=1", f"data.test={corpus['train']}"]
    prune_to_dir(fast_recipe(tmp_path, corpus, *common), init, str(tmp_path / "m1"), progress=False)
    prune_to_dir(fast_recipe(tmp_path, corpus, *common, "masks.method=imp"), init, str(tmp_path / "m2"),
                 progress=False)
    from lasp.train.evaluate import evaluate
    from lasp.train.finetune import finetune
    from lasp.train.pretrain import pretrain

    pre = pretrain(fast_recipe(tmp_path, corpus, *common, "pretrain.system=shared", "pretrain.max_steps=1"),
                   progress=False)
    fin = finetune(fast_recipe(tmp_path, corpus, *common, "finetune.system=shared", "finetune.max_steps=1",
                               f"finetune.init={pre}"), progress=False)
    evaluate(fast_recipe(tmp_path, corpus, *common, f"evaluate.model={fin}"))

    assert set(seen) == {"score", "imp", "pretrain", "finetune", "evaluate"}
    reference = seen["score"][0]
    assert reference.shape[0] == 1
    x = reference[0]
    assert abs(float(x.mean())) < 1e-4 and abs(float(x.std(unbiased=False)) - 1) < 1e-3  # do_normalize: true
    for stage, tensors in seen.items():
        for t in tensors:
            assert torch.equal(t, reference), stage
    # the normalization travels with the model: both stage outputs carry the feature-extractor config
    for out in (pre, fin):
        assert json.loads((out / "shared" / "preprocessor_config.json").read_text())["do_normalize"] is True


def test_a_checkpoint_without_normalization_is_fed_raw_audio(tmp_path):
    from lasp.models.features import feature_normalization
    from lasp.search.methods import language_loaders, load_search_model

    corpus = make_corpus(tmp_path / "corpus", langs=("es",), n_train=1, n_test=1)
    cfg = fast_recipe(tmp_path, corpus)
    init = _checkpoint(tmp_path / "raw", cfg, normalize=False)
    assert feature_normalization(init) is False and feature_normalization("tiny") is True
    model, vocab = load_search_model(cfg, init, "pretraining")
    batch = next(iter(language_loaders(cfg, init, model, vocab, ["es"], "cpu")["es"]))
    from lasp.data.manifest import read_manifest
    import soundfile as sf

    audio, _ = sf.read(read_manifest(corpus["train"])[0].audio, dtype="float32")
    assert np.array_equal(batch["input_values"][0].numpy(), audio)


@pytest.mark.parametrize("stage,method", [("pretrain", "oneshot"), ("finetune", "imp")])
def test_prune_gives_the_masks_the_automatic_search_gives(tmp_path, stage, method):
    from lasp.cli import main

    corpus = make_corpus(tmp_path / "corpus")
    cfg0 = fast_recipe(tmp_path, corpus)
    init = _checkpoint(tmp_path / "xlsr", cfg0)
    recipe = tmp_path / "r.yaml"
    recipe.write_text(f"# lasp {stage} r.yaml\nseed: 3\n")
    over = [f"model.name={init}", "masks.scorer=taylor", f"masks.method={method}", "masks.max_batches=2",
            "masks.imp_rounds=2", "masks.imp_steps=2", f"{stage}.system=lasp", f"{stage}.max_steps=1",
            f"{stage}.init={init}"]
    cfg = fast_recipe(tmp_path, corpus, *over)
    from lasp.config.recipe import save_recipe

    save_recipe(cfg, recipe)
    if stage == "pretrain":
        from lasp.train.pretrain import pretrain as run_stage
    else:
        from lasp.train.finetune import finetune as run_stage
    final = run_stage(cfg, progress=False)
    auto = LanguageMasks.load(final.parent / "masks-lasp")
    assert main(["masks", "prune", "--recipe", str(recipe), "--out", str(tmp_path / "pruned")]) == 0
    pruned = LanguageMasks.load(tmp_path / "pruned")
    assert pruned.languages == auto.languages == ["de", "es"]
    for lang in auto.languages:
        for name in auto.parameter_names:
            assert torch.equal(auto[lang][name], pruned[lang][name]), (lang, name)
    assert auto.metadata["method"] == pruned.metadata["method"] == method
    assert pruned.metadata["skipped_nonfinite"] == {"de": 0, "es": 0}
    # a different seed is a different search: the equality above is not trivially true
    assert main(["masks", "prune", "--recipe", str(recipe), "--seed", "4", "--out", str(tmp_path / "other")]) == 0
    other = LanguageMasks.load(tmp_path / "other")
    assert any(not torch.equal(auto["es"][n], other["es"][n]) for n in auto.parameter_names)

"""pretrain / finetune / evaluate end to end on a tiny corpus, for every system."""
from __future__ import annotations

import json

import pytest
import torch
from safetensors.torch import load_file

from lasp.cli import main
from lasp.masks.language_masks import LanguageMasks
from lasp.train.metrics_log import read_metrics
from test_train_support import FAST_MODEL, fast_recipe, make_corpus


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    return make_corpus(tmp_path_factory.mktemp("corpus"))


def _init_model(cfg, head):
    from lasp.models.load import load_model

    torch.manual_seed(cfg.seed)  # what start_stage does before building the model
    return load_model(cfg.model.name, head=head, **cfg.model.overrides)


def test_language_adaptive_pretraining(tmp_path, corpus):
    cfg = fast_recipe(tmp_path, corpus, "pretrain.system=lasp", "pretrain.max_steps=6", "pretrain.perplexity_warn=1.0")
    from lasp.train.pretrain import pretrain

    init = {n: p.detach().clone() for n, p in _init_model(cfg, "pretraining").named_parameters()}
    with pytest.warns(UserWarning, match="codevector perplexity .* collapsing"):
        final = pretrain(cfg, progress=False)
    masks = LanguageMasks.load(final / "masks")
    assert masks.languages == ["de", "es"]
    assert masks.sparsity("es") == pytest.approx(0.5, abs=0.01)
    union = masks.union(["de", "es"])
    weights = load_file(str(final / "shared" / "model.safetensors"))
    moved = 0
    for name, keep in union.items():
        w = weights["wav2vec2." + name]
        assert torch.equal(w[~keep], init["wav2vec2." + name][~keep]), name  # never in any sub-network
        moved += int((w[keep] != init["wav2vec2." + name][keep]).sum())
    assert moved > 0
    recs = [r for r in read_metrics(final.parent) if r["kind"] == "train"]
    assert len(recs) == 6
    assert all(r["ppl"] > 0 and r["masked_frames"] > 0 and r["langs"] in ("de", "es") for r in recs)
    assert recs[0]["gumbel_temp"] == pytest.approx(2.0) and recs[0]["ppl_collapsed"] == 1.0
    summary = json.loads((final / "train_summary.json").read_text())
    assert summary["step"] == 6 and summary["system"] == "lasp"


def test_adapters_train_only_adapters_and_head(tmp_path, corpus):
    from lasp.train.finetune import finetune

    cfg = fast_recipe(tmp_path, corpus, "finetune.system=adapters", "finetune.max_steps=4", "adapters.dim=4")
    init = {n: p.detach().clone() for n, p in _init_model(cfg, "ctc").named_parameters()}
    final = finetune(cfg, progress=False)
    weights = load_file(str(final / "shared" / "model.safetensors"))
    for name, w in weights.items():
        if name.startswith("lm_head."):
            continue  # the shared CTC head trains (and is freshly initialised)
        assert torch.equal(w, init[name]), name
    adapters = load_file(str(final / "adapters.safetensors"))
    assert {k.split(".")[0] for k in adapters} == {"de", "es"}
    assert any(adapters[k].abs().sum() > 0 for k in adapters if "linear_2.weight" in k)
    summary = json.loads((final / "train_summary.json").read_text())
    head = sum(v.numel() for k, v in weights.items() if k.startswith("lm_head."))
    assert summary["trainable_parameters"] == head + sum(v.numel() for v in adapters.values())


def test_random_masks_match_lasp_density_per_tensor(tmp_path, corpus):
    from lasp.train.finetune import finetune

    cfg = fast_recipe(tmp_path, corpus, "finetune.max_steps=2", f"masks.dir={tmp_path / 'lasp-masks'}",
                      "finetune.system=lasp")
    finetune(cfg, progress=False)
    cfg = fast_recipe(tmp_path, corpus, "finetune.max_steps=2", f"masks.dir={tmp_path / 'lasp-masks'}",
                      "finetune.system=random")
    final = finetune(cfg, progress=False)
    lasp_m = LanguageMasks.load(tmp_path / "lasp-masks")
    rand_m = LanguageMasks.load(final / "masks")
    for lang in ("de", "es"):
        assert rand_m.tensor_density(lang) == lasp_m.tensor_density(lang)
        assert any(not torch.equal(rand_m[lang][n], lasp_m[lang][n]) for n in lasp_m.parameter_names)


def test_imp_mask_search_and_cli_round_trip(tmp_path, corpus, capsys):
    recipe = tmp_path / "r.yaml"
    recipe.write_text("# lasp finetune r.yaml\nseed: 0\n")
    over = [*FAST_MODEL, "threads=1", "device=cpu", f"output_dir={tmp_path / 'runs'}",
            f"data.train={corpus['train']}", f"data.test={corpus['test']}", "data.batch_size=2",
            "masks.method=imp", "masks.imp_rounds=2", "masks.imp_steps=2", "masks.max_batches=2",
            "masks.sparsity=0.4", "masks.min_utterances=2", "finetune.system=lasp", "finetune.max_steps=3",
            # the search scores a preset with the pre-training loss: short clips need short mask spans
            "pretrain.mask_time_length=2", "pretrain.num_negatives=5"]
    assert main(["finetune", str(recipe), *over]) == 0
    out = capsys.readouterr().out
    assert "fine-tuned model:" in out
    masks = LanguageMasks.load(tmp_path / "runs" / "finetune-lasp" / "masks-lasp")
    assert masks.metadata["method"] == "imp" and masks.metadata["rounds"] == 2
    assert masks.sparsity("es") == pytest.approx(0.4, abs=0.01)
    assert main(["evaluate", str(recipe), *over]) == 0
    out = capsys.readouterr().out
    results = json.loads((tmp_path / "runs" / "finetune-lasp" / "eval" / "results.json").read_text())
    assert set(results["languages"]) == {"de", "es"} and results["system"] == "lasp"
    # the same unit as results.json (fractions, labelled), and where the files went
    assert "(error rates as fractions)" in out and f"to {tmp_path / 'runs' / 'finetune-lasp' / 'eval'}" in out
    for lang, r in results["languages"].items():
        assert f"{lang:<8}{r['cer']:>8.4f}{r['wer']:>8.4f}" in out


def test_a_model_kept_at_a_step_equals_a_run_that_stops_there(tmp_path, corpus):
    """What the base-strength axis of `lasp run` rests on: with a schedule and a Gumbel decay that do not depend on
    max_steps, the model kept at step 2 of a longer run, a 2-step run, and a run continued to 4 steps agree."""
    from lasp.train.pretrain import pretrain

    common = ("pretrain.system=shared", "pretrain.optim.warmup_steps=3", "pretrain.gumbel_decay=0.9",
              "pretrain.ckpt_every=1000")
    long = pretrain(fast_recipe(tmp_path / "long", corpus, *common, "pretrain.max_steps=4", "pretrain.keep_at=[2]"),
                    progress=False)
    short = pretrain(fast_recipe(tmp_path / "short", corpus, *common, "pretrain.max_steps=2"), progress=False)
    for steps in (2, 4):  # one run continued: 2 steps, then on to 4 (what `lasp run` chains per strength)
        continued = pretrain(fast_recipe(tmp_path / "continued", corpus, *common, f"pretrain.max_steps={steps}",
                                         "pretrain.keep_at=[2, 4]", "pretrain.resume_allow=[max_steps]"),
                             progress=False)

    def weights(folder):
        return load_file(str(folder / "shared" / "model.safetensors"))

    def same(a, b):
        return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)

    at_2 = weights(long.parent / "at-step-2")
    assert same(at_2, weights(short)) and same(at_2, weights(continued.parent / "at-step-2"))
    assert same(weights(long), weights(continued)) and same(weights(long), weights(continued.parent / "at-step-4"))
    assert not same(at_2, weights(long))
    assert json.loads((long.parent / "at-step-2" / "train_summary.json").read_text())["step"] == 2

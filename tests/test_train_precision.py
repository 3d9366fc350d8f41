"""What a GPU runs, run on CPU: bf16 / fp16 autocast in every stage (the fp16 scaler's skipped steps:
test_train_fp16.py), gradient accumulation (confined to the union of the micro-batches' languages) and activation
checkpointing."""
from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch

from conftest import make_ctc_batch
from lasp.config.recipe import load_recipe
from lasp.models.system import System, build_system
from lasp.train.checkpoint import latest_checkpoint, load_checkpoint
from lasp.train.loop import Batch, train_loop
from lasp.train.metrics_log import read_metrics
from test_train_support import fast_recipe, make_corpus


class Stream:
    """Micro-batch i: 2 utterances of ``langs[i % len(langs)]``, seeded by i."""

    def __init__(self, langs=("es",), batch_size=2):
        self.langs, self.batch_size = langs, batch_size

    def next(self, i):
        lang = self.langs[i % len(self.langs)]
        return Batch(make_ctc_batch(12, batch_size=self.batch_size, samples=4000, seed=i), [lang] * self.batch_size)

    def state_dict(self):
        return {}

    def load_state_dict(self, state):
        pass


def _stage(*over):
    return load_recipe(None, ["finetune.optim.schedule=constant", "finetune.log_every=1",
                              "finetune.optim.max_grad_norm=0", *over]).finetune


def _ctc_loss(sys, batch, step):
    return sys(**batch.inputs).loss, 1.0, {}


def test_bf16_autocast_on_cpu_builds_bf16_masked_copies(tmp_path, tiny_ctc, random_masks):
    system = build_system("lasp", tiny_ctc, ["es", "de", "ru"], masks=random_masks)
    train_loop(system=system, stream=Stream(("es", "de")), loss_fn=_ctc_loss, run_dir=tmp_path, progress=False,
               stage=_stage("finetune.max_steps=2", "finetune.precision=bf16"))
    copies = [c for m in system.wrapper.masked_modules() for _, c in m._copies.values()]
    assert copies and all(c.dtype == torch.bfloat16 for c in copies)
    assert all(p.dtype == torch.float32 for p in tiny_ctc.parameters())  # fp32 master weights


def test_accumulation_sums_micro_batches_into_one_step(tmp_path, tiny_ctc):
    """Two micro-batches of 2 utterances = one batch of 4 (per-utterance mean CTC): same logged loss, gradient
    norm and weights after the step."""
    import copy

    from lasp.train.loop import make_optimizer

    tiny_ctc.config.ctc_loss_reduction = "mean"  # what fine-tuning uses: the mean over a batch's utterances
    tiny_ctc.config.mask_time_prob = tiny_ctc.config.layerdrop = 0.0  # no random draws: a batch of 4 is
    for module in tiny_ctc.modules():                                   # then exactly two batches of 2
        if isinstance(module, torch.nn.Dropout):
            module.p = 0.0
    twin = copy.deepcopy(tiny_ctc)
    # eps 1: the Adam update is about lr * gradient, so rounding-level gradient differences stay small
    stage = _stage("finetune.max_steps=1", "finetune.grad_accum_steps=2", "finetune.optim.lr=1e-2",
                   "finetune.optim.eps=1.0")
    train_loop(system=System("shared", tiny_ctc), stream=Stream(), loss_fn=_ctc_loss, stage=stage,
               run_dir=tmp_path / "accum", progress=False)
    # the same step by hand: both micro-batches in one batch
    both = [Stream().next(i).inputs for i in (0, 1)]
    batch = {k: torch.cat([b[k] for b in both]) for k in both[0]}
    optimizer = make_optimizer([p for p in twin.parameters() if p.requires_grad], stage)
    twin.train()
    loss = twin(**batch).loss
    loss.backward()
    norm = float(torch.nn.utils.clip_grad_norm_([p for p in twin.parameters() if p.grad is not None], math.inf))
    optimizer.step()
    logged = [r for r in read_metrics(tmp_path / "accum") if r["kind"] == "train"][0]
    assert logged["loss"] == pytest.approx(float(loss.detach()), rel=1e-5)
    assert logged["grad_norm"] == pytest.approx(norm, rel=1e-4)
    for (n, a), b in zip(tiny_ctc.named_parameters(), twin.parameters()):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-6, msg=n)


def test_accumulation_over_languages_confines_to_their_union(tmp_path, tiny_ctc, random_masks):
    """Micro-batches es, de in one step: weights outside es ∪ de keep their bits, weights only es trains move."""
    system = build_system("lasp", tiny_ctc, ["es", "de", "ru"], masks=random_masks)
    before = {n: p.detach().clone() for n, p in system.wrapper.targets.items()}
    train_loop(system=system, stream=Stream(("es", "de")), loss_fn=_ctc_loss, run_dir=tmp_path, progress=False,
               stage=_stage("finetune.max_steps=2", "finetune.grad_accum_steps=2", "finetune.optim.weight_decay=0.1"))
    union = system.wrapper.union_mask(["es", "de"])
    es_only = 0
    for n, p in system.wrapper.targets.items():
        assert torch.equal(p.detach()[~union[n]], before[n][~union[n]]), n
        only = random_masks["es"][n] & ~random_masks["de"][n]
        es_only += int((p.detach()[only] != before[n][only]).sum())
    assert es_only > 0
    assert [r["langs"] for r in read_metrics(tmp_path) if r["kind"] == "train"] == ["es,de", "es,de"]


def test_activation_checkpointing_recomputes_instead_of_keeping_activations(tmp_path, tiny_ctc, random_masks):
    """Same weights after two masked steps (dropout replays its RNG), and a training step's peak memory drops."""
    import copy

    from peak_memory import peak_bytes
    from lasp.train.precision import activation_checkpointing

    twin, masks = copy.deepcopy(tiny_ctc), random_masks
    runs = {}
    for name, model, over in (("plain", tiny_ctc, ()),
                              ("checkpointed", twin, ("finetune.activation_checkpointing=true",))):
        torch.manual_seed(0)
        np.random.seed(0)  # transformers draws SpecAugment's time masks from NumPy
        system = build_system("lasp", model, ["es", "de", "ru"], masks=masks)
        train_loop(system=system, stream=Stream(("es", "de")), loss_fn=_ctc_loss, run_dir=tmp_path / name,
                   progress=False, stage=_stage("finetune.max_steps=2", *over))
        batch = make_ctc_batch(12, batch_size=4, samples=32000, seed=9)
        system.set_language("es")
        runs[name] = (system, peak_bytes(lambda: system(**batch).loss.backward()))
    assert activation_checkpointing(twin) and not activation_checkpointing(tiny_ctc)
    for (n, a), b in zip(tiny_ctc.named_parameters(), twin.parameters()):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-7, msg=n)
    assert runs["checkpointed"][1] < 0.8 * runs["plain"][1], (runs["checkpointed"][1], runs["plain"][1])


# ------------------------------------------------------------------------------------------------ every stage
@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    return make_corpus(tmp_path_factory.mktemp("corpus"), n_train=4, n_test=2)


@pytest.fixture
def autocast_dtypes(monkeypatch):
    """The autocast dtype of every training micro-batch (the loop's own autocast, not the model's)."""
    from lasp.train import step as step_module

    seen = []
    original = step_module.autocast

    def recording(device, dtype):
        seen.append(dtype)
        return original(device, dtype)

    monkeypatch.setattr(step_module, "autocast", recording)
    return seen


@pytest.mark.parametrize("precision", ["bf16", "fp16"])
@pytest.mark.parametrize("stage, system, extra", [
    ("pretrain", "lasp", ()),
    ("finetune", "lasp", ("data.mixed=true",)),
    ("finetune", "random", ()),
    ("finetune", "adapters", ("adapters.dim=4",)),
], ids=["pretrain-lasp", "finetune-lasp-mixed", "finetune-random", "finetune-adapters"])
def test_every_stage_trains_under_autocast_on_cpu(tmp_path, corpus, autocast_dtypes, precision, stage, system, extra):
    from lasp.train.finetune import finetune
    from lasp.train.pretrain import pretrain

    cfg = fast_recipe(tmp_path, corpus, f"{stage}.system={system}", f"{stage}.max_steps=3", f"{stage}.ckpt_every=3",
                      f"{stage}.precision={precision}", "finetune.init=tiny", "finetune.mask_time_length=2", *extra)
    final = (pretrain if stage == "pretrain" else finetune)(cfg, progress=False)
    wanted = torch.bfloat16 if precision == "bf16" else torch.float16
    assert autocast_dtypes == [wanted] * 3
    records = [r for r in read_metrics(final.parent) if r["kind"] == "train"]
    assert [r["step"] for r in records] == [1, 2, 3]
    summary = json.loads((final / "train_summary.json").read_text())
    assert summary["step"] == 3 and summary["skipped_nonfinite"] == sum(not math.isfinite(r["loss"]) for r in records)
    _, state = load_checkpoint(latest_checkpoint(final.parent))
    assert bool(state["scaler"]) == (precision == "fp16")  # the scaler's state is saved for a resume
    if stage == "finetune" and system == "lasp":
        assert any("," in r["langs"] for r in records)  # mixed batches ran


@pytest.mark.parametrize("precision", ["bf16", "fp16"])
def test_evaluate_decodes_under_autocast_on_cpu(tmp_path, corpus, precision, monkeypatch):
    from lasp.train import evaluate as evaluation
    from lasp.train.finetune import finetune

    cfg = fast_recipe(tmp_path, corpus, "finetune.system=lasp", "finetune.max_steps=1", "finetune.init=tiny",
                      f"evaluate.precision={precision}")
    finetune(cfg, progress=False)
    dtypes = []
    original = evaluation.autocast
    monkeypatch.setattr(evaluation, "autocast", lambda device, dtype: dtypes.append(dtype) or original(device, dtype))
    results = evaluation.evaluate(cfg)
    assert set(dtypes) == {torch.bfloat16 if precision == "bf16" else torch.float16}
    assert set(results["languages"]) == {"es", "de"}
    assert all(0.0 <= r["cer"] for r in results["languages"].values())

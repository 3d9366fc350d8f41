"""Two CPU ranks (gloo) under DistributedDataParallel train different languages: confinement holds across ranks,
the ranks stay identical, per-language adapters unused by a rank still sync, and the gradient equals the
one-process gradient of both ranks' batches."""
from __future__ import annotations

import os
import socket

import pytest
import torch
import torch.multiprocessing as mp

pytestmark = pytest.mark.e2e  # two rank processes each

LANGS = ("es", "de", "ru")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _worker(rank: int, world: int, port: int, out_dir: str, system_name: str = "lasp", accumulate: int = 1) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank), WORLD_SIZE=str(world),
                      LOCAL_RANK=str(rank))
    torch.set_num_threads(1)
    from safetensors.torch import save_file
    from torch.nn.parallel import DistributedDataParallel

    from lasp.train import distributed as D
    from lasp.train.loop import train_loop

    info = D.init_distributed("cpu")
    system, masks = _system(system_name)
    before = _trained_tensors(system)
    stage = _stage()
    stage.grad_accum_steps = accumulate
    stream = _Stream([rank]) if accumulate == 1 else _RotatingStream(rank)
    run = train_loop(system=system, stream=stream, loss_fn=_loss, stage=stage, info=info,
                     run_dir=os.path.join(out_dir, "run"), progress=False)
    assert isinstance(system.replica, DistributedDataParallel) and run.skipped_nonfinite == 0
    out = {**{f"after.{n}": t for n, t in _trained_tensors(system).items()},
           **{f"before.{n}": t for n, t in before.items()},
           **{f"full.{n}": p.detach().clone() for n, p in system.model.named_parameters()}}
    if masks is not None:
        union = system.wrapper.union_mask(["es", "de"])
        out.update({f"union.{n}": m.to(torch.uint8) for n, m in union.items()})
        out.update({f"deonly.{n}": (masks["de"][n] & ~masks["es"][n]).to(torch.uint8) for n in union})
    save_file(out, os.path.join(out_dir, f"rank{rank}.safetensors"))
    D.shutdown(info)


def _system(name: str):
    from lasp.models.load import load_model
    from lasp.search.pruning import make_language_masks
    from lasp.models.system import build_system

    torch.manual_seed(0)  # identical initial weights on every rank (DDP also broadcasts rank 0's)
    model = load_model("tiny", head="ctc", vocab_size=12, hidden_size=32, intermediate_size=64,
                       num_attention_heads=2, conv_dim=(16,) * 7, num_conv_pos_embeddings=16,
                       num_conv_pos_embedding_groups=4, ctc_loss_reduction="mean",
                       mask_time_prob=0.0)  # no random SpecAugment: the one-process comparison is exact
    masks = None
    if name == "lasp":
        masks = make_language_masks(model, {l: None for l in LANGS}, scorer="random", sparsity=0.6, progress=False)
    return build_system(name, model, LANGS, masks=masks, adapter_dim=4), masks


def _trained_tensors(system) -> dict:
    if system.name == "lasp":
        return {n: p.detach().clone() for n, p in system.wrapper.targets.items()}
    if system.name == "adapters":
        return {n: p.detach().clone() for n, p in system.wrapper.adapters.named_parameters()}
    return {n: p.detach().clone() for n, p in system.model.named_parameters()}


class _Stream:
    """Rank r trains LANGS[r] (es on rank 0, de on rank 1; ru never); ``ranks`` > 1 concatenates their batches."""

    def __init__(self, ranks):
        self.ranks = ranks

    def next(self, step):
        from conftest import make_ctc_batch
        from lasp.train.loop import Batch

        parts = [make_ctc_batch(12, batch_size=2, samples=4000, seed=100 * r + step) for r in self.ranks]
        inputs = {k: torch.cat([p[k] for p in parts]) for k in parts[0]}
        return Batch(inputs, [LANGS[r] for r in self.ranks for _ in range(2)])

    def state_dict(self):
        return {}

    def load_state_dict(self, state):
        pass


class _RotatingStream(_Stream):
    """Micro-batch i of rank r trains LANGS[(r + i) % 3]: with 2 micro-batches per step, rank 0 trains es then de,
    rank 1 de then ru, so es's and ru's adapters are used by one rank only, and only in one micro-batch."""

    def __init__(self, rank):
        super().__init__([rank])
        self.rank = rank

    def next(self, step):
        from conftest import make_ctc_batch
        from lasp.train.loop import Batch

        lang = LANGS[(self.rank + step) % len(LANGS)]
        return Batch(make_ctc_batch(12, batch_size=2, samples=4000, seed=100 * self.rank + step), [lang, lang])


def _loss(sys, batch, step):
    return sys(**batch.inputs).loss, 1.0, {}


def _stage():
    from lasp.config.recipe import load_recipe

    return load_recipe(None, ["finetune.optim.lr=1e-2", "finetune.optim.weight_decay=0.1", "finetune.max_steps=4",
                              "finetune.ckpt_every=4", "finetune.optim.schedule=constant", "finetune.log_every=1",
                              "finetune.optim.max_grad_norm=0"]).finetune


def _spawn(tmp_path, system_name, accumulate=1):
    from safetensors.torch import load_file

    mp.spawn(_worker, args=(2, _free_port(), str(tmp_path), system_name, accumulate), nprocs=2, join=True)
    r0 = load_file(str(tmp_path / "rank0.safetensors"))
    r1 = load_file(str(tmp_path / "rank1.safetensors"))
    # ranks identical afterwards (every trained tensor, bit for bit)
    for k in r0:
        if k.startswith(("full.", "after.")):
            assert torch.equal(r0[k], r1[k]), k
    return r0


def test_two_ranks_different_languages(tmp_path):
    r0 = _spawn(tmp_path, "lasp")
    changed_inside = changed_de_only = 0
    for k in r0:
        if not k.startswith("after."):
            continue
        name = k[len("after."):]
        outside = r0[f"union.{name}"] == 0
        # weights outside es ∪ de are bit-identical to the start (weight decay 0.1 would have moved them)
        assert torch.equal(r0[k][outside], r0[f"before.{name}"][outside]), name
        changed_inside += int((r0[k] != r0[f"before.{name}"]).sum())
        # rank 1's language reached rank 0: weights only in M_de moved on rank 0 too
        de_only = r0[f"deonly.{name}"] == 1
        changed_de_only += int((r0[k][de_only] != r0[f"before.{name}"][de_only]).sum())
    assert changed_inside > 0 and changed_de_only > 0
    # the checkpoint holds one stream/RNG state per rank
    from lasp.train.checkpoint import latest_checkpoint, load_checkpoint

    _, state = load_checkpoint(latest_checkpoint(tmp_path / "run"))
    assert len(state["ranks"]) == 2 and state["step"] == 4


def test_adapters_unused_on_a_rank_still_sync(tmp_path):
    """Each rank uses one language's adapters (find_unused_parameters): de's adapters move on rank 0 as well,
    ru's (no rank) stay untouched, and the ranks end identical."""
    r0 = _spawn(tmp_path, "adapters")
    moved = {lang: any(not torch.equal(r0[k], r0["before." + k[len("after."):]]) for k in r0
                       if k.startswith(f"after.{lang}.")) for lang in LANGS}
    assert moved == {"es": True, "de": True, "ru": False}


def test_accumulated_micro_batches_sync_adapters_used_by_one_rank_in_one_micro_batch(tmp_path):
    """DDP all-reduces once per step (no_sync for the first micro-batch): an adapter one rank used only in that
    first micro-batch still reaches the other rank, so both end identical, and every language trained."""
    r0 = _spawn(tmp_path, "adapters", accumulate=2)
    moved = {lang: any(not torch.equal(r0[k], r0["before." + k[len("after."):]]) for k in r0
                       if k.startswith(f"after.{lang}.")) for lang in LANGS}
    assert moved == {"es": True, "de": True, "ru": True}


def test_ddp_gradient_equals_one_process_on_both_batches(tmp_path):
    """The logged gradient norm of step 1 under DDP equals one process's on the concatenation of both ranks'
    batches: gradients are summed over ranks and divided by the global normaliser, not averaged twice."""
    from lasp.train.metrics_log import read_metrics
    from lasp.train.loop import train_loop

    _spawn(tmp_path / "ddp", "shared")
    system, _ = _system("shared")
    torch.set_num_threads(1)
    stage = _stage()
    stage.max_steps = 1
    # one process: per-utterance mean CTC over 4 utterances = the mean of the ranks' 2-utterance means
    train_loop(system=system, stream=_Stream([0, 1]), loss_fn=_loss, stage=stage, run_dir=tmp_path / "one",
               progress=False)
    ddp = [r for r in read_metrics(tmp_path / "ddp" / "run") if r.get("kind") == "train"][0]
    one = [r for r in read_metrics(tmp_path / "one") if r.get("kind") == "train"][0]
    assert ddp["step"] == one["step"] == 1
    assert abs(ddp["grad_norm"] - one["grad_norm"]) <= 1e-4 * one["grad_norm"]
    assert abs(ddp["loss"] - one["loss"]) <= 1e-5 * one["loss"]

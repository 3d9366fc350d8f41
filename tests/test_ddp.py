"""Two CPU ranks (gloo) train different languages: confinement holds across ranks and the ranks stay identical."""
from __future__ import annotations

import os
import socket

import torch
import torch.multiprocessing as mp

LANGS = ("es", "de", "ru")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _worker(rank: int, world: int, port: int, out_dir: str) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank), WORLD_SIZE=str(world),
                      LOCAL_RANK=str(rank))
    torch.set_num_threads(1)
    from safetensors.torch import save_file

    from conftest import make_ctc_batch
    from lasp.config import load_recipe
    from lasp.models import load_model
    from lasp.pruning import make_language_masks
    from lasp.train import distributed as D
    from lasp.train.loop import Batch, train_loop
    from lasp.train.systems import build_system

    info = D.init_distributed("cpu")
    torch.manual_seed(0)  # identical initial weights on every rank
    model = load_model("tiny", head="ctc", vocab_size=12, hidden_size=32, intermediate_size=64,
                       num_attention_heads=2, conv_dim=(16,) * 7, num_conv_pos_embeddings=16,
                       num_conv_pos_embedding_groups=4)
    masks = make_language_masks(model, {l: None for l in LANGS}, scorer="random", sparsity=0.6, progress=False)
    system = build_system("lasp", model, LANGS, masks=masks)
    before = {n: p.detach().clone() for n, p in system.wrapper.targets.items()}
    mine = LANGS[rank]  # rank 0 trains es, rank 1 trains de; ru is never trained

    class Stream:
        def next(self, step):
            b = make_ctc_batch(12, batch_size=2, samples=4000, seed=100 * rank + step)
            return Batch(b, [mine, mine])

        def state_dict(self):
            return {}

        def load_state_dict(self, state):
            pass

    def loss_fn(sys, batch, step):
        return sys(**batch.inputs).loss, 1.0, {}

    cfg = load_recipe(None, ["finetune.optim.lr=1e-2", "finetune.optim.weight_decay=0.1", "finetune.max_steps=4",
                             "finetune.ckpt_every=4", "finetune.optim.schedule=constant"])
    train_loop(system=system, stream=Stream(), loss_fn=loss_fn, stage=cfg.finetune,
               run_dir=os.path.join(out_dir, "run"), info=info, progress=False)
    after = {n: p.detach().clone() for n, p in system.wrapper.targets.items()}
    union = system.wrapper.union_mask(["es", "de"])
    save_file({**{f"after.{n}": t for n, t in after.items()}, **{f"before.{n}": t for n, t in before.items()},
               **{f"union.{n}": m.to(torch.uint8) for n, m in union.items()},
               **{f"deonly.{n}": (masks["de"][n] & ~masks["es"][n]).to(torch.uint8) for n in union},
               **{f"full.{n}": p.detach().clone() for n, p in model.named_parameters()}},
              os.path.join(out_dir, f"rank{rank}.safetensors"))
    D.shutdown(info)


def test_two_ranks_different_languages(tmp_path):
    from safetensors.torch import load_file

    mp.spawn(_worker, args=(2, _free_port(), str(tmp_path)), nprocs=2, join=True)
    r0 = load_file(str(tmp_path / "rank0.safetensors"))
    r1 = load_file(str(tmp_path / "rank1.safetensors"))
    # ranks identical afterwards (every parameter, bit for bit)
    for k in r0:
        if k.startswith("full."):
            assert torch.equal(r0[k], r1[k]), k
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

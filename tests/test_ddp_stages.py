"""Data parallel end to end: both stages in two CPU processes (gloo), and the process groups a GPU run gets."""
from __future__ import annotations

import os
import socket
from datetime import timedelta

import pytest
import torch
import torch.multiprocessing as mp

from lasp.train import distributed as D


def test_a_gpu_run_gets_a_group_that_serves_cpu_tensors_and_a_long_wait_group(monkeypatch):
    """On CUDA the default group is cpu:gloo,cuda:nccl (a CPU tensor handed to a collective has a backend), with
    an explicit timeout; the waits for rank 0's one-off work use a gloo group with a long one."""
    made = {}
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv("RANK", "1")
    monkeypatch.setenv("LOCAL_RANK", "1")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "set_device", lambda device: made.setdefault("device", device))
    monkeypatch.setattr(D.dist, "is_initialized", lambda: "init" in made)
    monkeypatch.setattr(D.dist, "init_process_group", lambda **kw: made.setdefault("init", kw))
    monkeypatch.setattr(D.dist, "new_group", lambda **kw: made.setdefault("wait", kw) and "wait-group")
    monkeypatch.setattr(D, "_WAIT_GROUP", {}, raising=False)
    info = D.init_distributed("auto")
    assert info.device == torch.device("cuda", 1) and made["device"] == torch.device("cuda", 1)
    backends = made["init"]["backend"].split(",")
    assert sorted(backends) == ["cpu:gloo", "cuda:nccl"], backends
    assert made["init"]["timeout"] == D.STEP_TIMEOUT
    assert made["wait"] == {"backend": "gloo", "timeout": D.WAIT_TIMEOUT} and D.WAIT_TIMEOUT >= timedelta(hours=6)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


SLOW_SEARCH_S = 8.0  # rank 0's mask search takes longer than the training group's timeout (3 s here)


def _worker(rank: int, port: int, root: str, manifests: dict) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank), WORLD_SIZE="2",
                      LOCAL_RANK=str(rank), TQDM_DISABLE="1")
    torch.set_num_threads(1)
    import time
    from pathlib import Path

    import torch.distributed as dist
    from safetensors.torch import save_file

    from lasp.train import finetune as finetune_module
    from lasp.train import pretrain as pretrain_module
    from lasp.train import setup as setup_module
    from test_train_support import fast_recipe

    # the training group with a short timeout: a wait on it for rank 0's long search would fail
    dist.init_process_group("gloo", timeout=timedelta(seconds=3))
    search = setup_module.search_masks

    def slow_search(*args, **kwargs):
        time.sleep(SLOW_SEARCH_S)
        return search(*args, **kwargs)

    setup_module.search_masks = slow_search
    seen: dict[str, list] = {}

    def recording(stage, train_loop):
        def run(**kw):
            stream, langs = kw["stream"], seen.setdefault(stage, [])
            take = stream.next
            stream.next = lambda step: (lambda b: langs.append(sorted(set(b.langs))) or b)(take(step))
            result = train_loop(**kw)
            save_file({k: v.detach().contiguous().clone() for k, v in kw["system"].state_tensors().items()},
                      os.path.join(root, f"{stage}-rank{rank}.safetensors"))
            return result
        return run

    pretrain_module.train_loop = recording("pretrain", pretrain_module.train_loop)
    finetune_module.train_loop = recording("finetune", finetune_module.train_loop)
    common = ("data.mixed=true", "data.batch_size=3", "masks.max_batches=1")
    cfg = fast_recipe(Path(root), {k: Path(v) for k, v in manifests.items()}, *common, "pretrain.system=lasp",
                      "pretrain.max_steps=3", "pretrain.ckpt_every=2", "finetune.system=lasp", "finetune.init=pretrain",
                      "finetune.max_steps=3", "finetune.ckpt_every=2", "finetune.grad_accum_steps=2",
                      "finetune.mask_time_length=2")
    pretrain_module.pretrain(cfg, progress=False)
    finetune_module.finetune(cfg, progress=False)
    import json

    with open(os.path.join(root, f"langs-rank{rank}.json"), "w") as fh:
        json.dump(seen, fh)
    D.shutdown(D.DistInfo(rank=rank, world_size=2))


@pytest.mark.e2e  # two rank processes
def test_two_ranks_pretrain_then_finetune_with_a_long_mask_search(tmp_path):
    """Both stages through torch DDP on two CPU ranks whose mixed batches hold different languages: rank 0
    searches the masks for longer than the training group's timeout while rank 1 waits (on the long-timeout gloo
    group), and after each stage every trained tensor is bit-identical on both ranks."""
    import json

    from safetensors.torch import load_file

    from lasp.masks.language_masks import LanguageMasks
    from test_train_support import make_corpus

    manifests = {k: str(v) for k, v in make_corpus(tmp_path / "corpus", langs=("es", "de", "ru"), n_train=4,
                                                   n_test=1).items()}
    mp.spawn(_worker, args=(_free_port(), str(tmp_path), manifests), nprocs=2, join=True)
    for stage in ("pretrain", "finetune"):
        a = load_file(str(tmp_path / f"{stage}-rank0.safetensors"))
        b = load_file(str(tmp_path / f"{stage}-rank1.safetensors"))
        assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a), stage
    langs = [json.load(open(tmp_path / f"langs-rank{r}.json")) for r in (0, 1)]
    for stage, micro_batches in (("pretrain", 3), ("finetune", 6)):
        assert len(langs[0][stage]) == len(langs[1][stage]) == micro_batches
        assert any(x != y for x, y in zip(langs[0][stage], langs[1][stage])), stage  # ranks on other languages
    masks = LanguageMasks.load(tmp_path / "runs" / "pretrain-lasp" / "masks-lasp")
    assert masks.languages == ["de", "es", "ru"]
    summary = json.loads((tmp_path / "runs" / "finetune-lasp" / "final" / "train_summary.json").read_text())
    assert summary["step"] == 3 and summary["skipped_rows"]["count"] == 0

"""lasp's own code reads no device value between taking a batch and its backward (on a GPU each read makes the
host wait for the forward before it can queue backward); a skipped clip is counted even when a DataLoader worker
finds it; IMP makes its mask copies once per round, not per step."""
from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest
import torch

from test_train_support import fast_recipe, make_corpus

LASP = str(Path(__file__).resolve().parents[1] / "lasp")
HOST_READS = ("__bool__", "__float__", "__int__", "__index__", "item", "tolist")


@pytest.fixture
def reads_before_backward(monkeypatch):
    """Every host read of a tensor made by lasp code (not transformers or torch) after the stream handed out a
    batch and before the backward of that step's loss: ``[(file:line, method)]``."""
    from lasp.train.batches import LoaderStream

    window = {"open": False}
    found: list[str] = []
    take = LoaderStream.next

    def next_batch(self, step):
        batch = take(self, step)
        window["open"] = True
        return batch

    monkeypatch.setattr(LoaderStream, "next", next_batch)
    backward = torch.Tensor.backward

    def closing_backward(self, *args, **kwargs):
        window["open"] = False
        return backward(self, *args, **kwargs)

    monkeypatch.setattr(torch.Tensor, "backward", closing_backward)
    for name in HOST_READS:
        original = getattr(torch.Tensor, name)

        def watched(self, *args, _original=original, _name=name, **kwargs):
            caller = sys._getframe(1)
            if window["open"] and caller.f_code.co_filename.startswith(LASP):
                found.append(f"{caller.f_code.co_filename[len(LASP) + 1:]}:{caller.f_lineno} {_name}")
            return _original(self, *args, **kwargs)

        monkeypatch.setattr(torch.Tensor, name, watched)
    return found


@pytest.mark.parametrize("stage, extra", [("pretrain", ()), ("finetune", ("data.mixed=true",
                                                                        "finetune.grad_accum_steps=2"))])
def test_no_host_read_between_batch_and_backward(tmp_path, reads_before_backward, stage, extra):
    from lasp.train.finetune import finetune
    from lasp.train.pretrain import pretrain

    corpus = make_corpus(tmp_path / "corpus", n_train=3, n_test=1)
    cfg = fast_recipe(tmp_path, corpus, f"{stage}.system=lasp", f"{stage}.max_steps=3", "finetune.init=tiny",
                      "finetune.mask_time_length=2", "pretrain.log_every=1", *extra)
    final = (pretrain if stage == "pretrain" else finetune)(cfg, progress=False)
    assert json.loads((final / "train_summary.json").read_text())["step"] == 3
    assert reads_before_backward == []


def test_a_clip_unreadable_in_a_worker_is_counted_in_the_summary(tmp_path):
    """The manifest gives durations, so the clip's damage shows only when a DataLoader worker decodes it; the
    row still reaches the run's summary (a worker's own copy of the dataset's report would be lost)."""
    from lasp.train.finetune import finetune

    corpus = make_corpus(tmp_path / "corpus", langs=("es",), n_train=4, n_test=1)
    rows = [json.loads(line) for line in corpus["train"].read_text().splitlines()]
    (corpus["train"].parent / rows[1]["audio"]).write_bytes(b"RIFF\x00\x00not a wave file" * 20)
    cfg = fast_recipe(tmp_path, corpus, "finetune.system=shared", "finetune.max_steps=4", "finetune.init=tiny",
                      "data.num_workers=2", "finetune.mask_time_prob=0.0")
    final = finetune(cfg, progress=False)
    skipped = json.loads((final / "train_summary.json").read_text())["skipped_rows"]
    assert skipped["while_training"] >= 1 and skipped["before_training"] == 0
    assert skipped["by_reason"] == {"unreadable_audio": skipped["count"]}
    assert all(f"train.jsonl:2 ({corpus['train'].parent / rows[1]['audio']})" in row for row in skipped["first"])


def test_imp_casts_its_masks_once_per_round(tiny_ctc):
    """The masks multiply weights and gradients at every step; they are made in the parameters' dtype and device
    once per round (the steps make no bool -> float copies)."""
    from torch.utils._python_dispatch import TorchDispatchMode

    from conftest import make_ctc_batch
    from lasp.search.imp import imp_language_masks
    from lasp.masks.targets import select_targets

    class CountMaskCasts(TorchDispatchMode):
        casts = 0

        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            if func.overloadpacket in (torch.ops.aten._to_copy, torch.ops.aten.to) and args[0].dtype == torch.bool:
                if (kwargs or {}).get("dtype", torch.bool).is_floating_point:  # a mask made a multiplier
                    CountMaskCasts.casts += 1
            return func(*args, **(kwargs or {}))

    batches = [make_ctc_batch(12, batch_size=2, samples=4000, seed=s) for s in range(2)]
    targets = len(select_targets(tiny_ctc))
    with CountMaskCasts():
        imp_language_masks(tiny_ctc, {"es": batches}, sparsity=0.5, rounds=2, steps=5, progress=False)
    assert CountMaskCasts.casts <= 2 * targets  # one per target and round, whatever the steps

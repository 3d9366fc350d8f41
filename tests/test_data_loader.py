"""DataLoader workers change nothing: same batches as in-process loading, and a resumed stream replays the
batches that were prefetched but never consumed."""
from __future__ import annotations


import pytest
import torch
from safetensors.torch import load_file

from test_train_support import fast_recipe, make_corpus


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    return make_corpus(tmp_path_factory.mktemp("corpus"), n_train=8)


def _stream(cfg, workers):
    from lasp.data.pipeline import make_dataset, make_loader, make_sampler, pretrain_collator, read_split
    from lasp.models.load import preset_config
    from lasp.train.batches import LoaderStream

    dataset = make_dataset(cfg.data, read_split(cfg.data, "train"))
    sampler = make_sampler(cfg.data, dataset, cfg.seed)
    collator = pretrain_collator(cfg, preset_config("tiny", **cfg.model.overrides), normalize=True)
    loader = make_loader(dataset, sampler, collator, num_workers=workers, prefetch_factor=2)
    return LoaderStream(loader, sampler)


def _same(a, b):
    assert a.langs == b.langs and a.inputs.keys() == b.inputs.keys()
    for k in a.inputs:
        assert torch.equal(a.inputs[k], b.inputs[k]), k


def test_two_workers_give_the_batches_of_in_process_loading(tmp_path, corpus):
    cfg = fast_recipe(tmp_path, corpus)
    inline, workers = _stream(cfg, 0), _stream(cfg, 2)
    for step in range(10):
        _same(inline.next(step), workers.next(step))


def test_resume_replays_prefetched_batches(tmp_path, corpus):
    cfg = fast_recipe(tmp_path, corpus)
    reference = _stream(cfg, 0)
    expected = [reference.next(s) for s in range(9)]
    first = _stream(cfg, 2)
    for s in range(4):
        _same(first.next(s), expected[s])
    state = first.state_dict()
    # the workers have fetched ahead: the sampler itself is past the consumed step
    assert first.sampler.step > 4 and state["step"] == 4
    resumed = _stream(cfg, 2)
    resumed.load_state_dict(state)
    for s in range(4, 9):
        _same(resumed.next(s), expected[s])


def test_finetuning_with_two_workers_equals_in_process(tmp_path, corpus):
    from lasp.train.finetune import finetune

    finals = []
    for workers in (0, 2):
        cfg = fast_recipe(tmp_path / f"w{workers}", corpus, "finetune.system=shared", "finetune.max_steps=4",
                          f"data.num_workers={workers}")
        finals.append(finetune(cfg, progress=False))
    a, b = (load_file(str(f / "shared" / "model.safetensors")) for f in finals)
    for k in a:
        assert torch.equal(a[k], b[k]), k


def test_worker_settings_are_checked(tmp_path, corpus):
    from lasp.data.pipeline import make_loader
    from lasp.errors import ConfigError

    with pytest.raises(ConfigError, match="data.num_workers"):
        make_loader([], [], None, num_workers=-1)


def test_data_bench_reports_audio_seconds_per_second(tmp_path, corpus, capsys):
    from lasp.cli import main

    assert main(["bench", "data", str(corpus["train"]), "pretrain.mask_time_length=2", "pretrain.num_negatives=5",
                 "--workers", "0,1", "--batches", "3", "--batch-size", "2"]) == 0
    lines = [l for l in capsys.readouterr().out.splitlines() if "s of audio per second" in l]
    assert [l.split(":")[0].strip() for l in lines] == ["workers 0", "workers 1"]
    audio = {l.split("batches, ")[1].split(" s of audio")[0] for l in lines}
    assert len(audio) == 1 and float(audio.pop()) > 0  # both timed the same two batches of audio


class _Crash(Exception):
    pass


def test_a_run_with_two_workers_resumed_mid_run_is_bit_identical(tmp_path, corpus):
    from lasp.train.finetune import finetune

    common = ["finetune.system=lasp", "finetune.max_steps=6", "finetune.ckpt_every=3", "data.num_workers=2"]
    ref = finetune(fast_recipe(tmp_path / "a", corpus, *common), progress=False)

    def crash(step, path):
        if step == 3:  # the workers have prefetched batches 4.. by now; they must be drawn again
            raise _Crash()

    cfg = fast_recipe(tmp_path / "b", corpus, *common)
    with pytest.raises(_Crash):
        finetune(cfg, callbacks={"on_checkpoint": crash}, progress=False)
    resumed = finetune(cfg, progress=False)
    a, b = (load_file(str(f / "shared" / "model.safetensors")) for f in (ref, resumed))
    for k in a:
        assert torch.equal(a[k], b[k]), k

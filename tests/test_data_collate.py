"""Collators feed Wav2Vec2ForPreTraining / Wav2Vec2ForCTC (tiny configs) and are deterministic."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from data_fixtures import tiny_config, tone, write_audio

from lasp.data.collate import CTCCollator, PretrainCollator, feature_lengths, has_inputs
from lasp.data.dataset import BadRow, SpeechDataset
from lasp.data.manifest import Utterance
from lasp.data.text import Vocabulary
from lasp.errors import DataError


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    root = tmp_path_factory.mktemp("collate")
    utts = []
    for i, (lang, text, sec) in enumerate([("es", "hola amigo", 1.0), ("es", "que tal", 0.7),
                                           ("de", "guten tag", 0.85), ("de", "ja", 0.5)]):
        path = write_audio(str(root / f"{i}.flac"), tone(sec, seed=i))
        utts.append(Utterance(audio=path, text=text, lang=lang, row=i + 1, source="m.jsonl"))
    vocab = Vocabulary.build(u.text for u in utts)
    return SpeechDataset(utts, vocab=vocab)


def test_feature_lengths_match_the_model():
    from transformers import Wav2Vec2Model

    cfg = tiny_config()
    model = Wav2Vec2Model(cfg)
    lengths = torch.tensor([400, 8000, 16000, 12345])
    assert torch.equal(feature_lengths(cfg, lengths), model._get_feat_extract_output_lengths(lengths))


def test_pretrain_batch_gives_finite_loss_and_respects_padding(dataset):
    from transformers import Wav2Vec2ForPreTraining

    cfg = tiny_config()
    collator = PretrainCollator(cfg, mask_time_prob=0.65, mask_time_length=3, num_negatives=10, normalize=True,
                                 seed=0)
    items = [dataset[i] for i in range(4)]
    batch = collator(items)
    assert batch["langs"] == ["es", "es", "de", "de"]
    b, t = batch["input_values"].shape
    assert t == 16000 and batch["attention_mask"].sum(1).tolist() == [len(it["input_values"]) for it in items]
    frames = feature_lengths(cfg, batch["attention_mask"].sum(1))
    mask = batch["mask_time_indices"]
    assert mask.dtype == torch.bool and mask.shape == (4, int(frames.max()))
    for row, f in enumerate(frames.tolist()):
        assert not mask[row, f:].any()  # nothing masked in padding
        assert mask[row, :f].float().mean() > 0.2  # a good share of real frames masked
    neg = batch["sampled_negative_indices"]
    assert neg.shape == (4, mask.shape[1], 10)
    # negatives of a masked frame are other masked frames of the same utterance
    flat_mask = mask.reshape(-1)
    for row in range(4):
        idx = neg[row][mask[row]]
        assert ((idx // mask.shape[1]) == row).all() and flat_mask[idx].all()
    torch.manual_seed(0)
    model = Wav2Vec2ForPreTraining(cfg).train()
    langs = batch.pop("langs")
    out = model(**batch)
    assert torch.isfinite(out.loss) and out.loss > 0 and torch.isfinite(out.diversity_loss)
    out.loss.backward()
    assert langs == ["es", "es", "de", "de"]


def test_pretrain_masks_are_deterministic_and_leave_numpy_state_alone(dataset):
    cfg = tiny_config()
    items = [dataset[i] for i in range(3)]
    np.random.seed(123)
    before = np.random.random()
    np.random.seed(123)
    a = PretrainCollator(cfg, mask_time_prob=0.65, mask_time_length=3, num_negatives=5, normalize=True, seed=1)(items)
    assert np.random.random() == before  # the global numpy generator was not advanced
    b = PretrainCollator(cfg, mask_time_prob=0.65, mask_time_length=3, num_negatives=5, normalize=True, seed=1)(items)
    c = PretrainCollator(cfg, mask_time_prob=0.65, mask_time_length=3, num_negatives=5, normalize=True, seed=2)(items)
    assert torch.equal(a["mask_time_indices"], b["mask_time_indices"])
    assert torch.equal(a["sampled_negative_indices"], b["sampled_negative_indices"])
    assert not torch.equal(a["mask_time_indices"], c["mask_time_indices"])


def test_group_norm_models_get_no_attention_mask(dataset):
    cfg = tiny_config(feat_extract_norm="group", do_stable_layer_norm=False)
    batch = PretrainCollator(cfg, mask_time_prob=0.65, mask_time_length=3, num_negatives=5,
                             normalize=True)([dataset[0], dataset[1]])
    assert "attention_mask" not in batch


def test_ctc_batch_runs_through_wav2vec2_for_ctc(dataset):
    from transformers import Wav2Vec2ForCTC

    vocab = dataset.vocab
    collator = CTCCollator(tiny_config(), pad_id=vocab.pad_id, normalize=True)
    items = [dataset[i] for i in range(4)]
    batch = collator(items)
    labels = batch["labels"]
    assert labels.shape == (4, max(len(it["labels"]) for it in items))
    for row, it in enumerate(items):
        n = len(it["labels"])
        assert labels[row, :n].tolist() == it["labels"] and (labels[row, n:] == -100).all()
        assert vocab.decode(it["labels"]) == it["text"]
    # per-utterance normalization: zero mean, unit variance over the real samples
    real = batch["input_values"][3, : len(items[3]["input_values"])]
    assert abs(float(real.mean())) < 1e-4 and abs(float(real.std()) - 1) < 1e-3
    assert batch.pop("langs") == ["es", "es", "de", "de"]
    torch.manual_seed(0)
    model = Wav2Vec2ForCTC(tiny_config(vocab_size=len(vocab)))
    out = model(**batch)
    assert torch.isfinite(out.loss) and out.logits.shape[-1] == len(vocab)


def test_collators_drop_skipped_items_and_check_labels(dataset):
    collator = CTCCollator(tiny_config(), pad_id=0, normalize=True)
    bad = BadRow("train.jsonl", 3, "x.wav", "es", "unreadable_audio", "corrupt")
    batch = collator([None, dataset[2], {"skipped": bad}])
    assert batch["langs"] == ["de"] and batch["labels"].shape[0] == 1 and batch["skipped"] == [bad]
    assert collator([None, {"skipped": bad}]) == {"skipped": [bad]} and not has_inputs(collator([None]))
    assert not has_inputs(PretrainCollator(tiny_config(), mask_time_prob=0.65, mask_time_length=3, num_negatives=5,
                                           normalize=True)([None]))
    item = dict(dataset[0])
    with pytest.raises(DataError, match="have no labels"):
        collator([{k: v for k, v in item.items() if k != "labels"}])
    with pytest.raises(DataError, match="pad/blank id 0"):
        collator([dict(item, labels=[0, 3])])

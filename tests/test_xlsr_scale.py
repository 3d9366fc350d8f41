"""Scoring and pruning at real XLSR-53 shapes on a CPU machine (slow: deselected unless run with ``-m slow``).

Prints wall time and peak resident memory; run with
``.venv/bin/python -m pytest -m slow -s tests/test_xlsr_scale.py``.
"""
import os
import resource
import time

import pytest
import torch

from conftest import make_pretrain_batch

pytestmark = [pytest.mark.slow, pytest.mark.timeout(3600)]


def test_score_and_prune_xlsr53_preset():
    from lasp.models.load import count_parameters, load_model
    from lasp.search.pruning import make_language_masks

    torch.manual_seed(0)
    start = time.perf_counter()
    model = load_model("xlsr-53", head="pretraining")
    built = time.perf_counter() - start
    batches = [make_pretrain_batch(model, batch_size=1, samples=32000, seed=s) for s in (0, 1)]
    start = time.perf_counter()
    masks = make_language_masks(model, {"sw": batches}, scorer="taylor", sparsity=0.5, progress=False)
    scored = time.perf_counter() - start
    peak_gib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20
    assert masks.numel() == 24 * (4 * 1024 * 1024 + 2 * 1024 * 4096)
    assert masks.sparsity("sw") == pytest.approx(0.5, abs=1e-6)
    print(f"\nxlsr-53 preset: {count_parameters(model) / 1e6:.1f}M params, built in {built:.1f}s; "
          f"taylor scoring of 2 batches (1 × 2 s audio) + 50% per-tensor pruning: {scored:.1f}s; "
          f"peak RSS {peak_gib:.2f} GiB")


def test_mask_storage_at_xlsr53_shapes(tmp_path):
    """Masks of four languages searched on the xlsr-53 preset (Taylor, 50 % per tensor, two utterances of each
    language's synthesized speech): bytes per language raw vs a core plus coded deltas, per codec, and the time
    to load one language. ``LASP_MEASURE_OUT=file.json`` keeps the numbers (docs/continual.md quotes them) and
    the mask set (``file.json.masks``)."""
    import json

    import numpy as np
    import soundfile as sf
    from transformers.models.wav2vec2.modeling_wav2vec2 import _compute_mask_indices, _sample_negative_indices

    from lasp.analysis.mask_storage import format_storage, storage_table
    from lasp.data.manifest import read_manifest
    from lasp.data.synth import synthesize_corpus
    from lasp.masks.language_masks import LanguageMasks
    from lasp.models.load import load_model
    from lasp.search.pruning import make_language_masks

    langs = ("es", "de", "ru", "tr")
    manifests = synthesize_corpus(langs, tmp_path / "corpus", utterances_per_lang=2, test_utterances=1,
                                  dev_utterances=1, seed=0)
    torch.manual_seed(0)
    model = load_model("xlsr-53", head="pretraining")
    samples = 32000
    frames = int(model._get_feat_extract_output_lengths(torch.tensor(samples)))
    batches = {}
    for lang in langs:
        batches[lang] = []
        for i, utt in enumerate(u for u in read_manifest(manifests["train"]) if u.lang == lang):
            audio, _ = sf.read(utt.audio, dtype="float32")
            audio = np.resize(audio, samples)  # 2 s (repeated when shorter), normalized like XLSR's inputs
            audio = (audio - audio.mean()) / (audio.std() + 1e-7)
            np.random.seed(i)
            mask = _compute_mask_indices((1, frames), mask_prob=0.65, mask_length=10, min_masks=2)
            negatives = _sample_negative_indices((1, frames), model.config.num_negatives, mask_time_indices=mask)
            batches[lang].append({"input_values": torch.from_numpy(audio)[None],
                                  "mask_time_indices": torch.tensor(mask, dtype=torch.bool),
                                  "sampled_negative_indices": torch.tensor(negatives, dtype=torch.long)})
    start = time.perf_counter()
    masks = make_language_masks(model, batches, scorer="taylor", sparsity=0.5, progress=False)
    searched = time.perf_counter() - start
    del model
    where = os.environ.get("LASP_MEASURE_OUT", str(tmp_path / "out")) + ".masks"  # `lasp masks size` reads it again
    masks.save(where)
    loaded = LanguageMasks.load(where, ["ru"])
    assert all(torch.equal(loaded.packed("ru")[n], masks.packed("ru")[n]) for n in masks.parameter_names)
    table = storage_table(masks, ("packed", "zstd"))
    # the run-length code, bytes only: at 302 M bits per language its load time takes minutes to measure
    table["codecs"].update(storage_table(masks, ("rle",), load_times=False)["codecs"])
    raw = table["raw_per_language"]
    assert raw == masks.numel() // 8 == 24 * (4 * 1024 * 1024 + 2 * 1024 * 4096) // 8
    assert table["codecs"]["zstd"]["per_language"] < table["codecs"]["packed"]["per_language"]
    print(f"\nxlsr-53 preset, {len(langs)} languages, Taylor masks at 50 % (searched in {searched:.0f}s); "
          f"pairwise IoU es/de {masks.iou('es', 'de'):.3f}")
    print(format_storage(table))
    if os.environ.get("LASP_MEASURE_OUT"):
        with open(os.environ["LASP_MEASURE_OUT"], "w") as fh:
            json.dump({"search_seconds": searched, "iou": {f"{a}/{b}": masks.iou(a, b) for a in langs for b in langs
                                                          if a < b}, **table}, fh, indent=1)

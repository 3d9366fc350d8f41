"""`lasp evaluate`: greedy CTC decoding and per-language CER / WER with jiwer.

For every language of the test manifest: decode its utterances through the
language's sub-network (or adapter), score with ``jiwer.process_words`` /
``jiwer.process_characters`` (corpus-level: errors summed over the language's
utterances, divided by its reference words / characters), and write

  recogs-<lang>.txt       id <TAB> reference <TAB> hypothesis, one line per utterance
  errs-<lang>.txt         jiwer's word alignment of every utterance, with the totals
  wer-summary-<lang>.txt  WER / CER and their error counts
  results.json            all languages plus the macro average (unweighted mean over languages)
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Sequence

import jiwer
import torch

from lasp.cpu import apply_cpu_settings
from lasp.errors import ConfigError, DataError


def greedy_decode(logits: torch.Tensor, vocab, lengths: Sequence[int] | None = None) -> list[str]:
    """Best path per frame, repeats merged, blanks dropped; ``lengths`` trims padded frames."""
    ids = logits.argmax(dim=-1).cpu()
    out = []
    for i in range(ids.shape[0]):
        n = int(lengths[i]) if lengths is not None else ids.shape[1]
        out.append(vocab.decode(ids[i, :n].tolist(), ctc=True))
    return out


def score(refs: Sequence[str], hyps: Sequence[str]) -> dict:
    """Corpus-level WER and CER of ``hyps`` against ``refs`` with their error counts."""
    if len(refs) != len(hyps):
        raise ValueError(f"{len(refs)} references but {len(hyps)} hypotheses")
    if not refs:
        raise DataError("nothing to score: no utterances")
    empty = [i for i, r in enumerate(refs) if not r.strip()]
    if empty:
        raise DataError(f"reference {empty[0]} is empty; WER is undefined for it")
    w = jiwer.process_words(list(refs), list(hyps))
    c = jiwer.process_characters(list(refs), list(hyps))
    return {
        "wer": float(w.wer), "cer": float(c.cer), "utterances": len(refs),
        "words": int(w.hits + w.substitutions + w.deletions),
        "word_substitutions": int(w.substitutions), "word_deletions": int(w.deletions),
        "word_insertions": int(w.insertions),
        "chars": int(c.hits + c.substitutions + c.deletions),
        "char_substitutions": int(c.substitutions), "char_deletions": int(c.deletions),
        "char_insertions": int(c.insertions),
    }


def macro_average(per_lang: dict[str, dict]) -> dict:
    if not per_lang:
        return {"wer": float("nan"), "cer": float("nan"), "languages": 0}
    return {"wer": sum(r["wer"] for r in per_lang.values()) / len(per_lang),
            "cer": sum(r["cer"] for r in per_lang.values()) / len(per_lang), "languages": len(per_lang)}


def write_language_files(out_dir: str | Path, lang: str, ids: Sequence[str], refs: Sequence[str],
                         hyps: Sequence[str], metrics: dict) -> None:
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    with open(out / f"recogs-{lang}.txt", "w", encoding="utf-8") as fh:
        for i, r, h in zip(ids, refs, hyps):
            fh.write(f"{i}\t{r}\t{h}\n")
    aligned = jiwer.process_words(list(refs), [h for h in hyps])
    with open(out / f"errs-{lang}.txt", "w", encoding="utf-8") as fh:
        fh.write(f"%WER {100 * metrics['wer']:.2f} [ {metrics['word_substitutions'] + metrics['word_deletions'] + metrics['word_insertions']}"
                 f" / {metrics['words']}, {metrics['word_insertions']} ins, {metrics['word_deletions']} del, "
                 f"{metrics['word_substitutions']} sub ]\n\n")
        fh.write(jiwer.visualize_alignment(aligned, show_measures=False))
    with open(out / f"wer-summary-{lang}.txt", "w", encoding="utf-8") as fh:
        fh.write(f"language\t{lang}\nutterances\t{metrics['utterances']}\n")
        fh.write(f"WER\t{100 * metrics['wer']:.2f}\t({metrics['words']} words)\n")
        fh.write(f"CER\t{100 * metrics['cer']:.2f}\t({metrics['chars']} characters)\n")


@torch.no_grad()
def decode_language(system, dataset, indices: Sequence[int], vocab, lang: str, batch_size: int,
                    device: torch.device) -> tuple[list[str], list[str], list[str]]:
    """(ids, references, hypotheses) of ``dataset[indices]`` decoded through ``lang``'s system."""
    from lasp.train.data import pad_waveforms

    model = system.model
    # length-sorted batches: little padding (group-norm encoders see padding as signal)
    order = sorted(indices, key=lambda i: float(dataset.durations[i]))
    ids, refs, hyps = [], [], []
    system.set_language(lang)
    system.train(False)
    for start in range(0, len(order), batch_size):
        items = [it for it in (dataset[i] for i in order[start:start + batch_size]) if it is not None]
        if not items:  # undecodable files were reported and counted by the dataset
            continue
        values, attn = pad_waveforms([it["input_values"] for it in items])
        inputs = {"input_values": values.to(device)}
        if model.config.feat_extract_norm == "layer":
            inputs["attention_mask"] = attn.to(device)
        logits = system(**inputs).logits.float()
        lengths = model._get_feat_extract_output_lengths(attn.sum(-1)).tolist()
        hyps += greedy_decode(logits, vocab, lengths)
        refs += [it["text"] for it in items]
        ids += [str(it["id"]) for it in items]
    return ids, refs, hyps


def evaluate_system(system, dataset, vocab, *, out_dir: str | Path, batch_size: int = 8,
                    languages: Sequence[str] | None = None, device: torch.device | str = "cpu") -> dict:
    """Decode and score every language; write the per-language files and results.json into ``out_dir``."""
    device = torch.device(device)
    langs = list(languages) if languages else sorted(set(dataset.langs))
    per_lang = {}
    for lang in langs:
        idx = [i for i, l in enumerate(dataset.langs) if l == lang]
        if not idx:
            raise DataError(f"no test utterances for language {lang!r}")
        ids, refs, hyps = decode_language(system, dataset, idx, vocab, lang, batch_size, device)
        per_lang[lang] = score(refs, hyps)
        write_language_files(out_dir, lang, ids, refs, hyps, per_lang[lang])
    results = {"system": system.name, "languages": per_lang, "macro": macro_average(per_lang)}
    Path(out_dir, "results.json").write_text(json.dumps(results, indent=2) + "\n", encoding="utf-8")
    return results


def evaluate(cfg) -> dict:
    """Evaluate the recipe's fine-tuned model on its test (or valid) split; returns the results dict."""
    from lasp.config import stage_run_dir
    from lasp.data.text import Vocabulary
    from lasp.system_layout import is_model_dir
    from lasp.train.data import make_dataset, read_split
    from lasp.train.distributed import pick_device
    from lasp.train.systems import load_system

    ev = cfg.evaluate
    apply_cpu_settings(cfg.threads, cfg.cpu_onednn)
    model_dir = Path(ev.model) if ev.model else stage_run_dir(cfg, "finetune") / "final"
    if not is_model_dir(model_dir):
        raise ConfigError(f"no fine-tuned model at {model_dir} (set evaluate.model or run `lasp finetune` first)")
    if not (model_dir / "vocab.json").is_file():
        raise ConfigError(f"{model_dir} has no vocab.json; evaluate a directory written by `lasp finetune`")
    vocab = Vocabulary.load(model_dir)
    device = pick_device(cfg.device)
    system = load_system(model_dir, head="ctc", device=device)
    utts = read_split(cfg.data, ev.split, ev.languages or None)
    dataset = make_dataset(cfg.data, utts, vocab)
    out_dir = Path(ev.out_dir) if ev.out_dir else model_dir.parent / "eval"
    return evaluate_system(system, dataset, vocab, out_dir=out_dir, batch_size=ev.batch_size,
                           languages=ev.languages or None, device=device)

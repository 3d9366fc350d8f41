"""`lasp evaluate`: greedy CTC decoding and per-language CER / WER with jiwer.

Every test utterance is scored: no vocabulary filter (a reference character the model never saw simply cannot be
produced and counts as an error), no length cap (long audio runs whole). References are scored as they are after
text normalization. A row whose audio is missing or cannot be decoded is listed, with the reason, under
``unreadable`` of its language — never silently dropped. Audio is batched by the one collator module, through a
DataLoader with the recipe's workers, exactly as in training.

For every language of the test manifest: decode through the language's sub-network (or adapter), score with
``jiwer.process_words`` / ``jiwer.process_characters`` (corpus-level: errors summed over the language's
utterances, divided by its reference words / characters), and write (error rates as fractions)

  recogs-<lang>.txt       id <TAB> reference <TAB> hypothesis, one line per utterance
  errs-<lang>.txt         jiwer's word alignment of every utterance, with the totals
  wer-summary-<lang>.txt  WER / CER, their error counts, utterances scored and unreadable ones
  results.json            per language {cer, wer, utterances, unreadable: [{id, audio, reason}], ...} and the
                          macro average (unweighted mean over languages)
"""
from __future__ import annotations

from pathlib import Path
from typing import Sequence

import jiwer
import torch

from lasp.config.recipe import stage_run_dir
from lasp.data.collate import EvalCollator, feature_lengths
from lasp.data.dataset import Readable, SpeechDataset, unreadable_entry
from lasp.data.pipeline import make_loader, read_split
from lasp.data.text import Vocabulary
from lasp.device import apply_cpu_settings, pick_device
from lasp.errors import ConfigError, DataError
from lasp.io import atomic_write, atomic_write_json
from lasp.models.features import feature_normalization
from lasp.models.layout import is_model_dir
from lasp.models.objective import model_inputs
from lasp.models.system import System
from lasp.device import autocast, autocast_dtype


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
    atomic_write(out / f"recogs-{lang}.txt", "".join(f"{i}\t{r}\t{h}\n" for i, r, h in zip(ids, refs, hyps)))
    aligned = jiwer.process_words(list(refs), [h for h in hyps])
    errors = metrics["word_substitutions"] + metrics["word_deletions"] + metrics["word_insertions"]
    atomic_write(out / f"errs-{lang}.txt",
                 f"WER {metrics['wer']:.4f} [ {errors} / {metrics['words']}, {metrics['word_insertions']} ins, "
                 f"{metrics['word_deletions']} del, {metrics['word_substitutions']} sub ]\n\n"
                 + jiwer.visualize_alignment(aligned, show_measures=False))
    unreadable = metrics.get("unreadable", [])
    atomic_write(out / f"wer-summary-{lang}.txt",
                 f"language\t{lang}\nutterances\t{metrics['utterances']}\n"
                 f"WER\t{metrics['wer']:.4f}\t({metrics['words']} words)\n"
                 f"CER\t{metrics['cer']:.4f}\t({metrics['chars']} characters)\n"
                 f"unreadable\t{len(unreadable)}\n"
                 + "".join(f"\t{bad['id']}\t{bad['audio']}\t{bad['reason']}\n" for bad in unreadable))


def length_batches(indices: Sequence[int], durations: Sequence[float], batch_size: int) -> list[list[int]]:
    """Length-sorted batches: little padding (group-norm encoders see padding as signal)."""
    order = sorted(indices, key=lambda i: float(durations[i]))
    return [order[i:i + batch_size] for i in range(0, len(order), batch_size)]


@torch.no_grad()
def decode_language(system, loader, vocab, lang: str, device: torch.device, dtype: torch.dtype | None = None):
    """(ids, references, hypotheses, unreadable rows) of the batches ``loader`` yields, through ``lang``
    (under autocast in ``dtype`` when given)."""
    ids, refs, hyps, unreadable = [], [], [], []
    vocab = system.vocabulary(lang, vocab)  # a language added later decodes with its own
    system.set_language(lang)
    system.train(False)
    for batch in loader:
        unreadable += batch["unreadable"]
        if not batch["ids"]:
            continue
        with autocast(device, dtype):
            logits = system(**model_inputs(batch, device)).logits.float()
        hyps += greedy_decode(logits, vocab, feature_lengths(system.model.config, batch["lengths"]).tolist())
        refs += batch["texts"]
        ids += batch["ids"]
    return ids, refs, hyps, unreadable


def check_unique_ids(utts) -> None:
    """Results are kept per utterance id: two rows with one id (without an ``id`` field, ``<lang>/<audio file
    name>``) would be scored as two utterances and written as one."""
    seen: dict[str, int] = {}
    for utt in utts:
        if utt.uid in seen:
            raise DataError(f"{utt.where}: utterance id {utt.uid!r} repeats line {seen[utt.uid]}; give every row its "
                            "own audio file or 'id'")
        seen[utt.uid] = utt.row


def evaluate_system(system, dataset, vocab, *, out_dir: str | Path, normalize: bool, batch_size: int = 8,
                    languages: Sequence[str] | None = None, device: torch.device | str = "cpu",
                    unreadable: Sequence[dict] = (), num_workers: int = 0, precision: str = "fp32") -> dict:
    """Decode and score every language; write the per-language files and results.json into ``out_dir``.

    ``dataset`` is a :class:`lasp.data.dataset.SpeechDataset` (every row, no length cap); ``unreadable`` lists
    rows found bad before decoding (``{"id", "audio", "reason", "lang"}``), reported with their language.
    """
    device = torch.device(device)
    dtype = autocast_dtype(device, precision)
    langs = list(languages) if languages else sorted(set(dataset.langs) | {u["lang"] for u in unreadable})
    collator = EvalCollator(system.model.config, normalize=normalize)
    per_lang = {}
    for lang in langs:
        idx = [i for i, l in enumerate(dataset.langs) if l == lang]
        bad = [{k: u[k] for k in ("id", "audio", "reason")} for u in unreadable if u["lang"] == lang]
        if not idx and not bad:
            raise DataError(f"no test utterances for language {lang!r}")
        loader = make_loader(Readable(dataset), length_batches(idx, dataset.durations, batch_size), collator,
                             num_workers=num_workers, pin_memory=device.type == "cuda")
        ids, refs, hyps, failed = decode_language(system, loader, vocab, lang, device, dtype)
        bad += failed
        if not refs:
            raise DataError(f"language {lang!r}: none of its {len(bad)} test utterances could be read "
                            f"(first: {bad[0]['audio']}: {bad[0]['reason']})")
        per_lang[lang] = {**score(refs, hyps), "unreadable": bad}
        write_language_files(out_dir, lang, ids, refs, hyps, per_lang[lang])
    results = {"system": system.name, "languages": per_lang, "macro": macro_average(per_lang)}
    Path(out_dir).mkdir(parents=True, exist_ok=True)
    # written last and atomically: the runner takes results.json as the sign that evaluation finished
    atomic_write_json(Path(out_dir, "results.json"), results, ensure_ascii=False)
    return results


def summary_lines(results: dict, out_dir: str | Path) -> list[str]:
    """What ``lasp evaluate`` prints: per language CER / WER as fractions (as in results.json), counts, and
    where the files are."""
    lines = [f"{'lang':<8}{'CER':>8}{'WER':>8}  utterances   (error rates as fractions)"]
    for lang, r in results["languages"].items():
        unreadable = f" ({len(r['unreadable'])} unreadable, see results.json)" if r.get("unreadable") else ""
        lines.append(f"{lang:<8}{r['cer']:>8.4f}{r['wer']:>8.4f}  {r['utterances']}{unreadable}")
    m = results["macro"]
    lines.append(f"{'macro':<8}{m['cer']:>8.4f}{m['wer']:>8.4f}")
    lines.append(f"wrote results.json, recogs-*, errs-*, wer-summary-* to {out_dir}")
    return lines


def evaluate(cfg) -> dict:
    """Evaluate the recipe's fine-tuned model on its test (or valid) split; returns the results dict
    (with ``out_dir``, where the files went)."""
    ev = cfg.evaluate
    apply_cpu_settings(cfg.threads, cfg.cpu_onednn)
    model_dir = Path(ev.model) if ev.model else stage_run_dir(cfg, "finetune") / "final"
    if not is_model_dir(model_dir):
        raise ConfigError(f"no fine-tuned model at {model_dir} (set evaluate.model or run `lasp finetune` first)")
    if not (model_dir / "vocab.json").is_file():
        raise ConfigError(f"{model_dir} has no vocab.json; evaluate a directory written by `lasp finetune`")
    vocab = Vocabulary.load(model_dir)
    device = pick_device(cfg.device)
    system = System.from_pretrained(model_dir, head="ctc", device=device)
    utts = read_split(cfg.data, ev.split, ev.languages or None)
    check_unique_ids(utts)
    # every row is scored: no vocabulary filter, no length cap; rows that cannot be read are reported
    dataset = SpeechDataset(utts, vocab=None, on_bad=cfg.data.on_bad, max_seconds=None, min_seconds=None,
                            cap_text=False)
    unreadable = [{**unreadable_entry(b.uid, b.audio, b.reason, b.message), "lang": b.lang}
                  for b in dataset.report().bad]
    out_dir = Path(ev.out_dir) if ev.out_dir else model_dir.parent / "eval"
    results = evaluate_system(system, dataset, vocab, out_dir=out_dir, normalize=feature_normalization(model_dir),
                              batch_size=ev.batch_size, languages=ev.languages or None, device=device,
                              unreadable=unreadable, num_workers=cfg.data.num_workers, precision=ev.precision)
    return {**results, "out_dir": str(out_dir)}

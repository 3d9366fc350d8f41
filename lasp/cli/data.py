"""`lasp data ...`: import corpora into manifests, synthesize the demo corpus, inspect manifests."""
from __future__ import annotations

import logging
import time

from lasp.cli.options import add_existing_flags
from lasp.data.commonvoice import import_commonvoice
from lasp.data.config import DataConfig
from lasp.data.dataset import SpeechDataset
from lasp.data.importers import import_hf_disk, import_table
from lasp.data.manifest import read_manifest
from lasp.data.synth import synthesize_corpus
from lasp.data.text import Vocabulary
from lasp.errors import ConfigError


def _langs(text: str | None) -> list[str]:
    return [lang.strip() for lang in (text or "").split(",") if lang.strip()]


def _columns(pairs: list[str] | None) -> dict[str, str]:
    out = {}
    for pair in pairs or []:
        if "=" not in pair:
            raise ConfigError(f"--column expects FIELD=COLUMN (e.g. audio=path), got {pair!r}")
        field, column = pair.split("=", 1)
        out[field.strip()] = column.strip()
    return out


def _print_manifests(paths: dict[str, str]) -> None:
    for split, path in paths.items():
        utts = read_manifest(path)
        hours = sum(u.duration or 0.0 for u in utts) / 3600
        print(f"{split:>6}: {len(utts)} utterances, {hours:.2f} h -> {path}")


def cmd_commonvoice(args) -> int:
    paths = import_commonvoice(args.root, _langs(args.langs), args.out, copy_audio=args.copy_audio,
                               splits=_langs(args.splits), on_bad=args.on_bad, max_per_split=args.max_per_split,
                               existing=args.existing)
    _print_manifests(paths)
    return 0


def cmd_table(args) -> int:
    paths = import_table(args.table, args.out, columns=_columns(args.column), lang=args.lang, split=args.split,
                         audio_root=args.audio_root, on_bad=args.on_bad, existing=args.existing)
    _print_manifests(paths)
    return 0


def cmd_hf(args) -> int:
    paths = import_hf_disk(args.path, args.out, columns=_columns(args.column), lang=args.lang, split=args.split,
                           audio_root=args.audio_root, on_bad=args.on_bad, existing=args.existing)
    _print_manifests(paths)
    return 0


def cmd_synth(args) -> int:
    langs = _langs(args.langs)
    start = time.perf_counter()
    paths = synthesize_corpus(
        langs, args.out, minutes_per_lang=args.minutes_per_lang, utterances_per_lang=args.utterances_per_lang,
        test_utterances=args.test_utterances, dev_utterances=args.dev_utterances,
        words=(args.min_words, args.max_words), low_resource=_langs(args.low_resource), low_factor=args.low_factor,
        seed=args.seed, workers=args.workers, replace=args.force,
    )
    elapsed = time.perf_counter() - start
    _print_manifests(paths)
    print(f"done in {elapsed:.1f} s")
    return 0


def cmd_info(args) -> int:
    vocab = Vocabulary.load(args.vocab) if args.vocab else None
    for path in args.manifests:
        ds = SpeechDataset(read_manifest(path), vocab=vocab, max_seconds=args.max_seconds, check=False,
                           known_languages=_langs(args.known_languages) or None)
        report = ds.check(decode=args.decode)
        print(f"{path}: {len(ds)} usable of {report.total} rows")
        print(f"  {'lang':<8}{'utts':>8}{'hours':>9}")
        for lang, (n, hours) in ds.hours_by_language().items():
            print(f"  {lang:<8}{n:>8}{hours:>9.3f}")
        if report.bad:
            print(f"  {report.summary()}")
            for bad in report.bad[: args.show]:
                print(f"    {bad}")
            if len(report.bad) > args.show:
                print(f"    ... {len(report.bad) - args.show} more")
    return 0


def register(sub, name: str, help_text: str) -> None:
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(message)s")
    p = sub.add_parser(name, help=help_text, description=help_text)
    dsub = p.add_subparsers(dest="data_command", metavar="ACTION")
    p.set_defaults(handler=lambda args: (p.print_help(), 2)[1])

    def bad_policy(q):
        q.add_argument("--on-bad", choices=["skip", "error"], default="skip",
                       help="skip (and count) rows with missing/unreadable audio, or stop at the first")
        add_existing_flags(q, append_help="add these languages to manifests already in --out",
                            force_help="replace manifests already in --out")

    q = dsub.add_parser("import-commonvoice", help="Common Voice release (ROOT/<lang>/{train,dev,test}.tsv, clips/)")
    q.add_argument("root")
    q.add_argument("--langs", required=True, help="comma-separated language folders, e.g. sw,tr")
    q.add_argument("--out", required=True, help="folder for train/dev/test.jsonl")
    q.add_argument("--splits", default="train,dev,test")
    q.add_argument("--copy-audio", action="store_true", help="copy clips under OUT/audio instead of referencing them")
    q.add_argument("--max-per-split", type=int, default=None, help="keep the first N rows per language and split")
    bad_policy(q)
    q.set_defaults(handler=cmd_commonvoice)

    q = dsub.add_parser("import-table", help="TSV/CSV/JSONL table with a column mapping")
    q.add_argument("table")
    q.add_argument("--out", required=True)
    q.add_argument("--column", action="append", metavar="FIELD=COLUMN",
                   help="map audio/text/lang/duration to your column names (repeatable)")
    q.add_argument("--lang", help="language of every row (when the table has no language column)")
    q.add_argument("--split", default="train", help="manifest to write (train, dev, test)")
    q.add_argument("--audio-root", help="folder relative audio paths start from (default: the table's folder)")
    bad_policy(q)
    q.set_defaults(handler=cmd_table)

    q = dsub.add_parser("import-hf", help="a `datasets` dataset saved with save_to_disk (audio as paths or bytes)")
    q.add_argument("path")
    q.add_argument("--out", required=True)
    q.add_argument("--column", action="append", metavar="FIELD=COLUMN")
    q.add_argument("--lang")
    q.add_argument("--split", default="train", help="name for a plain Dataset (a DatasetDict keeps its splits)")
    q.add_argument("--audio-root")
    bad_policy(q)
    q.set_defaults(handler=cmd_hf)

    q = dsub.add_parser("synth", help="offline multilingual demo corpus spoken by espeak-ng")
    q.add_argument("--langs", required=True, help="comma-separated, e.g. es,it,pt,de,nl,en,ru,pl,tr,fi")
    q.add_argument("--out", required=True)
    amount = q.add_mutually_exclusive_group()
    amount.add_argument("--minutes-per-lang", type=float, help="train audio per language")
    amount.add_argument("--utterances-per-lang", type=int, help="train utterances per language (default 300)")
    q.add_argument("--dev-utterances", type=int, default=20)
    q.add_argument("--test-utterances", type=int, default=40)
    q.add_argument("--min-words", type=int, default=3)
    q.add_argument("--max-words", type=int, default=7)
    q.add_argument("--low-resource", help="languages whose train split is divided by --low-factor")
    q.add_argument("--low-factor", type=float, default=5)
    q.add_argument("--seed", type=int, default=0)
    q.add_argument("--workers", type=int, default=2)
    q.add_argument("--force", action="store_true",
                   help="--out holds a corpus made with other settings: replace it (only the files its synth.json "
                        "lists go)")
    q.set_defaults(handler=cmd_synth)

    q = dsub.add_parser("info", help="utterances and hours per language, bad rows")
    q.add_argument("manifests", nargs="+")
    q.add_argument("--vocab", help="vocab.json (or its folder): also report characters outside it")
    q.add_argument("--known-languages", help="comma-separated codes; other codes are reported")
    # the limit training applies (data.max_seconds), so `info` counts what a stage will actually use
    q.add_argument("--max-seconds", type=float, default=DataConfig().max_seconds,
                   help="longer utterances are counted as dropped, as training drops them "
                        "(default: data.max_seconds's default, %(default)s)")
    q.add_argument("--decode", action="store_true", help="decode every file (finds NaN, silent, corrupt audio)")
    q.add_argument("--show", type=int, default=10, help="bad rows to list")
    q.set_defaults(handler=cmd_info)

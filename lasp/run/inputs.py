"""What a `lasp run` starts from: its corpus (read only once made, or lasp's synthetic corpus made into an empty
folder) and its base model (a local checkpoint, or a preset that a shared pre-training turns into one)."""
from __future__ import annotations

from pathlib import Path

from lasp.config.schema import RecipeConfig, RunConfig
from lasp.data.manifest import SPLITS
from lasp.data.synth import SETTINGS_FILE, describe_settings, read_synth_record, synth_settings, synthesize_corpus
from lasp.errors import ConfigError
from lasp.models.load import is_preset


def base_is_checkpoint(cfg: RecipeConfig) -> bool:
    """True when model.name is a local checkpoint: it is the base model and no base pre-training runs."""
    return not is_preset(cfg.model.name)


def corpus_kind(corpus: str | Path) -> str:
    """``synthetic`` (lasp wrote it: synth.json), ``user`` (manifests lasp did not make) or ``empty``."""
    corpus = Path(corpus)
    if (corpus / SETTINGS_FILE).is_file():
        return "synthetic"
    return "user" if any((corpus / f"{split}.jsonl").exists() for split in SPLITS) else "empty"


def corpus_manifests(settings: RunConfig) -> dict[str, str]:
    """Where the corpus's manifests are, present or not (split -> path): for planning without a corpus."""
    return {split: str(Path(settings.corpus) / f"{split}.jsonl") for split in SPLITS}


def _settings(cfg: RecipeConfig, settings: RunConfig) -> dict:
    return synth_settings(settings.languages, utterances_per_lang=settings.train_utterances,
                          dev_utterances=settings.dev_utterances, test_utterances=settings.test_utterances,
                          low_resource=settings.low_resource, low_factor=settings.low_factor, seed=cfg.seed)


def check_corpus(cfg: RecipeConfig, settings: RunConfig) -> str:
    """What `lasp run` will do with ``run.corpus`` (``read`` it or ``synthesize`` it), or an error saying why it
    cannot start; nothing is written.

    A corpus is the user's once made, by whoever made it: manifests lasp did not make, and a corpus
    ``lasp data synth`` (or an earlier `lasp run`) completed, are read as they are, never rewritten. lasp
    synthesizes only into an empty folder, or completes a synthesis of the same settings that was stopped.
    """
    corpus = Path(settings.corpus)
    kind = corpus_kind(corpus)
    record = read_synth_record(corpus) if kind == "synthetic" else None
    if kind == "empty" or (record is not None and not record["complete"]):
        if settings.synthesize == "never":
            raise ConfigError(f"run.corpus {corpus}: no train/dev/test.jsonl manifests and run.synthesize is 'never'")
        if record is not None and record["settings"] != _settings(cfg, settings):
            raise ConfigError(f"run.corpus {corpus}: holds a synthesis that stopped part-way, made with other "
                              f"settings ({describe_settings(record['settings'], _settings(cfg, settings))}); "
                              "rerun the command that started it, or choose another run.corpus")
        return "synthesize"
    if settings.synthesize == "always":
        made = "a corpus once made (synth.json)" if kind == "synthetic" else "manifests lasp did not make"
        raise ConfigError(f"run.corpus {corpus}: holds {made}; refusing to synthesize over them (use another "
                          "run.corpus, or run.synthesize=auto to train on them)")
    missing = [s for s in ("train", "test") if not (corpus / f"{s}.jsonl").is_file()]
    if missing:
        raise ConfigError(f"run.corpus {corpus}: has no {missing[0]}.jsonl (a corpus needs train and test "
                          "manifests; lasp does not write into it)")
    return "read"


def make_corpus(cfg: RecipeConfig, settings: RunConfig) -> dict[str, str]:
    """The corpus manifests (split -> path): an existing corpus as it is, or lasp's synthetic corpus made now
    (see :func:`check_corpus`)."""
    corpus = Path(settings.corpus)
    if check_corpus(cfg, settings) == "read":
        record = read_synth_record(corpus)
        wanted = _settings(cfg, settings)
        if record is not None and record["settings"] != wanted:
            print(f"corpus {corpus}: made with other settings than run.* asks "
                  f"({describe_settings(record['settings'], wanted)}); read as it is, never rewritten", flush=True)
        return {s: p for s, p in corpus_manifests(settings).items() if Path(p).is_file()}
    return synthesize_corpus(settings.languages, settings.corpus, utterances_per_lang=settings.train_utterances,
                             dev_utterances=settings.dev_utterances, test_utterances=settings.test_utterances,
                             low_resource=settings.low_resource, low_factor=settings.low_factor, seed=cfg.seed)

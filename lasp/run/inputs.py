"""What a `lasp run` starts from: its corpus (the user's manifests, read only, or lasp's synthetic corpus) and
its base model (a local checkpoint, or a preset that a shared pre-training turns into one)."""
from __future__ import annotations

from pathlib import Path

from lasp.config.schema import RecipeConfig, RunConfig
from lasp.data.manifest import SPLITS
from lasp.data.synth import SETTINGS_FILE, synthesize_corpus
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


def make_corpus(cfg: RecipeConfig, settings: RunConfig) -> dict[str, str]:
    """The corpus manifests (split -> path): the user's as they are, or lasp's synthetic corpus.

    Never writes into a corpus lasp did not make: with ``run.synthesize: always`` such a corpus is an error.
    """
    corpus = Path(settings.corpus)
    kind = corpus_kind(corpus)
    if kind == "user":
        if settings.synthesize == "always":
            raise ConfigError(f"{corpus}: holds manifests lasp did not make (no synth.json); refusing to synthesize "
                              "over them (use another run.corpus, or run.synthesize=auto to train on them)")
        manifests = {s: p for s, p in corpus_manifests(settings).items() if Path(p).is_file()}
        missing = [s for s in ("train", "test") if s not in manifests]
        if missing:
            raise ConfigError(f"{corpus}: has no {missing[0]}.jsonl (a user corpus needs train and test manifests; "
                              "lasp does not write into it)")
        return manifests
    if settings.synthesize == "never":
        raise ConfigError(f"{corpus}: no train/dev/test.jsonl manifests and run.synthesize is 'never'")
    return synthesize_corpus(settings.languages, settings.corpus, utterances_per_lang=settings.train_utterances,
                             dev_utterances=settings.dev_utterances, test_utterances=settings.test_utterances,
                             low_resource=settings.low_resource, low_factor=settings.low_factor, seed=cfg.seed)

"""`lasp add-language` / `lasp remove-language`: change which languages a trained masked system serves without
changing what it computes for any other language.

Adding language X to the system in RUN (RUN is only read) writes a new run folder NEW:

1. X's vocabulary is the characters of its transcripts; its CTC head starts from the joint head's rows of the
   characters the joint vocabulary has (:mod:`lasp.models.continual`).
2. X's mask is searched on the trained system's shared weights (dense), scored through X's head on X's audio,
   with the recipe's ``masks.*`` one-shot settings (saved in ``NEW/masks-search``).
3. Optionally (``add_language.pretrain``) X's sub-network is pre-trained on X's audio first.
4. X is fine-tuned (``finetune.*``) under ``add_language.rule``:

   exclusive  X trains the weights of its mask that no earlier language keeps (the union of the earlier masks
              is held fixed inside the optimizer, every unmasked weight is frozen) and its own head. What an
              earlier language reads (its mask's weights, the unmasked weights, the joint head) never changes,
              so its outputs are bit-identical. The trained weights take positions of the one shared tensor
              that no language read before: adding X costs its mask and its head, no weight copy.
   adapter    MMS-style adapters for X on its frozen sub-network, plus its head (the baseline; also identical).
   shared     X's whole mask, the unmasked weights and its head, as ordinary lasp fine-tuning on X alone would:
              the control that shows what the rule prevents (earlier languages change).

5. NEW/final is a system folder like any fine-tuned run's (``lasp export NEW --lang X``, ``lasp evaluate``
   with ``evaluate.model=NEW/final``); with ``--test`` every served language of the test manifest is evaluated
   into NEW/eval.

The recipe is RUN's own (``final/recipe.yaml``) with ``data.*`` pointing at X's manifests, plus overrides.
Training is resumable like any stage (checkpoints in NEW).

Removing X writes NEW with X's mask (and head, if it was added) dropped; nothing else changes. The weights only
X kept stay in the shared tensor, unread, and become free for a later addition.
"""
from __future__ import annotations

import contextlib
import copy
import os
from pathlib import Path
from typing import Sequence

import torch

from lasp.config.recipe import RecipeConfig, config_to_dict, load_recipe
from lasp.config.schema import AddLanguageConfig
from lasp.data.manifest import read_manifest
from lasp.data.pipeline import ctc_collator, make_dataset, make_sampler, pretrain_collator, read_split, recipe_loader
from lasp.data.text import Vocabulary, normalize_text
from lasp.errors import ConfigError
from lasp.locks import acquire
from lasp.masked.model import MaskedModel
from lasp.masks.language_masks import LanguageMasks
from lasp.masks.store import CONFIG_NAME
from lasp.models.continual import AddedLanguages, initial_head
from lasp.models.features import feature_normalization
from lasp.models.layout import system_dir_of
from lasp.models.load import load_model
from lasp.models.objective import batch_loss
from lasp.models.system import System, exact_patterns
from lasp.search.methods import language_loaders
from lasp.search.pruning import make_language_masks
from lasp.search.scoring import GRADIENT_SCORERS, language_seed
from lasp.train.batches import LoaderStream
from lasp.train.evaluate import evaluate
from lasp.train.loop import Batch, train_loop
from lasp.train.pretrain import pretraining_objective
from lasp.train.setup import claim_run, export_final, start_stage

SEARCH_SUBDIR = "masks-search"


def addition_recipe(source: Path, lang: str, train: str, out: Path, *, dev: str | None = None,
                    test: str | None = None, overrides: Sequence[str] = ()) -> RecipeConfig:
    """RUN's recipe pointed at the new language's manifests and NEW, then ``overrides`` (key=value)."""
    recipe = source / "recipe.yaml"
    cfg = load_recipe(recipe if recipe.is_file() else None, [
        f"data.train={train}", f"data.valid={dev or 'null'}", f"data.test={test or 'null'}", f"data.languages=[{lang}]",
        "data.vocab=null", "masks.dir=null", f"finetune.run_dir={out}", f"pretrain.run_dir={out / 'pretrain'}",
        f"evaluate.model={out / 'final'}", f"evaluate.out_dir={out / 'eval'}", "evaluate.languages=[]",
        *overrides])
    if cfg.add_language is None:  # a recipe without the section: its defaults
        cfg.add_language = AddLanguageConfig()
    if cfg.masks.method != "oneshot":
        raise ConfigError(f"key 'masks.method': add-language searches the new mask in one shot (oneshot), got "
                          f"{cfg.masks.method!r}")
    return cfg


@contextlib.contextmanager
def time_masking(model, prob: float, length: int):
    """The recipe's SpecAugment time masking while the new language trains; the saved config keeps the system's
    own values (a model built without ``masked_spec_embed`` cannot mask: it trains without)."""
    config = model.config
    saved = config.mask_time_prob, config.mask_time_length
    if getattr(model.base_model, "masked_spec_embed", None) is not None:
        config.mask_time_prob, config.mask_time_length = prob, length
    try:
        yield
    finally:
        config.mask_time_prob, config.mask_time_length = saved


def _check_out(run: Path, out: Path) -> None:
    """``out`` is a new folder: not inside the run that is only read, nor holding it, nor finished already."""
    run, target = Path(run).resolve(), out.resolve()
    if target == run or run in target.parents or target in run.parents:
        raise ConfigError(f"--out {out} overlaps the trained system {run}; the system is only read: give "
                          "another folder")
    if (out / "final").exists():
        raise ConfigError(f"--out {out} already holds a finished system (final/); choose another --out")
    if out.exists() and not out.is_dir():
        raise ConfigError(f"--out {out} is a file; give a folder")


def _masked(system: System, source: Path) -> MaskedModel:
    if not isinstance(system.wrapper, MaskedModel):
        raise ConfigError(f"{source}: a {system.name!r} system; languages are added to and removed from masked "
                          "systems (lasp or random)")
    return system.wrapper


def search_new_mask(cfg: RecipeConfig, source: Path, system: System, lang: str, vocab: Vocabulary,
                    head: torch.nn.Module, out: Path, device, progress: bool = True) -> LanguageMasks:
    """``lang``'s mask, searched on the system's dense shared weights through ``lang``'s own head (or read back
    from ``NEW/masks-search`` when an interrupted run already searched it)."""
    where = out / SEARCH_SUBDIR
    if (where / CONFIG_NAME).is_file():
        return LanguageMasks.load(where, [lang])
    m = cfg.masks
    model = load_model(str(source), head="ctc")  # the shared weights as one dense model, no masks
    model.lm_head = copy.deepcopy(head)
    model.config.vocab_size = len(vocab)
    model.to(device)
    with torch.random.fork_rng():
        loaders = (language_loaders(cfg, str(source), model, vocab, [lang], device) if m.scorer in GRADIENT_SCORERS
                   else {lang: None})
        masks = make_language_masks(model, loaders, scorer=m.scorer, sparsity=m.sparsity, scope=m.scope,
                                    pattern=m.pattern, max_batches=m.max_batches,
                                    targets=exact_patterns(_masked(system, source).targets), seed=cfg.seed,
                                    base_model=str(source), data=os.path.abspath(cfg.data.train), progress=progress)
    masks.metadata.update(method="oneshot", head=f"ctc ({lang}'s own head)")
    masks.save(where)
    return LanguageMasks.load(where, [lang])


def _freeze_for(system: System, lang: str, rule: str, earlier: list[str], freeze_feature_encoder: bool) -> None:
    """requires_grad and the fixed weights of ``rule`` (see the module docstring)."""
    model, wrapper = system.model, system.wrapper
    for p in model.parameters():
        p.requires_grad_(rule == "shared")
    if rule == "shared" and freeze_feature_encoder:
        model.freeze_feature_encoder()
    if rule == "exclusive":
        for p in wrapper.targets.values():
            p.requires_grad_(True)
        targets = wrapper.targets
        system.keep_fixed = {name: bits.to(targets[name].device)
                             for name, bits in wrapper.masks.union_bits(earlier).items() if name in targets}
    for other in system.added.languages:
        for _, p in system.added.parameters_of(other):
            p.requires_grad_(other == lang)


def _extended(system: System, masks: LanguageMasks, lang: str, tokens: Vocabulary, head, rule: str,
              adapter_dim: int, record: dict) -> System:
    """The system serving ``masks``' languages: the same model, the new mask set, ``lang``'s head [and adapters]."""
    wrapper = system.wrapper
    targets, mode = list(wrapper.targets), wrapper.mode
    wrapper.unload()
    added = system.added or AddedLanguages(system.model)
    added.add(lang, tokens.tokens, head, adapter_dim=adapter_dim if rule == "adapter" else None, record=record)
    return System(system.name, system.model,
                  MaskedModel(system.model, masks, target_modules=exact_patterns(targets), mode=mode), added)


def _pretrain_inside(cfg: RecipeConfig, source: Path, system: System, lang: str, rule: str, out: Path, info,
                     normalize: bool, progress: bool) -> None:
    """Language-adaptive pre-training of ``lang`` inside its mask under ``rule``; its encoder weights are then
    copied into the CTC system (only the weights the rule let train differ)."""
    if rule == "adapter":
        raise ConfigError("add_language.pretrain works with the exclusive and shared rules (adapters are a "
                          "fine-tuning method)")
    p = cfg.pretrain
    model = load_model(str(source), head="pretraining", **cfg.model.overrides).to(info.device)
    model.config.diversity_loss_weight = p.diversity_weight
    with torch.no_grad():  # the encoder as the CTC system has it now
        model.base_model.load_state_dict(system.model.base_model.state_dict())
    wrapper = MaskedModel(model, system.wrapper.masks, target_modules=exact_patterns(system.wrapper.targets),
                          mode=system.wrapper.mode)
    psys = System("lasp", model, wrapper)
    encoder = {id(q) for q in model.base_model.parameters()}
    for q in model.parameters():
        q.requires_grad_(rule == "shared" or id(q) not in encoder)  # the quantizer and projections train
    if rule == "exclusive":
        for q in wrapper.targets.values():
            q.requires_grad_(True)
        psys.keep_fixed = system.keep_fixed
    utts = read_split(cfg.data, "train", [lang])
    dataset = make_dataset(cfg.data, utts)
    sampler = make_sampler(cfg.data, dataset, cfg.seed, mixed=False)
    loader = recipe_loader(cfg.data, dataset, sampler, pretrain_collator(cfg, model.config, normalize), info.device)
    loss_fn, on_step_start, check_collapse = pretraining_objective(p, model, info.is_main)
    train_loop(system=psys, stream=LoaderStream(loader, sampler, device=info.device), loss_fn=loss_fn, stage=p,
               run_dir=out / "pretrain", info=info, on_step_start=on_step_start,
               desc=f"add-language pretrain[{lang}]", progress=progress, seed=cfg.seed)
    check_collapse()
    with torch.no_grad():
        system.model.base_model.load_state_dict(model.base_model.state_dict())


def add_language(run: str | os.PathLike, lang: str, train: str | os.PathLike, out: str | os.PathLike, *,
                 dev: str | None = None, test: str | None = None, overrides: Sequence[str] = (),
                 progress: bool = True) -> Path:
    """Add ``lang`` (its training manifest ``train``) to the masked system in ``run``, writing ``out``; returns
    ``out/final``. See the module docstring."""
    source, out = system_dir_of(run), Path(out)
    _check_out(Path(run), out)
    cfg = addition_recipe(source, lang, str(train), out, dev=dev, test=test, overrides=overrides)
    rule = cfg.add_language.rule
    f = cfg.finetune
    info = start_stage(cfg)
    claim_run(cfg, "finetune", out, str(source), info, extra={"add_language": config_to_dict(cfg)["add_language"]})

    system = System.from_pretrained(source, head="ctc", device=info.device)
    earlier = list(_masked(system, source).languages)
    if lang in earlier:
        raise ConfigError(f"{source} already serves {lang!r}; remove it first (lasp remove-language) to retrain it")
    joint = Vocabulary.load(source)
    utts = read_split(cfg.data, "train", [lang])
    tokens = Vocabulary.build(normalize_text(u.text, u.lang) for u in utts)
    head = initial_head(system.model.lm_head, joint.tokens, tokens.tokens,
                        std=float(system.model.config.initializer_range), seed=language_seed(cfg.seed, lang))
    normalize = feature_normalization(source)
    new_mask = search_new_mask(cfg, source, system, lang, tokens, head, out, info.device, progress)
    masks = _masked(system, source).masks.merged(new_mask)
    record = {"rule": rule, "added_to": str(source.resolve()), "pretrain": cfg.add_language.pretrain}
    system = _extended(system, masks, lang, tokens, head, rule, cfg.adapters.dim, record)
    _freeze_for(system, lang, rule, earlier, f.freeze_feature_encoder)
    if cfg.add_language.pretrain:
        _pretrain_inside(cfg, source, system, lang, rule, out, info, normalize, progress)

    dataset = make_dataset(cfg.data, utts, tokens)
    sampler = make_sampler(cfg.data, dataset, cfg.seed, mixed=False)
    loader = recipe_loader(cfg.data, dataset, sampler, ctc_collator(system.model.config, tokens, normalize),
                           info.device)

    def loss_fn(sys: System, batch: Batch, step: int):
        _, loss, weight = batch_loss(sys, batch.inputs)
        return loss, weight, {}

    own = sum(p.numel() for _, p in system.added.parameters_of(lang))
    exclusive = masks.count(masks.difference_bits(lang, earlier))
    if progress:
        what = {"exclusive": f"its {exclusive:,} mask weights no earlier language keeps and",
                "adapter": "its adapters and", "shared": "its whole mask, every unmasked weight and"}[rule]
        print(f"add {lang} to {source} ({', '.join(earlier)}), rule {rule}: mask density {masks.density(lang):.3f};"
              f" trains {what} its own head ({own:,} values)")
    with time_masking(system.model, f.mask_time_prob, f.mask_time_length):
        result = train_loop(system=system, stream=LoaderStream(loader, sampler, device=info.device),
                            loss_fn=loss_fn, stage=f, run_dir=out, info=info, desc=f"add-language[{lang}]",
                            progress=progress, seed=cfg.seed)
    summary = {"stage": "add-language", "language": lang, "rule": rule, "added_to": str(source.resolve()),
               "earlier_languages": earlier, "languages": system.languages, "init": str(source),
               "normalize": normalize, "step": result.step, "elapsed_s": result.elapsed_s,
               "last_loss": result.last_loss, "skipped_nonfinite": result.skipped_nonfinite,
               "own_values": own, "exclusive_weights": exclusive}
    final = export_final(system, out, cfg, summary, extra=joint.save)
    if cfg.data.test:
        served = cfg.evaluate.languages or [l for l in dict.fromkeys(u.lang for u in read_manifest(cfg.data.test))
                                            if l in system.languages]
        cfg.data.languages, cfg.evaluate.languages = served, served
        results = evaluate(cfg)
        if progress:
            print("  ".join(f"{l} CER {r['cer']:.4f}" for l, r in results["languages"].items()))
    return final


def remove_language(run: str | os.PathLike, lang: str, out: str | os.PathLike, *, progress: bool = True) -> Path:
    """Write ``out``: the system in ``run`` without ``lang`` (its mask, and its own head if it was added);
    every other language computes exactly what it did. Returns ``out/final``."""
    source, out = system_dir_of(run), Path(out)
    _check_out(Path(run), out)
    recipe = source / "recipe.yaml"
    cfg = load_recipe(recipe if recipe.is_file() else None)
    acquire(out, "run directory")
    system = System.from_pretrained(source, head="ctc")
    wrapper = _masked(system, source)
    if lang not in wrapper.languages:
        raise ConfigError(f"{source} does not serve {lang!r} (it serves {', '.join(wrapper.languages)})")
    rest = [l for l in wrapper.languages if l != lang]
    if not rest:
        raise ConfigError(f"{lang!r} is the only language of {source}; nothing would be left")
    targets, mode = list(wrapper.targets), wrapper.mode
    masks = wrapper.masks.subset(rest)
    wrapper.unload()
    added = system.added
    if added is not None and lang in added:
        added.remove(lang)
    kept = System(system.name, system.model, MaskedModel(system.model, masks, target_modules=exact_patterns(targets),
                                                          mode=mode), added if added and added.languages else None)
    summary = {"stage": "remove-language", "removed": lang, "removed_from": str(source.resolve()),
               "languages": rest, "normalize": feature_normalization(source)}
    final = export_final(kept, out, cfg, summary, extra=Vocabulary.load(source).save)
    if progress:
        print(f"removed {lang}: {final} serves {', '.join(rest)}")
    return final

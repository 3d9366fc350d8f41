"""The recipe schema: typed sections of a lasp YAML recipe, each key with its help in ``metadata["help"]``.

One recipe can hold every stage (model, data, masks, pretrain, finetune, evaluate) and the whole comparison
(run); each command reads the sections it needs. A field's help is what `lasp <command> --explain` prints next
to its type and default; the help of a field that holds a section is that section's heading. The ``masks`` and
``data`` sections belong to the packages that read them (:mod:`lasp.search.config`, :mod:`lasp.data.config`).
Paths are strings relative to the working directory the command runs in.
"""
from __future__ import annotations

import typing
from dataclasses import dataclass, field
from typing import Any, Literal

from lasp.data.config import DataConfig
from lasp.search.config import MaskConfig

System = Literal["shared", "lasp", "random", "adapters"]
SYSTEMS: tuple[str, ...] = typing.get_args(System)


@dataclass
class ModelConfig:
    """The model every stage starts from unless a stage names its own ``init``."""

    name: str = field(default="tiny", metadata={
        "help": "a preset (tiny, base, xlsr-53; random weights) or a local Hugging Face model folder"})
    overrides: dict[str, Any] = field(default_factory=dict, metadata={
        "help": "Wav2Vec2Config fields to change, e.g. {hidden_dropout: 0.0}"})


@dataclass
class AdapterConfig:
    """The MMS-style adapter baseline."""

    dim: int = field(default=16, metadata={
        "help": "bottleneck width of the adapter after every encoder layer (transformers' adapter_attn_dim)"})
    freeze_base: bool = field(default=True, metadata={
        "help": "train only the adapters and the CTC head (as MMS does); false also trains the model"})


@dataclass
class OptimConfig:
    """AdamW and its learning-rate schedule."""

    lr: float = field(default=5e-4, metadata={"help": "peak learning rate of AdamW"})
    weight_decay: float = field(default=0.01, metadata={"help": "AdamW weight decay"})
    betas: list[float] = field(default_factory=lambda: [0.9, 0.98], metadata={
        "help": "AdamW betas [beta1, beta2], each in [0, 1)"})
    eps: float = field(default=1e-6, metadata={"help": "AdamW epsilon"})
    schedule: Literal["tri-stage", "linear-warmup", "constant"] = field(default="linear-warmup", metadata={
        "help": "tri-stage (warm-up/hold/decay, wav2vec 2.0 fine-tuning), linear-warmup, or constant"})
    warmup_steps: int = field(default=100, metadata={
        "help": "linear-warmup: steps of linear warm-up (ignored by tri-stage)"})
    tri_stage_ratios: list[float] = field(default_factory=lambda: [0.1, 0.4, 0.5], metadata={
        "help": "tri-stage: fractions of max_steps for warm-up, hold and decay (sum to 1)"})
    final_lr_scale: float = field(default=0.05, metadata={
        "help": "tri-stage: starts at and decays to lr * final_lr_scale, in (0, 1]"})
    max_grad_norm: float = field(default=10.0, metadata={
        "help": "clip gradients to this global norm; 0 disables clipping"})


@dataclass
class StageConfig:
    """What pre-training and fine-tuning share: the system, the steps, checkpoints, precision, resuming."""

    run_dir: str | None = field(default=None, metadata={
        "help": "checkpoints, metrics.jsonl and final/ go here; null = <output_dir>/<stage>-<system>"})
    init: str | None = field(default=None, metadata={
        "help": "starting weights (model folder or preset); null = the previous stage's output or model.name"})
    system: System = field(default="lasp", metadata={
        "help": "what trains: shared (no masks), lasp (importance masks), random (random masks, same "
                "sparsity), adapters (fine-tuning only)"})
    max_steps: int = field(default=1000, metadata={"help": "optimizer steps to train"})
    max_minutes: float | None = field(default=None, metadata={
        "help": "stop after this many minutes of training (counted across resumes); null = no limit"})
    optim: OptimConfig = field(default_factory=OptimConfig, metadata={
        "help": "optimizer and learning-rate schedule"})
    log_every: int = field(default=10, metadata={
        "help": "write metrics (metrics.jsonl, TensorBoard) every N steps"})
    ckpt_every: int = field(default=200, metadata={"help": "save a checkpoint every N steps (and at the end)"})
    keep_checkpoints: int = field(default=2, metadata={"help": "how many of the newest checkpoints to keep"})
    precision: Literal["auto", "fp32", "bf16", "fp16"] = field(default="auto", metadata={
        "help": "autocast: auto (bf16 on a GPU, fp32 on CPU), bf16, fp16 (with a gradient scaler) on either "
                "device, or fp32 (none)"})
    grad_accum_steps: int = field(default=1, metadata={
        "help": "micro-batches (per rank) whose gradients are summed into one optimizer step; the effective "
                "batch is batch x grad_accum_steps x ranks"})
    activation_checkpointing: bool = field(default=False, metadata={
        "help": "recompute encoder-layer activations in backward (transformers' gradient checkpointing): less "
                "activation memory, about a third more compute"})
    resume: bool = field(default=True, metadata={
        "help": "continue from the newest checkpoint in run_dir when there is one"})
    resume_allow: list[str] = field(default_factory=list, metadata={
        "help": "keys that may differ from the recipe the run started with when resuming, e.g. [max_steps] or "
                "[finetune.optim.lr]; an allowed change takes effect from the first resumed step"})
    max_nonfinite: float = field(default=0.1, metadata={
        "help": "stop with an error (nothing exported) when the loss was not finite in more than this share "
                "of the steps so far: the run diverged (judged from step 20 on, and at the end); 1 never stops"})


@dataclass
class PretrainConfig(StageConfig):
    """Continued wav2vec 2.0 pre-training: contrastive loss over masked spans plus codebook diversity."""

    optim: OptimConfig = field(default_factory=OptimConfig, metadata={
        "help": "optimizer and learning-rate schedule of pre-training"})
    mask_time_prob: float = field(default=0.65, metadata={
        "help": "probability that a frame starts a masked span (wav2vec 2.0: 0.65)"})
    mask_time_length: int = field(default=10, metadata={"help": "masked span length in frames (wav2vec 2.0: 10)"})
    num_negatives: int = field(default=100, metadata={
        "help": "distractors per masked frame in the contrastive loss (wav2vec 2.0: 100)"})
    diversity_weight: float = field(default=0.1, metadata={
        "help": "weight of the codebook diversity loss (wav2vec 2.0: 0.1)"})
    gumbel_max: float = field(default=2.0, metadata={"help": "Gumbel softmax temperature at step 0"})
    gumbel_min: float = field(default=0.5, metadata={"help": "lowest Gumbel temperature (the decay stops there)"})
    gumbel_decay: float = field(default=0.999995, metadata={
        "help": "temperature = max(gumbel_max * gumbel_decay^step, gumbel_min)"})
    perplexity_warn: float = field(default=0.1, metadata={
        "help": "warn when codevector perplexity drops below this fraction of the codebook (collapse)"})
    keep_at: list[int] = field(default_factory=list, metadata={
        "help": "also keep the model after these steps, each as <run_dir>/at-step-<N>/ (a folder like final/): "
                "one pre-training gives bases of several strengths"})


@dataclass
class FinetuneConfig(StageConfig):
    """Multilingual CTC fine-tuning; its schedule defaults to wav2vec 2.0's tri-stage."""

    freeze_feature_encoder: bool = field(default=True, metadata={
        "help": "keep the CNN feature encoder fixed (as wav2vec 2.0 fine-tuning does)"})
    mask_time_prob: float = field(default=0.05, metadata={
        "help": "SpecAugment-style time masking probability during fine-tuning; 0 disables"})
    mask_time_length: int = field(default=10, metadata={"help": "time mask span in frames"})
    optim: OptimConfig = field(default_factory=lambda: OptimConfig(schedule="tri-stage"), metadata={
        "help": "optimizer and learning-rate schedule of fine-tuning"})
    export_languages: bool = field(default=False, metadata={
        "help": "also write final/<lang>/: one plain pipeline-loadable model per language (masked systems: one "
                "full copy each; the shared system's link its one weights file; `lasp export` makes one later)"})


@dataclass
class EvaluateConfig:
    """Greedy CTC decoding of a manifest split and its per-language error rates."""

    model: str | None = field(default=None, metadata={
        "help": "fine-tuned model folder; null = this recipe's finetune output (<run_dir>/final)"})
    split: Literal["test", "valid"] = field(default="test", metadata={"help": "manifest to decode: test or valid"})
    out_dir: str | None = field(default=None, metadata={
        "help": "where recogs-*, errs-*, wer-summary-* and results.json go; null = <model>/../eval"})
    batch_size: int = field(default=8, metadata={"help": "utterances per decoding batch"})
    precision: Literal["fp32", "bf16", "fp16"] = field(default="fp32", metadata={
        "help": "autocast precision of decoding: fp32 (none), bf16 or fp16"})
    languages: list[str] = field(default_factory=list, metadata={
        "help": "languages to evaluate; empty = every language in the manifest"})


@dataclass
class VariantConfig:
    """One ablation of `lasp run`: an extra system on the same base model, changed by the overrides it names.

    ``pretrain`` and ``score_on`` are null unless a lasp variant sets them (null: pre-trained, scored on the
    base model), so that an adapters variant that sets either is refused rather than silently ignored.
    """

    name: str = field(default="", metadata={
        "help": "the variant's name in folders and tables: lower-case letters, digits, '.', '_' or '-'; not a "
                "system's, a stage's or another variant's"})
    overrides: dict[str, Any] = field(default_factory=dict, metadata={
        "help": "recipe keys the variant changes, e.g. {masks.scorer: magnitude}: masks.*, pretrain.*, "
                "finetune.* for a lasp variant; adapters.*, finetune.* for an adapters variant"})
    pretrain: bool | None = field(default=None, metadata={
        "help": "lasp variants: false fine-tunes the masked base model without language-adaptive "
                "pre-training; null = true"})
    score_on: Literal["base", "shared"] | None = field(default=None, metadata={
        "help": "lasp variants: score the masks on the base model (base; null) or with the CTC loss on the "
                "fine-tuned shared system (shared)"})
    system: Literal["lasp", "adapters"] = field(default="lasp", metadata={
        "help": "lasp: a masked system with its own masks (shared when its masks section is lasp's); "
                "adapters: the adapter baseline with other adapters.* or finetune.* settings"})


@dataclass
class RunConfig:
    """The whole comparison `lasp run` makes: corpus, systems, seeds, ablations, report."""

    corpus: str = field(default="runs/demo/corpus", metadata={
        "help": "corpus folder (train/dev/test manifests); synthesized offline when missing"})
    languages: list[str] = field(default_factory=lambda: ["es", "it", "pt", "de", "ru", "tr"], metadata={
        "help": "languages of the synthesized corpus and of every stage"})
    train_utterances: int = field(default=300, metadata={
        "help": "training utterances per language in the synthesized corpus"})
    dev_utterances: int = field(default=20, metadata={"help": "validation utterances per language"})
    test_utterances: int = field(default=40, metadata={"help": "test utterances per language"})
    low_resource: list[str] = field(default_factory=list, metadata={
        "help": "languages that get train_utterances / low_factor utterances"})
    low_factor: float = field(default=5.0, metadata={
        "help": "how much less training data the low-resource languages get"})
    systems: list[System] = field(default_factory=lambda: list(SYSTEMS), metadata={
        "help": "systems to compare: shared, lasp, random, adapters"})
    base_steps: int = field(default=500, metadata={
        "help": "shared pre-training steps of the base model before masks are searched"})
    base_minutes: float | None = field(default=None, metadata={
        "help": "wall-time budget of that base training (null = none; makes it machine-dependent)"})
    base_threads: int = field(default=2, metadata={"help": "threads of the base training"})
    parallel: int = field(default=2, metadata={"help": "stage processes running side by side, one thread each"})
    report: str = field(default="runs/demo/report.md", metadata={
        "help": "path of the markdown report (its figures go next to it)"})
    synthesize: Literal["auto", "always", "never"] = field(default="auto", metadata={
        "help": "auto: synthesize a corpus only when run.corpus has no manifests; always; never (use yours)"})
    seeds: list[int] = field(default_factory=list, metadata={
        "help": "run the whole comparison once per seed (in <output_dir>/seed-<s>) and report intervals across "
                "seeds; empty = the recipe's seed only"})
    variants: list[VariantConfig] = field(default_factory=list, metadata={
        "help": "ablations, each an extra lasp system on the same base model (or, with system: adapters, an "
                "extra adapter baseline): a list of {name, overrides, pretrain, score_on, system}"})
    strengths: list[str] = field(default_factory=list, metadata={
        "help": "base models of several strengths, each PRESET@STEPS (e.g. [tiny@800, tiny@3200, small@3200]): the "
                "whole comparison runs once per strength, in <output_dir>/<preset>-<steps>, on the preset "
                "pre-trained shared for that many steps (one pre-training per preset and seed, kept at each "
                "strength's step); replaces model.name and run.base_steps; empty = one base"})
    repeat_search: bool = field(default=False, metadata={
        "help": "search every mask set a second time on other batches (seed + 1000) and report each language's "
                "signal: IoU with its own repeat minus IoU with the other languages' repeats (0 = search noise)"})
    spread_from: str | None = field(default=None, metadata={
        "help": "a benchmark's seeds_summary.json, or lasp:benchmark for the one shipped with lasp; the "
                "report quotes its seed-to-seed spread (null: none)"})


@dataclass
class AddLanguageConfig:
    """What a language added to a trained masked system trains (`lasp add-language`)."""

    rule: Literal["exclusive", "adapter", "shared"] = field(default="exclusive", metadata={
        "help": "what an added language trains: exclusive (its mask's weights no earlier language keeps + its "
                "own head; the others stay bit-identical), adapter (MMS adapters on its frozen sub-network + its "
                "head), shared (its whole mask, unmasked weights, head: the control, changes the others)"})
    # the quantizer is trained from its initial values when the system has none (a fine-tuned CTC system)
    pretrain: bool = field(default=False, metadata={
        "help": "pre-train the new language inside its mask (pretrain.* settings) before fine-tuning it"})


@dataclass
class ContinualConfig:
    """The continual experiment (`lasp run` with this section): a lasp system trained on the ``first``
    languages, then every language of ``add`` added to it one at a time, against joint training of all languages
    from the start and an MMS adapter added to the same frozen system (run.languages lists them all)."""

    first: list[str] = field(default_factory=list, metadata={
        "help": "languages the first system is trained on jointly (all of them in run.languages)"})
    add: list[str] = field(default_factory=list, metadata={
        "help": "languages added afterwards with `lasp add-language`, one at a time in this order"})
    add_steps: int = field(default=350, metadata={
        "help": "fine-tuning steps of each addition (learning rate and schedule: finetune.optim)"})
    add_pretrain: bool = field(default=False, metadata={
        "help": "pre-train each addition inside its mask first (add_language.pretrain)"})
    control: bool = field(default=True, metadata={
        "help": "also add the first of `add` with add_language.rule=shared: what the rule prevents"})
    base_on_first: bool = field(default=True, metadata={
        "help": "pre-train the base model on the first languages only (the added ones are new to it)"})
    pretrain: bool = field(default=True, metadata={
        "help": "language-adaptive pre-training of the first and the joint systems before fine-tuning; false "
                "fine-tunes both straight from the base (the additions never pre-train unless add_pretrain)"})


@dataclass
class RecipeConfig:
    """A lasp recipe: top-level settings and one section per stage (and, for `lasp run`, the comparison)."""

    seed: int = field(default=0, metadata={
        "help": "random seed (>= 0) for model initialisation, data order, masking and random masks"})
    threads: int | None = field(default=None, metadata={
        "help": "torch CPU threads (torch.set_num_threads); null keeps torch's default"})
    cpu_onednn: bool = field(default=True, metadata={
        "help": "use oneDNN for CPU convolutions (torch's default); false is faster for small models"})
    device: Literal["auto", "cpu", "cuda"] = field(default="auto", metadata={
        "help": "auto (CUDA when available, else CPU), cpu or cuda"})
    output_dir: str = field(default="runs/lasp", metadata={
        "help": "root folder of the stages' default run directories (<output_dir>/<stage>-<system>)"})
    model: ModelConfig = field(default_factory=ModelConfig, metadata={"help": "the starting model"})
    data: DataConfig = field(default_factory=DataConfig, metadata={
        "help": "manifests, batching and language sampling"})
    masks: MaskConfig = field(default_factory=MaskConfig, metadata={
        "help": "how each language's sub-network (binary mask) is found"})
    adapters: AdapterConfig = field(default_factory=AdapterConfig, metadata={
        "help": "the MMS-style adapter baseline (finetune.system=adapters)"})
    pretrain: PretrainConfig = field(default_factory=PretrainConfig, metadata={
        "help": "language-adaptive continued wav2vec 2.0 pre-training (`lasp pretrain`)"})
    finetune: FinetuneConfig = field(default_factory=FinetuneConfig, metadata={
        "help": "multilingual CTC fine-tuning (`lasp finetune`)"})
    evaluate: EvaluateConfig = field(default_factory=EvaluateConfig, metadata={
        "help": "greedy CTC decoding and CER/WER (`lasp evaluate`)"})
    # optional: a recipe without it is a recipe for the stage commands only, and `lasp run` says so
    run: RunConfig | None = field(default=None, metadata={
        "help": "the whole comparison (`lasp run`, `lasp report`); other commands ignore it"})
    add_language: AddLanguageConfig | None = field(default=None, metadata={
        "help": "what a language added to a trained masked system trains (`lasp add-language`); null: the "
                "defaults"})
    continual: ContinualConfig | None = field(default=None, metadata={
        "help": "the continual experiment (`lasp run` with this section): train on some languages, add the rest"})

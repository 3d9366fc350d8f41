"""The recipe schema: typed sections of a lasp YAML recipe.

One recipe can hold every stage (model, data, masks, pretrain, finetune,
evaluate); each stage command reads the sections it needs. Field comments are
the help text `lasp validate --explain` prints. Paths are strings relative to
the working directory the command runs in.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal

SYSTEMS = ("shared", "lasp", "random", "adapters")


@dataclass
class ModelConfig:
    # a preset ("tiny" | "base" | "xlsr-53", random weights) or a local checkpoint directory
    name: str = "tiny"
    # Wav2Vec2Config fields to override, e.g. {hidden_dropout: 0.0, do_stable_layer_norm: true}
    overrides: dict[str, Any] = field(default_factory=dict)


@dataclass
class DataConfig:
    # manifests (see lasp.data.manifest); train is required by pretrain/finetune, test by evaluate
    train: str | None = None
    valid: str | None = None
    test: str | None = None
    # languages to use; empty = every language in the training manifest
    languages: list[str] = field(default_factory=list)
    # directory holding vocab.json; built from the training transcripts (and saved there) when missing
    vocab: str | None = None
    # utterances longer than this are dropped (seconds)
    max_seconds: float = 15.0
    # what to do with a bad row: skip it (and count it) or raise
    on_bad: Literal["skip", "error"] = "skip"
    # XLSR language sampling exponent: p(lang) ∝ (n_lang/N)^alpha
    alpha: float = 0.5
    # utterances per batch (per rank); or set max_batch_seconds for duration-bounded batches
    batch_size: int | None = 4
    max_batch_seconds: float | None = None
    # false: every batch holds one language (language-adaptive training needs this for pretraining)
    mixed: bool = False
    # DataLoader worker processes decoding and collating batches (0: in the training process)
    num_workers: int = 0
    # batches each worker prepares ahead (DataLoader prefetch_factor; ignored with num_workers 0)
    prefetch_factor: int = 2


@dataclass
class MaskConfig:
    # mask set directory; searched and written there when it does not exist yet
    dir: str | None = None
    # oneshot: score once and prune; imp: iterative pruning with rewinding (sparse sharing); lass: adapt to the
    # language, then prune (LaSS)
    method: Literal["oneshot", "imp", "lass"] = "oneshot"
    scorer: Literal["magnitude", "taylor", "fisher", "random"] = "taylor"
    # fraction of each targeted tensor (or of all targets, scope=global) that is pruned per language
    sparsity: float = 0.5
    scope: Literal["per-tensor", "global"] = "per-tensor"
    pattern: str = "unstructured"
    # batches per language used for scoring
    max_batches: int = 8
    # regexes over parameter names; null = lasp.masks.targets.DEFAULT_TARGETS
    targets: list[str] | None = None
    # imp only: R rounds of (k steps of training on the language, prune, rewind to the shared weights)
    imp_rounds: int = 3
    imp_steps: int = 50
    imp_lr: float = 5e-4
    # use the mask set in dir (or the starting model's) even if its recorded scorer/sparsity/data/... differ
    reuse: bool = False
    # a language needs at least this many training rows to get a mask searched for it
    min_utterances: int = 20
    # lass only: Adam steps and learning rate of each language's short adaptation of the shared model, and what
    # is pruned afterwards: the smallest adapted weights (magnitude) or the least-changed ones (change)
    lass_steps: int = 50
    lass_lr: float = 5e-4
    lass_criterion: Literal["magnitude", "change"] = "change"


@dataclass
class AdapterConfig:
    # bottleneck width of the MMS-style adapter after every encoder layer (transformers' adapter_attn_dim)
    dim: int = 16
    # MMS trains only the adapters (and the shared CTC head); false also trains the base model
    freeze_base: bool = True


@dataclass
class OptimConfig:
    lr: float = 5e-4
    weight_decay: float = 0.01
    betas: list[float] = field(default_factory=lambda: [0.9, 0.98])
    eps: float = 1e-6
    # tri-stage: warm-up / hold / exponential decay (fairseq wav2vec fine-tuning); linear-warmup: warm-up then
    # constant; constant: no warm-up
    schedule: Literal["tri-stage", "linear-warmup", "constant"] = "linear-warmup"
    warmup_steps: int = 100
    # tri-stage fractions of max_steps for warm-up, hold and decay (warmup_steps is ignored there)
    tri_stage_ratios: list[float] = field(default_factory=lambda: [0.1, 0.4, 0.5])
    # tri-stage starts at and decays to lr * final_lr_scale
    final_lr_scale: float = 0.05
    # gradient clipping (global norm); 0 disables
    max_grad_norm: float = 10.0


@dataclass
class StageConfig:
    # where checkpoints, logs and the final model go; null = <output_dir>/<stage>-<system>
    run_dir: str | None = None
    # starting weights: a local model directory or a preset (finetune also: pretrain = this recipe's pre-training
    # output, which must exist); null = model.name
    init: str | None = None
    # which system trains: shared (no masks), lasp (importance masks), random (random masks at the same
    # sparsity), adapters (MMS-style per-language adapters; fine-tuning only)
    system: Literal["shared", "lasp", "random", "adapters"] = "lasp"
    max_steps: int = 1000
    # stop early after this many minutes of training (equal-wall-time comparisons); null = no limit
    max_minutes: float | None = None
    optim: OptimConfig = field(default_factory=OptimConfig)
    log_every: int = 10
    # save a checkpoint every N steps (and at the end); keep the newest keep_checkpoints
    ckpt_every: int = 200
    keep_checkpoints: int = 2
    # autocast precision on GPU (ignored on CPU, where training runs in fp32)
    precision: Literal["fp32", "bf16", "fp16"] = "bf16"
    # continue from the latest checkpoint in run_dir when there is one
    resume: bool = True
    # recipe keys allowed to differ from the ones the run started with when resuming, e.g. [max_steps,
    # max_minutes] (stage keys by name, others dotted: data.batch_size)
    resume_allow: list[str] = field(default_factory=list)


@dataclass
class PretrainConfig(StageConfig):
    # wav2vec 2.0 pre-training masking: each frame starts a span with this probability
    mask_time_prob: float = 0.65
    mask_time_length: int = 10
    num_negatives: int = 100
    diversity_weight: float = 0.1
    # Gumbel softmax temperature: max * decay^step, floored at min
    gumbel_max: float = 2.0
    gumbel_min: float = 0.5
    gumbel_decay: float = 0.999995
    # warn when codevector perplexity falls below this fraction of the codebook size (collapse)
    perplexity_warn: float = 0.1


@dataclass
class FinetuneConfig(StageConfig):
    freeze_feature_encoder: bool = True
    # SpecAugment-style time masking during fine-tuning (0 disables)
    mask_time_prob: float = 0.05
    mask_time_length: int = 10
    # the fine-tuning default follows wav2vec 2.0 (tri-stage, lr 5e-5 at paper scale)
    optim: OptimConfig = field(default_factory=lambda: OptimConfig(schedule="tri-stage"))


@dataclass
class EvaluateConfig:
    # fine-tuned model directory (finetune's <run_dir>/final); null = this recipe's finetune output
    model: str | None = None
    # manifest split to decode: test or valid
    split: Literal["test", "valid"] = "test"
    # where recogs-*, errs-*, wer-summary-* and results.json go; null = <model>/../eval
    out_dir: str | None = None
    batch_size: int = 8
    # languages to evaluate; empty = every language in the manifest
    languages: list[str] = field(default_factory=list)


@dataclass
class RunConfig:
    # corpus directory (train/dev/test manifests); made with the offline synthesizer when missing
    corpus: str = "runs/demo/corpus"
    # languages of the synthesized corpus and of every stage
    languages: list[str] = field(default_factory=lambda: ["es", "it", "pt", "de", "ru", "tr"])
    train_utterances: int = 300
    dev_utterances: int = 20
    test_utterances: int = 40
    # languages that get train_utterances / low_factor utterances
    low_resource: list[str] = field(default_factory=list)
    low_factor: float = 5.0
    # systems to compare (shared, lasp, random, adapters)
    systems: list[str] = field(default_factory=lambda: list(SYSTEMS))
    # shared pre-training of the base model before masks are searched: steps, an optional wall-time budget
    # (null = none; a budget makes the base model depend on the machine's speed), threads
    base_steps: int = 500
    base_minutes: float | None = None
    base_threads: int = 2
    # stage processes running side by side, one thread each
    parallel: int = 2
    # the report (markdown) and its figures
    report: str = "runs/demo/report.md"
    # the corpus: "auto" synthesizes one only when run.corpus holds no manifests (manifests without synth.json
    # are the user's and are only read); "always" requires lasp's synthetic corpus and refuses to write over
    # manifests lasp did not make; "never" requires existing manifests
    synthesize: Literal["auto", "always", "never"] = "auto"
    # seeds: the whole comparison (corpus draw, base model, masks, training) once per seed, in <output_dir>/seed-<s>,
    # then a multi-seed summary with intervals; empty = the recipe's seed only, in <output_dir>
    seeds: list[int] = field(default_factory=list)
    # ablations: [{name, overrides: {masks.*|pretrain.*|finetune.*: value}, pretrain: true|false}], each an extra
    # lasp system on the same base model, with its own masks (shared when its masks section is lasp's)
    variants: list[dict[str, Any]] = field(default_factory=list)
    # a benchmark's seeds_summary.json whose seed-to-seed spread this single-seed report quotes; null = none
    spread_from: str | None = None


@dataclass
class AddLanguageConfig:
    # what a language added to a trained masked system trains (`lasp add-language`). exclusive: only the weights
    # of its mask that no earlier language keeps, plus its own CTC head (every earlier language's outputs stay
    # bit-identical); adapter: MMS-style adapters (adapters.dim) on its frozen sub-network plus its own head
    # (also bit-identical); shared: its whole mask, every unmasked weight and its head, as ordinary lasp
    # fine-tuning would (changes the earlier languages: the control experiment)
    rule: Literal["exclusive", "adapter", "shared"] = "exclusive"
    # language-adaptive pre-training inside the new mask before fine-tuning (pretrain.* settings, the new
    # language's audio), under the same rule; the quantizer is trained from its initial values when the system
    # has none (a fine-tuned CTC system)
    pretrain: bool = False


@dataclass
class ContinualConfig:
    # `lasp run` with this section runs the continual experiment: a lasp system trained on the `first` languages,
    # then every language of `add` added to it one at a time (`lasp add-language`), against joint training of all
    # languages from the start and an MMS adapter added to the same frozen system (run.languages lists them all)
    first: list[str] = field(default_factory=list)
    add: list[str] = field(default_factory=list)
    # fine-tuning steps of each addition (learning rate and schedule: finetune.optim)
    add_steps: int = 350
    # language-adaptive pre-training of each addition inside its mask first (pretrain.* settings)
    add_pretrain: bool = False
    # also add the first of `add` with the rule switched off (add_language.rule=shared): what the rule prevents
    control: bool = True
    # the base model is pre-trained on the `first` languages only: the added languages are new to it
    base_on_first: bool = True
    # language-adaptive pre-training (pretrain.*) of the first and the joint systems before fine-tuning; false
    # fine-tunes both straight from the base (the additions never pre-train unless add_pretrain)
    pretrain: bool = True


@dataclass
class RecipeConfig:
    seed: int = 0
    # torch.set_num_threads; null leaves torch's default
    threads: int | None = None
    # oneDNN kernels for CPU convolutions (torch's default); small models train faster without them, see lasp.device
    cpu_onednn: bool = True
    device: Literal["auto", "cpu", "cuda"] = "auto"
    # root for the stages' default run directories
    output_dir: str = "runs/lasp"
    model: ModelConfig = field(default_factory=ModelConfig)
    data: DataConfig = field(default_factory=DataConfig)
    masks: MaskConfig = field(default_factory=MaskConfig)
    adapters: AdapterConfig = field(default_factory=AdapterConfig)
    pretrain: PretrainConfig = field(default_factory=PretrainConfig)
    finetune: FinetuneConfig = field(default_factory=FinetuneConfig)
    evaluate: EvaluateConfig = field(default_factory=EvaluateConfig)
    # sections added by other lasp commands (see lasp.config.recipe.register_section); filled by the loader
    extra: dict[str, Any] = field(default_factory=dict)

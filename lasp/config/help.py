"""One line of help per recipe key: what `lasp <command> --explain` prints next to its type and default.

Keyed by schema class and field, so a section reached twice (``pretrain.optim`` and ``finetune.optim``) and
fields a class inherits (``StageConfig`` -> ``PretrainConfig``) are documented once. A test checks that every
key of the schema has help here: a new recipe key is not finished until it is documented. Entries for keys a
schema does not have are ignored (help may land before its key).
"""
from __future__ import annotations

SECTIONS = {
    "": "top-level settings",
    "model": "the starting model",
    "data": "manifests, batching and language sampling",
    "masks": "how each language's sub-network (binary mask) is found",
    "adapters": "the MMS-style adapter baseline (finetune.system=adapters)",
    "pretrain": "language-adaptive continued wav2vec 2.0 pre-training (`lasp pretrain`)",
    "pretrain.optim": "optimizer and learning-rate schedule of pre-training",
    "finetune": "multilingual CTC fine-tuning (`lasp finetune`)",
    "finetune.optim": "optimizer and learning-rate schedule of fine-tuning",
    "evaluate": "greedy CTC decoding and CER/WER (`lasp evaluate`)",
    "run": "the whole comparison (`lasp run`, `lasp report`); other commands ignore it",
    "add_language": "what a language added to a trained masked system trains (`lasp add-language`)",
    "continual": "the continual experiment (`lasp run` with this section): train on some languages, add the rest",
}

HELP: dict[str, dict[str, str]] = {
    "RecipeConfig": {
        "seed": "random seed (>= 0) for model initialisation, data order, masking and random masks",
        "threads": "torch CPU threads (torch.set_num_threads); null keeps torch's default",
        "cpu_onednn": "use oneDNN for CPU convolutions (torch's default); false is faster for small models",
        "device": "auto (CUDA when available, else CPU), cpu or cuda",
        "output_dir": "root folder of the stages' default run directories (<output_dir>/<stage>-<system>)",
    },
    "ModelConfig": {
        "name": "a preset (tiny, base, xlsr-53; random weights) or a local Hugging Face model folder",
        "overrides": "Wav2Vec2Config fields to change, e.g. {hidden_dropout: 0.0}",
    },
    "DataConfig": {
        "train": "training manifest (JSON lines: audio, text, lang); required by pretrain and finetune",
        "valid": "validation manifest (optional)",
        "test": "test manifest; required by evaluate",
        "languages": "languages to use; empty = every language in the training manifest",
        "vocab": "folder holding vocab.json; built from the training transcripts and saved there when missing",
        "max_seconds": "utterances longer than this many seconds are dropped (training and `data info`)",
        "on_bad": "a bad row (missing/unreadable audio, empty text): skip and count it, or stop with an error",
        "alpha": "language sampling exponent: p(lang) proportional to (n_lang/N)^alpha (XLSR: 0.5)",
        "batch_size": "utterances per batch and rank; null = use max_batch_seconds",
        "max_batch_seconds": "audio seconds per batch (duration-bounded batches); null = use batch_size",
        "mixed": "false: each batch holds one language (needed for language-adaptive pre-training)",
        "num_workers": "DataLoader worker processes decoding and collating batches; 0 = in the training process",
        "prefetch_factor": "batches each worker prepares ahead (ignored with num_workers 0)",
    },
    "MaskConfig": {
        "dir": "mask set folder; searched and written there when it holds no mask set yet",
        "method": "oneshot: score once and prune; imp: iterative pruning with rewinding (sparse sharing); "
                  "lass: adapt the shared model to each language, then prune (LaSS)",
        "scorer": "importance score: magnitude |w|, taylor |w*g|, fisher g^2, or random",
        "sparsity": "fraction in [0, 1) of each targeted tensor (or of all targets, scope=global) pruned",
        "scope": "per-tensor: prune each tensor to the sparsity; global: one threshold over all targets",
        "pattern": "unstructured, or N:M such as 2:4 (keep N of every M weights); quoting is optional",
        "max_batches": "batches per language used for scoring",
        "targets": "regexes over parameter names to mask; null = the encoder layers' Linear weights",
        "imp_rounds": "imp only: rounds of (train, prune, rewind to the shared weights)",
        "imp_steps": "imp only: training steps on the language per round",
        "imp_lr": "imp only: learning rate of those training steps",
        "lass_steps": "lass only: Adam steps adapting the shared model to each language before pruning",
        "lass_lr": "lass only: learning rate of those adaptation steps",
        "lass_criterion": "lass only: prune the smallest adapted weights |W_lang| (magnitude) or the least "
                          "changed |W_lang - W_shared| (change)",
        "reuse": "use the mask set in dir even if what made it (scorer, sparsity, data, ...) differs from this recipe",
        "min_utterances": "a language needs at least this many training rows to get a mask searched for it",
    },
    "AdapterConfig": {
        "dim": "bottleneck width of the adapter after every encoder layer (transformers' adapter_attn_dim)",
        "freeze_base": "train only the adapters and the CTC head (as MMS does); false also trains the model",
    },
    "OptimConfig": {
        "lr": "peak learning rate of AdamW",
        "weight_decay": "AdamW weight decay",
        "betas": "AdamW betas [beta1, beta2], each in [0, 1)",
        "eps": "AdamW epsilon",
        "schedule": "tri-stage (warm-up/hold/decay, wav2vec 2.0 fine-tuning), linear-warmup, or constant",
        "warmup_steps": "linear-warmup: steps of linear warm-up (ignored by tri-stage)",
        "tri_stage_ratios": "tri-stage: fractions of max_steps for warm-up, hold and decay (sum to 1)",
        "final_lr_scale": "tri-stage: starts at and decays to lr * final_lr_scale, in (0, 1]",
        "max_grad_norm": "clip gradients to this global norm; 0 disables clipping",
    },
    "StageConfig": {
        "run_dir": "checkpoints, metrics.jsonl and final/ go here; null = <output_dir>/<stage>-<system>",
        "init": "starting weights (model folder or preset); null = the previous stage's output or model.name",
        "system": "what trains: shared (no masks), lasp (importance masks), random (random masks, same "
                  "sparsity), adapters (fine-tuning only)",
        "max_steps": "optimizer steps to train",
        "max_minutes": "stop after this many minutes of training (counted across resumes); null = no limit",
        "log_every": "write metrics (metrics.jsonl, TensorBoard) every N steps",
        "ckpt_every": "save a checkpoint every N steps (and at the end)",
        "keep_checkpoints": "how many of the newest checkpoints to keep",
        "precision": "autocast precision on GPU: fp32, bf16 or fp16 (CPU always trains in fp32)",
        "resume": "continue from the newest checkpoint in run_dir when there is one",
        "resume_allow": "keys that may differ from the recipe the run started with when resuming, e.g. [max_steps]",
    },
    "PretrainConfig": {
        "mask_time_prob": "probability that a frame starts a masked span (wav2vec 2.0: 0.65)",
        "mask_time_length": "masked span length in frames (wav2vec 2.0: 10)",
        "num_negatives": "distractors per masked frame in the contrastive loss (wav2vec 2.0: 100)",
        "diversity_weight": "weight of the codebook diversity loss (wav2vec 2.0: 0.1)",
        "gumbel_max": "Gumbel softmax temperature at step 0",
        "gumbel_min": "lowest Gumbel temperature (the decay stops there)",
        "gumbel_decay": "temperature = max(gumbel_max * gumbel_decay^step, gumbel_min)",
        "perplexity_warn": "warn when codevector perplexity drops below this fraction of the codebook (collapse)",
    },
    "FinetuneConfig": {
        "freeze_feature_encoder": "keep the CNN feature encoder fixed (as wav2vec 2.0 fine-tuning does)",
        "mask_time_prob": "SpecAugment-style time masking probability during fine-tuning; 0 disables",
        "mask_time_length": "time mask span in frames",
    },
    "EvaluateConfig": {
        "model": "fine-tuned model folder; null = this recipe's finetune output (<run_dir>/final)",
        "split": "manifest to decode: test or valid",
        "out_dir": "where recogs-*, errs-*, wer-summary-* and results.json go; null = <model>/../eval",
        "batch_size": "utterances per decoding batch",
        "languages": "languages to evaluate; empty = every language in the manifest",
    },
    "RunConfig": {
        "corpus": "corpus folder (train/dev/test manifests); synthesized offline when missing",
        "languages": "languages of the synthesized corpus and of every stage",
        "train_utterances": "training utterances per language in the synthesized corpus",
        "dev_utterances": "validation utterances per language",
        "test_utterances": "test utterances per language",
        "low_resource": "languages that get train_utterances / low_factor utterances",
        "low_factor": "how much less training data the low-resource languages get",
        "systems": "systems to compare: shared, lasp, random, adapters",
        "base_steps": "shared pre-training steps of the base model before masks are searched",
        "base_minutes": "wall-time budget of that base training (null = none; makes it machine-dependent)",
        "base_threads": "threads of the base training",
        "parallel": "stage processes running side by side, one thread each",
        "report": "path of the markdown report (its figures go next to it)",
        "synthesize": "auto: synthesize a corpus only when run.corpus has no manifests; always; never (use yours)",
        "seeds": "run the whole comparison once per seed (in <output_dir>/seed-<s>) and report intervals across "
                 "seeds; empty = the recipe's seed only",
        "variants": "ablations: list of {name, overrides: {masks.*|pretrain.*|finetune.*: value}, pretrain: "
                    "true|false, score_on: base|shared (shared: masks scored with the CTC loss on the fine-tuned "
                    "shared system)}, each an extra lasp system on the same base model; with system: adapters, "
                    "an extra adapter baseline ({name, system: adapters, overrides: {adapters.*|finetune.*}})",
        "spread_from": "a benchmark's seeds_summary.json, or lasp:benchmark for the one shipped with lasp; the "
                       "report quotes its seed-to-seed spread (null: none)",
    },
    "AddLanguageConfig": {
        "rule": "what an added language trains: exclusive (its mask's weights no earlier language keeps + its "
                "own head; the others stay bit-identical), adapter (MMS adapters on its frozen sub-network + its "
                "head), shared (its whole mask, unmasked weights, head: the control, changes the others)",
        "pretrain": "pre-train the new language inside its mask (pretrain.* settings) before fine-tuning it",
    },
    "ContinualConfig": {
        "first": "languages the first system is trained on jointly (all of them in run.languages)",
        "add": "languages added afterwards with `lasp add-language`, one at a time in this order",
        "add_steps": "fine-tuning steps of each addition (learning rate and schedule: finetune.optim)",
        "add_pretrain": "pre-train each addition inside its mask first (add_language.pretrain)",
        "control": "also add the first of `add` with add_language.rule=shared: what the rule prevents",
        "base_on_first": "pre-train the base model on the first languages only (the added ones are new to it)",
        "pretrain": "language-adaptive pre-training of the first and the joint systems before fine-tuning",
    },
}


def help_for(cls: type, name: str) -> str:
    """The help line of field ``name`` of schema class ``cls`` (looked up through its bases); '' if none."""
    for klass in cls.__mro__:
        text = HELP.get(klass.__name__, {}).get(name)
        if text:
            return text
    return ""

"""The recipes' arguments: the dataclasses the recipes parse (besides TrainingArguments), what our defaults change
about unset TrainingArguments flags, and the checks of argument values made before any work. Imports the config and
the failure contract only; run_folder.py and recipe_utils.py build on it."""

import dataclasses
import math
import os
import sys
from dataclasses import dataclass, field
from pathlib import Path

import psutil
import torch
from transformers import HfArgumentParser, TrainingArguments
from transformers.utils import logging

from ..data.tokenization import TOKENIZER_KINDS
from ..failures import BadInput
from ..model.configuration_feedback import FeedbackConfig

logger = logging.get_logger(__name__)


@dataclass
class ModelArguments:
    """Model arguments both recipes take (finetune.py adds its own)."""

    model_name_or_path: str | None = field(default=None, metadata={
        "help": "Checkpoint to start from (finetune.py: an hf_feedback folder such as pretrain.py's output, a "
                "converted BERT, or any AutoModelForSequenceClassification checkpoint; pretrain.py: a "
                "FeedbackForMaskedLM to pretrain further). Without it a new FeedbackConfig model starts from scratch."})
    tokenizer_name: str | None = field(default=None, metadata={
        "help": "Tokenizer folder; defaults to the checkpoint's, or a WordPiece tokenizer trained on the training text."})
    tokenizer_vocab_size: int = field(default=16000, metadata={"help": "Vocabulary size when training a tokenizer."})
    tokenizer_kind: str = field(default="unigram", metadata={
        "help": "Kind of tokenizer to train: 'unigram' (multi-character pieces, i.e. words, learned from the corpus) "
                "or 'wordpiece' (BERT's; Chinese as single characters)."})
    config_overrides: str | None = field(default=None, metadata={
        "help": "FeedbackConfig fields for a new model, e.g. 'hidden_size=128,num_hidden_layers=2,hidden_act=swiglu'; "
                "on --model_name_or_path only the dropouts and check_input_values, e.g. 'hidden_dropout_prob=0.1'."})
    noam_warmup_steps: int | None = field(default=None, metadata={
        "help": "Use the Transformer paper's Noam schedule with this many warmup steps (learning_rate is its factor)."})
    overwrite_output_dir: bool = field(default=False, metadata={"help": "Write into a non-empty output_dir."})
    padding_free: bool = field(default=False, metadata={
        "help": "Train on padding-free batches (hf_feedback models): each batch's texts end to end in one row, "
                "no padding at all (hf_feedback.data.collators.DataCollatorForPaddingFree). Same losses as padded "
                "batches; on a GPU it skips the padding's work and the host reads that plan it (with "
                "--config_overrides check_input_values=false none is left)."})

    def __post_init__(self):
        if self.noam_warmup_steps is not None and self.noam_warmup_steps < 1:
            raise RecipeError(f"--noam_warmup_steps must be a positive number of steps, got {self.noam_warmup_steps}")
        check_choice(self, "tokenizer_kind", TOKENIZER_KINDS)


@dataclass
class FineTuningModelArguments(ModelArguments):
    """Model arguments of the recipes that train a task head (finetune.py, token_classification.py)."""

    attn_implementation: str | None = field(default=None, metadata={"help": "'sdpa' (default) or 'eager'."})
    trust_remote_code: bool = field(default=False, metadata={"help": "Allow checkpoints that ship their own code."})
    trim_vocabulary: bool | None = field(default=None, metadata={
        "help": "Keep only the checkpoint's pieces that the training texts use, its special tokens and every "
                "single character (hf_feedback.data.trim_vocabulary: the same outputs on those texts; a multilingual "
                "encoder's 250k pieces become ~24k on Chinese reviews, 118M parameters 31M). Default: on for a "
                "checkpoint with a SentencePiece unigram tokenizer whose training texts leave pieces unused; off "
                "otherwise and with --use_lora."})


EMBEDDING_INITS = ("cooccurrence", "random")


@dataclass
class NewModelArguments(FineTuningModelArguments):
    """Model arguments of the recipes whose new model starts its token embeddings from the training texts
    (finetune.py, token_classification.py; see `start_token_embeddings`)."""

    embedding_init: str | None = field(default=None, metadata={
        "help": "How a new model's token embeddings start: 'cooccurrence' (the default; how tokens co-occur in the "
                "training texts, factorised: PPMI-SVD, seconds) or 'random' (BERT's normal(0, 0.02)). A checkpoint "
                "(--model_name_or_path) brings its own."})

    def __post_init__(self):
        super().__post_init__()
        if self.embedding_init is not None:
            check_choice(self, "embedding_init", EMBEDDING_INITS)
            if self.model_name_or_path is not None:
                raise RecipeError(f"--embedding_init {self.embedding_init} sets how a new model's embeddings start; "
                                  f"--model_name_or_path {self.model_name_or_path} brings its own")


class RecipeError(BadInput):
    """Bad input found by a recipe's own checks, before any work started."""


def check_choice(args, name, choices):
    """`args.<name>` (the flag --<name>) is one of `choices`."""
    value = getattr(args, name)
    if value not in choices:
        raise RecipeError(f"--{name} must be one of {list(choices)}, got {value!r}")


def check_data_limits(data_args):
    """--max_train_samples / --max_eval_samples (at least 1 where given) and the recipe's length limits
    (--max_seq_length, or a sequence-to-sequence recipe's --max_source_length / --max_target_length: at least 4)."""
    for name in ("max_train_samples", "max_eval_samples"):
        if getattr(data_args, name, None) is not None and getattr(data_args, name) < 1:
            raise RecipeError(f"--{name} must be at least 1 (or left out for all rows), got {getattr(data_args, name)}")
    for name in ("max_seq_length", "max_source_length", "max_target_length"):
        if getattr(data_args, name, 4) < 4:
            raise RecipeError(f"--{name} must be at least 4 tokens, got {getattr(data_args, name)}")


def _has_accelerator():
    return torch.accelerator.is_available() if hasattr(torch, "accelerator") else torch.cuda.is_available()


# What both recipes change about an unset TrainingArguments flag. On a machine without an accelerator, use_cpu
# makes a multi-process launch (`accelerate launch --multi_gpu --num_processes 2` or the cpu_multiprocess.yaml
# config) train as one gloo process group instead of as independent copies.
COMMON_DEFAULTS = dict(
    max_grad_norm=1.0,
    weight_decay=0.01,
    train_sampling_strategy="group_by_length",
    eval_strategy="steps",
    save_strategy="steps",
    save_total_limit=2,
    logging_steps=20,
    logging_first_step=True,
    report_to="none",
    use_cpu=not _has_accelerator(),
    dataloader_pin_memory=_has_accelerator(),
    ddp_find_unused_parameters=False,
    # --push_to_hub uploads the finished run once (FeedbackTrainer.push_to_hub), not every checkpoint with its
    # training_args.bin.
    hub_strategy="end",
)


# The learning rate for fine-tuning a checkpoint (--model_name_or_path) when --learning_rate is not given: a new
# model's 1e-3 would wreck pretrained weights. Measured on multilingual-e5-small (benchmarks/RECIPE_SEARCH.md,
# `e5-full-1ep*`); transformers' own default is 5e-5.
CHECKPOINT_LEARNING_RATE = 5e-5


def flag_given(name, argv=None) -> bool:
    """Whether the command line (or the one JSON / YAML file of arguments) sets `--name`."""
    argv = sys.argv[1:] if argv is None else argv
    if len(argv) == 1 and argv[0].endswith((".json", ".yaml", ".yml")):
        import yaml  # a dependency of datasets, transformers and accelerate

        return name in (yaml.safe_load(Path(argv[0]).read_text()) or {})
    return any(arg == f"--{name}" or arg.startswith(f"--{name}=") for arg in argv)


def checkpoint_learning_rate(model_args, training_args, argv=None):
    """A checkpoint fine-tunes at CHECKPOINT_LEARNING_RATE unless --learning_rate says otherwise; says so."""
    if model_args.model_name_or_path is not None and not flag_given("learning_rate", argv):
        training_args.learning_rate = CHECKPOINT_LEARNING_RATE
        if training_args.process_index == 0:
            print(f"learning rate {CHECKPOINT_LEARNING_RATE:g}: fine-tuning a checkpoint (a new model's default is "
                  "higher; --learning_rate to choose)", flush=True)


def parse_args(dataclass_types, defaults, argv=None):
    """HfArgumentParser over `dataclass_types` (TrainingArguments last), with the recipe's own defaults.

    Every TrainingArguments flag still works; `defaults` only changes what an unset flag means.
    """
    parser = HfArgumentParser(dataclass_types)
    parser.set_defaults(**{**COMMON_DEFAULTS, **defaults})
    if argv is None and len(sys.argv) == 2 and sys.argv[1].endswith((".json", ".yaml", ".yml")):
        path = os.path.abspath(sys.argv[1])
        return parser.parse_json_file(path) if path.endswith(".json") else parser.parse_yaml_file(path)
    return parser.parse_args_into_dataclasses(args=argv)


def check_training_arguments(training_args: TrainingArguments):
    """Values the Trainer would only trip over mid-run (or accept and do nothing useful with), refused up front."""
    for name in ("per_device_train_batch_size", "per_device_eval_batch_size", "gradient_accumulation_steps"):
        if getattr(training_args, name) < 1:
            raise RecipeError(f"--{name} must be at least 1, got {getattr(training_args, name)}")
    if not training_args.learning_rate > 0:
        raise RecipeError(f"--learning_rate must be positive, got {training_args.learning_rate}")
    if training_args.max_steps < -1 or training_args.max_steps == 0:
        raise RecipeError(f"--max_steps must be a positive number of steps (or -1, the default: train "
                          f"--num_train_epochs), got {training_args.max_steps}")
    if training_args.max_steps <= 0 and training_args.num_train_epochs <= 0:
        raise RecipeError(
            f"nothing to train: --max_steps {training_args.max_steps} and --num_train_epochs "
            f"{training_args.num_train_epochs}; give a positive --num_train_epochs or --max_steps"
        )


def native_bf16() -> bool:
    """Whether this machine multiplies bfloat16 matrices natively: a CUDA GPU that supports them or, without a GPU,
    a CPU with AVX512-BF16 or AMX instructions (elsewhere torch emulates bf16 on the CPU, slower than float32)."""
    if torch.cuda.is_available():
        return torch.cuda.is_bf16_supported()
    return any(getattr(torch.cpu, probe, lambda: False)()
               for probe in ("_is_avx512_bf16_supported", "_is_amx_tile_supported"))


def check_precision(training_args: TrainingArguments):
    """fp16 needs a CUDA (or other accelerator) device; say so instead of failing inside autocast."""
    if training_args.fp16 and training_args.device.type == "cpu":
        raise RecipeError(
            "--fp16 needs a GPU, and this run is on the CPU. Drop --fp16 (full precision), or use --bf16 "
            "where the CPU supports it."
        )
    if training_args.bf16 and training_args.device.type == "cuda" and not torch.cuda.is_bf16_supported():
        raise RecipeError("--bf16 is not supported by this GPU; use --fp16 instead")


def check_cpu_threads(training_args: TrainingArguments):
    """Warn when a lone CPU process runs torch on fewer threads than the machine has cores.

    Without a config that says `use_cpu: true` (recipes/configs/cpu.yaml; `--cpu` alone is not enough, it also
    needs `--num_processes 1`) or --num_cpu_threads_per_process, `accelerate launch` starts the process with
    OMP_NUM_THREADS=1: training on one core of many. That is right for several processes per machine, which share
    the cores, and wrong for one. The user may have asked for it, so this says so rather than changing it.
    """
    if training_args.device.type != "cpu" or training_args.world_size > 1:
        return
    cores = psutil.cpu_count(logical=False) or os.cpu_count() or 1
    threads = torch.get_num_threads()
    if threads < cores:
        logger.warning(
            f"torch uses {threads} thread(s) on this {cores}-core CPU (OMP_NUM_THREADS="
            f"{os.environ.get('OMP_NUM_THREADS', 'unset')}): training leaves {cores - threads} core(s) idle. "
            "`accelerate launch` without a CPU config sets OMP_NUM_THREADS=1; "
            "`accelerate launch --config_file recipes/configs/cpu.yaml recipes/...` uses every core."
        )


def settle_evaluation(training_args, has_validation, best_metric, select_best=True, early_stopping_patience=0):
    """Decide evaluation, best-checkpoint selection and early stopping, and say what was switched off and why.

    Evaluation needs a validation split; without one it is off (rather than failing inside the Trainer after the
    tokenizer was written). `select_best` (--select_best_checkpoint) turns on --load_best_model_at_end, selecting
    by `best_metric` (the task's: macro F1 for classes, MSE for regression, entity F1 for tags) unless
    --metric_for_best_model is given, where checkpoints are saved at the evaluation steps. Errors (a loss, MSE,
    MAE) select the lowest, anything else the highest.
    """
    said = []
    if not has_validation and training_args.eval_strategy != "no":
        said.append("no validation split (--validation_file): evaluation during training is off")
        training_args.eval_strategy = "no"
        training_args.load_best_model_at_end = False
    if select_best and not training_args.load_best_model_at_end:
        if training_args.eval_strategy == "no":
            said.append("the model of the last step is kept (no evaluation to select a checkpoint by)")
        elif training_args.save_strategy != training_args.eval_strategy or (
                training_args.eval_strategy == "steps" and training_args.save_steps % training_args.eval_steps):
            saving = getattr(training_args.save_strategy, "value", training_args.save_strategy)  # an enum
            said.append(f"the model of the last step is kept: checkpoints are not saved at the evaluation steps "
                        f"(--save_strategy {saving} --save_steps {training_args.save_steps}, --eval_steps "
                        f"{training_args.eval_steps}), so none can be selected; give --save_steps the value of "
                        f"--eval_steps (or a multiple) to select one")
        else:
            training_args.load_best_model_at_end = True
            if training_args.metric_for_best_model is None:
                training_args.metric_for_best_model = best_metric
            if training_args.greater_is_better is None:
                training_args.greater_is_better = not training_args.metric_for_best_model.endswith(
                    ("loss", "mse", "mae"))
    if early_stopping_patience and not training_args.load_best_model_at_end:
        said.append(f"--early_stopping_patience {early_stopping_patience} is off: it needs the best "
                    "checkpoint selected by evaluation")
    if said and training_args.process_index == 0:
        print("; ".join(said), flush=True)


def _number(raw: str):
    for kind in (int, float):
        try:
            value = kind(raw)
        except ValueError:
            continue
        if math.isfinite(value):
            return value
    return raw


# What --config_overrides may change on --model_name_or_path: fields that change how the model trains, not what its
# weights are (the rest of a checkpoint's architecture is in its weights). E.g. pretraining without dropout (cramming,
# faster steps) and fine-tuning with it; and num_hidden_layers below the checkpoint's, which keeps its first layers
# (a shallower, faster model that starts from the pretrained lower layers, as RBT3 keeps RoBERTa's first three).
CHECKPOINT_OVERRIDES = ("hidden_dropout_prob", "attention_probs_dropout_prob", "classifier_dropout",
                        "check_input_values", "num_hidden_layers")


def checkpoint_config_overrides(overrides: str | None, config, checkpoint) -> dict:
    """--config_overrides for a checkpoint whose config is `config`: the CHECKPOINT_OVERRIDES fields given, as keyword
    arguments of from_pretrained; anything else is an error, not a silently ignored override."""
    values = parse_config_overrides(overrides)
    architectural = sorted(key for key in values if key not in CHECKPOINT_OVERRIDES)
    if architectural:
        raise RecipeError(f"--config_overrides {','.join(architectural)}: the architecture of --model_name_or_path "
                          f"{checkpoint} is in its weights; on a checkpoint only {list(CHECKPOINT_OVERRIDES)} can "
                          "change (the other fields apply to a new model)")
    missing = sorted(key for key in values if not hasattr(config, key))
    if missing:
        raise RecipeError(f"--config_overrides {','.join(missing)}: {checkpoint} is a {config.model_type!r} model, "
                          "whose config has no such field")
    layers = values.get("num_hidden_layers")
    if layers is not None and not 1 <= layers <= config.num_hidden_layers:
        raise RecipeError(f"--config_overrides num_hidden_layers={layers}: {checkpoint} has {config.num_hidden_layers} "
                          f"layers; a checkpoint can keep its first 1 to {config.num_hidden_layers}, not add new ones")
    return values


def parse_config_overrides(overrides: str | None) -> dict:
    """'hidden_size=128,num_hidden_layers=2,hidden_act=swiglu' -> typed dict of FeedbackConfig fields."""
    if not overrides:
        return {}
    fields = {f.name: f for f in dataclasses.fields(FeedbackConfig)}
    defaults = FeedbackConfig()
    result, previous = {}, None
    for item in overrides.split(","):
        key, sep, raw = item.partition("=")
        key = key.strip()
        if not sep and isinstance(getattr(defaults, previous, None), list):
            raise RecipeError(f"--config_overrides {previous}=...,{item}: join the values of {previous} with '+' "
                              f"(commas separate the overrides), e.g. {previous}=2+3")
        previous = key
        if not sep or key not in fields:
            raise RecipeError(
                f"--config_overrides: {item!r} is not FIELD=VALUE with a FeedbackConfig field; fields are "
                f"{sorted(n for n in fields if not n.startswith('_'))}"
            )
        current = getattr(defaults, key)
        raw = raw.strip()
        if raw.lower() == "none":
            result[key] = None
            continue
        if isinstance(current, bool):
            if raw.lower() not in ("1", "true", "yes", "0", "false", "no"):
                raise RecipeError(f"--config_overrides {key}={raw}: {key} is true or false")
            value = raw.lower() in ("1", "true", "yes")
        elif isinstance(current, (int, float)):
            try:
                value = type(current)(raw)
                if not math.isfinite(value):
                    raise ValueError(raw)
            except ValueError:
                raise RecipeError(f"--config_overrides {key}={raw}: {key} is a finite number ({type(current).__name__}), "
                                  f"e.g. {key}={current}") from None
        elif current is None:  # an optional number (classifier_dropout, eos_token_id, ...)
            value = _number(raw)
        elif isinstance(current, list):  # a list of integers, joined by "+" (commas separate the overrides)
            try:
                value = [int(part) for part in raw.split("+")]
            except ValueError:
                raise RecipeError(f"--config_overrides {key}={raw}: {key} is a list of integers joined by '+', "
                                  f"e.g. {key}={'+'.join(map(str, current))}") from None
        else:
            value = raw
        result[key] = value
    return result

"""Pieces the recipes share: argument parsing with our defaults, early checks, and clear failures."""

import atexit
import dataclasses
import json
import math
import os
import pickle
import socket
import sys
import time
import zipfile
from dataclasses import dataclass, field
from pathlib import Path

import psutil
import torch
from safetensors import SafetensorError, safe_open
from transformers import AutoTokenizer, HfArgumentParser, TrainingArguments, set_seed
from transformers.utils import logging

from .collators import DataCollatorForPaddingFree
from .configuration_feedback import FeedbackConfig
from .failures import BadInput, bad_input_exits  # noqa: F401 (the recipes import it from here)
from .tokenization import TOKENIZER_KINDS, cooccurrence_vectors, token_characters, train_tokenizer
from .trim_vocabulary import is_unigram, pieces_to_keep, trim_vocabulary

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
                "no padding at all (hf_feedback.collators.DataCollatorForPaddingFree). Same losses as padded batches; "
                "on a GPU it skips the padding's work and the host reads that plan it (with --config_overrides "
                "check_input_values=false none is left)."})

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
                "single character (hf_feedback.trim_vocabulary: the same outputs on those texts; a multilingual "
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


def training_collator(padded, model, labels, padding_free):
    """The collator of training batches: `padded` (the recipe's usual one), or with --padding_free the packing one
    for the same task (`labels` as DataCollatorForPaddingFree takes them; a masked-LM collator's masking is kept)."""
    if not padding_free:
        return padded
    model_type = getattr(model.config, "model_type", None)
    if getattr(model.config, "is_decoder", False):
        raise RecipeError("--padding_free: a decoder (--objective clm) takes padded batches")
    if model_type not in ("feedback",):
        raise RecipeError(f"--padding_free needs an hf_feedback model, which attends within each packed text; this "
                          f"checkpoint is a {model_type!r} model")
    return DataCollatorForPaddingFree(labels=labels, mlm=padded if labels is None else None)


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


def claim_run(set_up, training_args, overwrite_output_dir):
    """The checks every recipe makes before any work, in order: the output_dir (removed again if set-up fails, locked
    against a second run, not overwritten silently, and with --overwrite_output_dir emptied of the older run once
    set-up succeeds), precision, training arguments, CPU threads."""
    set_up.will_create(training_args.output_dir)
    claim_output_dir(training_args)
    check_output_dir(training_args, overwrite_output_dir)
    if overwrite_output_dir and training_args.resume_from_checkpoint is None and training_args.process_index == 0:
        set_up.will_replace(training_args.output_dir, keep=(LOCK_FILE,))  # an older run's checkpoints go too
    check_precision(training_args)
    check_training_arguments(training_args)
    check_cpu_threads(training_args)


def begin_run(training_args):
    """After a recipe's own checks: the checkpoint to resume from (or None), the process said, the seed set."""
    resume = resolve_resume(training_args)
    print(f"process rank {training_args.process_index} of {training_args.world_size} on {training_args.device}",
          flush=True)
    set_seed(training_args.seed)
    return resume


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


# What a checkpoint folder must hold to resume from: the training state, the optimizer and its schedule, and weights.
_CHECKPOINT_STATE = ("trainer_state.json", "optimizer.pt", "scheduler.pt")
_CHECKPOINT_WEIGHTS = ("model.safetensors", "adapter_model.safetensors", "pytorch_model.bin")


def _missing_from_checkpoint(folder: Path) -> list[str]:
    missing = [name for name in _CHECKPOINT_STATE if not (folder / name).is_file()]
    if not any((folder / name).is_file() for name in _CHECKPOINT_WEIGHTS):
        missing.append("model weights")
    return missing


def _damaged_in_checkpoint(folder: Path) -> list[str]:
    """The files of a checkpoint that cannot be read, each with why; cheap checks that catch a copy or a save cut
    short: JSON parses, a safetensors header covers its file, a torch.save zip archive has its central directory and
    its members' checksums hold (a file that is not such an archive must load as a legacy torch.save pickle)."""
    damaged = []
    for path in sorted(folder.iterdir()):
        try:
            if path.suffix == ".json":
                json.loads(path.read_text())
            elif path.suffix == ".safetensors":
                with safe_open(path, "pt"):
                    pass
            elif path.suffix in (".pt", ".pth", ".bin") and _is_torch_zip(path):
                with zipfile.ZipFile(path) as archive:
                    bad = archive.testzip()
                if bad is not None:
                    raise ValueError(f"{bad} fails its checksum")
            elif path.suffix in (".pt", ".pth", ".bin"):
                torch.load(path, map_location="cpu", weights_only=True)
        except (OSError, ValueError, SafetensorError, zipfile.BadZipFile, pickle.UnpicklingError, EOFError,
                RuntimeError) as error:
            damaged.append(f"{path.name} ({str(error).splitlines()[0] if str(error) else type(error).__name__})")
    return damaged


def _is_torch_zip(path: Path) -> bool:
    # torch.save writes a zip archive (since torch 1.6); a legacy pickle file has no central directory to check.
    with open(path, "rb") as f:
        return f.read(4) == b"PK\x03\x04"


def _unusable(folder: Path) -> str | None:
    """Why a checkpoint folder cannot be resumed from, or None."""
    missing = _missing_from_checkpoint(folder)
    if missing:
        return f"no {', '.join(missing)}"
    damaged = _damaged_in_checkpoint(folder)
    return f"damaged: {', '.join(damaged)}" if damaged else None


def resolve_resume(training_args: TrainingArguments):
    """The checkpoint folder `--resume_from_checkpoint` names, checked before any work.

    A run whose results are saved and whose checkpoint has trained all its steps is refused: nothing to do.
    `last` (or `true`) takes the newest complete `checkpoint-N` in output_dir: a run killed while saving leaves a
    folder without its optimizer, schedule or weights, which is skipped with a warning naming it (resuming from it
    would crash, or silently restart the optimizer and the learning-rate schedule). A named folder must be complete.
    """
    value = training_args.resume_from_checkpoint
    if value is None:
        return None
    folder = _resumable_folder(training_args, value)
    state = json.loads((Path(folder) / "trainer_state.json").read_text())
    steps = training_args.max_steps if training_args.max_steps > 0 else state.get("max_steps", 0)
    if state.get("global_step", 0) >= steps and (Path(training_args.output_dir) / "train_results.json").is_file():
        # Trainer would train one step past the end, save a checkpoint and rewrite the finished run's results.
        raise RecipeError(f"--resume_from_checkpoint {value}: {folder} already trained its {steps} steps and the "
                          "run's results are saved: nothing to do (pass a larger --max_steps to train further)")
    return folder


def _resumable_folder(training_args, value):
    if value.lower() in ("last", "true"):
        output_dir = Path(training_args.output_dir)
        folders = sorted((p for p in output_dir.glob("checkpoint-*") if p.is_dir() and p.name[11:].isdigit()),
                         key=lambda p: int(p.name[11:]), reverse=True)
        for folder in folders:
            problem = _unusable(folder)
            if problem is None:
                return str(folder)
            logger.warning(f"--resume_from_checkpoint last: skipping {folder} ({problem}; a run killed while "
                           "saving?)")
        raise RecipeError(
            f"--resume_from_checkpoint {value}: {output_dir} has no complete checkpoint-N folder"
            + (f" ({len(folders)} incomplete or damaged)" if folders else "") + "; start a new run without it"
        )
    if not Path(value).is_dir():
        raise RecipeError(f"--resume_from_checkpoint {value}: no such checkpoint folder")
    problem = _unusable(Path(value))
    if problem:
        raise RecipeError(f"--resume_from_checkpoint {value} cannot be resumed from: {problem}")
    return value


def check_text_classifier(config, folder):
    """Refuse, before any work, a checkpoint that AutoModelForSequenceClassification cannot fine-tune on text."""
    from transformers.models.auto.modeling_auto import MODEL_FOR_SEQUENCE_CLASSIFICATION_MAPPING

    if getattr(config.get_text_config(), "vocab_size", None) is None:
        raise RecipeError(
            f"--model_name_or_path {folder} holds a {config.model_type!r} model, which does not read text (it has no "
            "vocabulary); fine-tune a text encoder: an hf_feedback checkpoint, a converted BERT, or another "
            "AutoModelForSequenceClassification text model")
    remote = "AutoModelForSequenceClassification" in (getattr(config, "auto_map", None) or {})
    if type(config) not in MODEL_FOR_SEQUENCE_CLASSIFICATION_MAPPING and not remote:
        raise RecipeError(
            f"--model_name_or_path {folder} holds a {config.model_type!r} model, which has no sequence-classification "
            "head in transformers (AutoModelForSequenceClassification); choose a checkpoint whose model type has one")


def check_vocabulary(config, tokenizer):
    """Every token id the tokenizer makes must have an embedding row."""
    vocab_size = config.get_text_config().vocab_size
    if vocab_size < len(tokenizer):
        raise RecipeError(f"the tokenizer has {len(tokenizer)} tokens but the model only vocab_size="
                          f"{vocab_size}: drop a vocab_size override, or pass a tokenizer that matches the model")


def check_masked_lm(config, folder, decoder=False):
    """pretrain.py continues pretraining of hf_feedback models only: encoders (masked LM, ELECTRA), or with
    `decoder` a causal LM."""
    if config.model_type == FeedbackConfig.model_type and config.is_decoder != decoder:
        wanted, got = ("a causal LM (is_decoder)", "an encoder") if decoder else ("an encoder", "a causal LM (decoder)")
        raise RecipeError(f"--model_name_or_path {folder} holds {got}; this objective continues {wanted}")
    if config.model_type != FeedbackConfig.model_type:
        raise RecipeError(
            f"--model_name_or_path {folder} holds a {config.model_type!r} model ({', '.join(config.architectures or [])}"
            "); pretrain.py continues hf_feedback encoders (FeedbackForMaskedLM, or another hf_feedback head whose "
            "encoder it reuses); convert a BERT first with `python -m hf_feedback.convert`")


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


LOCK_FILE = ".hf_feedback.lock"


def claim_output_dir(training_args: TrainingArguments):
    """Hold output_dir for this run's life, so that a second run into the same folder is refused at once.

    The main process creates output_dir/.hf_feedback.lock atomically (O_EXCL: of two runs started together exactly
    one wins) with its pid, host and command, and removes it when the process exits. A lock left by a killed run
    (its pid is gone on this host) is taken over with a warning. Call before anything is written to output_dir.
    """
    if training_args.process_index != 0:
        return
    folder = Path(training_args.output_dir)
    if folder.exists() and not folder.is_dir():
        raise RecipeError(f"--output_dir {folder} is a file, not a folder; choose another --output_dir")
    folder.mkdir(parents=True, exist_ok=True)
    lock = folder / LOCK_FILE
    me = {"pid": os.getpid(), "host": socket.gethostname(), "started": time.strftime("%Y-%m-%d %H:%M:%S"),
          "command": " ".join(sys.argv)}
    while True:
        try:
            descriptor = os.open(lock, os.O_CREAT | os.O_EXCL | os.O_WRONLY)
            break
        except FileExistsError:
            try:
                holder = json.loads(lock.read_text())
            except (OSError, ValueError):
                holder = {}  # being written this instant, or damaged: read it as held by an unknown run
            same_host = holder.get("host") == me["host"]
            # Our own pid: an earlier run in this same process (a notebook, a test) that ended without exiting.
            alive = not same_host or (holder.get("pid") != me["pid"] and psutil.pid_exists(holder.get("pid", -1)))
            if holder and alive:
                raise RecipeError(
                    f"output_dir {folder} is in use by another run (pid {holder.get('pid')} on {holder.get('host')}, "
                    f"started {holder.get('started')}: {holder.get('command')}). Wait for it, or choose another "
                    f"--output_dir; if no such run is alive, delete {lock}."
                )
            if not holder:
                raise RecipeError(f"output_dir {folder} is locked by {lock}, which cannot be read; if no run is "
                                  "using the folder, delete it.")
            logger.warning(f"taking over {lock} left by run pid {holder.get('pid')}, which is no longer alive")
            lock.unlink(missing_ok=True)
    with os.fdopen(descriptor, "w") as f:
        json.dump(me, f)
    atexit.register(_release_lock, lock, me["pid"])


def release_output_dir(training_args: TrainingArguments):
    """The end of a run: give output_dir back (the lock is also removed when the process exits)."""
    if training_args.process_index == 0:
        _release_lock(Path(training_args.output_dir) / LOCK_FILE, os.getpid())


def _release_lock(lock: Path, pid: int):
    try:
        if json.loads(lock.read_text()).get("pid") == pid:
            lock.unlink()
    except (OSError, ValueError):
        pass


def check_output_dir(training_args: TrainingArguments, overwrite: bool):
    """Refuse to write into a non-empty output_dir unless resuming or told to overwrite (this run's lock aside)."""
    output_dir = Path(training_args.output_dir)
    if training_args.resume_from_checkpoint is not None or overwrite:
        return
    if output_dir.is_dir() and any(path.name != LOCK_FILE for path in output_dir.iterdir()):
        raise RecipeError(
            f"output_dir {output_dir} exists and is not empty. Pass --overwrite_output_dir to replace its contents, "
            "--resume_from_checkpoint last to continue its run, or choose another --output_dir."
        )


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


def sample_splits(raw, data_args, seed):
    """`raw` (a DatasetDict) with train cut to --max_train_samples and validation/test to --max_eval_samples."""
    raw["train"] = sample(raw["train"], data_args.max_train_samples, seed)
    for split in ("validation", "test"):
        if split in raw:
            raw[split] = sample(raw[split], data_args.max_eval_samples, seed)
    return raw


def check_resume_fits(model, resume):
    """The checkpoint to resume from must hold this model's weights, shape for shape: a run resumed with other
    --config_overrides or data (another label count) is refused, naming what differs, before any work."""
    weights = Path(resume) / "model.safetensors"
    if not weights.is_file():
        return  # an adapter or a .bin checkpoint: Trainer's own checks
    shapes = {name: tuple(tensor.shape) for name, tensor in model.state_dict().items()}
    with safe_open(weights, "pt") as saved:
        misfits = [f"{name} {tuple(saved.get_slice(name).get_shape())} there, {shapes[name]} here"
                   for name in saved.keys() if name in shapes and tuple(saved.get_slice(name).get_shape()) != shapes[name]]
    if misfits:
        config = json.loads((Path(resume) / "config.json").read_text()) if (Path(resume) / "config.json").is_file() else {}
        ours = json.loads(model.config.to_json_string(use_diff=False))  # as saved: keys of id2label are strings
        fields = [f"{k}={config[k]!r} there, {ours[k]!r} here" for k in sorted(config) if k in ours
                  and config[k] != ours[k] and k not in ("architectures", "dtype", "transformers_version", "_name_or_path")]
        raise RecipeError(f"--resume_from_checkpoint {resume} does not fit this model ({'; '.join(misfits[:2])}"
                          + (f"; config: {', '.join(fields[:5])}" if fields else "") + "): resume with the "
                          "--config_overrides, checkpoint and data of the run that wrote it")


def train_and_evaluate(trainer, tokenized, resume, after_training=None):
    """Train (resuming from `resume`), evaluate on validation and predict the test split where `tokenized` has
    them, saving each split's metrics and the trainer state; returns the test prediction (None without test).
    `after_training(trainer)`, if given, runs between training and the final evaluation."""
    if resume is not None:
        with bad_input_exits():
            check_resume_fits(trainer.model, resume)
    train_result = trainer.train(resume_from_checkpoint=resume)
    trainer.save_metrics("train", train_result.metrics)
    if after_training is not None:
        after_training(trainer)
    if "validation" in tokenized:
        trainer.save_metrics("eval", trainer.evaluate())
    prediction = None
    if "test" in tokenized:
        prediction = trainer.predict(tokenized["test"], metric_key_prefix="test")
        prediction.metrics["test_samples"] = len(prediction.predictions)  # gathered from every process
        trainer.save_metrics("test", prediction.metrics)
    trainer.save_state()
    return prediction


def print_saved(output_dir):
    """Say what a finished run left in `output_dir` (its lock aside)."""
    saved = sorted(p.name for p in Path(output_dir).iterdir() if p.name != LOCK_FILE)
    print(f"saved to {output_dir}: {json.dumps(saved)}")


def sample(dataset, limit, seed):
    """A random subset of `limit` rows (all rows when limit is None); random so that sorted data stays balanced."""
    if limit is None or limit >= len(dataset):
        return dataset
    return dataset.shuffle(seed=seed).select(range(limit))


def load_or_train_tokenizer(source, texts, vocab_size, training_args, trust_remote_code=False, kind="wordpiece"):
    """The tokenizer at `source`, or a tokenizer of `kind` trained on `texts` and saved to output_dir.

    Training happens on the main process first; the other processes of a distributed run then load the saved
    copy, so they all share one vocabulary. A resumed run reuses the tokenizer its output_dir already holds.
    """
    if source:
        config = {}
        if (Path(source) / "config.json").is_file():  # AutoTokenizer reads it first: say when it is the problem
            try:
                config = json.loads((Path(source) / "config.json").read_text())
            except ValueError as error:
                raise RecipeError(f"{source}: config.json is damaged ({error}); copy the checkpoint again") from None
        try:
            return AutoTokenizer.from_pretrained(source, trust_remote_code=trust_remote_code)
        except (OSError, ValueError) as error:
            if not Path(source).exists():
                raise RecipeError(f"{source}: no such folder (--model_name_or_path / --tokenizer_name), nor a Hub "
                                  "repository that could be fetched") from None
            if config and "vocab_size" not in config and "vocab_size" not in (config.get("text_config") or {}):
                raise RecipeError(f"{source} holds a {config.get('model_type')!r} model, which does not read text "
                                  "(it has no vocabulary); choose a text model") from None
            raise RecipeError(f"{source} has no tokenizer that loads ({str(error).splitlines()[0]}); a model folder "
                              "without one needs --tokenizer_name naming a folder that has one") from error
    folder = Path(training_args.output_dir)
    resuming = training_args.resume_from_checkpoint is not None and (folder / "tokenizer.json").is_file()
    with training_args.main_process_first(desc="training the tokenizer"):
        if training_args.process_index == 0 and not resuming:
            train_tokenizer(texts, vocab_size=vocab_size, kind=kind).save_pretrained(folder)
        return AutoTokenizer.from_pretrained(folder)


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


def new_model(model_class, tokenizer, fields: dict, config_overrides: str | None, attn_implementation=None,
              characters: bool = False):
    """A new `model_class` sized for `tokenizer`: the recipe's `fields`, then the user's --config_overrides. With
    `characters`, each token's embedding adds its characters' (FeedbackConfig.char_vocab_size, counted from the
    tokenizer by `token_characters`); `--config_overrides char_vocab_size=0` turns that off, any other value of
    it or of chars_per_token is refused (they are the tokenizer's to say)."""
    overrides = parse_config_overrides(config_overrides)
    table = None
    if characters and overrides.get("char_vocab_size") != 0:
        for name in ("char_vocab_size", "chars_per_token"):
            if name in overrides:
                raise RecipeError(f"--config_overrides {name}={overrides[name]}: a new model counts its characters "
                                  "from the tokenizer; only char_vocab_size=0 (no character embeddings) can be set")
        table, char_vocab_size = token_characters(tokenizer)
        fields = {**fields, "char_vocab_size": char_vocab_size, "chars_per_token": table.shape[1]}
    config = FeedbackConfig(**{"vocab_size": len(tokenizer), "pad_token_id": tokenizer.pad_token_id, **fields,
                               **overrides})
    check_vocabulary(config, tokenizer)
    model = model_class._from_config(config, attn_implementation=attn_implementation)
    if table is not None:
        model.set_token_characters(table)
    return model


def init_embeddings_from_cooccurrence(model, tokenizer, texts, window: int = 5) -> int:
    """Start a new `model`'s token embeddings from how tokens co-occur in `texts` (`cooccurrence_vectors`, PPMI-SVD;
    seconds on tens of thousands of texts): the row of each token that occurs becomes its vector scaled to the mean
    norm of the random rows it replaces; special tokens and tokens without a vector keep their random rows. Returns
    the number of rows set. Labels are not used, only the texts the model is about to train on."""
    embeddings, texts = model.get_input_embeddings().weight, list(texts)

    def sequences(batch=10_000):
        for start in range(0, len(texts), batch):
            yield from tokenizer(texts[start:start + batch], add_special_tokens=False, verbose=False)["input_ids"]

    vectors, counts = cooccurrence_vectors(sequences(), embeddings.shape[0], embeddings.shape[1], window)
    norms = vectors.norm(dim=1)
    chosen = (counts > 0) & (norms > 0)
    chosen[[i for i in tokenizer.all_special_ids if i < len(chosen)]] = False
    with torch.no_grad():
        scale = embeddings.norm(dim=1).mean()
        embeddings[chosen] = (vectors[chosen] / norms[chosen, None] * scale).to(embeddings.dtype)
    return int(chosen.sum())


def start_token_embeddings(model_args, model, tokenizer, texts, training_args):
    """A new model's token embeddings start from their co-occurrences in `texts` (`init_embeddings_from_cooccurrence`)
    unless --embedding_init random; a checkpoint's stay, and a resumed run loads the checkpoint's weights over them
    anyway, so it skips the work. Says what it did."""
    if (model_args.model_name_or_path is not None or model_args.embedding_init == "random"
            or training_args.resume_from_checkpoint is not None):
        return
    start = time.perf_counter()
    rows = init_embeddings_from_cooccurrence(model, tokenizer, texts)
    if training_args.process_index == 0:
        print(f"token embeddings: {rows} of {model.config.vocab_size} start from their co-occurrences in the "
              f"{len(texts)} training texts ({time.perf_counter() - start:.1f} s; --embedding_init random "
              "for random ones)", flush=True)


def trim_checkpoint_vocabulary(model_args, model, tokenizer, texts, training_args, lora=False):
    """(model, tokenizer), trimmed to `texts` as --trim_vocabulary says (see its help); says what it did. With
    `lora` the vocabulary stays whole: the adapter is saved for the checkpoint as it is on disk (and LoRA trains no
    embedding row, so the whole vocabulary costs it no optimizer state)."""
    if model_args.model_name_or_path is None or model_args.trim_vocabulary is False:
        return model, tokenizer
    if lora:
        if model_args.trim_vocabulary:
            raise RecipeError("--trim_vocabulary with --use_lora: the adapter is saved for "
                              f"{model_args.model_name_or_path} as it is, with every piece; leave the flag out")
        return model, tokenizer
    if model_args.trim_vocabulary is None and not is_unigram(tokenizer):
        return model, tokenizer
    before = model.config.vocab_size
    keep = pieces_to_keep(tokenizer, texts)
    if model_args.trim_vocabulary is None and len(keep) == before:
        return model, tokenizer
    start, parameters = time.perf_counter(), model.num_parameters()
    model, tokenizer = trim_vocabulary(model, tokenizer, texts, keep)
    if training_args.process_index == 0:
        print(f"vocabulary: kept {len(keep):,} of {before:,} pieces (those of the {len(texts):,} training texts, the "
              f"special tokens and every single character; {parameters:,} parameters -> {model.num_parameters():,}, "
              f"{time.perf_counter() - start:.1f} s; --trim_vocabulary false keeps all)", flush=True)
    return model, tokenizer

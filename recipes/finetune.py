"""Fine-tune an hf_feedback encoder (or any sequence-classification checkpoint) for text classification.

    accelerate launch recipes/finetune.py                       # bundled Chinese reviews, model from scratch
    accelerate launch recipes/finetune.py --model_name_or_path outputs/pretrain --use_lora --merge_lora
    accelerate launch --config_file recipes/configs/cpu.yaml recipes/finetune.py        # CPU: every core
    accelerate launch --config_file recipes/configs/cpu_multiprocess.yaml recipes/finetune.py \
        --per_device_train_batch_size 16                                                # CPU: 2 processes

Every `TrainingArguments` flag works (`--num_train_epochs`, `--max_steps`, `--fp16`, `--report_to`,
`--resume_from_checkpoint`, `--push_to_hub`, ...); the defaults below only change what an unset flag means.
The run: parse -> data -> tokenizer -> model (+ LoRA) -> Trainer -> train -> evaluate -> save.
"""

import json
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from transformers import (
    AutoConfig,
    AutoModelForSequenceClassification,
    DataCollatorWithPadding,
    EarlyStoppingCallback,
    TrainingArguments,
)

from hf_feedback import FeedbackForSequenceClassification
from hf_feedback.data.tokenization import TRUNCATIONS, tokenize_dataset
from hf_feedback.data.user_data import all_texts, label_kind, load_text_classification_data, multi_hot, text_columns
from hf_feedback.failures import bad_input_exits, load_pretrained
from hf_feedback.integrations.sentence_embeddings import write_sentence_transformers_files
from hf_feedback.reports.model_card import write_model_card
from hf_feedback.reports.plots import plot_confusion_matrix, plot_regression, plot_training_curves
from hf_feedback.tasks.metrics import PROBLEM_TYPES, build_compute_metrics
from hf_feedback.training.default_start import START_CHOICES, choose_start
from hf_feedback.training.lora import apply_lora
from hf_feedback.training.recipe_arguments import (
    NewModelArguments,
    RecipeError,
    check_choice,
    check_data_limits,
    checkpoint_config_overrides,
    checkpoint_learning_rate,
    parse_args,
    settle_evaluation,
)
from hf_feedback.training.recipe_utils import (
    check_text_classifier,
    check_vocabulary,
    load_or_train_tokenizer,
    new_model,
    sample_splits,
    start_token_embeddings,
    train_and_evaluate,
    training_collator,
    trim_checkpoint_vocabulary,
)
from hf_feedback.training.run_folder import begin_run, claim_run, print_saved, release_output_dir
from hf_feedback.training.trainer import CLASS_WEIGHTINGS, FeedbackTrainer, WeightedCrossEntropy, class_weights


@dataclass
class ClassifierModelArguments(NewModelArguments):
    start: str = field(default="auto", metadata={
        "help": "Where a run without --model_name_or_path starts: 'auto' (multilingual-e5-small, converted once into "
                "the cache, when hf_feedback[e5] is installed and the training texts hold at most 200,000 of its "
                "tokens, ~4,000 short reviews; a new model otherwise, or when other flags ask for one: "
                "hf_feedback.training.default_start), 'e5' or 'scratch'."})

    def __post_init__(self):
        super().__post_init__()
        check_choice(self, "start", START_CHOICES)


@dataclass
class DataArguments:
    dataset_name: str | None = field(default=None, metadata={"help": "A dataset on the Hub (needs network)."})
    dataset_config_name: str | None = None
    train_file: str | None = field(default=None, metadata={"help": "csv, json, jsonl or parquet."})
    validation_file: str | None = None
    test_file: str | None = None
    text_column: str = "text"
    label_column: str = "label"
    text_pair_column: str | None = field(default=None, metadata={
        "help": "A second text column: each row becomes the pair [CLS] text [SEP] text_pair [SEP] (token_type_ids "
                "0 then 1), cut longest first to --max_seq_length (NLI, paraphrase, question-answer matching)."})
    max_seq_length: int = field(default=128, metadata={"help": "Longer texts are truncated to this many tokens."})
    truncation: str = field(default="head", metadata={
        "help": "Which tokens of a longer text to keep: 'head' (the first max_seq_length) or 'head_tail' (the first "
                "quarter and the last three quarters, for long texts whose ending matters)."})
    select_best_checkpoint: bool = field(default=True, metadata={
        "help": "Keep the checkpoint with the best validation macro F1 (--load_best_model_at_end with "
                "--metric_for_best_model f1, unless you set them), when evaluation and saving happen at the same steps."})
    early_stopping_patience: int = field(default=0, metadata={
        "help": "Stop when the selection metric has not improved for this many evaluations (0, the default: train "
                "every epoch); the best checkpoint is kept either way."})
    problem_type: str | None = field(default=None, metadata={
        "help": "'regression' predicts a number (MSE loss) from integer labels too, e.g. star ratings; default: "
                "from the labels (numbers with a fraction: regression; names or integer ids: classes)."})
    class_weighting: str = field(default="none", metadata={
        "help": "Loss weights per class against imbalanced labels: 'none', 'sqrt' or 'balanced' (n / (k * n_class))."})
    max_train_samples: int | None = None
    max_eval_samples: int | None = None

    def __post_init__(self):
        check_choice(self, "truncation", TRUNCATIONS)
        if self.text_pair_column is not None and self.truncation != "head":
            raise RecipeError(f"--truncation {self.truncation} applies to single texts; with --text_pair_column the "
                              "pair is cut longest first")
        check_choice(self, "class_weighting", CLASS_WEIGHTINGS)
        if self.early_stopping_patience < 0:
            raise RecipeError(f"--early_stopping_patience must be 0 (off) or more, got {self.early_stopping_patience}")
        check_data_limits(self)


@dataclass
class LoraArguments:
    use_lora: bool = field(default=False, metadata={"help": "Train LoRA adapters (peft) instead of all weights."})
    lora_r: int = 8
    lora_alpha: int = 16
    lora_dropout: float = 0.1
    lora_target_modules: str | None = field(default=None, metadata={
        "help": "Comma-separated module names; default: attention projections and feed-forward layers."})
    merge_lora: bool = field(default=False, metadata={
        "help": "Save the adapter merged into the base weights: a plain model that loads without peft."})


DEFAULTS = dict(
    output_dir="outputs/finetune",
    # Not length-grouped batches (the pretraining default): in review data length carries the label (the longest
    # tenth of the bundled reviews is 72% positive, the tenth below the median 41%), so length-grouped batches are
    # label-skewed and a model from scratch learns the batch's prior first: over a 200-step probe, grouped batches
    # left chance far later and ended 6.5 test points behind random ones (screen-* rows of RECIPE_SEARCH.md).
    # The model removes padding before every per-token operation, so random batches cost only ~10% more time.
    train_sampling_strategy="random",
    # 2 epochs with the learning rate decaying to 0, evaluated every 100 steps, keeping the checkpoint with the best
    # validation macro F1 (which weighs a minority class as much as a majority one; --select_best_checkpoint).
    # Stopping early (--early_stopping_patience) ended runs while the learning rate was still high, and their best
    # checkpoints tested worse than those of runs that annealed (benchmarks/RECIPE_SEARCH.md).
    num_train_epochs=2,
    per_device_train_batch_size=32,
    per_device_eval_batch_size=64,
    # With pre-norm layers (NEW_MODEL below) 1e-3 trains a new model faster than 5e-4 with post-norm. A checkpoint
    # (--model_name_or_path) fine-tunes at recipe_utils.CHECKPOINT_LEARNING_RATE unless --learning_rate is given.
    learning_rate=1e-3,
    warmup_steps=0.1,
    eval_steps=100,
    save_steps=100,
)
# What a new model (no --model_name_or_path) changes from FeedbackConfig's BERT-like defaults; --config_overrides
# wins. Pre-norm: the residual stream stays an identity path at every depth, so a model from scratch trains at a
# higher learning rate without the plateaus post-norm showed. Rotary positions: +0.65 test points over learned
# absolute ones over three seeds (benchmarks/RECIPE_SEARCH.md, `rotary` against `absolute`, the earlier default),
# and what pretrain.py gives a new model too. load_model also
# gives a new model character embeddings (FeedbackConfig.char_vocab_size, counted from the tokenizer): the unigram
# vocabulary makes whole words and phrases single pieces ('很干净'), most seen a handful of times, and each piece's
# embedding then adds the mean of its characters', which every other piece trains too (`chars` against `rotary` in
# benchmarks/RECIPE_SEARCH.md; --config_overrides char_vocab_size=0 turns them off). pretrain.py does not add them
# yet: pretraining with them is not measured. main() then starts the token embeddings from how tokens co-occur in
# the training texts (--embedding_init; `cooccurrence` against `chars` in benchmarks/RECIPE_SEARCH.md). Two layers,
# not FeedbackConfig's 6: with those embeddings a model from scratch learns no more from depth on its labels alone
# (test accuracy over three seeds: 2 layers 0.845 in 3 minutes, 3 layers 0.841, 6 layers 0.833 in 9; `layers2`,
# `layers3` and `cooccurrence` in benchmarks/RECIPE_SEARCH.md, which also holds the long, imbalanced and sentence-pair
# cases), and every step costs a third. pretrain.py keeps FeedbackConfig's 6.
NEW_MODEL = dict(norm_position="pre", position_embedding_type="rotary", num_hidden_layers=2)


def load_model(model_args, tokenizer, label_names, max_seq_length, problem_type):
    """A new model or the checkpoint's, with a head of one output per name in `label_names` (regression: one
    name, the number's)."""
    num_labels = len(label_names)
    labels = dict(id2label=dict(enumerate(label_names)), label2id={n: i for i, n in enumerate(label_names)},
                  problem_type=problem_type)
    if model_args.model_name_or_path is None:
        return new_model(FeedbackForSequenceClassification, tokenizer,
                         {"max_position_embeddings": max(512, max_seq_length), "num_labels": num_labels, **labels,
                          **NEW_MODEL}, model_args.config_overrides, model_args.attn_implementation, characters=True)

    config = load_pretrained(AutoConfig.from_pretrained, model_args.model_name_or_path,
                             trust_remote_code=model_args.trust_remote_code)
    check_text_classifier(config, model_args.model_name_or_path)
    overrides = checkpoint_config_overrides(model_args.config_overrides, config, model_args.model_name_or_path)
    is_classifier = any(a.endswith("ForSequenceClassification") for a in config.architectures or [])
    if is_classifier and config.num_labels != num_labels:
        raise RecipeError(
            f"{model_args.model_name_or_path} is a classifier with num_labels={config.num_labels}, but the data asks "
            f"for {num_labels} output(s) {label_names} ({problem_type})"
        )
    check_vocabulary(config, tokenizer)
    # float32 master weights whatever the checkpoint's dtype (transformers 5 loads a checkpoint in its own dtype):
    # --fp16 / --bf16 come from autocast, and fp16 gradients of half-precision weights cannot be unscaled.
    return load_pretrained(
        AutoModelForSequenceClassification.from_pretrained, model_args.model_name_or_path, num_labels=num_labels, **labels,
        **overrides, dtype=torch.float32,
        attn_implementation=model_args.attn_implementation, trust_remote_code=model_args.trust_remote_code,
    )


def save_outputs(trainer, tokenizer, lora_args, output_dir, max_length):
    """Model (or adapter, or merged model) and tokenizer in output_dir, and for a whole model the files that make
    the folder a SentenceTransformer too; only the main process writes."""
    if lora_args.use_lora and lora_args.merge_lora:
        trainer.save_model(output_dir / "adapter")
        if trainer.is_world_process_zero():
            merged = trainer.model.merge_and_unload()
            merged.save_pretrained(output_dir)
    else:
        trainer.save_model(output_dir)
    if trainer.is_world_process_zero():
        tokenizer.save_pretrained(output_dir)
        if not (lora_args.use_lora and not lora_args.merge_lora):  # an adapter alone is not a model to load
            write_sentence_transformers_files(output_dir, trainer.model.config, max_length)


def main(argv=None):
    with bad_input_exits() as set_up:
        model_args, data_args, lora_args, training_args = parse_args(
            (ClassifierModelArguments, DataArguments, LoraArguments, TrainingArguments), DEFAULTS, argv
        )
        output_dir = Path(training_args.output_dir)
        claim_run(set_up, training_args, model_args.overwrite_output_dir)
        if lora_args.merge_lora and not lora_args.use_lora:
            raise RecipeError("--merge_lora needs --use_lora")
        if training_args.push_to_hub and lora_args.use_lora and not lora_args.merge_lora:
            raise RecipeError("--push_to_hub with --use_lora needs --merge_lora: the Hub repository gets a plain model")
        resume = begin_run(training_args)

        raw = load_text_classification_data(
            data_args.dataset_name, data_args.dataset_config_name, data_args.train_file, data_args.validation_file,
            data_args.test_file, data_args.text_column, data_args.label_column, data_args.text_pair_column,
            data_args.problem_type,
        )
        raw = sample_splits(raw, data_args, training_args.seed)
        problem_type = label_kind(raw)
        settle_evaluation(training_args, "validation" in raw, PROBLEM_TYPES[problem_type].best,
                          data_args.select_best_checkpoint, data_args.early_stopping_patience)
        if problem_type == "regression":
            if data_args.class_weighting != "none":
                raise RecipeError(f"--class_weighting {data_args.class_weighting} weighs classes; regression "
                                  "labels have none")
            label_names, weights = [data_args.label_column], None
            if training_args.process_index == 0:
                print("regression of " + "; ".join(
                    f"{split} {len(data)} values, mean {np.mean(data['label']):.4g} ± {np.std(data['label']):.4g} "
                    f"(range {np.min(data['label']):.4g} to {np.max(data['label']):.4g})"
                    for split, data in raw.items()), flush=True)
        elif problem_type == "multi_label_classification":
            if data_args.class_weighting != "none":
                raise RecipeError(f"--class_weighting {data_args.class_weighting} weighs the one class of a row; "
                                  "multi-label rows have several")
            label_names, weights = raw["train"].features["label"].feature.names, None
            if training_args.process_index == 0:
                print(f"{len(label_names)} labels, any number per text: " + "; ".join(
                    f"{split} " + ", ".join(f"{name} {n}" for name, n in zip(label_names, np.bincount(
                        [i for ids in data["label"] for i in ids], minlength=len(label_names))))
                    + f", none {sum(not ids for ids in data['label'])} (of {len(data)})"
                    for split, data in raw.items()), flush=True)
            raw = multi_hot(raw, len(label_names))
        else:
            label_names = raw["train"].features["label"].names
            label_counts = {split: np.bincount(data["label"], minlength=len(label_names))
                            for split, data in raw.items()}
            if training_args.process_index == 0:
                print(f"{len(label_names)} labels: " + "; ".join(
                    f"{split} " + ", ".join(f"{name} {n}" for name, n in zip(label_names, counts))
                    for split, counts in label_counts.items()), flush=True)
            weights = class_weights(label_counts["train"], data_args.class_weighting)

        choose_start(model_args.start, model_args, training_args, raw["train"],
                     text_columns(raw["train"]), data_args.max_seq_length, argv)
        checkpoint_learning_rate(model_args, training_args, argv)
        texts = all_texts(raw["train"])
        tokenizer = load_or_train_tokenizer(
            model_args.tokenizer_name or model_args.model_name_or_path, texts, model_args.tokenizer_vocab_size,
            training_args, model_args.trust_remote_code, model_args.tokenizer_kind,
        )
        model = load_model(model_args, tokenizer, label_names, data_args.max_seq_length, problem_type)
        model, tokenizer = trim_checkpoint_vocabulary(model_args, model, tokenizer, texts, training_args,
                                                      lora=lora_args.use_lora)
        start_token_embeddings(model_args, model, tokenizer, texts, training_args)
        if lora_args.use_lora:
            targets = lora_args.lora_target_modules
            model = apply_lora(model, lora_args.lora_r, lora_args.lora_alpha, lora_args.lora_dropout,
                               [t.strip() for t in targets.split(",")] if targets else None)
            if training_args.process_index == 0:
                model.print_trainable_parameters()
        max_length = min(data_args.max_seq_length, getattr(model.config, "max_position_embeddings", 512))
        with training_args.main_process_first(desc="tokenizing"):
            tokenized = tokenize_dataset(raw, tokenizer, max_length, truncation=data_args.truncation)
        collator = training_collator(DataCollatorWithPadding(tokenizer), model, "sequence", model_args.padding_free)

    trainer = FeedbackTrainer(
        model=model,
        args=training_args,
        train_dataset=tokenized["train"],
        eval_dataset=tokenized.get("validation"),
        processing_class=tokenizer,
        data_collator=collator,
        compute_metrics=build_compute_metrics(problem_type),
        noam_warmup_steps=model_args.noam_warmup_steps,
        compute_loss_func=WeightedCrossEntropy(weights) if weights is not None else None,
        callbacks=[EarlyStoppingCallback(data_args.early_stopping_patience)]
        if data_args.early_stopping_patience and training_args.load_best_model_at_end else None,
    )
    prediction = train_and_evaluate(trainer, tokenized, resume)
    save_outputs(trainer, tokenizer, lora_args, output_dir, max_length)

    if trainer.is_world_process_zero():
        plot_training_curves(trainer.state.log_history, output_dir)
        if "test" in tokenized and problem_type == "regression":
            plot_regression(prediction.label_ids, prediction.predictions.reshape(-1), data_args.label_column,
                            output_dir / "predictions.png")
            print(f"test MSE: {prediction.metrics['test_mse']:.4f}  Pearson: {prediction.metrics['test_pearson']:.4f}"
                  f"  Spearman: {prediction.metrics['test_spearman']:.4f}  ({len(tokenized['test'])} texts)")
        elif "test" in tokenized and problem_type == "multi_label_classification":
            print(f"test subset accuracy: {prediction.metrics['test_subset_accuracy']:.4f}  micro F1: "
                  f"{prediction.metrics['test_micro_f1']:.4f}  macro F1: {prediction.metrics['test_macro_f1']:.4f}  "
                  f"({len(tokenized['test'])} texts)")
        elif "test" in tokenized:
            plot_confusion_matrix(prediction.label_ids, prediction.predictions.argmax(-1), label_names,
                                  output_dir / "confusion_matrix.png")
            print(f"test accuracy: {prediction.metrics['test_accuracy']:.4f}  "
                  f"macro F1: {prediction.metrics['test_f1']:.4f}  ({len(tokenized['test'])} texts)")
        write_model_card(trainer, json.loads((output_dir / "all_results.json").read_text()),
                         {split: len(data) for split, data in tokenized.items()}, base_model=model_args.model_name_or_path,
                         corpora=[data_args.dataset_name, data_args.train_file, data_args.validation_file,
                                  data_args.test_file])
        print_saved(output_dir)
    if training_args.push_to_hub:
        trainer.push_to_hub()
    release_output_dir(training_args)


if __name__ == "__main__":
    main()

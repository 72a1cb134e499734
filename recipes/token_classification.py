"""Fine-tune an hf_feedback encoder (or any token-classification checkpoint) to tag every word or character.

    accelerate launch --config_file recipes/configs/cpu.yaml recipes/token_classification.py   # word segmentation
    accelerate launch recipes/token_classification.py --corpus pos                  # part of speech, People's Daily
    accelerate launch recipes/token_classification.py --train_file ner.conll --validation_file dev.conll
    accelerate launch recipes/token_classification.py --model_name_or_path outputs/pretrain --learning_rate 5e-4

The bundled corpus is People's Daily, January 1998 (hf_feedback.tasks.tagging): `--corpus cws` tags each character B, M,
E or S (word segmentation, scored as words), `--corpus pos` each word with its part of speech, `--corpus pinyin`
each toneless pinyin syllable with the character it spells (the input-method task, one output per syllable). Your
own data: CoNLL-style files (a token and its tag per line, a blank line between sentences) or json / jsonl /
parquet with a list of tokens and a list of tags per row (`--tokens_column`, `--tags_column`). The arguments follow
finetune.py's: every `TrainingArguments` flag works; the defaults below only change what an unset flag means.
The run: parse -> data -> tokenizer -> model -> Trainer -> train -> evaluate -> save.
"""

import json
from dataclasses import dataclass, field
from pathlib import Path

from transformers import (
    AutoConfig,
    AutoModelForTokenClassification,
    DataCollatorForTokenClassification,
    TrainingArguments,
)

from hf_feedback import FeedbackForTokenClassification
from hf_feedback.failures import bad_input_exits, load_pretrained
from hf_feedback.reports.model_card import BUNDLED_PEOPLES_DAILY, write_model_card
from hf_feedback.reports.plots import plot_training_curves
from hf_feedback.tasks.tagging import (
    TAG_TASKS,
    align_tags,
    build_tagging_metrics,
    is_chunk_scheme,
    load_peoples_daily_tags,
    load_tagging_data,
)
from hf_feedback.training.recipe_arguments import (
    NewModelArguments,
    RecipeError,
    check_choice,
    check_data_limits,
    checkpoint_config_overrides,
    checkpoint_learning_rate,
    flag_given,
    parse_args,
    settle_evaluation,
)
from hf_feedback.training.recipe_utils import (
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
from hf_feedback.training.trainer import FeedbackTrainer


@dataclass
class TaggingDataArguments:
    corpus: str = field(default="cws", metadata={
        "help": "Bundled People's Daily task when no --train_file: 'cws' (word segmentation, B/M/E/S per "
                "character), 'pos' (part of speech per word) or 'pinyin' (the character each pinyin syllable "
                "spells)."})
    train_file: str | None = field(default=None, metadata={"help": "CoNLL text, json, jsonl or parquet."})
    validation_file: str | None = None
    test_file: str | None = None
    tokens_column: str = "tokens"
    tags_column: str = "tags"
    max_seq_length: int = field(default=256, metadata={
        "help": "Longer sentences are cut to this many tokens (their last words go untagged). 256 keeps over 99%% "
                "of People's Daily sentences whole."})
    select_best_checkpoint: bool = field(default=True, metadata={
        "help": "Keep the checkpoint with the best validation F1 (token accuracy for tags without chunks)."})
    max_train_samples: int | None = None
    max_eval_samples: int | None = None

    def __post_init__(self):
        check_choice(self, "corpus", TAG_TASKS)
        check_data_limits(self)


DEFAULTS = dict(
    output_dir="outputs/token_classification",
    # People's Daily's 36,200 training sentences twice: ~2,260 steps of 32. With the n-gram embeddings below one epoch
    # already tests 0.941 (part of speech) and 0.948 (segmentation); RESULTS.md section 6 has two epochs.
    num_train_epochs=2,
    per_device_train_batch_size=32,
    per_device_eval_batch_size=64,
    learning_rate=1e-3,
    warmup_steps=0.1,
    # Ten evaluations (and checkpoints to choose from) whatever the data's size.
    eval_steps=0.1,
    save_steps=0.1,
    train_sampling_strategy="random",
)
# A new model as finetune.py makes one: pre-norm (trains at 1e-3 without plateaus), rotary positions, 2 layers, each
# token's embedding adding its characters' and starting from how tokens co-occur in the training sentences
# (--embedding_init). Against the 6 post-norm layers with absolute positions and random embeddings before them,
# one epoch each (benchmarks/HISTORY.md): part of speech 0.877 -> 0.931 token accuracy in 4.5 instead of 10.5
# minutes, word segmentation 0.888 -> 0.920 word F1 in 6.2 instead of 13.8. Hashed bigram and trigram embeddings of
# the token ids (ngram_vocab_size: a character's neighbours, the classic features of segmentation), one epoch each:
# segmentation 0.920 -> 0.948 word F1 (6.8 minutes), part of speech 0.931 -> 0.941 (6.1 minutes; HISTORY.md).
NEW_MODEL = dict(norm_position="pre", position_embedding_type="rotary", num_hidden_layers=2, ngram_vocab_size=65536)


def load_model(model_args, tokenizer, label_names, max_seq_length):
    labels = dict(num_labels=len(label_names), id2label=dict(enumerate(label_names)),
                  label2id={name: i for i, name in enumerate(label_names)})
    if model_args.model_name_or_path is None:
        return new_model(FeedbackForTokenClassification, tokenizer,
                         {"max_position_embeddings": max(512, max_seq_length), **labels, **NEW_MODEL},
                         model_args.config_overrides, model_args.attn_implementation, characters=True)
    config = load_pretrained(AutoConfig.from_pretrained, model_args.model_name_or_path,
                             trust_remote_code=model_args.trust_remote_code)
    overrides = checkpoint_config_overrides(model_args.config_overrides, config, model_args.model_name_or_path)
    tagger = any(a.endswith("ForTokenClassification") for a in config.architectures or [])
    if tagger and config.num_labels != len(label_names):
        raise RecipeError(f"{model_args.model_name_or_path} tags with num_labels={config.num_labels}, but the data "
                          f"has {len(label_names)} tags {label_names[:10]}")
    check_vocabulary(config, tokenizer)
    return load_pretrained(AutoModelForTokenClassification.from_pretrained, model_args.model_name_or_path, **labels,
                           **overrides,
                           attn_implementation=model_args.attn_implementation,
                           trust_remote_code=model_args.trust_remote_code)


def main(argv=None):
    with bad_input_exits() as set_up:
        model_args, data_args, training_args = parse_args(
            (NewModelArguments, TaggingDataArguments, TrainingArguments), DEFAULTS, argv)
        output_dir = Path(training_args.output_dir)
        claim_run(set_up, training_args, model_args.overwrite_output_dir)
        resume = begin_run(training_args)
        checkpoint_learning_rate(model_args, training_args, argv)

        if data_args.train_file is None:
            raw = load_peoples_daily_tags(data_args.corpus)
            if data_args.corpus == "pinyin" and not flag_given("tokenizer_kind", argv):
                # One token per syllable: WordPiece keeps each of the ~400 syllables whole, where the unigram trainer
                # on so small an alphabet learns a few hundred fragments ("zho", "n", "g") and doubles the length.
                model_args.tokenizer_kind = "wordpiece"
        else:
            raw = load_tagging_data(data_args.train_file, data_args.validation_file, data_args.test_file,
                                    data_args.tokens_column, data_args.tags_column)
        raw = sample_splits(raw, data_args, training_args.seed)
        label_names = raw["train"].features["tags"].feature.names
        settle_evaluation(training_args, "validation" in raw, "f1" if is_chunk_scheme(label_names) else "accuracy",
                          data_args.select_best_checkpoint)
        if training_args.process_index == 0:
            print(f"{len(label_names)} tags ({', '.join(label_names[:12])}{', ...' if len(label_names) > 12 else ''});"
                  " " + "; ".join(f"{split} {len(data)} sentences" for split, data in raw.items()), flush=True)

        # Words apart, as they are tokenized (`is_split_into_words`): pieces never span two words.
        texts = [" ".join(tokens) for tokens in raw["train"]["tokens"]]
        tokenizer = load_or_train_tokenizer(
            model_args.tokenizer_name or model_args.model_name_or_path, texts,
            model_args.tokenizer_vocab_size, training_args, model_args.trust_remote_code, model_args.tokenizer_kind,
        )
        model = load_model(model_args, tokenizer, label_names, data_args.max_seq_length)
        model, tokenizer = trim_checkpoint_vocabulary(model_args, model, tokenizer, texts, training_args)
        start_token_embeddings(model_args, model, tokenizer, texts, training_args)
        max_length = min(data_args.max_seq_length, getattr(model.config, "max_position_embeddings", 512))
        with training_args.main_process_first(desc="tokenizing"):
            tokenized = {split: align_tags(data, tokenizer, max_length) for split, data in raw.items()}
        padded = DataCollatorForTokenClassification(tokenizer)
        collator = training_collator(padded, model, "token", model_args.padding_free)

    trainer = FeedbackTrainer(
        model=model,
        args=training_args,
        train_dataset=tokenized["train"],
        eval_dataset=tokenized.get("validation"),
        processing_class=tokenizer,
        data_collator=collator,
        # Evaluated padded: the tag metrics read each sentence's own tags.
        eval_data_collator=padded,
        compute_metrics=build_tagging_metrics(label_names),
        noam_warmup_steps=model_args.noam_warmup_steps,
    )
    prediction = train_and_evaluate(trainer, tokenized, resume)
    trainer.save_model(output_dir)

    if trainer.is_world_process_zero():
        tokenizer.save_pretrained(output_dir)
        plot_training_curves(trainer.state.log_history, output_dir)
        if "test" in tokenized:
            scores = {k: v for k, v in prediction.metrics.items() if k in ("test_accuracy", "test_f1")}
            print("  ".join(f"{name[5:]}: {value:.4f}" for name, value in scores.items())
                  + f"  ({len(tokenized['test'])} sentences)")
        write_model_card(trainer, json.loads((output_dir / "all_results.json").read_text()),
                         {split: len(data) for split, data in tokenized.items()},
                         base_model=model_args.model_name_or_path,
                         corpora=[BUNDLED_PEOPLES_DAILY] if data_args.train_file is None else
                         [data_args.train_file, data_args.validation_file, data_args.test_file])
        print_saved(output_dir)
    if training_args.push_to_hub:
        trainer.push_to_hub()
    release_output_dir(training_args)


if __name__ == "__main__":
    main()

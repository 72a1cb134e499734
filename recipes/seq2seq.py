"""Train an hf_feedback encoder-decoder (FeedbackForConditionalGeneration) to turn source texts into target texts.

    accelerate launch --config_file recipes/configs/cpu.yaml recipes/seq2seq.py        # pinyin -> characters
    accelerate launch recipes/seq2seq.py --train_file pairs.csv --validation_file dev.csv \
        --source_column question --target_column answer

The bundled task (hf_feedback.tasks.seq2seq) is the input method's: People's Daily sentences written as toneless pinyin,
to be written back in characters, where each syllable stands for many characters and the context decides. Your own
data: csv / json / jsonl / parquet files with a source and a target text column. The arguments follow finetune.py's:
every `Seq2SeqTrainingArguments` flag works (`--generation_num_beams 4` for beam search). Evaluation during
training measures the validation loss (it picks the best checkpoint); the final validation and test evaluations
generate (greedy by default) and report character error rate, sentence accuracy, BLEU and chrF.
The run: parse -> data -> tokenizer -> model -> Seq2SeqTrainer -> train -> evaluate -> save.
"""

import json
from dataclasses import dataclass, field
from pathlib import Path

from transformers import AutoConfig, AutoModelForSeq2SeqLM, DataCollatorForSeq2Seq, Seq2SeqTrainingArguments

from hf_feedback import FeedbackForConditionalGeneration, FeedbackSeq2SeqConfig
from hf_feedback.failures import bad_input_exits, load_pretrained
from hf_feedback.reports.model_card import BUNDLED_PEOPLES_DAILY, write_model_card
from hf_feedback.reports.plots import plot_training_curves
from hf_feedback.tasks.seq2seq import (
    build_generation_metrics,
    decode_generated,
    load_pinyin_task,
    load_seq2seq_files,
    tokenize_pairs,
)
from hf_feedback.training.recipe_arguments import (
    FineTuningModelArguments,
    RecipeError,
    check_data_limits,
    checkpoint_config_overrides,
    parse_args,
    parse_config_overrides,
    settle_evaluation,
)
from hf_feedback.training.recipe_utils import (
    check_vocabulary,
    load_or_train_tokenizer,
    sample_splits,
    train_and_evaluate,
)
from hf_feedback.training.run_folder import begin_run, claim_run, print_saved, release_output_dir
from hf_feedback.training.trainer import FeedbackSeq2SeqTrainer


@dataclass
class Seq2SeqDataArguments:
    train_file: str | None = field(default=None, metadata={
        "help": "csv, json, jsonl or parquet with --source_column and --target_column; default: the bundled "
                "pinyin-to-characters task."})
    validation_file: str | None = None
    test_file: str | None = None
    source_column: str = "source"
    target_column: str = "target"
    max_source_length: int = field(default=128, metadata={"help": "Longer sources are cut to this many tokens."})
    max_target_length: int = field(default=128, metadata={"help": "Longer targets are cut to this many tokens."})
    select_best_checkpoint: bool = field(default=True, metadata={
        "help": "Keep the checkpoint with the lowest validation character error rate."})
    max_train_samples: int | None = None
    max_eval_samples: int | None = None

    def __post_init__(self):
        if self.train_file is None and (self.validation_file or self.test_file):
            raise RecipeError("--validation_file / --test_file come with --train_file")
        check_data_limits(self)


DEFAULTS = dict(
    output_dir="outputs/seq2seq",
    num_train_epochs=1,
    per_device_train_batch_size=32,
    per_device_eval_batch_size=64,
    learning_rate=1e-3,
    warmup_steps=0.1,
    eval_steps=200,
    save_steps=200,
    train_sampling_strategy="random",
    generation_max_length=128,
    # BERT's pre-tokenisation keeps each pinyin syllable a word and each Chinese character a token: the input
    # method's units on both sides. (The validation loss chooses the best checkpoint.)
    tokenizer_kind="wordpiece",
)
# A new model as pretrain.py makes them: pre-norm (trains at 1e-3), rotary positions.
NEW_MODEL = dict(norm_position="pre", position_embedding_type="rotary")


def load_model(model_args, tokenizer, max_length):
    # The decoder starts from [SEP], a token no target begins with (BART starts from its </s> too): targets
    # tokenized by the tokenizer's own template, as transformers' run_translation.py does (`text_target`), begin
    # with [CLS], and a start of [CLS] would give the first two decoder positions equal inputs.
    special = dict(pad_token_id=tokenizer.pad_token_id, decoder_start_token_id=tokenizer.sep_token_id,
                   eos_token_id=tokenizer.sep_token_id, bos_token_id=tokenizer.cls_token_id)
    if model_args.model_name_or_path is None:
        config = FeedbackSeq2SeqConfig(**{"vocab_size": len(tokenizer), "max_position_embeddings": max(512, max_length),
                                          **special, **NEW_MODEL,
                                          **parse_config_overrides(model_args.config_overrides)})
        check_vocabulary(config, tokenizer)
        return FeedbackForConditionalGeneration._from_config(config, attn_implementation=model_args.attn_implementation)
    config = load_pretrained(AutoConfig.from_pretrained, model_args.model_name_or_path,
                             trust_remote_code=model_args.trust_remote_code)
    if not getattr(config, "is_encoder_decoder", False):
        raise RecipeError(f"--model_name_or_path {model_args.model_name_or_path} is not an encoder-decoder "
                          f"({', '.join(config.architectures or [config.model_type])}); seq2seq.py continues "
                          "FeedbackForConditionalGeneration (or another AutoModelForSeq2SeqLM) checkpoints")
    check_vocabulary(config, tokenizer)
    # Learned positions end at max_position_embeddings (rotary and relative ones do not): a longer pair would fail
    # in the middle of training.
    if getattr(config, "position_embedding_type", "absolute") == "absolute" and max_length > getattr(
            config, "max_position_embeddings", max_length):
        raise RecipeError(f"--max_source_length / --max_target_length allow {max_length} tokens, more than the "
                          f"{config.max_position_embeddings} learned positions of {model_args.model_name_or_path}; "
                          f"give at most {config.max_position_embeddings}")
    overrides = checkpoint_config_overrides(model_args.config_overrides, config, model_args.model_name_or_path)
    return load_pretrained(AutoModelForSeq2SeqLM.from_pretrained, model_args.model_name_or_path, **overrides,
                           attn_implementation=model_args.attn_implementation,
                           trust_remote_code=model_args.trust_remote_code)


def generate_from_now_on(compute_metrics):
    """Evaluation during training measures the loss only (it chooses the best checkpoint); the final evaluation and
    the test prediction generate and are scored. Generating a validation split at every evaluation would cost a
    CPU run many minutes each time."""
    def switch(trainer):
        trainer.args.predict_with_generate = True
        trainer.compute_metrics = compute_metrics

    return switch


def main(argv=None):
    with bad_input_exits() as set_up:
        model_args, data_args, training_args = parse_args(
            (FineTuningModelArguments, Seq2SeqDataArguments, Seq2SeqTrainingArguments), DEFAULTS, argv)
        output_dir = Path(training_args.output_dir)
        claim_run(set_up, training_args, model_args.overwrite_output_dir)
        if model_args.padding_free:
            raise RecipeError("--padding_free: an encoder-decoder takes padded batches")
        resume = begin_run(training_args)

        if data_args.train_file is None:
            raw = load_pinyin_task()
        else:
            raw = load_seq2seq_files(data_args.train_file, data_args.validation_file, data_args.test_file,
                                     data_args.source_column, data_args.target_column)
        raw = sample_splits(raw, data_args, training_args.seed)
        settle_evaluation(training_args, "validation" in raw, "loss", data_args.select_best_checkpoint)
        if training_args.process_index == 0:
            print("; ".join(f"{split} {len(data)} pairs" for split, data in raw.items()), flush=True)

        tokenizer = load_or_train_tokenizer(
            model_args.tokenizer_name or model_args.model_name_or_path,
            [*raw["train"]["source"], *raw["train"]["target"]],  # one vocabulary: the embeddings are shared
            model_args.tokenizer_vocab_size, training_args, model_args.trust_remote_code, model_args.tokenizer_kind,
        )
        model = load_model(model_args, tokenizer, max(data_args.max_source_length, data_args.max_target_length))
        with training_args.main_process_first(desc="tokenizing"):
            tokenized = {split: tokenize_pairs(data, tokenizer, data_args.max_source_length,
                                               data_args.max_target_length) for split, data in raw.items()}
        cut = {split: sum(data["cut"]) for split, data in tokenized.items()}
        tokenized = {split: data.remove_columns("cut") for split, data in tokenized.items()}
        if any(cut.values()) and training_args.process_index == 0:
            print(f"pairs longer than --max_source_length {data_args.max_source_length} or --max_target_length "
                  f"{data_args.max_target_length} tokens are cut to them (a target cut away from its source teaches "
                  f"a wrong pair; raise the limits to keep them whole): "
                  + ", ".join(f"{count:,} of {len(tokenized[split]):,} {split}" for split, count in cut.items()),
                  flush=True)

    trainer = FeedbackSeq2SeqTrainer(
        model=model,
        args=training_args,
        train_dataset=tokenized["train"],
        eval_dataset=tokenized.get("validation"),
        processing_class=tokenizer,
        data_collator=DataCollatorForSeq2Seq(tokenizer, model=model),
        noam_warmup_steps=model_args.noam_warmup_steps,
    )
    prediction = train_and_evaluate(trainer, tokenized, resume,
                                    after_training=generate_from_now_on(build_generation_metrics(tokenizer)))
    trainer.save_model(output_dir)

    if trainer.is_world_process_zero():
        tokenizer.save_pretrained(output_dir)
        plot_training_curves(trainer.state.log_history, output_dir)
        if "test" in tokenized:
            # One generated text per line, in the test split's order (as transformers' run_summarization.py)
            texts = decode_generated(prediction.predictions, tokenizer)
            (output_dir / "generated_predictions.txt").write_text("".join(f"{text}\n" for text in texts))
            scores = prediction.metrics
            print(f"test character error rate: {scores['test_cer']:.4f}  sentence accuracy: "
                  f"{scores['test_sentence_accuracy']:.4f}  BLEU: {scores['test_bleu']:.2f}  chrF: "
                  f"{scores['test_chrf']:.2f}  ({len(tokenized['test'])} pairs)")
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

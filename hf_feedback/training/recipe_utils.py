"""What the recipes start from and how they train it: the tokenizer (loaded or trained), a new model or the
checkpoint's (checked, trimmed, its embeddings started), the data sampled, the collator, and training with
evaluation. The recipes' arguments and their checks are in recipe_arguments.py; the run's folder (lock, overwrite,
resume) in run_folder.py: both moved there from here when this file passed 700 lines."""

import json
import time
from pathlib import Path

import torch
from transformers import AutoTokenizer

from ..data.collators import DataCollatorForPaddingFree
from ..data.tokenization import cooccurrence_vectors, token_characters, train_tokenizer
from ..data.trim_vocabulary import is_unigram, pieces_to_keep, trim_vocabulary
from ..failures import bad_input_exits
from ..model.configuration_feedback import FeedbackConfig
from .recipe_arguments import RecipeError, parse_config_overrides
from .run_folder import check_resume_fits


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
            "encoder it reuses); convert a BERT first with `python -m hf_feedback.integrations.convert`")


def sample_splits(raw, data_args, seed):
    """`raw` (a DatasetDict) with train cut to --max_train_samples and validation/test to --max_eval_samples."""
    raw["train"] = sample(raw["train"], data_args.max_train_samples, seed)
    for split in ("validation", "test"):
        if split in raw:
            raw[split] = sample(raw[split], data_args.max_eval_samples, seed)
    return raw


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

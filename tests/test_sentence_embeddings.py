"""hf_feedback/sentence_embeddings.py: a saved folder loads in sentence-transformers, whose embeddings are the
model's own pooling of its last hidden states."""

import json

import pytest
import torch
from sentence_transformers import SentenceTransformer

from hf_feedback import FeedbackForSequenceClassification
from hf_feedback.data import load_sentiment_reviews
from hf_feedback.sentence_embeddings import FILES, write_sentence_transformers_files
from hf_feedback.tokenization import train_tokenizer

TEXTS = ["质量很好，物流也快，下次还来买", "太差了", "一般般吧，价格还可以"]  # unequal lengths: padding in a batch


@pytest.fixture(scope="module")
def tokenizer():
    return train_tokenizer(load_sentiment_reviews()["test"]["text"][:300], vocab_size=300, kind="unigram")


def _pooled(model, tokenizer, pooling):
    """The model's pooling of its last hidden states, before the pooler's dense + tanh, computed here by hand."""
    inputs = tokenizer(TEXTS, padding=True, return_tensors="pt")
    with torch.no_grad():
        hidden = model.feedback(**inputs).last_hidden_state  # (B, T, H)
    mask = inputs["attention_mask"].unsqueeze(-1).bool()  # right-padded: the first token is real
    if pooling == "cls":
        return hidden[:, 0]
    if pooling == "max":
        return hidden.masked_fill(~mask, float("-inf")).max(1).values
    return (hidden * mask).sum(1) / mask.sum(1)


@pytest.mark.parametrize("pooling", ["mean", "cls", "max"])
def test_sentence_transformers_embeddings_are_the_models_pooling(tiny_config, tokenizer, tmp_path, pooling):
    model = FeedbackForSequenceClassification(tiny_config(vocab_size=len(tokenizer), pooling=pooling)).eval()
    model.save_pretrained(tmp_path)
    tokenizer.save_pretrained(tmp_path)
    write_sentence_transformers_files(tmp_path, model.config, max_seq_length=96)
    assert all((tmp_path / name).is_file() for name in FILES)

    encoder = SentenceTransformer(str(tmp_path), trust_remote_code=True, device="cpu")
    assert encoder.max_seq_length == 96
    embeddings = encoder.encode(TEXTS, convert_to_tensor=True, batch_size=len(TEXTS))
    torch.testing.assert_close(embeddings, _pooled(model, tokenizer, pooling), atol=1e-5, rtol=1e-5)


def test_the_pooling_file_names_exactly_one_mode(tiny_config, tmp_path):
    write_sentence_transformers_files(tmp_path, tiny_config(pooling="max"), max_seq_length=128)
    pooling = json.loads((tmp_path / "1_Pooling" / "config.json").read_text())
    assert pooling["word_embedding_dimension"] == 32
    assert [key for key, value in pooling.items() if value is True] == ["pooling_mode_max_tokens"]

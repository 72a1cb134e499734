"""hf_feedback/integrations/sentence_embeddings.py: a saved folder loads in sentence-transformers, whose embeddings are
the model's own pooling of its last hidden states."""

import json

import pytest
import torch
from sentence_transformers import SentenceTransformer

from hf_feedback import FeedbackForSequenceClassification
from hf_feedback.data.corpora import load_sentiment_reviews
from hf_feedback.data.tokenization import train_tokenizer
from hf_feedback.integrations.sentence_embeddings import FILES, write_sentence_transformers_files

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


def test_sentence_transformers_trainer_fine_tunes_a_saved_folder(tiny_config, tokenizer, tmp_path):
    """sentence-transformers' own trainer trains the loaded folder (in-batch negatives over review pairs): the loss
    falls, and the saved result loads back and gives the embeddings it gave in memory."""
    from datasets import Dataset
    from sentence_transformers import SentenceTransformerTrainer, SentenceTransformerTrainingArguments
    from sentence_transformers.sentence_transformer.losses import MultipleNegativesRankingLoss

    model = FeedbackForSequenceClassification(tiny_config(vocab_size=len(tokenizer), pooling="mean"))
    model.save_pretrained(tmp_path / "start")
    tokenizer.save_pretrained(tmp_path / "start")
    write_sentence_transformers_files(tmp_path / "start", model.config, max_seq_length=64)
    encoder = SentenceTransformer(str(tmp_path / "start"), trust_remote_code=True, device="cpu")

    # Each review paired with its own second half: a pair the model can learn to match against the batch's others.
    texts = [t for t in load_sentiment_reviews()["train"]["text"] if len(t) >= 12][:192]
    pairs = Dataset.from_dict({"anchor": [t[: len(t) // 2] for t in texts], "positive": [t[len(t) // 2:] for t in texts]})
    arguments = SentenceTransformerTrainingArguments(
        output_dir=str(tmp_path / "run"), num_train_epochs=2, per_device_train_batch_size=32, learning_rate=3e-3,
        logging_steps=2, save_strategy="no", report_to=[], use_cpu=True, seed=0, disable_tqdm=True)
    trainer = SentenceTransformerTrainer(model=encoder, args=arguments, train_dataset=pairs,
                                         loss=MultipleNegativesRankingLoss(encoder))
    trainer.train()
    losses = [entry["loss"] for entry in trainer.state.log_history if "loss" in entry]
    assert losses[-1] < losses[0] - 0.3, losses  # from ~log(32) = 3.47 down

    encoder.save(str(tmp_path / "trained"))
    reloaded = SentenceTransformer(str(tmp_path / "trained"), trust_remote_code=True, device="cpu")
    torch.testing.assert_close(reloaded.encode(TEXTS, convert_to_tensor=True), encoder.encode(TEXTS, convert_to_tensor=True),
                               atol=1e-5, rtol=1e-5)

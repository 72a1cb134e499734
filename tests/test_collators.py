"""hf_feedback/data/collators.py: padding-free batches carry every task's labels, pairs' segments and MLM masking."""

import pytest
import torch
from transformers import DataCollatorForLanguageModeling

from hf_feedback import DataCollatorForPaddingFree
from hf_feedback.data.corpora import load_sentiment_reviews
from hf_feedback.data.tokenization import train_tokenizer

FEATURES = [{"input_ids": [2, 7, 8, 3], "token_type_ids": [0, 0, 0, 0]},
            {"input_ids": [2, 9, 3], "token_type_ids": [0, 0, 1]},
            {"input_ids": [], "token_type_ids": []},  # dropped, as DataCollatorWithFlattening drops it
            {"input_ids": [2, 5, 6, 4, 3], "token_type_ids": [0, 0, 1, 1, 1]}]
KEPT = [0, 1, 3]


def with_labels(labels, key="labels"):
    return [{**feature, key: label} for feature, label in zip(FEATURES, labels)]


def test_one_row_with_restarting_positions_and_the_boundaries():
    batch = DataCollatorForPaddingFree(labels=None)(FEATURES)
    assert batch["input_ids"].tolist() == [[2, 7, 8, 3, 2, 9, 3, 2, 5, 6, 4, 3]]
    assert batch["position_ids"].tolist() == [[0, 1, 2, 3, 0, 1, 2, 0, 1, 2, 3, 4]]
    assert batch["token_type_ids"].tolist() == [[0, 0, 0, 0, 0, 0, 1, 0, 0, 1, 1, 1]]
    assert batch["cu_seq_lens_q"].tolist() == batch["cu_seq_lens_k"].tolist() == [0, 4, 7, 12]
    assert batch["max_length_q"] == batch["max_length_k"] == 5
    assert "labels" not in batch


@pytest.mark.parametrize("labels, key, expected, dtype", [
    ([1, 0, 1, 2], "label", [1, 0, 2], torch.int64),  # classes, under the dataset's own column name
    ([0.5, 1.0, 9.0, -2.0], "labels", [0.5, 1.0, -2.0], torch.float32),  # regression
    ([[1.0, 0.0], [1.0, 1.0], [0.0, 0.0], [0.0, 1.0]], "labels", [[1.0, 0.0], [1.0, 1.0], [0.0, 1.0]],
     torch.float32),  # multi-hot
])
def test_a_label_per_sequence_stays_one_per_sequence(labels, key, expected, dtype):
    batch = DataCollatorForPaddingFree(labels="sequence")(with_labels(labels, key))
    assert batch["labels"].tolist() == expected and batch["labels"].dtype == dtype


def test_a_label_per_token_is_flattened_with_the_tokens():
    tags = [[-100, 1, 2, -100], [-100, 0, -100], [], [-100, 3, 3, 1, -100]]
    batch = DataCollatorForPaddingFree(labels="token")(with_labels(tags))
    assert batch["labels"].tolist() == [[t for i in KEPT for t in tags[i]]]


def test_masked_lm_masks_the_flattened_row_and_never_a_special_token():
    texts = load_sentiment_reviews()["train"]["text"][:200]
    tokenizer = train_tokenizer(texts, vocab_size=800, kind="wordpiece")
    features = [tokenizer(text, return_special_tokens_mask=True) for text in texts[:64]]
    masking = DataCollatorForLanguageModeling(tokenizer, mlm_probability=0.3)
    torch.manual_seed(0)
    batch = DataCollatorForPaddingFree(labels=None, mlm=masking)(features)
    original = torch.tensor([[i for f in features for i in f["input_ids"]]])
    special = torch.tensor([[m for f in features for m in f["special_tokens_mask"]]]).bool()
    labelled = batch["labels"] != -100
    assert not (labelled & special).any()
    assert torch.equal(batch["labels"][labelled], original[labelled])
    assert torch.equal(batch["input_ids"][~labelled], original[~labelled])
    share = labelled.sum() / (~special).sum()
    assert 0.25 < share < 0.35  # the masking rate, over the non-special tokens
    assert (batch["input_ids"][labelled] == tokenizer.mask_token_id).float().mean() > 0.7  # 80% become [MASK]


def test_contradictory_settings_are_refused():
    with pytest.raises(ValueError, match="labels must be one of"):
        DataCollatorForPaddingFree(labels="sentence")
    with pytest.raises(ValueError, match="takes its labels from the masking"):
        DataCollatorForPaddingFree(labels="sequence", mlm=object())

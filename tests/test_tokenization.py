"""Tests for hf_feedback/data/tokenization.py and its tokenize_dataset."""

import datasets
import pytest
import torch
from transformers import AutoTokenizer, PreTrainedTokenizerFast

from hf_feedback.data.corpora import load_sentiment_reviews
from hf_feedback.data.tokenization import (
    SPECIAL_TOKENS,
    cooccurrence_vectors,
    default_tokenizer_corpus,
    token_characters,
    tokenize_corpus,
    tokenize_dataset,
    train_tokenizer,
)


@pytest.fixture(scope="module")
def reviews():
    return load_sentiment_reviews()


@pytest.fixture(scope="module")
def tokenizer(reviews):
    # 2,000 reviews have ~2,700 distinct characters, so 3,000 leaves room for word pieces.
    return train_tokenizer(reviews["train"]["text"][:2000], vocab_size=3000, model_max_length=128)


def test_vocabulary_size_and_special_token_ids(tokenizer):
    assert len(tokenizer) == 3000
    assert tokenizer.convert_tokens_to_ids(SPECIAL_TOKENS) == [0, 1, 2, 3, 4]
    ids = (tokenizer.pad_token_id, tokenizer.unk_token_id, tokenizer.cls_token_id, tokenizer.sep_token_id)
    assert ids + (tokenizer.mask_token_id,) == (0, 1, 2, 3, 4)
    assert tokenizer.model_max_length == 128


def test_cjk_splits_into_characters_and_adds_cls_sep(tokenizer):
    encoding = tokenizer("我喜欢这本书")
    tokens = tokenizer.convert_ids_to_tokens(encoding["input_ids"])
    assert tokens == ["[CLS]", "我", "喜", "欢", "这", "本", "书", "[SEP]"]
    assert encoding["attention_mask"] == [1] * 8
    assert encoding["token_type_ids"] == [0] * 8


def test_pair_gets_second_segment_type(tokenizer):
    encoding = tokenizer("好", "差")
    assert tokenizer.convert_ids_to_tokens(encoding["input_ids"]) == ["[CLS]", "好", "[SEP]", "差", "[SEP]"]
    assert encoding["token_type_ids"] == [0, 0, 0, 1, 1]


def test_lowercases_and_decodes_word_pieces(tokenizer):
    ids = tokenizer("Hello WORLD")["input_ids"]
    assert ids == tokenizer("hello world")["input_ids"]
    assert tokenizer.decode(ids, skip_special_tokens=True) == "hello world"


def test_unknown_character_maps_to_unk(tokenizer, reviews):
    assert "齉" not in "".join(reviews["train"]["text"][:2000])
    assert tokenizer("好齉")["input_ids"] == [2, tokenizer.convert_tokens_to_ids("好"), 1, 3]


def test_save_and_auto_reload_give_identical_ids(tokenizer, reviews, tmp_path):
    tokenizer.save_pretrained(tmp_path)
    reloaded = AutoTokenizer.from_pretrained(tmp_path)

    assert isinstance(reloaded, PreTrainedTokenizerFast)
    texts = reviews["test"]["text"][:200]
    assert reloaded(texts, truncation=True)["input_ids"] == tokenizer(texts, truncation=True)["input_ids"]
    assert reloaded("好", "差") == tokenizer("好", "差")
    assert reloaded.all_special_ids == tokenizer.all_special_ids
    assert reloaded.model_max_length == 128
    assert len(reloaded) == 3000


def test_invalid_arguments():
    with pytest.raises(ValueError, match="vocab_size"):
        train_tokenizer(["好"], vocab_size=5)
    with pytest.raises(ValueError, match="min_frequency"):
        train_tokenizer(["好"], min_frequency=0)


def test_default_corpus_is_review_train_split_then_peoples_daily(reviews):
    corpus = list(default_tokenizer_corpus())
    assert len(corpus) >= 13832 + 37_000
    assert corpus[:13832] == reviews["train"]["text"]
    assert corpus[13832].startswith("１２月３１日")


def test_tokenize_dataset_truncates_and_keeps_labels(tokenizer, reviews):
    validation = reviews["validation"]
    tokenized = tokenize_dataset(validation, tokenizer, max_length=16)

    assert tokenized.column_names == ["label", "input_ids", "token_type_ids", "attention_mask"]
    assert tokenized["label"] == validation["label"]
    lengths = [len(ids) for ids in tokenized["input_ids"]]
    assert max(lengths) == 16
    assert min(lengths) >= 3  # [CLS], at least one token, [SEP]
    for ids in tokenized["input_ids"]:
        assert ids[0] == tokenizer.cls_token_id and ids[-1] == tokenizer.sep_token_id
    assert tokenized["input_ids"][0] == tokenizer(validation["text"][0], truncation=True, max_length=16)["input_ids"]


def test_tokenize_dataset_fingerprint_is_deterministic(tokenizer, reviews):
    # Equal fingerprints are what let `datasets` reuse its cache across runs.
    small = reviews["test"].select(range(100))
    first = tokenize_dataset(small, tokenizer, max_length=16)
    again = tokenize_dataset(small, tokenizer, max_length=16)
    longer = tokenize_dataset(small, tokenizer, max_length=32)
    assert first._fingerprint == again._fingerprint != longer._fingerprint


def test_tokenize_dataset_on_dataset_dict(tokenizer, reviews):
    sample = datasets.DatasetDict({split: reviews[split].select(range(50 + i)) for i, split in enumerate(reviews)})
    tokenized = tokenize_dataset(sample, tokenizer, max_length=8)
    assert {split: len(tokenized[split]) for split in tokenized} == {"train": 50, "validation": 51, "test": 52}
    for split in tokenized.values():
        assert split.column_names == ["label", "input_ids", "token_type_ids", "attention_mask"]
        assert max(len(ids) for ids in split["input_ids"]) == 8
    with pytest.raises(ValueError, match="max_length"):
        tokenize_dataset(sample, tokenizer, max_length=0)


def test_training_twice_gives_identical_ids(reviews):
    # The WordPiece trainer breaks ties in hash order; train_tokenizer renumbers so that runs (and the processes
    # of a distributed run) agree on every id.
    texts = reviews["train"]["text"][:2000]
    first, second = (train_tokenizer(texts, vocab_size=2000).get_vocab() for _ in range(2))
    assert first == second
    assert [first[t] for t in ("[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]")] == [0, 1, 2, 3, 4]


# --- unigram pieces ---


@pytest.fixture(scope="module")
def unigram(reviews):
    return train_tokenizer(reviews["train"]["text"][:2000], vocab_size=4000, kind="unigram", model_max_length=128)


def test_unigram_learns_multi_character_words_and_shortens_sequences(unigram, tokenizer, reviews):
    assert len(unigram) == 4000
    assert unigram.convert_tokens_to_ids(SPECIAL_TOKENS) == [0, 1, 2, 3, 4]
    tokens = unigram.convert_ids_to_tokens(unigram("质量很好，价格也便宜")["input_ids"])
    assert tokens[0] == "[CLS]" and tokens[-1] == "[SEP]"
    assert any(len(token) > 1 for token in tokens[1:-1]), tokens  # words, not only characters
    assert "".join(tokens[1:-1]) == "质量很好,价格也便宜"  # NFKC folds the full-width comma; nothing is lost
    texts = reviews["test"]["text"][:300]
    as_words = sum(len(ids) for ids in unigram(texts)["input_ids"])
    as_characters = sum(len(ids) for ids in tokenizer(texts)["input_ids"])
    assert as_words < 0.85 * as_characters, (as_words, as_characters)  # 0.80 here; 0.6 with all 13,832 reviews


def test_unigram_keeps_spaces_lowercases_and_pairs(unigram):
    ids = unigram("Hello WORLD 很好")["input_ids"]
    assert ids == unigram("hello world 很好")["input_ids"]
    assert unigram.decode(ids, skip_special_tokens=True) == "hello world 很好"
    assert unigram("好", "差")["token_type_ids"] == [0, 0, 0, 1, 1]


def test_unigram_is_reproducible_and_round_trips(unigram, reviews, tmp_path):
    again = train_tokenizer(reviews["train"]["text"][:2000], vocab_size=4000, kind="unigram", model_max_length=128)
    assert again.backend_tokenizer.to_str() == unigram.backend_tokenizer.to_str()
    unigram.save_pretrained(tmp_path)
    reloaded = AutoTokenizer.from_pretrained(tmp_path)
    texts = reviews["test"]["text"][:200]
    assert reloaded(texts)["input_ids"] == unigram(texts)["input_ids"]


def test_unknown_tokenizer_kind_is_rejected():
    with pytest.raises(ValueError, match=r"kind must be one of \['wordpiece', 'unigram'\], got 'bpe'"):
        train_tokenizer(["好"], kind="bpe")


def test_a_unigram_vocabulary_too_small_for_the_characters_grows_to_keep_them_all(reviews, caplog):
    texts = reviews["train"]["text"][:3000]
    small = train_tokenizer(texts, vocab_size=2000, kind="unigram")
    assert "cannot hold the corpus's" in caplog.text
    assert len(small) > 2000
    ids = small(texts)["input_ids"]
    assert not any(small.unk_token_id in row for row in ids)  # every training character has a token


# --- long texts ---


def test_a_corpus_keeps_every_token_of_a_long_text_in_consecutive_windows(tokenizer, reviews):
    texts = [text for text in reviews["validation"]["text"] if len(text) > 100][:5] + ["好"]
    windows = tokenize_corpus(datasets.Dataset.from_dict({"text": texts, "source": list(range(len(texts)))}),
                              tokenizer, max_length=16)
    assert set(windows.column_names) == {"input_ids", "token_type_ids", "attention_mask", "source"}
    assert all(len(ids) <= 16 and ids[0] == tokenizer.cls_token_id and ids[-1] == tokenizer.sep_token_id
               for ids in windows["input_ids"])
    for i, text in enumerate(texts):  # each text's windows, in order, hold its tokens exactly once
        inner = [token for ids, source in zip(windows["input_ids"], windows["source"]) if source == i
                 for token in ids[1:-1]]
        assert inner == tokenizer(text, add_special_tokens=False)["input_ids"]
    assert len(windows) > len(texts) and windows["source"][-1] == len(texts) - 1
    with pytest.raises(ValueError, match="room for a token"):
        tokenize_corpus(windows, tokenizer, max_length=2)


def test_head_tail_truncation_keeps_the_opening_and_the_ending(tokenizer, reviews):
    long_texts = [text for text in reviews["validation"]["text"] if len(text) > 100][:20]
    data = datasets.Dataset.from_dict({"text": long_texts, "label": [0] * len(long_texts)})
    head_tail = tokenize_dataset(data, tokenizer, max_length=32, truncation="head_tail")
    for text, ids, mask in zip(long_texts, head_tail["input_ids"], head_tail["attention_mask"]):
        full = tokenizer(text)["input_ids"]
        assert ids == full[:8] + full[-24:]  # a quarter from the start ([CLS] first), the rest from the end ([SEP] last)
        assert len(mask) == 32
    short = datasets.Dataset.from_dict({"text": ["好"], "label": [0]})
    assert tokenize_dataset(short, tokenizer, 32, truncation="head_tail")["input_ids"] == [tokenizer("好")["input_ids"]]
    with pytest.raises(ValueError, match=r"truncation must be one of \['head', 'head_tail'\], got 'middle'"):
        tokenize_dataset(short, tokenizer, 32, truncation="middle")


def test_token_characters_number_each_character_once_across_tokens(unigram, tokenizer):
    table, char_vocab_size = token_characters(unigram)
    pieces = unigram.convert_ids_to_tokens(list(range(len(unigram))))
    assert table.shape == (len(unigram), max(len(p.replace("▁", "")) for p in pieces if p not in SPECIAL_TOKENS))
    assert table[unigram.convert_tokens_to_ids(SPECIAL_TOKENS)].abs().sum() == 0  # special tokens: no characters
    ids = {}
    for piece, row in zip(pieces, table.tolist()):
        if piece in SPECIAL_TOKENS:
            continue
        text = piece.replace("▁", "")
        assert row[len(text):] == [0] * (table.shape[1] - len(text))
        for character, i in zip(text, row):
            assert ids.setdefault(character, i) == i  # one id per character, whichever token holds it
    assert sorted(ids.values()) == list(range(1, char_vocab_size)) and len(ids) > 1000
    word = next(p for p in pieces if len(p) == 3 and "▁" not in p)
    assert table[unigram.convert_tokens_to_ids(word)].tolist() == [ids[c] for c in word] + [0] * (table.shape[1] - 3)
    # WordPiece: a continuation's '##' is a marker, not characters.
    wordpiece_table, _ = token_characters(tokenizer)
    continuation = next(t for t in tokenizer.convert_ids_to_tokens(list(range(len(tokenizer)))) if t.startswith("##"))
    assert (wordpiece_table[tokenizer.convert_tokens_to_ids(continuation)] > 0).sum() == len(continuation) - 2


# --- co-occurrence vectors (a new model's starting embeddings) ---


def test_cooccurrence_vectors_point_tokens_of_the_same_contexts_the_same_way():
    # 5 and 6 only ever stand between 1 and 2, 7 and 8 between 3 and 4; 0 and 9 never occur.
    sequences = [[1, 5, 2], [1, 6, 2], [3, 7, 4], [3, 8, 4]] * 20
    vectors, counts = cooccurrence_vectors(sequences, vocab_size=10, dim=4, window=2)
    assert vectors.shape == (10, 4) and vectors.dtype == torch.float32
    assert counts.tolist() == [0, 40, 40, 40, 40, 20, 20, 20, 20, 0]
    assert vectors[[0, 9]].abs().sum() == 0
    unit = torch.nn.functional.normalize(vectors[1:9], dim=1)
    cosine = unit @ unit.T  # rows: tokens 1..8
    assert cosine[4, 5] > 0.999 and cosine[6, 7] > 0.999  # 5 ~ 6, 7 ~ 8
    assert cosine[4, 6].abs() < 1e-3 and cosine[0, 2].abs() < 1e-3  # nothing shared: orthogonal
    # Wider than the vocabulary: the extra columns stay 0. A token budget counts the first sequences only.
    wide, _ = cooccurrence_vectors(sequences, vocab_size=10, dim=16, window=2)
    assert wide.shape == (10, 16) and wide[:, 9:].abs().sum() == 0
    _, first = cooccurrence_vectors(sequences, vocab_size=10, dim=4, window=2, max_tokens=6)
    assert first.tolist() == [0, 2, 2, 0, 0, 1, 1, 0, 0, 0]
    with pytest.raises(ValueError, match="window must be at least 1 token, got 0"):
        cooccurrence_vectors(sequences, vocab_size=10, dim=4, window=0)


def test_cooccurrence_vectors_of_reviews_put_words_near_their_kin(unigram, reviews):
    ids = unigram(reviews["train"]["text"][:2000], add_special_tokens=False, verbose=False)["input_ids"]
    vectors, counts = cooccurrence_vectors(ids, vocab_size=len(unigram), dim=64)
    assert counts.sum() == sum(map(len, ids))
    assert vectors[unigram.convert_tokens_to_ids(SPECIAL_TOKENS)].abs().sum() == 0
    unit = torch.nn.functional.normalize(vectors, dim=1)
    vocabulary = unigram.get_vocab()
    for word, kin in (("不错", "很好"), ("酒店", "宾馆")):  # "not bad" / "very good"; "hotel" / "guesthouse"
        similarity = unit @ unit[vocabulary[word]]
        similarity[vocabulary[word]] = -1
        nearest = unigram.convert_ids_to_tokens(similarity.argsort(descending=True)[:3].tolist())
        assert kin in nearest, (word, nearest)
        assert similarity[vocabulary[kin]] > 0.5 > similarity[counts > 0].abs().median() + 0.25

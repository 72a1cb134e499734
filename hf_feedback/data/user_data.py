"""The user's own data: files (csv, json, jsonl, parquet; plain text for a corpus) or a Hub dataset, checked and
normalised to the columns the recipes expect: `text` for masked-LM pretraining, and `text` (+ `text_pair`) + `label`
(a `ClassLabel`, float32 numbers for regression, lists of classes for multi-label) for sequence classification.

Moved here from hf_feedback/data.py (before data/ was a folder) with the helpers of normalised datasets
(`all_texts`, `label_kind`, `multi_hot`) when it passed 500 lines: the bundled corpora are in corpora.py,
`tokenize_dataset` in tokenization.py.
"""

import codecs
import csv
import io
from pathlib import Path

import datasets
import numpy as np
from transformers.utils import logging

from .corpora import _SPLITS, load_sentiment_reviews


logger = logging.get_logger(__name__)

# Extension -> `datasets` packaged builder. JSON Lines is read by the "json" builder.
_BUILDERS = {".csv": "csv", ".json": "json", ".jsonl": "json", ".parquet": "parquet"}
# A pretraining corpus may also be plain text, one text per line.
_CORPUS_BUILDERS = {".txt": "text", **_BUILDERS}


def load_text_classification_data(
    dataset_name: str | None = None,
    dataset_config_name: str | None = None,
    train_file: str | Path | None = None,
    validation_file: str | Path | None = None,
    test_file: str | Path | None = None,
    text_column: str = "text",
    label_column: str = "label",
    text_pair_column: str | None = None,
    problem_type: str | None = None,
) -> datasets.DatasetDict:
    """Data for sequence classification, normalised to columns `text` and `label` (a `ClassLabel`), and `text_pair`
    when `text_pair_column` names a second text of each row (sentence pairs: NLI, paraphrase, question-answer
    matching).

    Regression: a label column of floats (or of integers with `problem_type="regression"`, e.g. star ratings to
    predict as a number) becomes a float32 `label`. Multi-label: a column of lists of class names (json, jsonl,
    parquet), any number per row, becomes `List(ClassLabel)`. `label_kind(dataset)` tells the kinds apart.

    Exactly one source is used:
    - `dataset_name` (and optionally `dataset_config_name`): a dataset on the Hugging Face Hub;
      its train/validation/test splits are kept and any other split is dropped (logged).
    - `train_file` (required) plus optional `validation_file` / `test_file`: local .csv, .json,
      .jsonl or .parquet files.
    - nothing: the bundled Chinese review sentiment task (`load_sentiment_reviews`).

    If the label column is not already a `ClassLabel`, one is built from the sorted unique
    labels of the train split (strings, or integers named by their decimal string); a label
    seen only in validation/test is an error, since the model could never predict it.

    Raises:
        FileNotFoundError: a data file does not exist.
        ValueError: unsupported extension or unreadable file, missing text/label column,
            an empty split, missing values, label types other than strings or integers,
            or labels in validation/test that are absent from train.
    """
    files = {"train": train_file, "validation": validation_file, "test": test_file}
    files = {split: Path(path) for split, path in files.items() if path is not None}
    if dataset_name is not None and files:
        raise ValueError(f"Give either dataset_name ({dataset_name!r}) or data files ({sorted(files)}), not both.")
    if dataset_config_name is not None and dataset_name is None:
        raise ValueError(f"dataset_config_name={dataset_config_name!r} needs a dataset_name.")
    columns = {"text_column": text_column, "label_column": label_column, "text_pair_column": text_pair_column}
    named = [(flag, column) for flag, column in columns.items() if column is not None]
    for i, (flag, column) in enumerate(named):
        for other_flag, other in named[i + 1:]:
            if column == other:
                raise ValueError(f"{flag} and {other_flag} must differ, both are {column!r}.")

    if problem_type not in (None, "single_label_classification", "regression"):
        raise ValueError(f"problem_type must be 'single_label_classification' or 'regression' (or None: from the "
                         f"labels), got {problem_type!r}")
    if dataset_name is not None:
        raw = datasets.load_dataset(dataset_name, dataset_config_name)
        dropped = sorted(set(raw) - set(_SPLITS))
        if dropped:
            logger.info("Dropping splits %s of %s; only %s are used.", dropped, dataset_name, list(_SPLITS))
        raw = datasets.DatasetDict({split: raw[split] for split in _SPLITS if split in raw})
        sources = {split: f"split {split!r} of {dataset_name}" for split in raw}
        if "train" not in raw:
            raise ValueError(f"{dataset_name} has no 'train' split; its splits are {sorted(set(raw) | set(dropped))}.")
    elif files:
        if "train" not in files:
            raise ValueError("train_file is required when validation_file or test_file is given.")
        raw = load_split_files(files)
        sources = {split: f"{split} file {path}" for split, path in files.items()}
    else:
        if (text_column, label_column, text_pair_column) != ("text", "label", None):
            raise ValueError(
                f"text_column={text_column!r} / label_column={label_column!r} / text_pair_column="
                f"{text_pair_column!r} only apply to your own data; give dataset_name or train_file, or leave them "
                "at 'text' / 'label' / none."
            )
        return load_sentiment_reviews()

    return _normalise(raw, sources, text_column, label_column, text_pair_column, problem_type)


def load_split_files(files: dict[str, Path]) -> datasets.DatasetDict:
    """Each split's file (csv, json, jsonl or parquet) as a `Dataset`, after checking that it exists and that its
    extension names a format."""
    for split, path in files.items():
        if not path.is_file():
            raise FileNotFoundError(f"{split} file not found: {path}")
        if path.suffix.lower() not in _BUILDERS:
            raise ValueError(
                f"{split} file {path} has unsupported extension {path.suffix!r}; "
                f"use one of {sorted(_BUILDERS)}."
            )
    return datasets.DatasetDict(
        {split: _load_file(split, path, _BUILDERS[path.suffix.lower()]) for split, path in files.items()}
    )


def load_text_corpus(path: str | Path, text_column: str = "text") -> datasets.Dataset:
    """Texts for masked-LM pretraining from a file, as a `text` column with blank texts dropped.

    `.txt` holds one text per line; `.csv`, `.json`, `.jsonl` and `.parquet` name the column with `text_column`.
    Raises FileNotFoundError for a missing file and ValueError for an unsupported extension, an unreadable or
    empty file, or a missing column.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"corpus file not found: {path}")
    builder = _CORPUS_BUILDERS.get(path.suffix.lower())
    if builder is None:
        raise ValueError(
            f"corpus file {path} has unsupported extension {path.suffix!r}; use one of {sorted(_CORPUS_BUILDERS)}."
        )
    corpus = _load_file("train", path, builder)
    column = "text" if builder == "text" else text_column
    if column not in corpus.column_names:
        raise ValueError(f"Column {column!r} not found in corpus file {path}; its columns are {corpus.column_names}.")
    corpus = corpus.select_columns([column])
    if column != "text":
        corpus = corpus.rename_column(column, "text")
    return corpus.filter(lambda row: bool(row["text"].strip()))


def _first_undecodable_byte(source: Path | bytes, encoding: str) -> int | None:
    """Offset of the first byte of `source` (a file, or bytes already read) that `encoding` cannot read, or None;
    a file is streamed, so a large one is never held in memory."""
    decoder = codecs.getincrementaldecoder(encoding)()
    offset = 0
    with open(source, "rb") if isinstance(source, Path) else io.BytesIO(source) as f:
        while chunk := f.read(1 << 20):
            try:
                decoder.decode(chunk)
            except UnicodeDecodeError as error:
                return offset + max(error.start, 0)
            offset += len(chunk)
    try:
        decoder.decode(b"", final=True)
    except UnicodeDecodeError:
        return offset
    return None


def not_utf8(source: Path | bytes) -> str | None:
    """None when `source` (a file, or bytes such as stdin's) is UTF-8; else why not, for a message: "is not UTF-8
    (it decodes as GBK/GB18030, ...): byte N cannot be read". Chinese data often comes in GBK, which `datasets`
    and tokenizers report as a page of escaped bytes or a type error."""
    bad_byte = _first_undecodable_byte(source, "utf-8")
    if bad_byte is None:
        return None
    looks_like = ""
    if _first_undecodable_byte(source, "gb18030") is None:
        looks_like = " (it decodes as GBK/GB18030, common for Chinese text)"
    return f"is not UTF-8{looks_like}: byte {bad_byte} cannot be read"


def _check_utf8(split: str, path: Path) -> None:
    problem = not_utf8(path)
    if problem:
        raise ValueError(f"{split} file {path} {problem}. Convert it, e.g. "
                         f"`iconv -f GB18030 -t UTF-8 {path.name} > {path.stem}.utf8{path.suffix}`.")


def _warn_duplicate_columns(split: str, path: Path) -> None:
    # pandas (under datasets' CSV builder) renames a repeated header to NAME.1, NAME.2, ...: say which one is read.
    with open(path, encoding="utf-8", newline="") as f:
        header = next(csv.reader(f), [])
    repeated = sorted({name for name in header if header.count(name) > 1})
    if repeated:
        logger.warning("%s file %s repeats the column name(s) %s; the first column of each name is read (the others "
                       "become NAME.1, ...): rename them if that is not the one you mean.", split, path, repeated)


def _load_file(split: str, path: Path, name: str) -> datasets.Dataset:
    # load_dataset() in its three steps, so that an empty file is reported as such rather
    # than as a split instruction that "corresponds to no data".
    if path.stat().st_size == 0:
        raise ValueError(f"The {split!r} split ({split} file {path}) is empty.")
    if name in ("csv", "json", "text"):
        _check_utf8(split, path)
    if name == "csv":
        _warn_duplicate_columns(split, path)
    try:
        builder = datasets.load_dataset_builder(name, data_files=str(path))
        builder.download_and_prepare()
    except Exception as error:  # the builders raise many types (arrow, pandas, generation errors)
        reason = error.__cause__ or error
        raise ValueError(f"Could not read {split} file {path} as {name}: {reason!r}") from error
    if builder.info.splits["train"].num_examples == 0:
        raise ValueError(f"The {split!r} split ({split} file {path}) is empty.")
    return builder.as_dataset(split="train")


def _normalise(
    raw: datasets.DatasetDict, sources: dict[str, str], text_column: str, label_column: str,
    text_pair_column: str | None = None, problem_type: str | None = None,
) -> datasets.DatasetDict:
    """Check every split, then rename to `text` (/ `text_pair`) / `label` and encode labels as a shared
    `ClassLabel`, or as float32 numbers for regression."""
    text_columns = [text_column] + ([text_pair_column] if text_pair_column is not None else [])
    for split, dataset in raw.items():
        for column in (*text_columns, label_column):
            if column not in dataset.column_names:
                raise ValueError(
                    f"Column {column!r} not found in {sources[split]}; its columns are {dataset.column_names}."
                )
        if len(dataset) == 0:
            raise ValueError(f"The {split!r} split ({sources[split]}) is empty.")
        for column in (*text_columns, label_column):
            missing = dataset.data.column(column).null_count
            if missing:
                raise ValueError(f"Column {column!r} of {sources[split]} has {missing} missing values.")
        for column in text_columns:
            text_feature = dataset.features[column]
            if getattr(text_feature, "dtype", None) not in ("string", "large_string"):
                raise ValueError(f"Column {column!r} of {sources[split]} must hold strings, got {text_feature}.")
            blank = sum(not text.strip() for text in dataset[column])
            if blank:
                logger.warning("%d of the %d texts in column %r of %s are empty or only whitespace: the model sees "
                               "nothing but special tokens for them.", blank, len(dataset), column, sources[split])

    pair = {text_pair_column: "text_pair"} if text_pair_column else {}
    names = {text_column: "text", **pair, label_column: "label"}
    raw = datasets.DatasetDict(
        {split: dataset.select_columns(list(names)).rename_columns(names) for split, dataset in raw.items()}
    )

    class_label = raw["train"].features["label"]
    dtypes = {split: str(getattr(dataset.features["label"], "dtype", dataset.features["label"]))
              for split, dataset in raw.items()}
    if problem_type == "regression" or any(dtype.startswith("float") for dtype in dtypes.values()):
        return _regression_labels(raw, sources, label_column, dtypes)
    if isinstance(class_label, (datasets.List, datasets.Sequence)):
        return _multi_labels(raw, sources, label_column)
    if isinstance(class_label, datasets.ClassLabel):
        for split, dataset in raw.items():
            if dataset.features["label"] != class_label:
                raise ValueError(
                    f"Labels of {sources[split]} ({dataset.features['label']}) differ from train's ({class_label})."
                )
        return raw

    dtype = getattr(class_label, "dtype", None)
    if dtype not in ("string", "large_string") and not str(dtype).startswith(("int", "uint")):
        raise ValueError(
            f"Column {label_column!r} of {sources['train']} must hold strings or integers "
            f"(class names or ids), got {class_label}."
        )
    names = [str(value) for value in sorted(raw["train"].unique("label"))]
    if len(names) < 2:
        raise ValueError(
            f"Column {label_column!r} of {sources['train']} holds a single label {names}: a classifier needs at least "
            "two classes. Check --label_column, or add rows of the other classes."
        )
    numeric = [name for name in names if name.lstrip("-").isdigit()]
    fractions = [name for name in names if _is_number(name) and name not in numeric]
    if fractions and all(_is_number(name) for name in names):  # numbers written as text (e.g. JSON strings)
        numbers = raw.cast_column("label", datasets.Value("float32"))
        return _regression_labels(numbers, sources, label_column, dict.fromkeys(numbers, "float32"))
    if fractions:
        raise ValueError(
            f"Column {label_column!r} of {sources['train']} mixes numbers {fractions[:5]} with other values "
            f"{[n for n in names if not _is_number(n)][:5]}: regression needs every label a number, classification "
            "class names or integer ids; fix the rows that differ."
        )
    if numeric and len(numeric) < len(names):
        raise ValueError(
            f"Column {label_column!r} of {sources['train']} mixes class ids {numeric} with class names "
            f"{[n for n in names if n not in numeric]}, which would make {len(names)} classes; write every label "
            "the same way (all names or all ids)."
        )
    for split, dataset in raw.items():
        unseen = sorted({str(value) for value in dataset.unique("label")} - set(names))
        if unseen:
            raise ValueError(f"Labels {unseen} in {sources[split]} never occur in train (train has {names}).")

    # Integers go through their string form so that ids follow sorted order, not raw values.
    class_label = datasets.ClassLabel(names=names)
    return raw.cast_column("label", datasets.Value("string")).cast_column("label", class_label)


def _is_number(text: str) -> bool:
    try:
        float(text)
    except ValueError:
        return False
    return True


def _regression_labels(raw, sources, label_column, dtypes):
    """Every split's labels as float32 numbers, or ValueError naming the split whose labels are not all numbers."""
    for split, dtype in dtypes.items():
        if not dtype.startswith(("float", "int", "uint")):
            raise ValueError(
                f"Column {label_column!r} of {sources[split]} holds {dtype} values where regression needs numbers "
                f"(other splits hold {sorted(set(dtypes.values()) - {dtype})}); fix the rows that are not numbers."
            )
    regression = raw.cast_column("label", datasets.Value("float32"))
    values = np.asarray(regression["train"]["label"])
    if not np.isfinite(values).all() or values.std() == 0:
        raise ValueError(f"Column {label_column!r} of {sources['train']} needs finite numbers that vary to regress "
                         f"on; got values from {values.min()} to {values.max()}")
    return regression


def _multi_labels(raw, sources, label_column):
    """Lists of class names as `List(ClassLabel)` shared by every split, or ValueError naming what is wrong."""
    names = set()
    for split, dataset in raw.items():
        inner = dataset.features["label"].feature
        if isinstance(inner, datasets.ClassLabel):
            dataset = raw[split] = dataset.cast_column("label", datasets.List(datasets.Value("string")))
        elif getattr(inner, "dtype", None) not in ("string", "large_string"):
            raise ValueError(f"Column {label_column!r} of {sources[split]} holds lists of {inner}; multi-label rows "
                             "need lists of class names (strings)")
        found = {name for row in dataset["label"] for name in row}
        if split == "train":
            names = found
        elif found - names:
            raise ValueError(f"Labels {sorted(found - names)[:10]} in the lists of {sources[split]} never occur in "
                             f"train (train has {sorted(names)})")
    if len(names) < 2:
        raise ValueError(f"Column {label_column!r} of {sources['train']} names {sorted(names)} in its lists: "
                         "multi-label classification needs at least two classes")
    return raw.cast_column("label", datasets.List(datasets.ClassLabel(names=sorted(names))))


def text_columns(split: datasets.Dataset) -> list[str]:
    """The text columns of a normalised split: `text`, and `text_pair` where rows are pairs."""
    return [column for column in ("text", "text_pair") if column in split.column_names]


def all_texts(split: datasets.Dataset) -> list[str]:
    """Every text of a normalised split: its `text` column, then its `text_pair` column where rows are pairs (what a
    tokenizer or a vectoriser of the task is fitted on)."""
    return [text for column in text_columns(split) for text in split[column]]


def label_kind(dataset) -> str:
    """The problem type the `label` column of a normalised dataset (or DatasetDict) asks for."""
    feature = (next(iter(dataset.values())) if isinstance(dataset, dict) else dataset).features["label"]
    if isinstance(feature, datasets.ClassLabel):
        return "single_label_classification"
    return "multi_label_classification" if isinstance(feature, (datasets.List, datasets.Sequence)) else "regression"


def multi_hot(dataset, num_labels: int):
    """`label` lists of class ids -> float vectors of `num_labels` 0/1, the targets of BCEWithLogitsLoss."""
    def encode(batch):
        vectors = np.zeros((len(batch["label"]), num_labels), dtype=np.float32)
        for row, ids in enumerate(batch["label"]):
            vectors[row, ids] = 1.0
        return {"label": vectors.tolist()}

    return dataset.map(encode, batched=True, desc="Multi-hot labels").cast_column(
        "label", datasets.List(datasets.Value("float32")))

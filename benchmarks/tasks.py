"""Classification tasks the recipe search measures on: the bundled reviews, and cases a user brings that they are not.

- `reviews`: the bundled binary sentiment task (13,832 / 1,788 / 1,743 short reviews, balanced).
- `longmix3`: three classes of long texts with a 10% minority (3,000 / 500 / 1,000 rows). Each text joins 3 to 6
  reviews of one split into one long "multi-part review"; its label is `positive` (every part positive), `negative`
  (every part negative) or `mixed` (both kinds, at least a quarter of the parts of each). Mixed is 10% of every
  split, and the hardest class: it needs evidence from parts anywhere in a text longer than 128 tokens (median ~300
  characters, 90th percentile ~580).
- `reviews-imbalanced`: the bundled reviews with negatives kept at 1 in 9 of every split (a 10% minority class).
- `reviews-pairs`: sentence pairs (finetune.py's --text_pair_column): two reviews of one split, labelled `same` when
  both are positive or both negative and `different` otherwise, half each (6,000 / 1,000 / 1,000 pairs). Neither
  text alone says anything about the label: the model must read both and compare them.
- `reviews-halves`: sentence pairs of another kind: the first half of a review (cut between 40% and 60% of its
  length) and either its own second half (`same`) or the second half of another review of the split (`other`), half
  each (6,000 / 1,000 / 1,000 pairs; reviews of at least 20 characters). Shared words, topic and style are the
  evidence, as in next-sentence prediction and paraphrase detection.
- `reviews-3k`, `reviews-1k`: a user with little labelled data: 3,000 (resp. 1,000) training and 500 (250) validation
  reviews drawn from the bundled splits, tested on the whole test split (1,743) so that a seed's score is no noisier
  than the main job's.

The data of the last four are written as CSV files once (under benchmarks/runs/tasks/) and given to finetune.py with
`--train_file/--validation_file/--test_file`, exactly as a user's own files would be.
"""

import random

import datasets

from hf_feedback.data.corpora import load_sentiment_reviews
from hf_feedback.data.user_data import all_texts, load_text_classification_data

from .common import RUNS

_FOLDER = RUNS / "tasks"
_SIZES = {"train": 3000, "validation": 500, "test": 1000}
_PAIR_SIZES = {"train": 6000, "validation": 1000, "test": 1000}
_MINORITY = 0.10
_FEW = {"reviews-3k": {"train": 3000, "validation": 500}, "reviews-1k": {"train": 1000, "validation": 250}}


def _longmix3(split, rows, rng):
    texts = {label: [t for t, l in zip(split["text"], split["label"]) if l == label] for label in (0, 1)}
    out = []
    for i in range(rows):
        parts = rng.randint(3, 6)
        if i < round(rows * _MINORITY):
            minority = rng.randint(max(1, parts // 4), parts // 2)
            polarity = rng.randint(0, 1)
            chosen = rng.sample(texts[polarity], minority) + rng.sample(texts[1 - polarity], parts - minority)
            rng.shuffle(chosen)
            label = "mixed"
        else:
            polarity = rng.randint(0, 1)
            chosen = rng.sample(texts[polarity], parts)
            label = ("negative", "positive")[polarity]
        out.append({"text": "".join(chosen), "label": label})
    rng.shuffle(out)
    return out


def _imbalanced(split, rng):
    negatives = [t for t, l in zip(split["text"], split["label"]) if l == 0]
    positives = [t for t, l in zip(split["text"], split["label"]) if l == 1]
    kept = rng.sample(negatives, round(len(positives) * _MINORITY / (1 - _MINORITY)))
    out = [{"text": t, "label": "negative"} for t in kept] + [{"text": t, "label": "positive"} for t in positives]
    rng.shuffle(out)
    return out


def _few(split, rows, rng):
    """`rows` reviews of the split drawn at random (all of them where `rows` is None), labels as words."""
    picked = rng.sample(range(len(split)), rows) if rows is not None else range(len(split))
    texts, labels, names = split["text"], split["label"], split.features["label"].names  # each column read once
    return [{"text": texts[i], "label": names[labels[i]]} for i in picked]


def _pairs(split, rows, rng):
    texts = {label: [t for t, l in zip(split["text"], split["label"]) if l == label] for label in (0, 1)}
    out = []
    for i in range(rows):
        first = rng.randint(0, 1)
        second = first if i % 2 else 1 - first
        out.append({"text": rng.choice(texts[first]), "text_pair": rng.choice(texts[second]),
                    "label": "same" if first == second else "different"})
    rng.shuffle(out)
    return out


def _halves(split, rows, rng):
    texts = [t for t in split["text"] if len(t) >= 20]
    out = []
    for i, text in enumerate(rng.sample(texts, rows)):
        other = text
        while other == text:
            other = rng.choice(texts)
        cut = round(len(text) * rng.uniform(0.4, 0.6))
        second = text[cut:] if i % 2 else other[round(len(other) * rng.uniform(0.4, 0.6)):]
        out.append({"text": text[:cut], "text_pair": second, "label": "same" if i % 2 else "other"})
    rng.shuffle(out)
    return out


# How each task other than the bundled reviews is built from each split of them: a function of the split, the rows
# to make of it and a random generator; the imbalanced reviews keep each split's own size.
_BUILDS = {
    "longmix3": lambda split, name, rng: _longmix3(split, _SIZES[name], rng),
    "reviews-imbalanced": lambda split, name, rng: _imbalanced(split, rng),
    "reviews-pairs": lambda split, name, rng: _pairs(split, _PAIR_SIZES[name], rng),
    "reviews-halves": lambda split, name, rng: _halves(split, _PAIR_SIZES[name], rng),
    **{task: (lambda split, name, rng, task=task: _few(split, _FEW[task].get(name), rng)) for task in _FEW},
}
TASKS = ("reviews", *_BUILDS)
PAIR_TASKS = ("reviews-pairs", "reviews-halves")


def task_files(task):
    """The task's train/validation/test CSV files (written on first use), or {} for the bundled reviews."""
    if task == "reviews":
        return {}
    if task not in TASKS:
        raise ValueError(f"unknown task {task!r}; tasks are {list(TASKS)}")
    files = {split: _FOLDER / task / f"{split}.csv" for split in ("train", "validation", "test")}
    if not all(path.is_file() for path in files.values()):
        reviews = load_sentiment_reviews()
        for split, path in files.items():
            rows = _BUILDS[task](reviews[split], split, random.Random(f"{task}-{split}"))
            path.parent.mkdir(parents=True, exist_ok=True)
            datasets.Dataset.from_list(rows).to_csv(path, index=False)
    return files


def task_arguments(task):
    """finetune.py's data flags for the task."""
    pair = ["--text_pair_column", "text_pair"] if task in PAIR_TASKS else []
    return [arg for split, path in task_files(task).items() for arg in (f"--{split}_file", str(path))] + pair


def load_task(task):
    """The task as finetune.py sees it: a DatasetDict with `text` (and `text_pair` for pairs) and a `label`
    ClassLabel."""
    files = task_files(task)
    if not files:
        return load_sentiment_reviews()
    return load_text_classification_data(train_file=files["train"], validation_file=files["validation"],
                                         test_file=files["test"],
                                         text_pair_column="text_pair" if task in PAIR_TASKS else None)


def task_texts(task):
    """The task's training texts (both of each pair), as finetune.py trains its tokenizer on them."""
    return all_texts(load_task(task)["train"])

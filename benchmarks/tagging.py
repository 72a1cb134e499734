"""Section 6: token classification on the bundled People's Daily (recipes/token_classification.py's defaults).

Two runs of the recipe as the README gives it, a new model each: word segmentation (`--corpus cws`, B/M/E/S per
character, scored as words: a word counts when both of its ends are right) and part of speech (`--corpus pos`,
token accuracy over words). The baseline beside segmentation is jieba (its default dictionary and HMM for unknown
words), scored on the same test sentences by the same seqeval arithmetic. jieba's dictionary was built from
corpora that may include the People's Daily, so its number is a reference, not a held-out score. The baseline
beside part of speech is the most frequent tag of each word in the training split (the commonest tag overall for a
word train never saw), the classic floor of tagging.
"""

import json
from collections import Counter

from .common import RUNS, recorded_run, table, verdict

TASKS = {"cws": "word segmentation (B/M/E/S per character)", "pos": "part of speech (a tag per word)"}
QUICK_ARGS = ["--max_train_samples", "300", "--max_eval_samples", "100", "--max_steps", "20", "--eval_steps", "10",
              "--save_steps", "10", "--config_overrides",
              "hidden_size=32,num_hidden_layers=1,num_attention_heads=2,intermediate_size=64"]


def _run_recipe(task, quick):
    """The recipe's default run of `task` (trained here unless this machine has it); its results and wall time."""
    output = RUNS / ("quick" if quick else "") / "tagging" / task
    record = recorded_run(["recipes/token_classification.py", "--corpus", task, "--overwrite_output_dir",
                           "--disable_tqdm", "true", *(QUICK_ARGS if quick else [])], output,
                          output.parent / f"{task}.log")
    results = json.loads((output / "all_results.json").read_text())
    config = json.loads((output / "config.json").read_text())
    model = {key: config.get(key) for key in ("num_hidden_layers", "hidden_size", "position_embedding_type",
                                              "norm_position", "char_vocab_size", "ngram_vocab_size",
                                              "ngram_sizes")}
    return {**record, "model": model, "epochs": results["epoch"],
            **{k: v for k, v in results.items() if k.startswith(("test_", "eval_"))}}


# Issue 29's targets for the taggers (section 10 judges the pretrained start by them too).
TARGET_POS_ACCURACY, TARGET_CWS_F1 = 0.94, 0.95


def _model_words(model):
    """What the recipe's new model was, in words, from its saved configuration."""
    return (f"a new {model['num_hidden_layers']}-layer model of width {model['hidden_size']}, "
            f"{model['norm_position']}-norm, {model['position_embedding_type']} positions"
            + (", character embeddings" if model["char_vocab_size"] else "")
            + (f", hashed {'/'.join(map(str, model['ngram_sizes']))}-gram embeddings of the tokens "
               f"({model['ngram_vocab_size']:,} rows)" if model.get("ngram_vocab_size") else ""))


def jieba_baseline(sentences):
    """seqeval's strict word F1 (and token accuracy over characters) of jieba's segmentation of `sentences`, each a
    (characters, B/M/E/S tags) pair: the metric module our segmentation runs are scored with."""
    import jieba

    from hf_feedback.tasks.metrics import load_metric_module
    from hf_feedback.tasks.tagging import chunk_tags, segmentation_tags

    jieba.setLogLevel(60)  # its dictionary-loading chatter
    references, predictions = [], []
    for characters, tags in sentences:
        words = list(jieba.cut("".join(characters), HMM=True))
        predicted = segmentation_tags(words)
        if len(predicted) != len(tags):  # jieba keeps every character; a mismatch would be a bug here
            raise RuntimeError(f"jieba changed the text {''.join(characters)!r}")
        references.append(chunk_tags(tags))
        predictions.append(chunk_tags(predicted))
    return load_metric_module("tagging").compute(predictions=predictions, references=references, chunks=True,
                                                 scheme="IOBES")


def most_frequent_tag_accuracy(train, test):
    """Token accuracy on `test` of tagging each word with its most frequent tag in `train` (rows of tokens and tag
    ids); a word train never saw gets train's commonest tag."""
    counts = {}
    for tokens, tags in zip(train["tokens"], train["tags"]):
        for token, tag in zip(tokens, tags):
            counts.setdefault(token, Counter())[tag] += 1
    commonest = sum(counts.values(), Counter()).most_common(1)[0][0]
    best = {token: tags.most_common(1)[0][0] for token, tags in counts.items()}
    pairs = [(best.get(token, commonest), tag) for tokens, tags in zip(test["tokens"], test["tags"])
             for token, tag in zip(tokens, tags)]
    return sum(p == t for p, t in pairs) / len(pairs)


def run(quick):
    from hf_feedback.tasks.tagging import load_peoples_daily_tags

    runs = {task: _run_recipe(task, quick) for task in TASKS}
    test = load_peoples_daily_tags("cws")["test"]
    pos = load_peoples_daily_tags("pos")
    if quick:
        test, pos["test"] = test.select(range(100)), pos["test"].select(range(100))
    names = test.features["tags"].feature.names
    baseline = jieba_baseline([(row["tokens"], [names[i] for i in row["tags"]]) for row in test])
    return {"runs": runs, "jieba": baseline, "test_sentences": len(test),
            "most_frequent_tag": most_frequent_tag_accuracy(pos["train"], pos["test"])}


def render(result):
    runs, jieba = result["runs"], result["jieba"]
    rows = [
        ["word segmentation", "ours, from scratch (`--corpus cws`)", f"{runs['cws']['test_f1']:.4f}",
         f"{runs['cws']['test_precision']:.4f} / {runs['cws']['test_recall']:.4f}",
         f"{runs['cws']['test_accuracy']:.4f}", f"{runs['cws']['wall_s'] / 60:.1f}"],
        ["word segmentation", "jieba (dictionary + HMM)", f"{jieba['f1']:.4f}",
         f"{jieba['precision']:.4f} / {jieba['recall']:.4f}", f"{jieba['accuracy']:.4f}", "n/a"],
        ["part of speech", "ours, from scratch (`--corpus pos`)", "n/a", "n/a", f"{runs['pos']['test_accuracy']:.4f}",
         f"{runs['pos']['wall_s'] / 60:.1f}"],
        ["part of speech", "each word's most frequent training tag", "n/a", "n/a",
         f"{result['most_frequent_tag']:.4f}", "n/a"],
    ]
    return [
        f"People's Daily, January 1998, test split ({result['test_sentences']:,} sentences, fixed by a hash of each "
        "sentence). Each of our rows is one run of `recipes/token_classification.py` with its defaults ("
        f"{_model_words(runs['pos']['model'])}, token embeddings started from their co-occurrences in the training "
        f"sentences, {runs['pos']['epochs']:g} epoch(s), the best checkpoint by validation); wall time is the process's "
        "own on this machine. "
        "Word F1 is seqeval's strict IOBES score over words; the character accuracy of segmentation counts B/M/E/S "
        "tags.",
        "",
        *table(["task", "model", "word F1", "word precision / recall", "token accuracy", "wall (min)"], rows),
        "",
        "jieba's dictionary comes from large corpora that may include the People's Daily: a reference point, not a "
        "held-out score.",
        "",
        "Targets:",
        verdict(runs["cws"]["test_f1"] >= TARGET_CWS_F1, f"word segmentation {runs['cws']['test_f1']:.4f} word F1 "
                                                         f"(target ≥ {TARGET_CWS_F1})"),
        verdict(runs["pos"]["test_accuracy"] >= TARGET_POS_ACCURACY,
                f"part of speech {runs['pos']['test_accuracy']:.4f} token accuracy (target ≥ {TARGET_POS_ACCURACY}; "
                f"the most frequent tag {result['most_frequent_tag']:.4f})"),
    ]

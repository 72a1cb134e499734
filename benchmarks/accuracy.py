"""Section 4: test accuracy on the bundled reviews' fixed test split, mean ± std over seeds, against a classical
baseline and a converted MiniLM.

Every row is a variant of the recipe search (benchmarks/recipe_search.py: `python recipes/finetune.py ...`, with
the tokenizer saved once, task-adaptive pretraining run once) on the task `reviews`, over SEEDS; each finished
(variant, seed) is one line of benchmarks/results/recipe_search.jsonl, and runs already there are not repeated.
So this section and RECIPE_SEARCH.md (the table of every lever tried) read the same runs. TF-IDF is deterministic:
one seed. A full run takes hours on a small CPU machine: `python benchmarks/run.py --only accuracy`; with --quick
or --recorded it runs nothing and reports what is recorded (rows not run yet say so).

Targets (issue "Models worth using"): the main job from scratch (finetune.py's defaults) at least TF-IDF's accuracy
in <= 10 minutes; pretraining + fine-tuning >= TF-IDF + 2 points within 60 minutes, pretraining included, and
>= 2 points over the same architecture from scratch; LoRA within 1 point of full fine-tuning with <= 10% of the
parameters trainable.
"""

import json
import statistics

from . import recipe_search
from .common import percent, table, verdict

TASK = "reviews"
SEEDS = (42, 43, 44)
# Rows of the report: (title, recipe-search variant). The variants' exact arguments are in recipe_search.VARIANTS.
TFIDF, SCRATCH, TWIN, PRETRAINED, LORA = ("tfidf", "default", "rotary", "tapt-mlm30-rotary-lr5e-4",
                                          "tapt-mlm30-rotary-lora-lr2e-3")
MINILM_FULL, MINILM_LORA = "minilm-full", "minilm-lora"
ROWS = [
    ("TF-IDF char 1-3-grams + logistic regression", TFIDF),
    ("ours, from scratch (finetune.py's defaults: the README's main job)", SCRATCH),
    ("ours, from scratch, rotary positions (the pretrained architecture)", TWIN),
    ("ours, task-adaptive masked-LM pretraining + full fine-tuning", PRETRAINED),
    ("ours, task-adaptive masked-LM pretraining + LoRA", LORA),
    ("all-MiniLM-L6-v2 (converted) + full fine-tuning", MINILM_FULL),
    ("all-MiniLM-L6-v2 (converted) + LoRA", MINILM_LORA),
]

SCRATCH_BUDGET_S = 10 * 60
PRETRAINED_GAIN, PRETRAINED_BUDGET_S = 0.02, 60 * 60  # over TF-IDF and over the twin from scratch; wall clock
LORA_MAX_DROP, LORA_MAX_TRAINABLE = 0.01, 0.10


def _seeds(variant):
    # TF-IDF is deterministic; the MiniLM rows are references (its vocabulary misses most Chinese characters, see
    # below) at ~3.4x our cost per token: one seed each.
    return SEEDS[:1] if variant in (TFIDF, MINILM_FULL, MINILM_LORA) else SEEDS


def recorded(variant):
    """The recipe-search rows of `variant` on the task for SEEDS, by seed (the latest line of each seed wins; runs
    made with other arguments than the variant now has do not count)."""
    arguments = recipe_search.VARIANTS[variant][1]
    rows = {row["seed"]: row for row in recipe_search.latest_rows(
        lambda row: row["task"] == TASK and row["variant"] == variant and row["seed"] in _seeds(variant)
        and row["arguments"] == arguments)}  # runs of the variant as it is defined now
    for seed, row in rows.items():
        if "trainable_parameters" not in row:  # recorded before rows counted them: count from the run's output
            output = recipe_search.SCRATCH / TASK / variant / f"seed{seed}"
            try:
                results = json.loads((output / ("test_results.json" if variant == TFIDF else "all_results.json")).read_text())
                row.update(recipe_search._parameters(output, results, (output.parent / f"seed{seed}.log").read_text()))
            except OSError:  # the run's folder is not on this machine (benchmarks/runs is not committed)
                row.update(trainable_parameters=None, all_parameters=None)
    return rows


def run(recorded_only):
    """Run every (variant, seed) of ROWS not yet recorded (none with --quick or --recorded), then collect the rows."""
    if not recorded_only:
        for _, variant in ROWS:
            for seed in _seeds(variant):
                if seed not in recorded(variant):
                    recipe_search.run(variant, TASK, seed)
        recipe_search.write_table()
    return {"rows": {variant: list(recorded(variant).values()) for _, variant in ROWS}}


# ----------------------------------------------------------------------------------------------------------------
# The report
# ----------------------------------------------------------------------------------------------------------------
def _mean_std(values, scale=1.0, digits=1):
    mean = statistics.mean(values) * scale
    std = statistics.stdev(values) * scale if len(values) > 1 else 0.0
    return f"{mean:.{digits}f} ± {std:.{digits}f}"


def _mean(rows, key):
    return statistics.mean(row[key] for row in rows) if rows else None


def _minutes(rows):
    """Mean wall minutes of the fine-tuning runs, with the (one) pretraining they start from."""
    text = f"{_mean(rows, 'wall_s') / 60:.1f}"
    if "pretrain_wall_s" in rows[0]:
        text += f" + {rows[0]['pretrain_wall_s'] / 60:.1f} (pretraining)"
    return text


def render(result):
    rows_of = result["rows"]
    lines = [
        f"Test split of the bundled reviews; mean ± std over seeds {', '.join(map(str, SEEDS))} (one run: TF-IDF, "
        "which is deterministic, and the MiniLM references), each run with the same saved tokenizer, so that runs differ only by seed. Every "
        "row is a recipe-search variant (`benchmarks/recipe_search.py`; arguments on top of finetune.py's "
        "defaults below, every lever tried in `benchmarks/RECIPE_SEARCH.md`). Wall time: each process's own, "
        "start-up, tokenization, evaluation and saving included; runs shared the 2-core CPU with other work at "
        "times, so these are upper bounds.",
        "",
    ]
    body = []
    for title, variant in ROWS:
        rows = rows_of.get(variant, [])
        if not rows:
            body.append([title, "not run yet", "", "", "", "", ""])
            continue
        trainable = [row.get("trainable_parameters") for row in rows]
        share = (f"{trainable[0]:,} ({percent(trainable[0] / rows[0]['all_parameters'])})"
                 if trainable[0] is not None else "n/a")
        body.append([title, _mean_std([r["test_accuracy"] for r in rows], 100), _mean_std([r["test_f1"] for r in rows], 1, 3),
                     len(rows), share, _minutes(rows), f"`{variant}`"])
    lines += table(["model", "test accuracy (%)", "test macro F1", "seeds", "trainable parameters", "wall (min)",
                    "variant"], body)
    lines += ["", "Arguments of each variant (recipe_search.VARIANTS / PRETRAINS), on top of the defaults:", ""]
    for _, variant in ROWS:
        (kind, size), arguments, *base = recipe_search.VARIANTS[variant]
        text = f"- `{variant}`: `{' '.join(arguments) or '(defaults)'}`"
        if kind not in ("tfidf", "checkpoint"):
            text += f"; tokenizer {kind} {size}"
        if base and base[0] in recipe_search.PRETRAINS:
            text += f"; starts from `recipes/pretrain.py {' '.join(recipe_search.PRETRAINS[base[0]])}` on the train texts"
        elif base:
            text += f"; starts from the converted `{base[0]}` checkpoint"
        lines.append(text)
    lines += ["", "MiniLM's English WordPiece vocabulary has few Chinese characters: most characters of the reviews "
              "become [UNK] (tests/test_convert_bert.py checks the share), so its rows show that the machinery works on "
              "a converted BERT, not what BERT-scale pretraining would give.", "", "Targets:", *_targets(rows_of),
              "", *READING]
    return lines


# What was tried on the way to these rows and how to read a miss; the numbers are in RECIPE_SEARCH.md's tables.
READING = [
    "What was tried (every lever with its mean ± std in `benchmarks/RECIPE_SEARCH.md`) and why targets fall short:",
    "- From scratch: tokens (WordPiece characters vs a 16k unigram vocabulary), batches (length-grouped vs random), "
    "norm position and learning rate, 1-3 epochs with and without early stopping, best-checkpoint selection, "
    "rotary positions, max pooling, dropout. Validation accuracy levels off within the first epoch for every one "
    "of them: 14k short reviews are not enough for a transformer from scratch to out-learn character n-grams; what "
    "moves it is knowledge from outside the labels.",
    "- Pretraining: task-adaptive masked-LM pretraining on the training texts (30% masking, rotary, pre-norm, ~11 "
    "epochs in 2,400 steps) is the first configuration to beat TF-IDF, and the gain over the same model from "
    "scratch grew from +0.3 (People's Daily + reviews, 15% masking, 1,200 steps, earlier defaults) to the row "
    "above. The budget is the limit: the validation masked-LM loss was still falling at the end, and 47 minutes "
    "of a shared 2-core CPU leave no room for more steps inside the hour. Levers not yet measured: ELECTRA's "
    "replaced-token detection (learns from every token, the most compute-efficient objective at small budgets), "
    "15% vs 30% vs 40% masking, pretraining on People's Daily + reviews with the unigram tokenizer, a GPU run.",
    "- LoRA: r 8 on every linear layer leaves the word embeddings (over half the model with a 16k vocabulary) as "
    "the masked LM left them, and fine-tuning them is worth more than the adapters recover; the variant with "
    "LoRA on the embeddings too is in RECIPE_SEARCH.md.",
]


def _accuracy(rows_of, variant):
    return _mean(rows_of.get(variant, []), "test_accuracy")


def _targets(rows_of):
    lines = []
    tfidf, scratch = _accuracy(rows_of, TFIDF), _accuracy(rows_of, SCRATCH)
    if tfidf is None or scratch is None:
        lines.append(verdict(False, "main job from scratch vs TF-IDF: not measured yet"))
    else:
        wall = _mean(rows_of[SCRATCH], "wall_s")
        lines.append(verdict(scratch >= tfidf and wall <= SCRATCH_BUDGET_S,
                             f"main job from scratch: {percent(scratch)} vs TF-IDF {percent(tfidf)} "
                             f"({100 * (scratch - tfidf):+.1f} points, target ≥ 0) in {wall / 60:.1f} min (target ≤ "
                             f"{SCRATCH_BUDGET_S // 60})"))

    pretrained, twin = _accuracy(rows_of, PRETRAINED), _accuracy(rows_of, TWIN)
    if tfidf is None or pretrained is None or twin is None:
        lines.append(verdict(False, "pretraining + fine-tuning vs TF-IDF and vs the same model from scratch: not "
                                    "measured yet"))
    else:
        rows = rows_of[PRETRAINED]
        wall = _mean(rows, "wall_s") + rows[0]["pretrain_wall_s"]
        met = pretrained - tfidf >= PRETRAINED_GAIN and pretrained - twin >= PRETRAINED_GAIN and wall <= PRETRAINED_BUDGET_S
        lines.append(verdict(met, f"pretraining + full fine-tuning: {percent(pretrained)}, "
                                  f"{100 * (pretrained - tfidf):+.1f} points over TF-IDF and "
                                  f"{100 * (pretrained - twin):+.1f} over the same architecture from scratch "
                                  f"({percent(twin)}) (targets ≥ +{100 * PRETRAINED_GAIN:.0f} each), in "
                                  f"{wall / 60:.1f} min of wall clock, pretraining included (target ≤ "
                                  f"{PRETRAINED_BUDGET_S // 60})"))

    for full_variant, lora_variant, what in ((PRETRAINED, LORA, "ours, pretrained"),
                                             (MINILM_FULL, MINILM_LORA, "MiniLM")):
        full, lora = _accuracy(rows_of, full_variant), _accuracy(rows_of, lora_variant)
        if full is None or lora is None:
            lines.append(verdict(False, f"{what}: LoRA vs full fine-tuning not measured yet"))
            continue
        row = rows_of[lora_variant][0]
        share = row["trainable_parameters"] / row["all_parameters"] if row.get("trainable_parameters") else float("nan")
        lines.append(verdict(full - lora <= LORA_MAX_DROP and share <= LORA_MAX_TRAINABLE,
                             f"{what}: LoRA {percent(lora)} vs full {percent(full)} ({100 * (lora - full):+.1f} "
                             f"points, target ≥ {-100 * LORA_MAX_DROP:.0f}) with {percent(share)} of the parameters "
                             f"trainable (target ≤ {percent(LORA_MAX_TRAINABLE)})"))
    return lines


__all__ = ["ROWS", "SEEDS", "recorded", "render", "run"]

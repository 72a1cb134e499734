"""Section 7: a causal language model on the bundled People's Daily (`recipes/pretrain.py --objective clm`).

One run of the recipe with its defaults (a new decoder of the default size: pre-norm, rotary positions, 6 layers of
width 256; batch 64, learning rate 1e-3, a unigram tokenizer trained on the corpus) for a fixed budget of STEPS, and
its validation perplexity beside an interpolated bigram model of the same tokens, the classic n-gram floor: both
predict the same tokens of the same validation texts (each token after [CLS] from those before it, the closing
[SEP] included, texts cut at the recipe's 128 tokens), so the two perplexities compare directly.
"""

import json
import math
import re
from collections import Counter

from .common import RUNS, recorded_run, table

STEPS = 600
SEED = 42
VALIDATION_SHARE = 0.02  # the recipe's --validation_split_percentage 2
QUICK_ARGS = ["--max_train_samples", "400", "--config_overrides",
              "hidden_size=32,num_hidden_layers=1,num_attention_heads=2,intermediate_size=64",
              "--tokenizer_vocab_size", "2000"]
LAMBDAS = (0.5, 0.6, 0.7, 0.8, 0.9, 0.95)  # the bigram's weight, chosen on a slice of the training texts


def _run_recipe(quick):
    """The recipe's run (trained here unless this machine has it); its results, wall time and the card's sample."""
    output = RUNS / ("quick" if quick else "") / "causal_lm"
    steps = 20 if quick else STEPS
    record = recorded_run(["recipes/pretrain.py", "--objective", "clm", "--overwrite_output_dir", "--disable_tqdm",
                           "true", "--seed", str(SEED), "--max_steps", str(steps), "--eval_steps", str(steps // 3),
                           "--save_steps", str(steps // 3), *(QUICK_ARGS if quick else [])], output,
                          output.parent / "causal_lm.log")
    results = json.loads((output / "all_results.json").read_text())
    sample = re.search(r"^> \*\*(.+?)\*\*(.*)$", (output / "README.md").read_text(), flags=re.M)
    return output, {**record, "perplexity": results["perplexity"],
                    "eval_loss": results["eval_loss"], "sample": list(sample.groups()) if sample else None}


def _token_rows(tokenizer, texts):
    return tokenizer(list(texts), truncation=True, max_length=128)["input_ids"]


def _bigram_model(rows, vocab_size):
    unigrams, bigrams, contexts = Counter(), Counter(), Counter()
    for ids in rows:
        unigrams.update(ids[1:])
        bigrams.update(zip(ids, ids[1:]))
        contexts.update(ids[:-1])
    total = sum(unigrams.values())
    return unigrams, bigrams, contexts, total, vocab_size


def _log_likelihood(model, rows, weight):
    """Sum of log P(token | previous token) over every predicted token of `rows`, and their count; P mixes the
    bigram's relative frequency (weight) with the add-one unigram."""
    unigrams, bigrams, contexts, total, vocab_size = model
    log_sum, count = 0.0, 0
    for ids in rows:
        for previous, token in zip(ids, ids[1:]):
            unigram = (unigrams[token] + 1) / (total + vocab_size)
            bigram = bigrams[previous, token] / contexts[previous] if contexts[previous] else 0.0
            log_sum += math.log(weight * bigram + (1 - weight) * unigram)
            count += 1
    return log_sum, count


def bigram_perplexity(tokenizer, train_texts, validation_texts):
    """Validation perplexity of an interpolated bigram model of the tokenizer's tokens, its weight chosen on the
    last 5% of the training texts (fitted on the rest), then refitted on all of them; and of its add-one unigram
    part alone (weight 0), the floor below it."""
    train_rows = _token_rows(tokenizer, train_texts)
    held_out = max(1, len(train_rows) // 20)
    fitted = _bigram_model(train_rows[:-held_out], len(tokenizer))
    weight = max(LAMBDAS, key=lambda w: _log_likelihood(fitted, train_rows[-held_out:], w)[0])
    model, validation_rows = _bigram_model(train_rows, len(tokenizer)), _token_rows(tokenizer, validation_texts)
    log_sum, count = _log_likelihood(model, validation_rows, weight)
    unigram_log_sum, _ = _log_likelihood(model, validation_rows, 0.0)
    return {"perplexity": math.exp(-log_sum / count), "weight": weight, "tokens": count,
            "unigram_perplexity": math.exp(-unigram_log_sum / count)}


def run(quick):
    from transformers import AutoTokenizer

    from hf_feedback.data import load_peoples_daily
    from hf_feedback.recipe_utils import sample

    output, ours = _run_recipe(quick)
    corpus = sample(load_peoples_daily(), 400 if quick else None, SEED)  # as the recipe's --max_train_samples
    splits = corpus.train_test_split(test_size=VALIDATION_SHARE, seed=SEED)
    tokenizer = AutoTokenizer.from_pretrained(output)
    baseline = bigram_perplexity(tokenizer, splits["train"]["text"], splits["test"]["text"])
    return {"ours": ours, "bigram": baseline, "validation_texts": len(splits["test"]),
            "train_texts": len(splits["train"]), "steps": 20 if quick else STEPS, "vocabulary": len(tokenizer)}


def render(result):
    ours, bigram = result["ours"], result["bigram"]
    rows = [
        ["ours, causal LM from scratch (`recipes/pretrain.py --objective clm --max_steps "
         f"{result['steps']}`)", f"{ours['perplexity']:.2f}", f"{ours['wall_s'] / 60:.1f}"],
        [f"interpolated bigram (weight {bigram['weight']:g}) + add-one unigram", f"{bigram['perplexity']:.2f}", "n/a"],
        *([["add-one unigram alone", f"{bigram['unigram_perplexity']:.2f}", "n/a"]]
          if "unigram_perplexity" in bigram else []),
    ]
    lines = [
        f"People's Daily, January 1998: {result['train_texts']:,} training and {result['validation_texts']:,} "
        f"validation sentences (the recipe's 2% split, seed {SEED}); a unigram vocabulary of "
        f"{result['vocabulary']:,} tokens trained on the corpus; {bigram['tokens']:,} validation tokens predicted. "
        "Perplexity is exp of the mean cross-entropy per predicted token (ours: of Trainer's validation loss, which "
        "averages its batches' per-token means); wall time is the recipe's process on this machine.",
        "",
        *table(["model", "validation perplexity", "wall (min)"], rows),
    ]
    if ours["sample"]:
        lines += ["", "Greedy continuation of a validation sentence's first tokens (bold), from the run's card:", "",
                  f"> **{ours['sample'][0]}**{ours['sample'][1]}"]
    return lines

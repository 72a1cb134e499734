"""Section 8: sequence to sequence, the bundled pinyin-to-characters task (`recipes/seq2seq.py`).

One run of the recipe with its defaults (a new encoder-decoder of the default size: pre-norm, rotary positions, 6
layers of width 256 in each half; one epoch of the training split, batch 32, learning rate 1e-3, greedy decoding; a
WordPiece tokenizer trained on the pinyin and the characters), its validation and test splits cut to EVAL_SAMPLES
sentences each (the recipe's --max_eval_samples, a seeded sample) to keep the CPU run's generation short. Beside it,
the floor: each syllable written as the character it most often stood for in the training split
(hf_feedback.seq2seq.most_frequent_character_baseline). Both are scored on the same test sentences against the
original sentences, by the same `generation` metric module.
"""

from .common import RUNS, recorded_run, table

EVAL_SAMPLES = 500
QUICK_ARGS = ["--max_train_samples", "300", "--max_steps", "20", "--eval_steps", "10", "--save_steps", "10",
              "--config_overrides", "hidden_size=32,num_hidden_layers=1,num_attention_heads=2,intermediate_size=64",
              "--tokenizer_vocab_size", "3000", "--generation_max_length", "32"]
QUICK_TEST = 100


def _run_recipe(quick):
    output = RUNS / ("quick" if quick else "") / "seq2seq"
    return output, recorded_run(["recipes/seq2seq.py", "--overwrite_output_dir", "--disable_tqdm", "true",
                                 "--max_eval_samples", str(QUICK_TEST if quick else EVAL_SAMPLES),
                                 *(QUICK_ARGS if quick else [])], output, output.parent / "seq2seq.log")


def run(quick):
    from hf_feedback.metrics import load_metric_module
    from hf_feedback.recipe_utils import sample
    from hf_feedback.seq2seq import load_pinyin_task, most_frequent_character_baseline

    output, record = _run_recipe(quick)
    task = load_pinyin_task()
    test = sample(task["test"], QUICK_TEST if quick else EVAL_SAMPLES, 42)  # the recipe's --max_eval_samples, seed 42
    references = test["target"]
    ours = (output / "generated_predictions.txt").read_text().splitlines()
    if len(ours) != len(references):
        raise RuntimeError(f"{output}: {len(ours)} predictions for {len(references)} test sentences")
    metric = load_metric_module("generation")
    return {"ours": {**metric.compute(predictions=ours, references=references), **record},
            "baseline": metric.compute(predictions=most_frequent_character_baseline(task["train"], test),
                                       references=references),
            "train_pairs": len(task["train"]), "test_pairs": len(test)}


def render(result):
    ours, baseline = result["ours"], result["baseline"]

    def row(name, scores, wall):
        return [name, f"{scores['cer']:.4f}", f"{scores['sentence_accuracy']:.4f}", f"{scores['bleu']:.2f}",
                f"{scores['chrf']:.2f}", wall]

    return [
        f"People's Daily, January 1998, as toneless pinyin (one item per character) to be written back in characters: "
        f"{result['train_pairs']:,} training pairs; {result['test_pairs']:,} test pairs (the test split is fixed by a "
        "hash of each sentence; the recipe's `--max_eval_samples` sample of it, seed 42), scored against the original "
        "sentences. CER: edit distance per reference character (lower is "
        "better); BLEU (Chinese tokenisation) and chrF: sacrebleu's corpus scores; wall time: the recipe's process "
        "on this machine.",
        "",
        *table(["model", "CER", "sentence accuracy", "BLEU", "chrF", "wall (min)"], [
            row("ours, encoder-decoder from scratch (`recipes/seq2seq.py`, greedy)", ours,
                f"{ours['wall_s'] / 60:.1f}"),
            row("each syllable's most frequent training character", baseline, "n/a"),
        ]),
    ]

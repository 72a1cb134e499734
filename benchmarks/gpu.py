"""Section 9: on a GPU — throughput against BERT (sdpa) and ModernBERT at the default and base sizes in fp16 and
bf16, MFU at base size against the card's measured bf16 matmul peak, and the default fine-tuning job's training
step against its pure compute time (issue 12, point 5).

    python benchmarks/run.py --only gpu --device cuda          # a GPU machine (H100 / H200): a few minutes
    python benchmarks/run.py --quick --only gpu --device cpu   # toy sizes on the CPU: checks the harness

Mixed precision is the Trainer's --fp16 / --bf16: float32 master weights, forward and loss under autocast, a
GradScaler in fp16 (workloads.training_step). A CPU runs bf16 only; fp16 is skipped there, with the reason kept.
(a) Throughput, per size, precision and mode, the rows taking turns on the same reviews (common.time_interleaved):
    ours on padded batches (DataCollatorWithPadding), ours on packed ones (the same reviews end to end in one row by
    hf_feedback's DataCollatorForPaddingFree, what --padding_free trains on), BERT (sdpa), ModernBERT (its default
    dropout 0). Targets at base size: ours at least 2x BERT and 1.2x ModernBERT.
(b) MFU (efficiency.run) at base size in bf16 on fixed-length batches, against a large bf16 matmul timed in turns
    with the model. Target: at least 40%.
(c) The default job (recipes/finetune.py without flags: its unigram tokenizer, its new model, batches of 32 reviews
    cut at 128 tokens): the wall time of a training step as a loop that waits for every step sees it, against the
    device's busy time in the same steps (torch.profiler: the GPU's kernel, copy and memset times; on a CPU the
    ops' self time, labelled so). Target: a step within 2x of its compute.
"""

import dataclasses
import sys
import time

import torch
from torch.autograd import DeviceType
from torch.profiler import ProfilerActivity, profile

from hf_feedback.data.collators import DataCollatorForPaddingFree
from hf_feedback.data.corpora import load_sentiment_reviews
from hf_feedback.data.tokenization import train_tokenizer
from hf_feedback.data.user_data import all_texts, label_kind
from hf_feedback.training.recipe_arguments import COMMON_DEFAULTS
from recipes import finetune

from . import efficiency, speed, workloads
from .common import count, percent, ratio, repetitions_note, summarize, synchronize, table, time_interleaved, verdict

# BERT-base's shape, the "base size"; the other size is FeedbackConfig's default (workloads.DEFAULT).
BASE = dict(hidden_size=768, num_hidden_layers=12, num_attention_heads=12, intermediate_size=3072)
QUICK_BASE = dict(hidden_size=48, num_hidden_layers=3, num_attention_heads=4, intermediate_size=96)  # a second toy
PRECISIONS = {"fp16": torch.float16, "bf16": torch.bfloat16}
FP16_ON_CPU = ("fp16 mixed precision needs a GPU: the Trainer's --fp16 stops on a CPU (recipe_arguments.check_precision), "
               "so there is no CPU fp16 job to measure")
# Row -> its builder in workloads.MODELS. The packed row is a second copy of ours, so that each row's optimizer
# steps weights no other row uses. Batches of 32 reviews as the recipe trains on: larger ones would flatter every
# model's GPU utilisation alike, and the issue asks about the batches users train with.
OURS, PACKED, BERT, MODERNBERT = "ours (sdpa)", "ours (sdpa), packed", "BERT (sdpa)", "ModernBERT (dropout 0)"
ROWS = {OURS: OURS, PACKED: OURS, BERT: BERT, MODERNBERT: MODERNBERT}
TARGETS = {BERT: 2.0, MODERNBERT: 1.2}  # ours ÷ row at base size on review batches
TARGET_MFU = efficiency.TARGET_MFU
TARGET_JOB_RATIO = 2.0  # a step's wall time ÷ its compute time
BUDGET_S = 8 * 60  # the whole section on one GPU (issue 12): 5 turns after 2 warm-ups of 4 batches keep it to minutes
PEAK_MATMUL_SIZE, QUICK_PEAK_MATMUL_SIZE = 8192, 256  # bf16 peak: 8192² is 1.1 TFLOP, ~2 ms on an H100
PROFILED_TURNS = 2  # turns of the job's batches under the profiler; compute time is their mean per step
# --quick: the job's tokenizer from the first 1,000 texts and a toy width, so that the harness check takes seconds.
QUICK_JOB_TEXTS = 1000
QUICK_JOB_ARGUMENTS = dict(tokenizer_vocab_size=3000,
                           config_overrides="hidden_size=32,num_attention_heads=4,intermediate_size=64")
CONFIG_FIELDS = ("vocab_size", "hidden_size", "num_attention_heads", "intermediate_size", "num_hidden_layers")


def _progress(message):
    print(f"[gpu] {message}", file=sys.stderr, flush=True)


def run(sizes, device, quick):
    """The section's numbers: `sizes` gives the batches and turns (workloads.DEFAULT, or QUICK with `quick`), whose
    model is the default size; base size is BASE on top of it (toy sizes with `quick`)."""
    start = time.perf_counter()
    device = torch.device(device)
    precisions = PRECISIONS if device.type == "cuda" else {"bf16": torch.bfloat16}
    skipped = {} if device.type == "cuda" else {"fp16": FP16_ON_CPU}
    models = {"default": sizes.model, "base": {**sizes.model, **(QUICK_BASE if quick else BASE)}}

    tokenizer = workloads.review_tokenizer(vocab_size=workloads.model_config(sizes).vocab_size)
    batches = {"padded": workloads.review_batches(sizes, tokenizer),
               "packed": workloads.review_batches(sizes, tokenizer, collate=DataCollatorForPaddingFree())}
    configs, cells = {}, []
    for size, model in models.items():
        configs[size] = workloads.model_config(dataclasses.replace(sizes, model=model), vocab_size=len(tokenizer))
        cells += _throughput_cells(size, configs[size], batches, precisions, sizes, device)

    _progress("MFU at base size, bf16 ...")
    mfu = efficiency.run(dataclasses.replace(sizes, model=models["base"]), device, torch.bfloat16,
                         QUICK_PEAK_MATMUL_SIZE if quick else PEAK_MATMUL_SIZE)
    _progress("the default job ...")
    job = _default_job(sizes, device, precisions, quick)
    return {
        "configs": {size: {key: getattr(config, key) for key in CONFIG_FIELDS} for size, config in configs.items()},
        "tokenizer_size": len(tokenizer),
        "sizes": {"batch_size": sizes.batch_size, "max_length": sizes.max_length,
                  "repetitions": sizes.repetitions, "warmup": sizes.warmup},
        "precisions": list(precisions),
        "skipped": skipped,
        "batches": {**workloads.batch_stats(batches["padded"]),
                    "packed_tokens": sum(batch["input_ids"].numel() for batch in batches["packed"])},
        "cells": cells,
        "mfu": mfu,
        "job": job,
        "seconds": time.perf_counter() - start,
    }


def _throughput_cells(size, config, batches, precisions, sizes, device):
    """Every row's interleaved turns at one size, per precision and mode."""
    models = {row: workloads.MODELS[builder](config).to(device) for row, builder in ROWS.items()}
    optimizers = {row: workloads.optimizer_for(model) for row, model in models.items()}
    on_device = {layout: workloads.to_device(b, device) for layout, b in batches.items()}
    cells = []
    for precision, dtype in precisions.items():
        for mode in ("training", "inference"):
            turns = {}
            for row, model in models.items():
                row_batches = on_device["packed" if row == PACKED else "padded"]
                turns[row] = (workloads.training_turn(model, optimizers[row], row_batches, dtype) if mode == "training"
                              else workloads.inference_turn(model, row_batches, dtype))
            start = time.perf_counter()
            times = time_interleaved(turns, sizes.repetitions, sizes.warmup, device)
            cells.append({"size": size, "precision": precision, "mode": mode,
                          "times": {row: summarize(t) for row, t in times.items()}})
            _progress(f"{size} {precision} {mode}: {time.perf_counter() - start:.1f} s")
    return cells


# ----------------------------------------------------------------------------------------------------------------
# The default job: a step's wall time against its compute time
# ----------------------------------------------------------------------------------------------------------------
def _default_job(sizes, device, precisions, quick):
    """recipes/finetune.py's default job built as it builds it (NewModelArguments' defaults, its tokenizer
    kind and size, load_model's new model), timed per precision on batches of its own size."""
    model_args = finetune.NewModelArguments(**(QUICK_JOB_ARGUMENTS if quick else {}))
    max_seq_length = finetune.DataArguments().max_seq_length
    raw = load_sentiment_reviews()
    texts = all_texts(raw["train"])[:QUICK_JOB_TEXTS if quick else None]
    tokenizer = train_tokenizer(texts, vocab_size=model_args.tokenizer_vocab_size, kind=model_args.tokenizer_kind)
    model = finetune.load_model(model_args, tokenizer, raw["train"].features["label"].names, max_seq_length,
                                label_kind(raw)).to(device)
    job_sizes = dataclasses.replace(sizes, batch_size=finetune.DEFAULTS["per_device_train_batch_size"],
                                    max_length=max_seq_length)
    batches = workloads.review_batches(job_sizes, tokenizer)
    on_device = workloads.to_device(batches, device)
    optimizer = workloads.optimizer_for(model)
    steps = {}
    for precision, dtype in precisions.items():
        turn = _job_turn(model, workloads.training_step(model, optimizer, dtype, COMMON_DEFAULTS["max_grad_norm"]),
                         on_device, device)
        wall = summarize(time_interleaved({"job": turn}, sizes.repetitions, sizes.warmup, device)["job"])
        compute_s = _busy_seconds(turn, device) / len(batches)
        step_s = wall["median_s"] / len(batches)
        steps[precision] = {"step_s": step_s, "spread": wall["spread"], "compute_s": compute_s,
                            "ratio": step_s / compute_s}
        _progress(f"default job {precision}: {1000 * step_s:.1f} ms a step, {1000 * compute_s:.1f} ms compute")
    return {
        "config": {key: getattr(model.config, key) for key in (*CONFIG_FIELDS, "norm_position",
                                                                 "position_embedding_type", "char_vocab_size")},
        "parameters": model.num_parameters(),
        "max_grad_norm": COMMON_DEFAULTS["max_grad_norm"],
        "profiled_turns": PROFILED_TURNS,
        "batches": workloads.batch_stats(batches),
        "compute": ("GPU busy time: the profiler's CUDA kernel, copy and memset times" if device.type == "cuda"
                    else "CPU self time of the profiled ops (no GPU: not kernel time)"),
        "steps": steps,
    }


def _job_turn(model, step, batches, device):
    """One pass over the job's batches as a Trainer-like loop runs it: the host waits for every step's end (the
    Trainer reads each step's loss for its nan/inf filter)."""

    def turn():
        model.train()
        for batch in batches:
            step(batch)
            synchronize(device)

    return turn


def _busy_seconds(work, device):
    """Seconds the device computes in one call of `work`, mean of PROFILED_TURNS calls under torch.profiler: on a
    GPU the sum of its kernels, copies and memsets (one stream, so they do not overlap); on a CPU the ops' self
    time, which leaves out Python between ops."""
    cuda = device.type == "cuda"
    with profile(activities=[ProfilerActivity.CPU, *([ProfilerActivity.CUDA] if cuda else [])]) as profiled:
        for _ in range(PROFILED_TURNS):
            work()
        synchronize(device)
    if cuda:
        busy_us = sum(event.time_range.elapsed_us() for event in profiled.events()
                      if event.device_type == DeviceType.CUDA and not event.is_user_annotation)
    else:
        busy_us = sum(event.self_cpu_time_total for event in profiled.key_averages())
    if busy_us <= 0:  # e.g. CUPTI unavailable to this process: no kernel was recorded
        raise RuntimeError(f"torch.profiler recorded no {device.type} time for the default job's steps")
    return busy_us / 1e6 / PROFILED_TURNS


# ----------------------------------------------------------------------------------------------------------------
# The report
# ----------------------------------------------------------------------------------------------------------------
def _size_text(config):
    return (f"hidden {config['hidden_size']}, {config['num_hidden_layers']} layers, {config['num_attention_heads']} "
            f"heads, intermediate {config['intermediate_size']}, vocab {config['vocab_size']:,}")


def render(result):
    sizes, stats = result["sizes"], result["batches"]
    lines = [
        *repetitions_note(sizes["repetitions"]),
        "Sizes: " + "; ".join(f"{size}: {_size_text(config)}" for size, config in result["configs"].items()) + ". "
        f"Precisions: {', '.join(result['precisions'])}, as the Trainer's --fp16 / --bf16 (float32 weights, forward "
        f"and loss under autocast, a GradScaler in fp16)"
        + "".join(f"; {name} skipped: {reason}" for name, reason in result["skipped"].items()) + ". "
        f"{stats['batches']} batch(es) of {sizes['batch_size']} reviews per turn (review train texts drawn at random, "
        f"seed 0, WordPiece tokenizer of {result['tokenizer_size']:,} tokens, cut at {sizes['max_length']}): padded "
        f"to {min(stats['padded_lengths'])}-{max(stats['padded_lengths'])} tokens, {count(stats['real_tokens'])} of "
        f"{count(stats['padded_tokens'])} positions real; packed, the same {count(stats['packed_tokens'])} tokens in "
        f"one row per batch. Median of {sizes['repetitions']} interleaved turns after {sizes['warmup']} warm-up "
        f"turns; \"ours ÷ row\" > 1 means ours (padded) is faster.",
        "",
    ]
    rows = []
    for cell in result["cells"]:
        for name, r in speed.throughput(cell, stats).items():
            rows.append([cell["size"], cell["precision"], cell["mode"], name, f"{1000 * r['step_s']:.2f}",
                         f"{100 * r['spread']:.0f}%", count(round(r["real_tokens_per_s"])),
                         "—" if name == OURS else ratio(r["ours_speedup"])])
    lines += table(["size", "precision", "mode", "model", "step (ms)", "spread", "real tokens/s", "ours ÷ row"], rows)
    lines += ["", *_mfu_lines(result["mfu"]), "", *_job_lines(result["job"]), "", "Targets:", *_targets(result),
              f"- The whole section took {result['seconds']:.0f} s (budget {BUDGET_S} s: "
              f"{'within' if result['seconds'] <= BUDGET_S else 'over'})."]
    return lines


def _mfu_lines(r):
    batch, seq_len = r["batch"]
    return [f"MFU at base size in bf16, (b) fixed-length batches of {batch} × {seq_len} (model FLOPs counted as in "
            f"section 2):", "", *table(["quantity", "value"], [
                ["model FLOPs per training step", f"{r['step_flops'] / 1e9:,.2f} GFLOP"],
                ["training step (median)", f"{1000 * r['times']['training step']['median_s']:.2f} ms"],
                ["achieved", f"{r['achieved_flops'] / 1e12:.1f} TFLOP/s"],
                [f"peak: bf16 matmul {r['peak_size']}×{r['peak_size']} (median)",
                 f"{r['peak_flops'] / 1e12:.1f} TFLOP/s"],
                [f"one layer's Linear matmuls at {batch * seq_len} tokens (forward, bf16)",
                 f"{r['model_shape_flops'] / 1e12:.1f} TFLOP/s = {percent(r['model_shape_flops'] / r['peak_flops'])} "
                 f"of peak"],
                ["**MFU**", f"**{percent(r['mfu'])}**"],
            ])]


def _job_lines(job):
    config, stats = job["config"], job["batches"]
    return [f"The default job (recipes/finetune.py without flags): {_size_text(config)}, {config['norm_position']}-"
            f"norm, {config['position_embedding_type']} positions, {config['char_vocab_size']:,} characters; "
            f"{job['parameters']:,} parameters; {stats['batches']} batch(es) of "
            f"{stats['sequences'] // stats['batches']} reviews padded to {min(stats['padded_lengths'])}-"
            f"{max(stats['padded_lengths'])} tokens. A step: forward and loss under autocast, backward, clipping to "
            f"max_grad_norm {job['max_grad_norm']}, AdamW, then the host waits for the device. Compute: "
            f"{job['compute']}, mean over {job['profiled_turns']} profiled passes.", "",
            *table(["precision", "step, wall (ms)", "spread", "compute (ms)", "wall ÷ compute"], [
                [precision, f"{1000 * s['step_s']:.2f}", f"{100 * s['spread']:.0f}%", f"{1000 * s['compute_s']:.2f}",
                 ratio(s["ratio"])] for precision, s in job["steps"].items()])]


def _targets(result):
    lines = []
    for cell in result["cells"]:
        if cell["size"] != "base":  # the default size is for reading; the targets are at base size
            continue
        rows = speed.throughput(cell, result["batches"])
        for ours in (OURS, PACKED):
            for peer, target in TARGETS.items():
                speedup = rows[peer]["ours_speedup"] / rows[ours]["ours_speedup"]  # this row of ours ÷ the peer
                text = (f"base {cell['precision']} {cell['mode']}: {ours} is {ratio(speedup)} {peer} on review "
                        f"batches (target ≥ {ratio(target)})")
                if speedup < target:
                    ours_ms = 1000 * rows[ours]["step_s"]
                    text += (f"; short by {target - speedup:.2f}x: it needs {ours_ms * speedup / target:.2f} ms a "
                             f"step instead of {ours_ms:.2f} ms")
                lines.append(verdict(speedup >= target, text))
    mfu = result["mfu"]["mfu"]
    text = f"MFU {percent(mfu)} at base size in bf16 (target ≥ {percent(TARGET_MFU)})"
    if mfu < TARGET_MFU:
        text += f"; short by {100 * (TARGET_MFU - mfu):.1f} points"
    lines.append(verdict(mfu >= TARGET_MFU, text))
    for precision, step in result["job"]["steps"].items():
        text = (f"the default job's {precision} training step takes {ratio(step['ratio'])} its compute time "
                f"(target ≤ {ratio(TARGET_JOB_RATIO)})")
        if step["ratio"] > TARGET_JOB_RATIO:
            text += (f"; over by {step['ratio'] - TARGET_JOB_RATIO:.2f}x: {1000 * step['step_s']:.2f} ms a step where "
                     f"{1000 * TARGET_JOB_RATIO * step['compute_s']:.2f} ms would meet it")
        lines.append(verdict(step["ratio"] <= TARGET_JOB_RATIO, text))
    return lines

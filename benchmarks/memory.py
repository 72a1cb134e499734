"""Section 3: peak memory (RSS) of training steps, full fine-tuning against LoRA.

Each measurement runs in a fresh subprocess: the worker builds the model and optimizer, notes its resident set
(RSS), resets the kernel's peak-RSS mark (writing 5 to /proc/self/clear_refs), takes a training step on each real
review batch (at least two steps, so that AdamW's state exists), and reports the peak since the reset (VmHWM).
So the peak belongs to training alone, not to imports or data loading before it. tracemalloc would not see
torch's allocations, RSS does. The median over repetitions is reported.

    python -m benchmarks.memory --worker full|lora --inputs FILE     # one measurement, JSON on stdout
"""

import argparse
import json
import statistics
import subprocess
import sys
from pathlib import Path
from concurrent.futures import ThreadPoolExecutor

import torch

from . import workloads
from .common import ROOT, RUNS, count, percent, table

KINDS = {"full": "full fine-tuning", "lora": "LoRA (hf_feedback.training.lora.apply_lora defaults)"}
REPETITIONS = {"quick": 1, "default": 3}


def _status_mib(field):
    # /proc/self/status lines read e.g. "VmHWM:   123456 kB" (Linux).
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) / 1024
    raise RuntimeError(f"/proc/self/status has no {field}")


def _reset_peak_rss():
    Path("/proc/self/clear_refs").write_text("5")  # resets VmHWM to the current RSS


def worker(kind, inputs):
    """Inside the subprocess: one model, its training steps, and the peak RSS before and after them."""
    from hf_feedback import FeedbackConfig
    from hf_feedback.training.lora import apply_lora

    saved = torch.load(inputs, weights_only=False)
    torch.set_num_threads(saved["threads"])
    model = workloads.ours(FeedbackConfig.from_dict(saved["config"]))
    if kind == "lora":
        model = apply_lora(model)
    optimizer = workloads.optimizer_for(model)
    turn = workloads.training_turn(model, optimizer, saved["batches"])
    before = _status_mib("VmRSS")
    _reset_peak_rss()
    for _ in range(2 if len(saved["batches"]) == 1 else 1):  # from the second step on, AdamW's state exists
        turn()
    return {
        "peak_rss_mib": _status_mib("VmHWM"),
        "peak_rss_before_training_mib": before,
        "trainable_parameters": sum(p.numel() for p in model.parameters() if p.requires_grad),
        "all_parameters": sum(p.numel() for p in model.parameters()),
    }


def run(sizes, quick):
    tokenizer = workloads.review_tokenizer(vocab_size=workloads.model_config(sizes).vocab_size)
    config = workloads.model_config(sizes, vocab_size=len(tokenizer))
    batches = workloads.review_batches(sizes, tokenizer)
    inputs = RUNS / "memory" / "inputs.pt"
    inputs.parent.mkdir(parents=True, exist_ok=True)
    torch.save({"config": config.to_dict(), "batches": batches, "threads": torch.get_num_threads()}, inputs)

    measured = {kind: [] for kind in KINDS}
    for _ in range(REPETITIONS["quick" if quick else "default"]):
        # Peak RSS is per process, so the workers of one repetition can run at the same time.
        with ThreadPoolExecutor(max_workers=len(KINDS)) as pool:
            for kind, record in zip(KINDS, pool.map(_measure, KINDS, [inputs] * len(KINDS))):
                measured[kind].append(record)
    return {
        "batches": workloads.batch_stats(batches),
        "runs": measured,
        "median": {kind: {key: statistics.median(run[key] for run in runs) for key in runs[0]}
                   for kind, runs in measured.items()},
    }


def _measure(kind, inputs):
    command = [sys.executable, "-m", "benchmarks.memory", "--worker", kind, "--inputs", str(inputs)]
    done = subprocess.run(command, cwd=ROOT, capture_output=True, text=True)
    if done.returncode != 0:
        raise RuntimeError(f"memory worker {kind!r} failed (exit {done.returncode}):\n{done.stderr[-3000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def render(r):
    stats, median = r["batches"], r["median"]
    runs = len(r["runs"]["full"])
    rows = []
    for kind, m in median.items():
        rows.append([
            KINDS[kind], f"{count(m['trainable_parameters'])} of {count(m['all_parameters'])} "
            f"({percent(m['trainable_parameters'] / m['all_parameters'])})",
            f"{m['peak_rss_before_training_mib']:.0f}", f"{m['peak_rss_mib']:.0f}",
            f"{m['peak_rss_mib'] - m['peak_rss_before_training_mib']:.0f}",
        ])
    full, lora = median["full"], median["lora"]
    added = {kind: m["peak_rss_mib"] - m["peak_rss_before_training_mib"] for kind, m in median.items()}
    # fp32 gradient + AdamW's two moments: 12 bytes for each weight that LoRA freezes.
    saved_mib = (full["trainable_parameters"] - lora["trainable_parameters"]) * 12 / 2**20
    comparison = (
        f"LoRA's peak RSS is {percent(lora['peak_rss_mib'] / full['peak_rss_mib'])} of full fine-tuning's "
        f"({lora['peak_rss_mib'] - full['peak_rss_mib']:+.0f} MiB). Freezing the base weights saves their gradients "
        f"and AdamW moments, 12 bytes a weight: {saved_mib:.0f} MiB here. The activations kept for the backward pass "
        f"stay, since LoRA still backpropagates through every layer"
    )
    if lora["peak_rss_mib"] > full["peak_rss_mib"]:
        comparison += (
            f", and LoRA adds its own: peft applies lora_dropout to the input of each adapted layer and keeps that "
            f"copy and the rank-r product for the backward pass, the likely reason they outweigh the saving at this "
            f"size (training adds {added['lora']:.0f} MiB with LoRA against {added['full']:.0f} MiB). The saving "
            f"grows with the number of weights, the activations with batch × length, so LoRA pays off on large "
            f"models and short batches; --lora_dropout 0 removes the copies."
        )
    else:
        comparison += "."
    return [
        f"Peak RSS of a fresh process (Python, torch and the model included) that trains on {stats['batches']} real "
        f"review batch(es) of {stats['sequences'] // stats['batches']} (padded to {max(stats['padded_lengths'])} "
        f"tokens at most), one step each (at least two), CPU; median of {runs} run(s) each. The peak is taken over the "
        f"training steps alone (the kernel's peak mark is reset after the model and optimizer are built); \"added by "
        f"training\" = that peak - the RSS just before the first step (activations, gradients, AdamW state).",
        "",
        *table(["fine-tuning", "trainable parameters", "RSS before training (MiB)", "peak RSS (MiB)",
                "added by training (MiB)"], rows),
        "",
        comparison,
    ]


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--worker", choices=sorted(KINDS), required=True)
    parser.add_argument("--inputs", required=True, help="file written by run(): config, batches, threads")
    args = parser.parse_args()
    print(json.dumps(worker(args.worker, args.inputs)))


if __name__ == "__main__":
    main()

"""What every section shares: a description of the run, interleaved timing, and Markdown formatting."""

import datetime
import json
import os
import platform
import statistics
import subprocess
import sys
import time
from pathlib import Path

import torch
import transformers

from hf_feedback.reports.model_card_procedure import cpu_name

ROOT = Path(__file__).resolve().parents[1]
RUNS = ROOT / "benchmarks" / "runs"  # scratch space for subprocesses and recipe outputs (gitignored)


# ----------------------------------------------------------------------------------------------------------------
# Where and when a section ran
# ----------------------------------------------------------------------------------------------------------------
def _memory_gib():
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal:"):
                return round(int(line.split()[1]) / 2**20, 1)  # kB -> GiB
    except OSError:
        pass
    return None


def _git_commit():
    def git(*args):
        return subprocess.run(["git", *args], cwd=ROOT, capture_output=True, text=True, check=True).stdout.strip()

    try:
        commit = git("rev-parse", "--short", "HEAD")
        # Untracked files (the benchmark outputs, say) do not make the tree dirty; edits to tracked files do.
        # The harness's own outputs change while it runs; they don't make the measured code differ from the commit.
        changed = git("status", "--porcelain", "--untracked-files=no", "--", ".", ":!benchmarks/results.json",
                      ":!benchmarks/RESULTS.md")
        return commit + ("+uncommitted changes" if changed else "")
    except (OSError, subprocess.CalledProcessError):
        return "unknown (not a git checkout)"


def machine():
    """The hardware and software a number was measured on."""
    return {
        "cpu": cpu_name(),
        "cores": os.cpu_count(),
        "memory_gib": _memory_gib(),
        "torch_threads": torch.get_num_threads(),
        "gpu": torch.cuda.get_device_name() if torch.cuda.is_available() else None,
        "python": platform.python_version(),
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "platform": platform.platform(),
    }


def run_info(quick, device):
    """Called when a section ends: its date, commit, machine, and how busy the machine was."""
    return {
        "date": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
        "commit": _git_commit(),
        "quick": quick,
        "device": str(device),
        "machine": machine(),
        "load_average": os.getloadavg()[0],  # runnable processes, 1-minute average, this run's threads included
    }


def describe_machine(info):
    m = info["machine"]
    gpu = f", GPU {m['gpu']}" if m["gpu"] else ", no GPU"
    return (f"{m['cpu']}, {m['cores']} cores, {m['memory_gib']} GiB{gpu}; torch {m['torch']} with "
            f"{m['torch_threads']} threads, transformers {m['transformers']}, Python {m['python']}")


def load_warning(info):
    """A warning when other work competed for the CPU during a section (load beyond this run's own threads)."""
    cores, threads = info["machine"]["cores"], info["machine"]["torch_threads"]
    if "load_average" not in info or info["load_average"] - threads <= cores / 2:
        return []
    return [f"> **Busy machine**: load average {info['load_average']:.1f} at the end on {cores} cores, of which this "
            f"run's {threads} threads account for at most {threads}. Absolute times are unreliable; ratios less so "
            f"(turns are interleaved), but a busy CPU also delays each multi-threaded op while its threads wait for "
            f"each other, which penalises the model that runs more small ops.", ""]


# ----------------------------------------------------------------------------------------------------------------
# Timing
# ----------------------------------------------------------------------------------------------------------------
def synchronize(device):
    if torch.device(device).type == "cuda":
        torch.cuda.synchronize()


def time_interleaved(workloads, repetitions, warmup, device="cpu"):
    """Seconds per call of each workload (name -> callable), measured in turns A B C A B C ...

    Taking turns means a change in the machine's load during the run hits every workload alike, so their ratio
    stays fair even when the absolute numbers move. `warmup` untimed turns come first.
    """
    for _ in range(warmup):
        for work in workloads.values():
            work()
    times = {name: [] for name in workloads}
    for _ in range(repetitions):
        for name, work in workloads.items():
            synchronize(device)
            start = time.perf_counter()
            work()
            synchronize(device)
            times[name].append(time.perf_counter() - start)
    return times


def summarize(seconds):
    """Median and spread of repeated timings; the spread is (max - min) / median."""
    median = statistics.median(seconds)
    return {"median_s": median, "spread": (max(seconds) - min(seconds)) / median, "samples_s": list(seconds)}


# ----------------------------------------------------------------------------------------------------------------
# Markdown
# ----------------------------------------------------------------------------------------------------------------
def recorded_run(recipe_arguments, output, log):
    """Run `python <recipe_arguments> --output_dir output` once, its log written to `log`, unless `output` already
    holds the record of such a run (a benchmark reports what this machine trained); the record: wall time in
    seconds and the command."""
    record = output / "benchmark_run.json"
    if not record.is_file():
        command = [sys.executable, *recipe_arguments, "--output_dir", str(output)]
        output.mkdir(parents=True, exist_ok=True)
        start = time.perf_counter()
        with open(log, "w") as stream:
            subprocess.run(command, cwd=ROOT, stdout=stream, stderr=subprocess.STDOUT, check=True)
        record.write_text(json.dumps({"wall_s": time.perf_counter() - start, "command": command[1:]}))
    return json.loads(record.read_text())


def table(header, rows):
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    lines += ["| " + " | ".join(str(cell) for cell in row) + " |" for row in rows]
    return lines


MIN_REPETITIONS = 5


def repetitions_note(repetitions):
    """A warning line when a timing rests on fewer turns than a result needs."""
    if repetitions >= MIN_REPETITIONS:
        return []
    return [f"> **{repetitions} repetition(s) only** (fewer than {MIN_REPETITIONS}): a check of the harness, "
            f"not a result.", ""]


def verdict(met, text):
    """One bullet of a section's target list."""
    return f"- **{'Met' if met else 'Missed'}**: {text}"


def count(n):
    return f"{n:,}"


def ratio(x):
    return f"{x:.2f}x"


def percent(x):
    return f"{100 * x:.1f}%"

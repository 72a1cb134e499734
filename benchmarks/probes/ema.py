"""Probe (issue "Models worth using", target 1): exponential moving averages of the weights, in the main job.

    EMA_DECAYS=0.99,0.998 python benchmarks/probes/ema.py --tokenizer_name TOKENIZER \
        --output_dir OUT --seed 42 --disable_tqdm true [finetune.py arguments]

recipes/finetune.py with its defaults, its Trainer given a callback that keeps float32 moving averages of the
weights (updated after every optimizer step t = 1, 2, ...): `t10` decays by (1 + t) / (10 + t) (TensorFlow's
ExponentialMovingAverage warm-up, which over a run this short never reaches a fixed decay: at step t it averages
roughly the last tenth of the steps), and one per EMA_DECAYS entry d decays by d with Adam's bias correction
(d (1 - d^(t-1)) / (1 - d^t): the first step copies the weights). At each of the run's evaluations it scores every average
and the raw weights on validation and test with the same loop. One line per evaluation and model, then, per model,
the test scores at its best validation macro F1 (the first best, as Trainer's selection): the raw weights' line
must equal the run's own test result (a check of the loop). A probe, not a recipe option.
"""
import os
import sys

import numpy as np
import torch
from sklearn.metrics import accuracy_score, f1_score
from transformers import DataCollatorWithPadding, TrainerCallback

sys.path.insert(0, os.path.join(os.getcwd(), "recipes"))
import finetune  # noqa: E402

DECAYS = [float(d) for d in os.environ.get("EMA_DECAYS", "0.99,0.998").split(",")]


def score(model, dataset, collator):
    """Accuracy and macro F1 of `model` on a tokenized split, batches of similar length for speed."""
    order = np.argsort([len(ids) for ids in dataset["input_ids"]])
    rows = [dataset[int(i)] for i in order]
    predictions = []
    was_training = model.training
    model.eval()
    with torch.inference_mode():
        for start in range(0, len(rows), 128):
            batch = collator([{k: r[k] for k in ("input_ids", "attention_mask")} for r in rows[start:start + 128]])
            predictions.append(model(**batch).logits.argmax(-1))
    model.train(was_training)
    predicted = torch.cat(predictions).numpy()
    labels = np.array([r["label"] for r in rows])
    return accuracy_score(labels, predicted), f1_score(labels, predicted, average="macro")


class Averages(TrainerCallback):
    def __init__(self, model, collator):
        self.model, self.collator, self.splits = model, collator, {}
        self.params = [p for p in model.parameters() if p.requires_grad]
        self.shadows = {name: [p.detach().clone() for p in self.params] for name in ["t10", *map(str, DECAYS)]}
        self.history = {name: [] for name in ["raw", *self.shadows]}
        self.updates, self.done = 0, False

    def on_train_end(self, args, state, control, **kwargs):
        self.done = True  # evaluations after this score the loaded best checkpoint

    def on_step_end(self, args, state, control, **kwargs):
        self.updates += 1
        with torch.no_grad():
            t = self.updates
            for name, shadow in self.shadows.items():
                if name == "t10":
                    d = (1 + t) / (10 + t)
                else:
                    decay = float(name)
                    d = decay * (1 - decay ** (t - 1)) / (1 - decay ** t)
                torch._foreach_lerp_(shadow, [p.detach() for p in self.params], 1 - d)

    def _score_all(self, step):
        for name in self.history:
            if name == "raw":
                result = {s: score(self.model, data, self.collator) for s, data in self.splits.items()}
            else:
                saved = [p.detach().clone() for p in self.params]
                with torch.no_grad():
                    torch._foreach_copy_(self.params, self.shadows[name])
                result = {s: score(self.model, data, self.collator) for s, data in self.splits.items()}
                with torch.no_grad():
                    torch._foreach_copy_(self.params, saved)
            self.history[name].append((step, result))
            print(f"EMA step {step} {name}: " + " ".join(f"{s} acc {a:.4f} f1 {f:.4f}" for s, (a, f) in result.items()),
                  flush=True)

    def on_evaluate(self, args, state, control, **kwargs):
        if self.done:
            return
        self._score_all(state.global_step)

    def report(self):
        for name, rows in self.history.items():
            best = max(range(len(rows)), key=lambda i: (rows[i][1]["validation"][1], -i))
            step, result = rows[best]
            print(f"EMA BEST {name}: step {step} validation f1 {result['validation'][1]:.4f} test acc "
                  f"{result['test'][0]:.4f} f1 {result['test'][1]:.4f}", flush=True)


_Trainer, _train_and_evaluate = finetune.FeedbackTrainer, finetune.train_and_evaluate
averages = None


class ProbeTrainer(_Trainer):
    def __init__(self, *a, **k):
        super().__init__(*a, **k)
        global averages
        averages = Averages(self.model, DataCollatorWithPadding(self.processing_class))
        self.add_callback(averages)
        print(f"EMA decays {DECAYS}", flush=True)


def train_and_evaluate(trainer, tokenized, resume, after_training=None):
    averages.splits = {"validation": tokenized["validation"], "test": tokenized["test"]}
    prediction = _train_and_evaluate(trainer, tokenized, resume, after_training)
    averages.report()
    return prediction


finetune.FeedbackTrainer, finetune.train_and_evaluate = ProbeTrainer, train_and_evaluate

if __name__ == "__main__":
    finetune.main()

"""Probe (issue "Models worth using", target 1): R-Drop (Liang et al. 2021) in the main job.

    RDROP_ALPHA=1.0 python benchmarks/probes/rdrop.py --tokenizer_name TOKENIZER --output_dir OUT --seed 42 \
        --disable_tqdm true [finetune.py arguments, e.g. --num_train_epochs 1 for the default's compute]

Each training batch goes through the model twice in one forward (the batch concatenated with itself, so two
dropout masks); the loss is the mean cross-entropy of both plus RDROP_ALPHA times the symmetric KL divergence of
their predicted distributions, which makes the model's prediction agree with itself under dropout. A step costs
about twice the default's: one epoch of it is the default's two epochs of compute. Evaluation is unchanged.
recipes/finetune.py with its defaults otherwise. A probe, not a recipe option. Measured once (results/rdrop_probe.txt:
one epoch, alpha 1.0, seed 42): test accuracy 0.8233 against the default's 0.8359 on the same seed, its best validation
macro F1 no higher; not pursued.
"""
import os
import sys

import torch
import torch.nn.functional as F

sys.path.insert(0, os.path.join(os.getcwd(), "recipes"))
import finetune  # noqa: E402

ALPHA = float(os.environ.get("RDROP_ALPHA", "1.0"))


class ProbeTrainer(finetune.FeedbackTrainer):
    def __init__(self, *a, **k):
        super().__init__(*a, **k)
        print(f"RDROP alpha {ALPHA}", flush=True)

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        if not model.training:
            return super().compute_loss(model, inputs, return_outputs, num_items_in_batch)
        labels = inputs["labels"]
        doubled = {k: torch.cat([v, v]) for k, v in inputs.items() if k != "labels"}
        logits = model(**doubled).logits.float()
        first, second = logits.chunk(2)
        ce = F.cross_entropy(logits, torch.cat([labels, labels]))
        p, q = F.log_softmax(first, -1), F.log_softmax(second, -1)
        kl = 0.5 * (F.kl_div(p, q, log_target=True, reduction="batchmean")
                    + F.kl_div(q, p, log_target=True, reduction="batchmean"))
        return ce + ALPHA * kl


finetune.FeedbackTrainer = ProbeTrainer

if __name__ == "__main__":
    finetune.main()

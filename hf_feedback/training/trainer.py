"""Training support: the Transformer paper's learning-rate schedule, and a Trainer that can use it.

"Attention Is All You Need" (§5.3) trains with

    lrate = d_model^-0.5 · min(step^-0.5, step · warmup_steps^-1.5)

a linear warmup over `warmup_steps` optimizer updates to a peak of (d_model · warmup_steps)^-0.5,
then decay as step^-0.5. It is often called the Noam schedule. Here the optimizer's learning
rate multiplies it (the paper's factor is 1), so with `FeedbackTrainer` the `learning_rate`
training argument is the schedule's factor, not the peak learning rate.
"""

import json
import time
from pathlib import Path

import torch
from transformers import Seq2SeqTrainer, Trainer, TrainerCallback
from transformers.trainer_callback import ExportableState
from transformers.trainer_utils import SchedulerType, TrainOutput, get_last_checkpoint
from transformers.utils import logging

from ..integrations.hub import push_folder


logger = logging.get_logger(__name__)


def _check_noam_arguments(d_model: int, warmup_steps: int) -> None:
    if d_model <= 0:
        raise ValueError(f"d_model must be a positive integer, got {d_model}.")
    if warmup_steps <= 0:
        raise ValueError(f"warmup_steps must be a positive integer, got {warmup_steps}.")


def noam_lambda(step: int, d_model: int, warmup_steps: int) -> float:
    """The Noam multiplier of the base learning rate for the `step`-th optimizer update.

    `step` counts updates from 1, as in the paper. Step 0 is read as step 1: the formula is 0
    there, and a first update at learning rate 0 would be wasted.
    """
    _check_noam_arguments(d_model, warmup_steps)
    if step < 0:
        raise ValueError(f"step must be >= 0, got {step}.")
    step = max(step, 1)
    return d_model**-0.5 * min(step**-0.5, step * warmup_steps**-1.5)


def get_noam_schedule(
    optimizer: torch.optim.Optimizer, d_model: int, warmup_steps: int, last_epoch: int = -1
) -> torch.optim.lr_scheduler.LambdaLR:
    """A `LambdaLR` that sets each param group's lr to its initial lr · `noam_lambda(step)`.

    `LambdaLR` passes its count of completed `step()` calls (0 before the first update), so the
    k-th optimizer update runs at `noam_lambda(k)`, exactly the paper's schedule. Its state
    (the count) is in `state_dict()`, which is how Trainer checkpoints resume the schedule.
    """
    _check_noam_arguments(d_model, warmup_steps)

    def lr_lambda(completed_updates: int) -> float:
        return noam_lambda(completed_updates + 1, d_model, warmup_steps)

    return torch.optim.lr_scheduler.LambdaLR(optimizer, lr_lambda, last_epoch=last_epoch)


class RunLoss(TrainerCallback, ExportableState):
    """The training loss summed over the first `steps` optimizer steps of the run, saved in each checkpoint
    (trainer_state.json, `stateful_callbacks`). Trainer alone averages `train_loss` over the steps since a resume
    only (0.0 after a kill during the final save); with this sum a resumed run reports the same `train_loss` as an
    uninterrupted one. A checkpoint without it (plain Trainer's, or one whose sum does not reach back to step 0)
    leaves Trainer's number as it is."""

    def __init__(self, loss_sum: float = 0.0, steps: int = 0):
        self.loss_sum, self.steps = loss_sum, steps

    def state(self) -> dict:
        return {"args": {"loss_sum": self.loss_sum, "steps": self.steps}, "attributes": {}}


class TimeEstimate(TrainerCallback):
    """Prints, once the first `steps` optimizer steps after the start (or the resume) are done (half the run's steps
    when it has fewer than twice as many), how long the rest will take at their pace. The first step (start-up,
    allocation) is left out of the clock; evaluation and saving are not counted. Fifty steps: a length-grouped
    sampler serves the longest batches first, so the first few overstate the pace."""

    def __init__(self, steps: int = 50):
        self.steps, self.clock = steps, None

    def on_step_end(self, args, state, control, **kwargs):
        if self.clock is None:
            self.clock = (state.global_step, time.perf_counter())
            return
        first, start = self.clock
        timed = min(self.steps, (state.max_steps - first) // 2)
        if timed > 0 and state.global_step == first + timed and state.is_world_process_zero:
            pace = (time.perf_counter() - start) / timed
            left = state.max_steps - state.global_step
            print(f"{state.global_step:,} of {state.max_steps:,} steps done; at {pace:.2f} s a step the other "
                  f"{left:,} take about {_duration(pace * left)} (evaluation and saving not counted)", flush=True)


def _duration(seconds: float) -> str:
    if seconds < 90:
        return f"{seconds:.0f} s"
    return f"{seconds / 60:.0f} min" if seconds < 5400 else f"{seconds / 3600:.1f} h"


def _check_noam(noam_warmup_steps, args, lr_scheduler):
    """Refuse a Noam schedule that other schedule settings would contradict (they would be ignored)."""
    if noam_warmup_steps <= 0:
        raise ValueError(f"noam_warmup_steps must be a positive integer or None, got {noam_warmup_steps}.")
    ignored = {
        "lr_scheduler_type": SchedulerType(args.lr_scheduler_type) != SchedulerType.LINEAR,
        "lr_scheduler_kwargs": bool(args.lr_scheduler_kwargs),
        "warmup_steps": args.warmup_steps != 0,
        "optimizers (a scheduler)": lr_scheduler is not None,
    }
    if any(ignored.values()):
        raise ValueError(
            f"noam_warmup_steps={noam_warmup_steps} sets the learning-rate schedule, so "
            f"{', '.join(name for name, is_set in ignored.items() if is_set)} would be ignored; "
            "leave them at their defaults or drop noam_warmup_steps."
        )


class FeedbackTrainer(Trainer):
    """`transformers.Trainer` that can train with the Noam schedule; every Trainer argument still works.

    Args:
        noam_warmup_steps (`int`, *optional*):
            When set, the learning rate follows `get_noam_schedule` with this many warmup updates
            and `d_model = model.config.hidden_size` (a peft `PeftModel` forwards `.config` to
            its base model), and `args.learning_rate` is the schedule's factor. The Trainer
            schedule's own knobs (`lr_scheduler_type`, `lr_scheduler_kwargs`, `warmup_steps`)
            must then stay at their defaults, and no scheduler may be passed in `optimizers`:
            they would be ignored, so setting them raises `ValueError`. When `None` (the
            default), Trainer's schedule is used unchanged.
        eval_data_collator (*optional*):
            The collator of evaluation and prediction batches, where it must differ from training's `data_collator`
            (padding-free training of a tagger, whose metrics read each sentence's tags in a padded batch). `None`:
            `data_collator` for both.
    """

    def __init__(self, *args, noam_warmup_steps: int | None = None, eval_data_collator=None, **kwargs):
        super().__init__(*args, **kwargs)
        self.eval_data_collator = eval_data_collator
        if noam_warmup_steps is not None:
            _check_noam(noam_warmup_steps, self.args, self.lr_scheduler)
        self.noam_warmup_steps = noam_warmup_steps
        self.add_callback(RunLoss())
        self.add_callback(TimeEstimate())
        self._resumed_loss = RunLoss()  # the sum the checkpoint resumed from held (none: a fresh run)

    def _run_loss(self) -> RunLoss:
        # Looked up each time: a resume with restore_callback_states_from_checkpoint replaces the instance.
        return next(cb for cb in self.callback_handler.callbacks if isinstance(cb, RunLoss))

    def _loss_so_far(self, pending=True) -> tuple[float, int]:
        """(sum of the training losses, steps it covers): from step 0 when the checkpoint resumed from carried the
        sum of every step before it, else from the resume only. Trainer drains the per-step losses into
        _total_loss_scalar at each log; `pending` adds what _tr_loss holds since."""
        this_run = self._total_loss_scalar + (self._tr_loss.item() if pending else 0.0)
        steps = self.state.global_step - self._initial_global_step
        if self._resumed_loss.steps == self._initial_global_step:
            return self._resumed_loss.loss_sum + this_run, self._resumed_loss.steps + steps
        return this_run, steps

    def train(self, resume_from_checkpoint=None, *args, **kwargs):
        checkpoint = get_last_checkpoint(self.args.output_dir) if resume_from_checkpoint is True else resume_from_checkpoint
        self._resumed_loss = RunLoss()
        if checkpoint and (Path(checkpoint) / "trainer_state.json").is_file():
            saved = json.loads((Path(checkpoint) / "trainer_state.json").read_text()).get("stateful_callbacks", {})
            self._resumed_loss = RunLoss(**saved.get(RunLoss.__name__, {}).get("args", {}))
        output = super().train(resume_from_checkpoint, *args, **kwargs)
        if "train_loss" in output.metrics and output.metrics["train_loss"] != output.training_loss:
            output = TrainOutput(output.global_step, output.metrics["train_loss"], output.metrics)
        return output

    def log(self, logs, *args, **kwargs):
        # The end of training logs Trainer's train_loss (the mean over the steps since the resume) in the metrics it
        # then returns: make it the whole run's, in place. _tr_loss was already added to _total_loss_scalar there.
        if "train_loss" in logs and self._initial_global_step and self._resumed_loss.steps == self._initial_global_step:
            loss_sum, steps = self._loss_so_far(pending=False)
            logs["train_loss"] = loss_sum / max(steps, 1)
        super().log(logs, *args, **kwargs)

    def _save_checkpoint(self, model, trial):
        run_loss = self._run_loss()
        run_loss.loss_sum, run_loss.steps = self._loss_so_far()
        # A run resumed from a checkpoint saved without a callback's state (plain Trainer's, or saved before the
        # callback existed) has no entry for it, and Trainer's save would fail looking it up.
        for callback in self.callback_handler.callbacks:
            if isinstance(callback, ExportableState):
                self.state.stateful_callbacks.setdefault(type(callback).__name__, {})
        super()._save_checkpoint(model, trial)

    def _get_dataloader(self, dataset, description, batch_size, sampler_fn=None, is_training=False,
                        dataloader_key=None):
        if is_training or self.eval_data_collator is None:
            return super()._get_dataloader(dataset, description, batch_size, sampler_fn, is_training, dataloader_key)
        training_collator, self.data_collator = self.data_collator, self.eval_data_collator
        try:
            return super()._get_dataloader(dataset, description, batch_size, sampler_fn, is_training, dataloader_key)
        finally:
            self.data_collator = training_collator

    def create_scheduler(
        self, num_training_steps: int, optimizer: torch.optim.Optimizer | None = None
    ) -> torch.optim.lr_scheduler.LRScheduler:
        if self.noam_warmup_steps is None:
            return super().create_scheduler(num_training_steps, optimizer)
        if self.lr_scheduler is None:
            d_model = getattr(self.model.config, "hidden_size", None)
            if d_model is None:
                raise ValueError(
                    f"noam_warmup_steps needs the model width from model.config.hidden_size, which "
                    f"{type(self.model.config).__name__} does not have."
                )
            self.lr_scheduler = get_noam_schedule(
                optimizer if optimizer is not None else self.optimizer, d_model, self.noam_warmup_steps
            )
            # Trainer's flag for "I built this scheduler": it rebuilds it on the next train() call.
            self._created_lr_scheduler = True
            logger.info(f"Noam learning-rate schedule: d_model={d_model}, warmup_steps={self.noam_warmup_steps}.")
        return self.lr_scheduler

    def push_to_hub(self, commit_message="End of training", blocking=True, token=None, revision=None, private=None):
        """`Trainer.push_to_hub` through `hf_feedback.integrations.hub.push_folder`: uploads only output_dir's shareable
        files (never training_args.bin, trainer_state.json or checkpoints) and keeps the model card written by
        `hf_feedback.reports.model_card.write_model_card` instead of Trainer's draft. Returns the commit (a `Future`
        when `blocking=False`), or None on processes other than the main one."""
        self.callback_handler.on_push_begin(self.args, self.state, self.control)
        token = token if token is not None else self.args.hub_token
        if self.hub_model_id is None:
            self.init_hf_repo(token=token, private=private)
        self.save_model(_internal_call=True)
        if not self.is_world_process_zero():
            return None
        self._finish_current_push()
        return push_folder(self.args.output_dir, self.hub_model_id, token=token, commit_message=commit_message,
                           revision=revision if revision is not None else self.args.hub_revision,
                           run_as_future=not blocking)


class FeedbackSeq2SeqTrainer(FeedbackTrainer, Seq2SeqTrainer):
    """`FeedbackTrainer` (the Noam schedule, the whole run's loss, the Hub upload) with `Seq2SeqTrainer`'s evaluation
    by generation (`predict_with_generate`, `generation_max_length`, `generation_num_beams`)."""


# ----------------------------------------------------------------------------------------------------------------
# Class-weighted cross-entropy, against imbalanced labels
# ----------------------------------------------------------------------------------------------------------------
CLASS_WEIGHTINGS = ("none", "sqrt", "balanced")


def class_weights(label_counts, scheme: str) -> torch.Tensor | None:
    """Per-class loss weights from the training set's label counts.

    - `"balanced"`: n / (k · n_c) for k classes and n rows, scikit-learn's `class_weight="balanced"`: every class
      weighs as much in the loss as a class of average size, so the minority is not traded away for accuracy.
    - `"sqrt"`: the square root of that, a milder correction (a class 9x rarer weighs 3x more, not 9x).
    - `"none"`: `None`, plain cross-entropy.

    On balanced data both weightings are all ones. A class with no training row gets weight 0 (there is nothing
    to weigh). Raises `ValueError` for an unknown scheme or no labels at all.
    """
    if scheme not in CLASS_WEIGHTINGS:
        raise ValueError(f"class weighting must be one of {list(CLASS_WEIGHTINGS)}, got {scheme!r}")
    counts = torch.as_tensor(label_counts, dtype=torch.float64)
    if counts.sum() <= 0:
        raise ValueError(f"class weights need at least one labelled row, got counts {list(label_counts)}")
    if scheme == "none":
        return None
    present = counts > 0
    weights = torch.zeros_like(counts)
    weights[present] = counts.sum() / (present.sum() * counts[present])
    return (weights.sqrt() if scheme == "sqrt" else weights).float()


class WeightedCrossEntropy:
    """A `Trainer(compute_loss_func=...)` for single-label classification with per-class weights.

    The loss is Σ w[y_i] · CE_i over the batch divided by the number of rows in the whole accumulated batch
    (`num_items_in_batch`, which Trainer counts across gradient-accumulation steps and processes), so that
    accumulating micro-batches gives the same update as one large batch. `torch`'s own weighted mean divides by
    the batch's sum of weights instead, which would make every row's weight depend on its batch-mates.
    """

    def __init__(self, weights: torch.Tensor):
        self.weights = weights

    def __call__(self, outputs, labels, num_items_in_batch=None):
        logits = outputs["logits"]  # (B, num_labels)
        loss = torch.nn.functional.cross_entropy(
            logits.float(), labels.view(-1), weight=self.weights.to(logits.device), reduction="sum"
        )
        return loss / (num_items_in_batch if num_items_in_batch is not None else labels.numel())

import json
from pathlib import Path

import pytest
import torch
from accelerate.commands.config.config_args import load_config_from_file
from accelerate.utils import DistributedType
from transformers import TrainingArguments

from hf_feedback import FeedbackForMaskedLM, FeedbackForSequenceClassification, FeedbackForTokenClassification
from hf_feedback.training.trainer import (
    FeedbackTrainer,
    WeightedCrossEntropy,
    class_weights,
    get_noam_schedule,
    noam_lambda,
)


REPO_ROOT = Path(__file__).parents[1]
CONFIGS_DIR = REPO_ROOT / "recipes" / "configs"

D_MODEL = 32
WARMUP = 4


def paper_lrate(step, d_model=D_MODEL, warmup=WARMUP):
    # "Attention Is All You Need", eq. (3), written out independently of hf_feedback.
    return d_model ** (-0.5) * min(step ** (-0.5), step * warmup ** (-1.5))


# --- the schedule itself ---


def test_noam_lambda_matches_paper_formula():
    # d_model=64, warmup=4: peak = 64^-0.5 * 4^-0.5 = 1/16.
    assert noam_lambda(4, 64, 4) == pytest.approx(1 / 16)
    assert noam_lambda(1, 64, 4) == pytest.approx(1 / 8 * 1 / 8)  # 64^-0.5 * 1 * 4^-1.5
    assert noam_lambda(16, 64, 4) == pytest.approx(1 / 8 * 1 / 4)  # 64^-0.5 * 16^-0.5


def test_noam_lambda_rises_linearly_peaks_at_warmup_then_decays_as_inverse_sqrt():
    values = [noam_lambda(step, D_MODEL, WARMUP) for step in range(1, 41)]
    peak_step = values.index(max(values)) + 1
    assert peak_step == WARMUP
    for step in range(1, WARMUP + 1):  # linear: proportional to step
        assert noam_lambda(step, D_MODEL, WARMUP) == pytest.approx(step * noam_lambda(1, D_MODEL, WARMUP))
    for step in range(WARMUP, 41):  # decay: proportional to step^-0.5
        expected = noam_lambda(WARMUP, D_MODEL, WARMUP) * (WARMUP / step) ** 0.5
        assert noam_lambda(step, D_MODEL, WARMUP) == pytest.approx(expected)


def test_noam_lambda_reads_step_zero_as_step_one():
    assert noam_lambda(0, D_MODEL, WARMUP) == noam_lambda(1, D_MODEL, WARMUP)


@pytest.mark.parametrize(
    "kwargs, field",
    [
        (dict(step=1, d_model=0, warmup_steps=4), "d_model"),
        (dict(step=1, d_model=32, warmup_steps=-1), "warmup_steps"),
        (dict(step=-1, d_model=32, warmup_steps=4), "step"),
    ],
)
def test_noam_lambda_rejects_bad_arguments(kwargs, field):
    with pytest.raises(ValueError, match=field):
        noam_lambda(**kwargs)


def test_get_noam_schedule_rejects_bad_arguments():
    optimizer = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=1.0)
    with pytest.raises(ValueError, match="warmup_steps"):
        get_noam_schedule(optimizer, d_model=32, warmup_steps=0)


def test_noam_schedule_kth_update_uses_kth_step_and_resumes_from_state_dict():
    parameter = torch.nn.Parameter(torch.zeros(1))
    optimizer = torch.optim.SGD([parameter], lr=2.0)
    scheduler = get_noam_schedule(optimizer, D_MODEL, WARMUP)
    used = []
    for _ in range(6):
        used.append(optimizer.param_groups[0]["lr"])
        optimizer.step()
        scheduler.step()
    assert used == pytest.approx([2.0 * paper_lrate(k) for k in range(1, 7)])

    # A fresh scheduler restored from the state dict continues at update 7.
    resumed_optimizer = torch.optim.SGD([parameter], lr=2.0)
    resumed_optimizer.load_state_dict(optimizer.state_dict())
    resumed = get_noam_schedule(resumed_optimizer, D_MODEL, WARMUP)
    resumed.load_state_dict(scheduler.state_dict())
    resumed_optimizer.step()
    resumed.step()
    assert resumed.get_last_lr()[0] == pytest.approx(2.0 * paper_lrate(8))


# --- FeedbackTrainer ---


class _RandomClassificationData(torch.utils.data.Dataset):
    def __init__(self, size=16, length=8, vocab_size=99):
        generator = torch.Generator().manual_seed(0)
        self.input_ids = torch.randint(1, vocab_size, (size, length), generator=generator)
        self.labels = torch.randint(0, 2, (size,), generator=generator)

    def __len__(self):
        return len(self.labels)

    def __getitem__(self, index):
        return {"input_ids": self.input_ids[index], "labels": self.labels[index]}


@pytest.fixture
def tiny_classifier(tiny_config):
    def make():
        torch.manual_seed(0)
        return FeedbackForSequenceClassification(tiny_config(num_labels=2))

    return make


def _args(output_dir, **overrides):
    defaults = dict(
        output_dir=str(output_dir),
        per_device_train_batch_size=4,
        learning_rate=2.0,  # the Noam factor
        max_steps=8,
        logging_steps=1,
        save_strategy="no",
        report_to="none",
        use_cpu=True,
        seed=0,
        disable_tqdm=True,
    )
    return TrainingArguments(**(defaults | overrides))


def _logged_learning_rates(trainer):
    return [(entry["step"], entry["learning_rate"]) for entry in trainer.state.log_history if "loss" in entry]


def test_trainer_logs_noam_learning_rate_at_every_step(tmp_path, tiny_classifier):
    trainer = FeedbackTrainer(
        model=tiny_classifier(),
        args=_args(tmp_path),
        train_dataset=_RandomClassificationData(),
        noam_warmup_steps=WARMUP,
    )
    trainer.train()

    d_model = trainer.model.config.hidden_size
    logged = _logged_learning_rates(trainer)
    assert [step for step, _ in logged] == list(range(1, 9))
    for step, learning_rate in logged:
        assert learning_rate == pytest.approx(2.0 * paper_lrate(step, d_model)), step


def test_trainer_resumes_noam_schedule_from_checkpoint(tmp_path, tiny_classifier):
    args = _args(tmp_path, save_strategy="steps", save_steps=4)
    first = FeedbackTrainer(
        model=tiny_classifier(), args=args, train_dataset=_RandomClassificationData(), noam_warmup_steps=WARMUP
    )
    first.train()

    resumed = FeedbackTrainer(
        model=tiny_classifier(), args=args, train_dataset=_RandomClassificationData(), noam_warmup_steps=WARMUP
    )
    resumed.train(resume_from_checkpoint=str(tmp_path / "checkpoint-4"))

    # The history holds steps 1-4 from the checkpoint and 5-8 from the resumed run, which a
    # restarted schedule would have run at paper_lrate(1..4).
    d_model = resumed.model.config.hidden_size
    logged = _logged_learning_rates(resumed)
    assert [step for step, _ in logged] == list(range(1, 9))
    for step, learning_rate in logged:
        assert learning_rate == pytest.approx(2.0 * paper_lrate(step, d_model)), step


def test_resumed_runs_report_the_whole_runs_train_loss(tmp_path, tiny_classifier):
    # Logging every 3 steps and saving every 4, so a checkpoint holds losses not yet drained into a log.
    args = _args(tmp_path, learning_rate=1e-3, logging_steps=3, save_strategy="steps", save_steps=4, max_steps=10)

    def trainer():
        return FeedbackTrainer(model=tiny_classifier(), args=args, train_dataset=_RandomClassificationData())

    straight = trainer().train()
    for checkpoint in ("checkpoint-4", "checkpoint-8"):
        resumed = trainer()
        output = resumed.train(resume_from_checkpoint=str(tmp_path / checkpoint))
        assert output.training_loss == pytest.approx(straight.training_loss, rel=1e-6), checkpoint
        assert output.metrics["train_loss"] == output.training_loss
        assert resumed.state.log_history[-1]["train_loss"] == pytest.approx(straight.training_loss, rel=1e-6)

    # A checkpoint saved without the sum (plain Trainer's): the resumed run trains and saves on, with Trainer's mean
    # over the steps after the resume.
    state_file = tmp_path / "checkpoint-4" / "trainer_state.json"
    state = json.loads(state_file.read_text())
    del state["stateful_callbacks"]["RunLoss"]
    state_file.write_text(json.dumps(state))
    resumed = trainer()
    output = resumed.train(resume_from_checkpoint=str(tmp_path / "checkpoint-4"))
    assert output.global_step == 10 and (tmp_path / "checkpoint-8" / "trainer_state.json").is_file()
    assert output.training_loss != pytest.approx(straight.training_loss, rel=1e-6)


def test_trainer_without_noam_keeps_trainer_schedule(tmp_path, tiny_classifier):
    trainer = FeedbackTrainer(model=tiny_classifier(), args=_args(tmp_path, learning_rate=1e-3))
    trainer.create_optimizer()
    scheduler = trainer.create_scheduler(num_training_steps=8)
    # Trainer's default: linear decay from learning_rate, no warmup.
    assert scheduler.get_last_lr()[0] == pytest.approx(1e-3)


@pytest.mark.filterwarnings("ignore:`is_gradient_checkpointing` is deprecated:FutureWarning")  # raised inside peft
def test_trainer_reads_d_model_through_peft_model(tmp_path, tiny_classifier):
    from peft import LoraConfig, get_peft_model

    model = get_peft_model(tiny_classifier(), LoraConfig(r=2, target_modules=["qkv_proj"], task_type="SEQ_CLS"))
    trainer = FeedbackTrainer(model=model, args=_args(tmp_path), noam_warmup_steps=WARMUP)
    trainer.create_optimizer()
    scheduler = trainer.create_scheduler(num_training_steps=8)
    d_model = model.get_base_model().config.hidden_size
    assert scheduler.get_last_lr()[0] == pytest.approx(2.0 * paper_lrate(1, d_model))


@pytest.mark.parametrize(
    "overrides, field",
    [
        (dict(warmup_steps=2), "warmup_steps"),
        (dict(lr_scheduler_type="cosine"), "lr_scheduler_type"),
        (dict(lr_scheduler_kwargs={"min_lr": 0.0}), "lr_scheduler_kwargs"),
    ],
)
def test_trainer_rejects_schedule_arguments_noam_would_ignore(tmp_path, tiny_classifier, overrides, field):
    with pytest.raises(ValueError, match=field):
        FeedbackTrainer(model=tiny_classifier(), args=_args(tmp_path, **overrides), noam_warmup_steps=WARMUP)


def test_trainer_rejects_a_passed_scheduler_with_noam(tmp_path, tiny_classifier):
    model = tiny_classifier()
    optimizer = torch.optim.AdamW(model.parameters())
    scheduler = torch.optim.lr_scheduler.ConstantLR(optimizer)
    with pytest.raises(ValueError, match="optimizers"):
        FeedbackTrainer(
            model=model, args=_args(tmp_path), optimizers=(optimizer, scheduler), noam_warmup_steps=WARMUP
        )


def test_trainer_rejects_nonpositive_noam_warmup(tmp_path, tiny_classifier):
    with pytest.raises(ValueError, match="noam_warmup_steps"):
        FeedbackTrainer(model=tiny_classifier(), args=_args(tmp_path), noam_warmup_steps=0)


# --- accelerate launch configs ---


@pytest.mark.parametrize(
    "name, distributed_type, num_processes, mixed_precision, num_machines",
    [
        ("cpu", DistributedType.NO, 1, "no", 1),
        ("cpu_multiprocess", DistributedType.MULTI_GPU, 2, "no", 1),
        ("single_gpu_fp16", DistributedType.NO, 1, "fp16", 1),
        ("multi_gpu_fp16", DistributedType.MULTI_GPU, 2, "fp16", 1),
        ("multi_node", DistributedType.MULTI_GPU, 4, "fp16", 2),
    ],
)
def test_accelerate_configs_parse(name, distributed_type, num_processes, mixed_precision, num_machines):
    # The loader `accelerate launch --config_file` uses; it rejects unknown keys.
    config = load_config_from_file(str(CONFIGS_DIR / f"{name}.yaml"))
    assert config.distributed_type == distributed_type
    assert config.num_processes == num_processes
    assert config.mixed_precision == mixed_precision
    assert config.num_machines == num_machines
    # cpu.yaml asks for the CPU (so accelerate gives the process every core); cpu_multiprocess goes through
    # torchrun, and the recipes then pick the CPU themselves.
    assert config.use_cpu is (name == "cpu")


# --- class-weighted loss ---


def test_class_weights_balanced_sqrt_and_none():
    balanced = class_weights([90, 10], "balanced")
    assert balanced.tolist() == pytest.approx([100 / (2 * 90), 100 / (2 * 10)])  # n / (k * n_c)
    assert class_weights([90, 10], "sqrt").tolist() == pytest.approx(balanced.sqrt().tolist())
    assert class_weights([90, 10], "none") is None
    assert class_weights([50, 50, 50], "balanced").tolist() == [1.0, 1.0, 1.0]  # balanced data: plain loss
    assert class_weights([30, 0, 10], "balanced").tolist() == pytest.approx([40 / 60, 0.0, 40 / 20])
    with pytest.raises(ValueError, match=r"class weighting must be one of \['none', 'sqrt', 'balanced'\], got 'x'"):
        class_weights([1, 1], "x")
    with pytest.raises(ValueError, match="at least one labelled row"):
        class_weights([0, 0], "balanced")


def test_weighted_cross_entropy_is_a_weighted_mean_over_the_whole_batch():
    logits = torch.tensor([[2.0, 0.0], [0.0, 1.0], [1.0, 1.0]])
    labels = torch.tensor([0, 1, 1])
    weights = torch.tensor([0.5, 3.0])
    per_row = torch.nn.functional.cross_entropy(logits, labels, reduction="none")
    expected = (per_row * weights[labels]).sum() / 3
    assert WeightedCrossEntropy(weights)({"logits": logits}, labels).item() == pytest.approx(expected.item())
    # With gradient accumulation Trainer passes the row count of the whole accumulated batch.
    assert WeightedCrossEntropy(weights)({"logits": logits}, labels, num_items_in_batch=6).item() == pytest.approx(
        expected.item() / 2)


def test_weighted_loss_under_gradient_accumulation_matches_one_large_batch(tmp_path, tiny_classifier):
    # 1 x batch 8 and 2 x batch 4 with accumulation must make the same update, which a per-batch mean would not
    # (the two halves hold different numbers of each class).
    data = _RandomClassificationData(size=8)
    weights = class_weights(torch.bincount(data.labels, minlength=2), "balanced")
    assert weights[0] != weights[1]
    trained = []
    for batch, accumulation in ((8, 1), (4, 2)):
        args = _args(tmp_path / f"b{batch}", per_device_train_batch_size=batch, gradient_accumulation_steps=accumulation,
                     max_steps=1, learning_rate=1e-2, lr_scheduler_type="constant", max_grad_norm=0.0,
                     train_sampling_strategy="sequential")
        model = tiny_classifier()
        trainer = FeedbackTrainer(model=model, args=args, train_dataset=data,
                                  compute_loss_func=WeightedCrossEntropy(weights))
        trainer.train()
        trained.append(model.classifier.weight.detach().clone())
    assert torch.allclose(trained[0], trained[1], atol=1e-6)
    assert not torch.allclose(trained[0], tiny_classifier().classifier.weight)


class _MaskedTokens(torch.utils.data.Dataset):
    """Rows with 1, 1, 4 and 2 labelled tokens: micro-batches of 2 hold 2 and 6, so a mean of their means is not
    the mean over all 8 tokens."""

    def __init__(self, length=8, vocab_size=99):
        generator = torch.Generator().manual_seed(0)
        self.input_ids = torch.randint(5, vocab_size, (4, length), generator=generator)
        self.labels = torch.full((4, length), -100)
        for row, count in enumerate((1, 1, 4, 2)):
            self.labels[row, :count] = self.input_ids[row, :count]

    def __len__(self):
        return 4

    def __getitem__(self, index):
        return {"input_ids": self.input_ids[index], "labels": self.labels[index]}


@pytest.mark.parametrize("model_class", [FeedbackForMaskedLM, FeedbackForTokenClassification])
def test_per_token_loss_under_gradient_accumulation_matches_one_large_batch(model_class, tmp_path, tiny_config):
    data = _MaskedTokens()
    if model_class is FeedbackForTokenClassification:  # the same labelled tokens, as tags 0 / 1
        data.labels = torch.where(data.labels == -100, -100, data.labels % 2)
    trained = []
    for batch, accumulation in ((4, 1), (2, 2)):
        torch.manual_seed(0)
        model = model_class(tiny_config())
        args = _args(tmp_path / f"b{batch}", per_device_train_batch_size=batch, gradient_accumulation_steps=accumulation,
                     max_steps=1, optim="sgd", learning_rate=1.0, lr_scheduler_type="constant", max_grad_norm=0.0,
                     weight_decay=0.0, train_sampling_strategy="sequential")
        FeedbackTrainer(model=model, args=args, train_dataset=data).train()
        trained.append(model.feedback.embeddings.word_embeddings.weight.detach().clone())
    torch.testing.assert_close(trained[0], trained[1], atol=1e-6, rtol=1e-5)

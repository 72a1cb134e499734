"""The recipes' arguments and their checks before any work (hf_feedback/training/recipe_arguments.py)."""

import os
import subprocess
import sys

import psutil
import pytest
import torch
from transformers import TrainingArguments

from helpers import ROOT

from hf_feedback.training import recipe_arguments
from hf_feedback.training.recipe_arguments import check_cpu_threads

CHECK_THREADS = """
import sys
import torch
from transformers import TrainingArguments
from hf_feedback.training.recipe_arguments import check_cpu_threads
check_cpu_threads(TrainingArguments(output_dir=sys.argv[1], use_cpu=True, report_to="none"))
print("threads", torch.get_num_threads())
"""


def test_a_lone_cpu_process_on_fewer_threads_than_cores_is_warned(monkeypatch, caplog, tmp_path):
    args = TrainingArguments(output_dir=str(tmp_path), use_cpu=True, report_to="none")
    monkeypatch.setattr(recipe_arguments.psutil, "cpu_count", lambda logical=True: 4)
    monkeypatch.setattr(torch, "get_num_threads", lambda: 1)
    check_cpu_threads(args)
    assert [record.levelname for record in caplog.records] == ["WARNING"]
    assert "torch uses 1 thread(s) on this 4-core CPU" in caplog.text
    caplog.clear()
    monkeypatch.setattr(torch, "get_num_threads", lambda: 4)
    check_cpu_threads(args)
    assert caplog.records == []


@pytest.mark.processes
def test_accelerate_launch_needs_the_cpu_config_to_use_every_core(tmp_path):
    """The fact behind the warning and the README's main command: without a use_cpu config, accelerate starts the
    one process with OMP_NUM_THREADS=1; recipes/configs/cpu.yaml gives it every core."""
    script = tmp_path / "check_threads.py"
    script.write_text(CHECK_THREADS)
    env = {key: value for key, value in os.environ.items() if key != "OMP_NUM_THREADS"}
    cores = psutil.cpu_count(logical=False)
    runs = {}
    for flags in ([], ["--config_file", str(ROOT / "recipes" / "configs" / "cpu.yaml")]):
        runs[bool(flags)] = subprocess.run(
            [sys.executable, "-m", "accelerate.commands.launch", *flags, str(script), str(tmp_path)],
            cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert all(run.returncode == 0 for run in runs.values()), runs
    assert "threads 1" in runs[False].stdout
    assert ("leaves" in runs[False].stderr) == (cores > 1)
    assert f"threads {cores}" in runs[True].stdout
    assert "leaves" not in runs[True].stderr


def test_a_checkpoint_fine_tunes_at_the_checkpoint_rate_unless_one_is_given(tmp_path, capsys):
    from types import SimpleNamespace

    from hf_feedback.training.recipe_arguments import CHECKPOINT_LEARNING_RATE, checkpoint_learning_rate, flag_given

    assert flag_given("learning_rate", ["--learning_rate", "1e-3"]) and flag_given("learning_rate", ["--learning_rate=2"])
    assert not flag_given("learning_rate", ["--learning_rate_scheduler", "x", "--lr", "1"])
    (tmp_path / "args.json").write_text('{"learning_rate": 0.01}')
    (tmp_path / "other.yaml").write_text("num_train_epochs: 1\n")
    assert flag_given("learning_rate", [str(tmp_path / "args.json")])
    assert not flag_given("learning_rate", [str(tmp_path / "other.yaml")])

    def rate(model_name_or_path, argv):
        training_args = SimpleNamespace(learning_rate=1e-3, process_index=0)
        checkpoint_learning_rate(SimpleNamespace(model_name_or_path=model_name_or_path), training_args, argv)
        return training_args.learning_rate

    assert rate("outputs/pretrained", []) == CHECKPOINT_LEARNING_RATE < 1e-3
    assert f"learning rate {CHECKPOINT_LEARNING_RATE:g}: fine-tuning a checkpoint" in capsys.readouterr().out
    assert rate("outputs/pretrained", ["--learning_rate", "1e-3"]) == 1e-3  # the user's rate stands
    assert rate(None, []) == 1e-3  # a new model keeps the recipe's

"""The recipes' shared set-up checks in hf_feedback/recipe_utils.py."""

import os
import subprocess
import sys

import psutil
import torch
from transformers import TrainingArguments

from helpers import ROOT

from hf_feedback import recipe_utils
from hf_feedback.recipe_utils import check_cpu_threads

CHECK_THREADS = """
import sys
import torch
from transformers import TrainingArguments
from hf_feedback.recipe_utils import check_cpu_threads
check_cpu_threads(TrainingArguments(output_dir=sys.argv[1], use_cpu=True, report_to="none"))
print("threads", torch.get_num_threads())
"""


def test_a_lone_cpu_process_on_fewer_threads_than_cores_is_warned(monkeypatch, caplog, tmp_path):
    args = TrainingArguments(output_dir=str(tmp_path), use_cpu=True, report_to="none")
    monkeypatch.setattr(recipe_utils.psutil, "cpu_count", lambda logical=True: 4)
    monkeypatch.setattr(torch, "get_num_threads", lambda: 1)
    check_cpu_threads(args)
    assert [record.levelname for record in caplog.records] == ["WARNING"]
    assert "torch uses 1 thread(s) on this 4-core CPU" in caplog.text
    caplog.clear()
    monkeypatch.setattr(torch, "get_num_threads", lambda: 4)
    check_cpu_threads(args)
    assert caplog.records == []


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

"""A run's folder (hf_feedback/training/run_folder.py): resumed only from a complete checkpoint. The lock, overwriting
and resuming whole runs are driven through the recipes in tests/test_recipe_refusals.py and
tests/test_recipe_processes.py."""

import json
import re

import pytest
import torch
from safetensors.torch import save_file
from transformers import TrainingArguments

from hf_feedback.training.recipe_arguments import RecipeError
from hf_feedback.training.run_folder import resolve_resume


def _checkpoint(folder, step):
    """The files Trainer saves in checkpoint-N (real formats, small contents)."""
    path = folder / f"checkpoint-{step}"
    path.mkdir(parents=True)
    (path / "trainer_state.json").write_text(json.dumps({"global_step": step}))
    save_file({"w": torch.ones(64, 64)}, path / "model.safetensors")
    torch.save({"state": {0: {"exp_avg": torch.zeros(64, 64)}}}, path / "optimizer.pt")
    torch.save({"last_epoch": step}, path / "scheduler.pt")
    return path


@pytest.mark.parametrize("damage", ["optimizer.pt", "model.safetensors", "trainer_state.json"])
def test_a_checkpoint_cut_short_is_named_and_last_skips_it(tmp_path, caplog, damage):
    older, newer = _checkpoint(tmp_path, 10), _checkpoint(tmp_path, 20)
    path = newer / damage
    path.write_bytes(path.read_bytes()[: len(path.read_bytes()) // 2])
    with pytest.raises(RecipeError, match=rf"checkpoint-20 cannot be resumed from: damaged: {re.escape(damage)} \("):
        resolve_resume(TrainingArguments(output_dir=str(tmp_path), resume_from_checkpoint=str(newer)))
    assert resolve_resume(TrainingArguments(output_dir=str(tmp_path), resume_from_checkpoint="last")) == str(older)
    assert f"skipping {newer} (damaged: {damage}" in caplog.text

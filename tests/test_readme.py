"""The README's example runs as written and does what it says."""

import re
from pathlib import Path

import torch

README = Path(__file__).resolve().parents[1] / "README.md"


def test_readme_example_builds_saves_reloads_and_classifies(tmp_path, monkeypatch, capsys):
    blocks = re.findall(r"```python\n(.*?)```", README.read_text(), flags=re.S)
    example = blocks[0]
    assert len([line for line in example.splitlines() if line.strip()]) <= 10
    monkeypatch.chdir(tmp_path)
    namespace = {}
    exec(compile(example, "README.md", "exec"), namespace)
    assert (tmp_path / "my-encoder" / "modeling_feedback.py").is_file()
    probabilities = namespace["probabilities"]
    assert probabilities.shape == (1, 2)
    torch.testing.assert_close(probabilities.sum(-1), torch.ones(1))
    assert "torch.Size([1, 4, 64])" in capsys.readouterr().out


def test_readme_commands_are_what_ci_runs():
    text = README.read_text()
    commands = re.findall(r"```bash\n(.*?)\n```", text, flags=re.S)
    setup, tests = commands[0], commands[1]
    assert "pip install torch==2.13.0" in setup
    assert setup.endswith("accelerate launch --config_file recipes/configs/cpu.yaml recipes/finetune.py")
    ci = (README.parent / ".ci" / "run").read_text()
    assert tests.split("&& ")[-1] in ci
    assert 'pip install -q torch==2.13.0 -e ".[test]"' in ci

"""The README's example runs as written and does what it says, and every command of the README and docs/ parses."""

import argparse
import importlib
import re
import shlex
from pathlib import Path

import pytest
import torch
from accelerate.commands.launch import launch_command_parser
from transformers import HfArgumentParser

from helpers import load_recipe

ROOT = Path(__file__).resolve().parents[1]
README = ROOT / "README.md"
# The documents whose commands a reader copies: every line of their ```bash blocks, and the README's inline commands.
DOCUMENTS = [README, *sorted((ROOT / "docs").glob("*.md"))]


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



class _Parsed(Exception):
    """Raised by the patched parsers once a command's arguments parsed: the command's flags exist."""


def _commands(path):
    text = path.read_text()
    lines = [line for block in re.findall(r"```bash\n(.*?)\n```", text, flags=re.S) for line in block.splitlines()]
    if path == README:  # inline commands in the README's prose
        lines += re.findall(r"`((?:python|accelerate launch|pip install) [^`]+)`", text)
    for line in lines:
        words = shlex.split(line, comments=True)
        command = []
        for word in [*words, "&&"]:
            if word in ("&&", "|"):
                if command:
                    yield " ".join(command), command
                command = []
            else:
                command.append(word)


def _parse_only(monkeypatch, main, argv):
    """Run `main(argv)` until its arguments are parsed (argparse or HfArgumentParser), and no further."""
    parse_args = argparse.ArgumentParser.parse_args
    parse_into = HfArgumentParser.parse_args_into_dataclasses

    def parsed_argparse(self, args=None, namespace=None):
        raise _Parsed(parse_args(self, args, namespace))

    def parsed_dataclasses(self, *args, **kwargs):
        raise _Parsed(parse_into(self, *args, **kwargs))

    with monkeypatch.context() as patch:
        patch.setattr(argparse.ArgumentParser, "parse_args", parsed_argparse)
        patch.setattr(HfArgumentParser, "parse_args_into_dataclasses", parsed_dataclasses)
        with pytest.raises(_Parsed):
            main(argv)


def _script(monkeypatch, script, argv):
    path = ROOT / script
    assert path.is_file(), f"{script} does not exist"
    if path.parent.name == "recipes":
        module = load_recipe(path.stem)
    else:
        monkeypatch.syspath_prepend(str(ROOT))
        module = importlib.import_module(f"{path.parent.name}.{path.stem}")
    _parse_only(monkeypatch, module.main, argv)


def _check(monkeypatch, words):
    program, *args = words
    if program == "python3" and args[:2] == ["-m", "venv"] or program == "." and args == [".venv/bin/activate"]:
        return
    if program == "cat":  # a file of the reader's own, piped into the next command
        return
    if program == "pip":
        assert args[0] == "install"
        pyproject = (ROOT / "pyproject.toml").read_text()
        extras = re.findall(r"^(\w+) = \[", pyproject.split("[project.optional-dependencies]")[1].split("\n[")[0], re.M)
        for arg in args[1:]:
            extra = re.fullmatch(r"\.\[(\w+)\]", arg)
            assert extra is None or extra[1] in extras, f"no extra {arg} in pyproject.toml"
        return
    if program == "accelerate":
        assert args[0] == "launch"
        launch = launch_command_parser().parse_args(args[1:])
        assert launch.config_file is None or (ROOT / launch.config_file).is_file(), launch.config_file
        return _script(monkeypatch, launch.training_script, launch.training_script_args)
    assert program == "python", f"not a command the README test knows: {words}"
    if args[0] != "-m":
        return _script(monkeypatch, args[0], args[1:])
    module, argv = args[1], args[2:]
    if module == "pytest":
        assert all((ROOT / arg).exists() for arg in argv if not arg.startswith("-"))
        return
    assert module.split(".")[0] == "hf_feedback", module
    imported = importlib.import_module(module)
    main = imported.main if hasattr(imported, "main") else importlib.import_module(f"{module}.__main__").main
    _parse_only(monkeypatch, main, argv)


@pytest.mark.parametrize("document", DOCUMENTS, ids=lambda path: path.name)
def test_every_command_in_the_docs_parses(document, monkeypatch):
    """Each command names files that exist and flags that its script, module or accelerate accepts (parsed, not run)."""
    commands = list(_commands(document))
    assert commands or document != README
    for line, words in commands:
        try:
            _check(monkeypatch, words)
        except BaseException as error:
            if isinstance(error, (pytest.fail.Exception, KeyboardInterrupt)):
                raise
            pytest.fail(f"{document.name}: `{line}`: {type(error).__name__}: {error}")


def test_relative_links_in_the_docs_resolve():
    """Every relative link of the README, docs/ and benchmarks/HISTORY.md names a file there, and an anchor of it."""
    documents = [*DOCUMENTS, ROOT / "benchmarks" / "HISTORY.md"]
    for document in documents:
        for target in re.findall(r"\]\(([^)\s]+)\)", document.read_text()):
            if re.match(r"[a-z]+://", target):
                continue
            path, _, anchor = target.partition("#")
            linked = (document.parent / path).resolve() if path else document
            assert linked.exists(), f"{document.name}: {target}"
            if anchor and linked.suffix == ".md":
                assert anchor in _anchors(linked.read_text()), f"{document.name}: {target}"


def _anchors(markdown):
    """GitHub's heading anchors: lower case, punctuation dropped, spaces to hyphens."""
    headings = re.findall(r"^#+ (.+)$", re.sub(r"```.*?```", "", markdown, flags=re.S), flags=re.M)
    return {re.sub(r"[^\w\- ]", "", heading.lower()).replace(" ", "-") for heading in headings}

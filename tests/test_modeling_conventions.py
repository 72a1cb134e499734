"""The model follows Hugging Face's conventions (ELECTRA pretraining, initialisation, gradient checkpointing, outputs,
resizing, saving, dtype, Auto classes) and refuses bad tensors early with a clear message."""

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

from hf_feedback import (
    FeedbackConfig,
    FeedbackForMaskedLM,
    FeedbackForPreTraining,
    FeedbackForSequenceClassification,
    FeedbackForTokenClassification,
    FeedbackModel,
)
from hf_feedback.model.modeling_feedback import generator_config
from modeling_helpers import build


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

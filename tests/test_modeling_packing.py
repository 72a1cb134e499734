"""Padding-free (packed) batches give the padded batch's losses and gradients, and the model compiles whole."""

import pytest
import torch

from hf_feedback import (
    FeedbackForCausalLM,
    FeedbackForMaskedLM,
    FeedbackForPreTraining,
    FeedbackForSequenceClassification,
    FeedbackForTokenClassification,
    FeedbackModel,
)
from modeling_helpers import Synchronisations, build


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
        with Synchronisations() as counted:
            model.train()(**packed, labels=labels).loss.backward()
        assert [name.replace("_local_scalar_dense", "any") for name in counted.calls] == packed_reads
        with Synchronisations() as counted:
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

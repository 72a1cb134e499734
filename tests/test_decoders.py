"""The decoders: the causal language model (masking, loss, the cache, generation) and the encoder-decoder."""

import pytest
import torch
import torch.nn.functional as F

from transformers import DynamicCache

from hf_feedback import FeedbackForCausalLM, FeedbackForConditionalGeneration, FeedbackSeq2SeqConfig, FeedbackModel
from modeling_helpers import build


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

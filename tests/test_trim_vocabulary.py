"""hf_feedback/data/trim_vocabulary.py: a trimmed vocabulary gives the same tokens and outputs on the corpus it
keeps."""

import pytest
import torch
from transformers import AutoModelForMaskedLM, AutoTokenizer

from helpers import xlmr_tokenizer

from hf_feedback import FeedbackConfig, FeedbackForMaskedLM
from hf_feedback.data.corpora import load_sentiment_reviews
from hf_feedback.data.tokenization import train_tokenizer
from hf_feedback.data.trim_vocabulary import trim_vocabulary
from hf_feedback.failures import BadInput


@pytest.fixture(scope="module")
def reviews():
    data = load_sentiment_reviews()
    return list(data["train"]["text"][:1000]), list(data["test"]["text"][:200])


@pytest.fixture(scope="module")
def xlmr(reviews):
    return xlmr_tokenizer(reviews[0], 4000)


def tiny_masked_lm(tokenizer):
    torch.manual_seed(0)
    config = FeedbackConfig(vocab_size=len(tokenizer), hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                            intermediate_size=64, pad_token_id=tokenizer.pad_token_id,
                            bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
                            char_vocab_size=50, chars_per_token=4)
    model = FeedbackForMaskedLM(config).eval()
    model.set_token_characters(torch.randint(0, 50, (len(tokenizer), 4)))
    return model


def test_the_kept_corpus_keeps_its_tokens_and_outputs_through_save_and_reload(xlmr, reviews, tmp_path):
    corpus, other = reviews[0][:300], reviews[1]
    model = tiny_masked_lm(xlmr)
    full_ids = xlmr(corpus)["input_ids"]
    inputs = xlmr(corpus[:24], padding=True, return_tensors="pt")
    with torch.no_grad():
        full = model(**inputs, output_hidden_states=True)

    trimmed_model, trimmed = trim_vocabulary(model, xlmr, corpus)
    vocabulary = xlmr.convert_ids_to_tokens(list(range(len(xlmr))))
    kept = [xlmr.convert_tokens_to_ids(piece) for piece in trimmed.convert_ids_to_tokens(
        list(range(len(trimmed))))]  # old id of each new one
    assert len(trimmed) == trimmed_model.config.vocab_size < len(xlmr)
    assert kept == sorted(kept) and kept[:4] == [0, 1, 2, 3] and xlmr.mask_token_id in kept
    assert {i for i, p in enumerate(vocabulary) if len(p.removeprefix("▁")) <= 1} <= set(kept)
    # Every text of the corpus: the same pieces, renumbered.
    assert [[kept[i] for i in ids] for ids in trimmed(corpus)["input_ids"]] == full_ids

    trimmed_model.save_pretrained(tmp_path / "trimmed")
    trimmed.save_pretrained(tmp_path / "trimmed")
    reloaded = AutoModelForMaskedLM.from_pretrained(tmp_path / "trimmed").eval()
    reloaded_tokenizer = AutoTokenizer.from_pretrained(tmp_path / "trimmed")
    inputs = reloaded_tokenizer(corpus[:24], padding=True, return_tensors="pt")
    with torch.no_grad():
        got = reloaded(**inputs, output_hidden_states=True)
    real = inputs["attention_mask"].bool()
    for theirs, mine in zip(full.hidden_states, got.hidden_states):
        torch.testing.assert_close(mine[real], theirs[real])
    torch.testing.assert_close(got.logits[real], full.logits[real][:, kept])  # the kept pieces' scores
    assert reloaded.lm_head.decoder.weight.data_ptr() == reloaded.feedback.embeddings.word_embeddings.weight.data_ptr()

    # Other texts still tokenize into pieces the full vocabulary knows, never into more <unk>s.
    unknown = lambda tokenizer: sum(i == tokenizer.unk_token_id  # noqa: E731
                                    for ids in tokenizer(other)["input_ids"] for i in ids)
    assert unknown(reloaded_tokenizer) == unknown(xlmr)


def test_wordpiece_and_mismatched_tokenizers_are_refused(xlmr, reviews):
    wordpiece = train_tokenizer(reviews[0][:200], vocab_size=500)
    with pytest.raises(BadInput, match="only SentencePiece unigram vocabularies can be trimmed; this tokenizer is "
                                       "WordPiece"):
        trim_vocabulary(tiny_masked_lm(wordpiece), wordpiece, reviews[0])
    model = tiny_masked_lm(xlmr)
    model.config.vocab_size += 1
    with pytest.raises(BadInput, match="the tokenizer has [0-9,]+ pieces and the model [0-9,]+ embedding rows"):
        trim_vocabulary(model, xlmr, reviews[0])

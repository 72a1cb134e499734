"""hf_feedback/integrations/export_bert.py: a model in BERT's special case exports to transformers' own BERT classes,
which compute the same numbers; anything else is refused by name."""

import json

import pytest
import torch
from transformers import AutoModel, AutoModelForMaskedLM, AutoModelForSequenceClassification, AutoModelForTokenClassification

from hf_feedback import (
    FeedbackForMaskedLM,
    FeedbackForSequenceClassification,
    FeedbackForTokenClassification,
    FeedbackModel,
)
from hf_feedback.__main__ import main as cli
from hf_feedback.integrations.convert import convert
from hf_feedback.integrations.export_bert import NotBert, export_bert

BERT_CASE = dict(norm_position="post", position_embedding_type="absolute", hidden_act="gelu", pooling="cls",
                 num_labels=3, id2label={0: "a", 1: "b", 2: "c"}, label2id={"a": 0, "b": 1, "c": 2})
CASES = [  # ours, the Auto class that reopens the export, the output compared
    (FeedbackModel, AutoModel, "pooler_output"),
    (FeedbackForMaskedLM, AutoModelForMaskedLM, "logits"),
    (FeedbackForSequenceClassification, AutoModelForSequenceClassification, "logits"),
    (FeedbackForTokenClassification, AutoModelForTokenClassification, "logits"),
]


def _randomised(model):
    """Every weight random, biases and LayerNorm included, so that a tensor mapped to the wrong place shows."""
    torch.manual_seed(0)
    with torch.no_grad():
        for parameter in model.parameters():
            parameter.normal_(0, 0.2)
    return model.eval()


@pytest.mark.parametrize("ours_class, auto_class, output", CASES, ids=[case[0].__name__ for case in CASES])
def test_export_computes_the_same_numbers_in_bert_and_converts_back_exactly(tiny_config, batch, tmp_path, ours_class,
                                                                            auto_class, output):
    ours = _randomised(ours_class(tiny_config(**BERT_CASE)))
    ours.save_pretrained(tmp_path / "ours")
    export_bert(tmp_path / "ours", tmp_path / "bert")

    config = json.loads((tmp_path / "bert" / "config.json").read_text())
    assert config["model_type"] == "bert" and "auto_map" not in config  # plain BERT: no remote code
    bert = auto_class.from_pretrained(tmp_path / "bert").eval()
    assert type(bert).__name__ == ours_class.__name__.replace("Feedback", "Bert")
    input_ids, attention_mask = batch  # the second row is padded
    with torch.no_grad():
        expected = getattr(ours(input_ids=input_ids, attention_mask=attention_mask), output)
        got = getattr(bert(input_ids=input_ids, attention_mask=attention_mask), output)
    keep = attention_mask.bool() if output == "logits" and got.dim() == 3 else slice(None)  # per token: real ones
    torch.testing.assert_close(got[keep], expected[keep], atol=1e-5, rtol=1e-5)
    if ours_class is FeedbackForSequenceClassification:
        assert bert.config.id2label == {0: "a", 1: "b", 2: "c"}

    # hf_feedback.integrations.convert is the inverse: the round trip gives back every tensor exactly.
    convert(tmp_path / "bert", tmp_path / "back")
    back = ours_class.from_pretrained(tmp_path / "back")
    for name, tensor in ours.state_dict().items():
        torch.testing.assert_close(back.state_dict()[name], tensor, atol=0, rtol=0, msg=name)


@pytest.mark.parametrize("overrides, named", [
    (dict(norm_position="pre"), ["norm_position='pre' (BERT: 'post')"]),
    (dict(position_embedding_type="rotary", hidden_act="swiglu"),
     ["position_embedding_type='rotary' (BERT: 'absolute')", "hidden_act='swiglu' (BERT: 'gelu')"]),
    (dict(pooling="mean"), ["pooling='mean' (BERT: 'cls')"]),
    (dict(char_vocab_size=5, chars_per_token=2, ngram_vocab_size=7),
     ["ngram_vocab_size=7 (BERT: 0)", "char_vocab_size=5 (BERT: 0)"]),
])
def test_a_model_that_is_not_bert_is_refused_naming_each_field(tiny_config, tmp_path, overrides, named):
    FeedbackForSequenceClassification(tiny_config(**{**BERT_CASE, **overrides})).save_pretrained(tmp_path / "ours")
    with pytest.raises(NotBert) as error:
        export_bert(tmp_path / "ours", tmp_path / "bert")
    for text in named:
        assert text in str(error.value)
    assert not (tmp_path / "bert").exists()


@pytest.mark.parametrize("ours_class, overrides, named", [
    (FeedbackForMaskedLM, dict(tie_word_embeddings=False), "tie_word_embeddings=False (BERT: True)"),
    (FeedbackModel, dict(is_decoder=True), "is_decoder=True (BERT: False)"),
])
def test_an_untied_masked_lm_and_a_decoder_are_refused_by_name(tiny_config, tmp_path, ours_class, overrides, named):
    # An export would drop the untied output projection, or make a causal model bidirectional, without a word.
    ours_class(tiny_config(**{**BERT_CASE, **overrides})).save_pretrained(tmp_path / "ours")
    with pytest.raises(NotBert, match=named.replace("(", r"\(").replace(")", r"\)")):
        export_bert(tmp_path / "ours", tmp_path / "bert")
    assert not (tmp_path / "bert").exists()


def test_a_model_without_segments_exports_with_one_zero_segment_embedding(tiny_config, batch, tmp_path):
    ours = _randomised(FeedbackForSequenceClassification(tiny_config(**BERT_CASE, type_vocab_size=0)))
    ours.save_pretrained(tmp_path / "ours")
    export_bert(tmp_path / "ours", tmp_path / "bert")
    bert = AutoModelForSequenceClassification.from_pretrained(tmp_path / "bert").eval()
    assert bert.config.type_vocab_size == 1
    assert not bert.bert.embeddings.token_type_embeddings.weight.any()
    with torch.no_grad():
        torch.testing.assert_close(bert(*batch).logits, ours(*batch).logits, atol=1e-5, rtol=1e-5)


def test_both_exporters_refuse_an_encoder_decoder_as_ours(tiny_config, tmp_path, capsys):
    from hf_feedback import FeedbackForConditionalGeneration, FeedbackSeq2SeqConfig

    fields = {k: v for k, v in tiny_config().to_diff_dict().items() if k not in ("auto_map", "model_type")}
    FeedbackForConditionalGeneration(FeedbackSeq2SeqConfig(**fields)).save_pretrained(tmp_path / "seq2seq")
    for kind in ("bert", "onnx"):
        with pytest.raises(SystemExit) as exit_:
            cli(["export", kind, str(tmp_path / "seq2seq"), str(tmp_path / kind)])
        error = capsys.readouterr().err
        assert exit_.value.code == 2 and "an hf_feedback encoder-decoder (FeedbackForConditionalGeneration)" in error
        assert "not an hf_feedback one" not in error and not (tmp_path / kind).exists()


def test_mean_pooling_does_not_matter_where_nothing_is_pooled(tiny_config, tmp_path):
    # A masked LM never pools, so the recipe default (mean) exports as it is.
    FeedbackForMaskedLM(tiny_config(**{**BERT_CASE, "pooling": "mean"})).save_pretrained(tmp_path / "ours")
    assert type(export_bert(tmp_path / "ours", tmp_path / "bert")).__name__ == "BertForMaskedLM"


def test_cli_exports_and_refuses_with_one_line(tiny_config, tmp_path, capsys):
    FeedbackForSequenceClassification(tiny_config(**BERT_CASE)).save_pretrained(tmp_path / "bertlike")
    FeedbackForSequenceClassification(tiny_config(**{**BERT_CASE, "norm_position": "pre"})).save_pretrained(tmp_path / "pre")

    cli(["export", "bert", str(tmp_path / "bertlike"), str(tmp_path / "out")])
    assert "Saved BertForSequenceClassification" in capsys.readouterr().out
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["config.json", "model.safetensors"]

    for argv, message in [
        (["export", "bert", str(tmp_path / "pre"), str(tmp_path / "new")], "norm_position='pre' (BERT: 'post')"),
        (["export", "bert", str(tmp_path / "bertlike"), str(tmp_path / "out")], "exists and is not empty"),
        (["export", "bert", str(tmp_path / "nothing"), str(tmp_path / "new")], "has no config.json"),
    ]:
        with pytest.raises(SystemExit) as exit_:
            cli(argv)
        err = capsys.readouterr().err
        assert exit_.value.code == 2 and message in err and len(err.strip().splitlines()) == 1, err
    assert not (tmp_path / "new").exists()  # nothing half-written where the export failed

"""hf_feedback/integrations/export_onnx.py and hf_feedback/integrations/quantization.py: every head exports to ONNX with
dynamic batch and length and ONNX Runtime computes torch's numbers on padded batches; int8 (ONNX and torch) stays close;
bad input is one line and exit status 2."""

import json

import numpy as np
import onnx
import onnxruntime
import pytest
import torch

from hf_feedback import (
    FeedbackForMaskedLM,
    FeedbackForSequenceClassification,
    FeedbackForTokenClassification,
    FeedbackModel,
)
from hf_feedback.__main__ import main as cli
from hf_feedback.data.corpora import load_sentiment_reviews
from hf_feedback.data.tokenization import train_tokenizer
from hf_feedback.integrations.export_onnx import INT8_FILE, ONNX_FILE, NotExportable, export_onnx, onnx_outputs
from hf_feedback.integrations.quantization import int8_linear
from hf_feedback.model import modeling_feedback

TEXTS = ["质量很好，物流也快", "太差了，再也不买了，客服也不理人，退货还要自己出运费", "还行"]
HEADS = [  # head, configuration, the outputs compared
    (FeedbackModel, dict(position_embedding_type="absolute", pooling="mean"),
     ("last_hidden_state", "pooler_output")),
    # (one layer where the graph is largest, rotary: every layer attends alike, and the export takes ~10 s a layer)
    (FeedbackForSequenceClassification, dict(position_embedding_type="rotary", norm_position="pre", num_labels=3,
                                             num_hidden_layers=1), ("logits",)),
    # hashed n-gram embeddings: the tagger's default (recipes/token_classification.py)
    (FeedbackForTokenClassification, dict(position_embedding_type="sinusoidal", num_labels=5, ngram_vocab_size=97,
                                          num_hidden_layers=1), ("logits",)),
    (FeedbackForMaskedLM, dict(position_embedding_type="rotary", norm_position="pre", num_hidden_layers=1),
     ("logits",)),
]


@pytest.fixture(scope="module")
def tokenizer():
    return train_tokenizer(load_sentiment_reviews()["test"]["text"][:300], vocab_size=300, kind="unigram")


def _saved(folder, head, config, tokenizer):
    torch.manual_seed(0)
    model = head(config).eval()
    with torch.no_grad():  # biases and norms random too, so that a misplaced tensor shows in the outputs
        for parameter in model.parameters():
            parameter.normal_(0, 0.2)
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return model


@pytest.mark.parametrize("head, overrides, outputs", HEADS, ids=[h[0].__name__ for h in HEADS])
def test_onnx_runtime_computes_torchs_outputs_for_every_head(tiny_config, tokenizer, tmp_path, head, overrides,
                                                             outputs):
    model = _saved(tmp_path / "model", head, tiny_config(vocab_size=len(tokenizer), **overrides), tokenizer)
    differences = export_onnx(tmp_path / "model", tmp_path / "onnx")
    assert differences[ONNX_FILE] < 1e-4
    assert sorted(p.name for p in (tmp_path / "onnx").iterdir()) == [
        "config.json", "configuration_feedback.py", ONNX_FILE, "tokenizer.json", "tokenizer_config.json"]

    # The graph finds the real tokens itself (NonZero on the mask) and runs its per-token layers on them only, as
    # the eager model does, and each layer attends in the eager model's length buckets: a served batch costs its
    # real tokens, not its padded length.
    op_types = [node.op_type for node in onnx.load(str(tmp_path / "onnx" / ONNX_FILE)).graph.node]
    assert "NonZero" in op_types
    assert op_types.count("Softmax") == model.config.num_hidden_layers * modeling_feedback._ATTENTION_BUCKETS
    session = onnxruntime.InferenceSession(str(tmp_path / "onnx" / ONNX_FILE), providers=["CPUExecutionProvider"])
    assert [i.name for i in session.get_inputs()] == ["input_ids", "attention_mask", "token_type_ids"]
    assert all(i.shape == ["batch", "sequence"] for i in session.get_inputs())  # dynamic, by name
    assert [o.name for o in session.get_outputs()] == list(outputs)
    # Batch sizes and lengths other than the traced ones, padded on the right and (for one) on the left.
    for batch_texts, side in ((TEXTS, "right"), (TEXTS[:1], "right"), (TEXTS * 3, "left")):
        tokenizer.padding_side = side
        inputs = tokenizer(batch_texts, padding=True, return_tensors="pt")
        with torch.no_grad():
            expected = model(**inputs)
        actual = onnx_outputs(session, inputs)
        for name in outputs:  # padding positions too: zeros from both (hidden states), or the head's of zeros
            assert actual[name].shape == expected[name].shape
            np.testing.assert_allclose(actual[name], expected[name].numpy(), atol=1e-4, rtol=1e-4)
    tokenizer.padding_side = "right"


def test_int8_export_and_int8_predict_stay_close_to_float(tiny_config, tokenizer, tmp_path, capsys):
    config = tiny_config(vocab_size=len(tokenizer), num_labels=2, id2label={0: "neg", 1: "pos"},
                         label2id={"neg": 0, "pos": 1}, hidden_size=64, intermediate_size=128, num_hidden_layers=1)
    model = _saved(tmp_path / "model", FeedbackForSequenceClassification, config, tokenizer)
    cli(["export", "onnx", str(tmp_path / "model"), str(tmp_path / "onnx"), "--int8"])
    printed = capsys.readouterr().out
    assert f"{INT8_FILE} (largest difference" in printed and f"{ONNX_FILE} (largest difference" in printed
    quantised = onnx.load(str(tmp_path / "onnx" / INT8_FILE))
    int8_weights = {t.name.split(".weight")[0] for t in quantised.graph.initializer
                    if t.data_type == onnx.TensorProto.INT8 and t.name.endswith("_quantized")}
    linear = {f"model.{name}" for name, module in model.named_modules() if isinstance(module, torch.nn.Linear)}
    assert int8_weights == linear and len(linear) == 4 * config.num_hidden_layers + 2  # + pooler and classifier

    inputs = tokenizer(TEXTS, padding=True, return_tensors="pt")
    with torch.no_grad():
        expected = model(**inputs).logits
        torch_int8 = int8_linear(model)(**inputs).logits
    session = onnxruntime.InferenceSession(str(tmp_path / "onnx" / INT8_FILE), providers=["CPUExecutionProvider"])
    onnx_int8 = torch.from_numpy(onnx_outputs(session, inputs)["logits"])
    for logits in (torch_int8, onnx_int8):
        difference = (logits - expected).abs().max()
        assert 0 < difference < 0.1 * expected.abs().max(), difference  # changed by quantisation, and only a little
    assert type(model.feedback.encoder.layers[0].attention.qkv_proj).__name__ == "Linear"  # a copy, not in place

    cli(["predict", "--int8", str(tmp_path / "model"), *TEXTS])
    lines = capsys.readouterr().out.splitlines()
    assert [line.split("\t")[2] for line in lines] == TEXTS
    assert all(line.split("\t")[0] in ("neg", "pos") for line in lines)


def test_bad_folders_are_one_line_and_exit_2(tiny_config, tokenizer, tmp_path, capsys):
    config = tiny_config(vocab_size=len(tokenizer))
    _saved(tmp_path / "model", FeedbackModel, config, tokenizer)
    (tmp_path / "taken").mkdir()
    (tmp_path / "taken" / "keep.txt").write_text("mine")
    (tmp_path / "no_weights").mkdir()
    config.save_pretrained(tmp_path / "no_weights")
    (tmp_path / "bert").mkdir()
    (tmp_path / "bert" / "config.json").write_text(json.dumps({"model_type": "bert"}))
    cases = [
        (["export", "onnx", str(tmp_path / "missing"), str(tmp_path / "out1")], "no config.json"),
        (["export", "onnx", str(tmp_path / "no_weights"), str(tmp_path / "out2")], "no weights"),
        (["export", "onnx", str(tmp_path / "bert"), str(tmp_path / "out3")], "not an hf_feedback one"),
        (["export", "onnx", str(tmp_path / "model"), str(tmp_path / "taken")], "not empty"),
        (["export", "bert", str(tmp_path / "model"), str(tmp_path / "out4"), "--int8"], "ONNX export"),
    ]
    capsys.readouterr()
    for argv, message in cases:
        with pytest.raises(SystemExit) as exit_:
            cli(argv)
        error = capsys.readouterr().err
        assert exit_.value.code == 2 and message in error and error.count("\n") == 1, error
    assert sorted(p.name for p in tmp_path.iterdir()) == ["bert", "model", "no_weights", "taken"]  # nothing written
    assert (tmp_path / "taken" / "keep.txt").read_text() == "mine"
    with pytest.raises(NotExportable, match="FeedbackForQuestionAnswering"):
        config.architectures = ["FeedbackForQuestionAnswering"]
        config.save_pretrained(tmp_path / "model")
        export_onnx(tmp_path / "model", tmp_path / "out5")

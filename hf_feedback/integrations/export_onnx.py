"""Export an hf_feedback checkpoint to ONNX, for ONNX Runtime and the runtimes that read ONNX.

    python -m hf_feedback export onnx FOLDER OUT            # OUT/model.onnx
    python -m hf_feedback export onnx FOLDER OUT --int8     # and OUT/model_quantized.onnx (int8 weights)

The graph comes from `torch.onnx.export` (the torch.export-based exporter): the saved head (bare encoder, sequence
or token classifier, masked LM) with the inputs its tokenizer gives (`input_ids`, `attention_mask`, and
`token_type_ids` where the tokenizer returns them), batch and sequence length dynamic, outputs named as the head's
(`logits`; `last_hidden_state` and `pooler_output` for the bare encoder). The graph unpads as the eager model does:
it finds the real tokens from the attention mask (NonZero), runs every per-token operation on them only and pads
them back for attention (one (B, T) block, an additive mask), so a served batch costs its real tokens, not its
padded length (benchmarks/RESULTS.md §5 measures it).
`config.json` and the tokenizer are written beside the graph, so the folder is self-describing (the layout
optimum's ONNX Runtime classes read). Before returning, the export runs ONNX Runtime on a padded batch and checks its
outputs against torch's (`TOLERANCE`); int8 is checked only for running, as quantisation changes the numbers (its
accuracy cost is measured in benchmarks/RESULTS.md).
"""

import numpy as np
import torch
from transformers import AutoConfig, AutoTokenizer

from ..failures import BadInput, load_pretrained
from ..model import modeling_feedback
from .convert import check_folders, not_our_encoder

# Saved head -> names of the outputs it exports.
OUTPUTS = {
    "FeedbackModel": ("last_hidden_state", "pooler_output"),
    "FeedbackForSequenceClassification": ("logits",),
    "FeedbackForTokenClassification": ("logits",),
    "FeedbackForMaskedLM": ("logits",),
}
ONNX_FILE, INT8_FILE = "model.onnx", "model_quantized.onnx"  # optimum's file names
TOLERANCE = 1e-4  # largest absolute difference allowed between ONNX Runtime's and torch's outputs (float32)


class NotExportable(BadInput, ValueError):
    """The folder holds nothing this exporter can write as ONNX; the message says what it holds."""


class _Outputs(torch.nn.Module):
    """The head with keyword inputs and a tuple of named outputs: what the ONNX graph is traced from."""

    def __init__(self, model, output_names):
        super().__init__()
        self.model, self.output_names = model, output_names

    def forward(self, input_ids, attention_mask, token_type_ids=None):
        outputs = self.model(input_ids=input_ids, attention_mask=attention_mask, token_type_ids=token_type_ids)
        return tuple(outputs[name] for name in self.output_names)


def _probe_batch(tokenizer, input_names):
    """A right-padded batch of three texts of different lengths, with the tokenizer's input names."""
    texts = ["质量很好，物流也快，下次还会再来买。", "太差了", "一般般吧，价格还可以，包装有点简陋，不过东西没问题"]
    encoded = tokenizer(texts, padding=True, return_tensors="pt")
    return {name: encoded[name] for name in input_names}


def _check_source(source):
    config = load_pretrained(AutoConfig.from_pretrained, source)
    if not_our_encoder(config, source):
        raise NotExportable(not_our_encoder(config, source))
    architecture = (config.architectures or ["FeedbackModel"])[0]
    if architecture not in OUTPUTS:
        raise NotExportable(f"{source} holds a {architecture}, which the ONNX export does not know; "
                            f"exportable: {', '.join(OUTPUTS)}")
    if not any(source.glob("*.safetensors")) and not any(source.glob("*.bin")):
        raise NotExportable(f"{source} has a config.json but no weights (model.safetensors): nothing to export")
    try:
        tokenizer = AutoTokenizer.from_pretrained(source)
    except (OSError, ValueError, TypeError) as error:
        raise NotExportable(f"{source} has no usable tokenizer ({error}); the export needs it to name the "
                            "inputs and to check the graph") from error
    return config, architecture, tokenizer


def onnx_outputs(session, inputs):
    """Run an ONNX Runtime `session` on torch `inputs` (a dict); the outputs by name, as numpy arrays."""
    feed = {i.name: inputs[i.name].numpy() for i in session.get_inputs()}
    return dict(zip([o.name for o in session.get_outputs()], session.run(None, feed)))


def export_onnx(source, destination, overwrite=False, int8=False):
    """Export the hf_feedback checkpoint folder `source` to `destination`; returns {file name: largest absolute
    difference from torch on the probe batch} for model.onnx (and model_quantized.onnx with `int8`)."""
    _require_onnx()
    source, destination = check_folders(source, destination, overwrite)
    config, architecture, tokenizer = _check_source(source)
    model = load_pretrained(getattr(modeling_feedback, architecture).from_pretrained, source,
                            attn_implementation="sdpa").eval()
    input_names = [name for name in ("input_ids", "attention_mask", "token_type_ids")
                   if name in tokenizer.model_input_names]
    probe = _probe_batch(tokenizer, input_names)
    batch = torch.export.Dim("batch", min=1)
    # Learned positions end at max_position_embeddings; rotary and sinusoidal ones do not.
    longest = config.max_position_embeddings if config.position_embedding_type == "absolute" else None
    sequence = torch.export.Dim("sequence", min=2, max=longest) if longest else torch.export.Dim("sequence", min=2)
    output_names = OUTPUTS[architecture]
    traced = _Outputs(model, output_names).eval()
    program = torch.onnx.export(
        traced, (), kwargs=probe, dynamo=True, verbose=False,
        input_names=input_names, output_names=list(output_names),
        dynamic_shapes={name: {0: batch, 1: sequence} for name in input_names},
    )
    destination.mkdir(parents=True, exist_ok=True)
    program.save(str(destination / ONNX_FILE))
    config.save_pretrained(destination)
    tokenizer.save_pretrained(destination)

    with torch.no_grad():
        expected = {name: value.numpy() for name, value in zip(output_names, traced(**probe))}
    differences = {ONNX_FILE: _largest_difference(destination / ONNX_FILE, probe, expected)}
    if differences[ONNX_FILE] > TOLERANCE:  # a bug in the model's traced path or the exporter, not bad input
        raise RuntimeError(f"ONNX Runtime's outputs differ from torch's by {differences[ONNX_FILE]:.2e} "
                           f"(> {TOLERANCE}) on a padded batch; the graph in {destination} is wrong")
    if int8:
        from onnxruntime.quantization import QuantType, quantize_dynamic

        # Weights of MatMul/Gemm to int8 per tensor, activations quantised on the fly: the usual CPU serving setting.
        # Not the embedding tables' Gather: ONNX Runtime would dequantize the whole table at every call.
        quantize_dynamic(destination / ONNX_FILE, destination / INT8_FILE, weight_type=QuantType.QInt8,
                         op_types_to_quantize=["MatMul", "Gemm"])
        differences[INT8_FILE] = _largest_difference(destination / INT8_FILE, probe, expected)
    return differences


def _require_onnx():
    """Before any work: the packages the export needs (the `onnx` extra), or one line saying how to get them."""
    import importlib.util

    missing = [name for name in ("onnx", "onnxscript", "onnxruntime") if importlib.util.find_spec(name) is None]
    if missing:
        raise NotExportable(f"the ONNX export needs {', '.join(missing)}: pip install 'hf_feedback[onnx]'")


def _largest_difference(path, inputs, expected):
    import onnxruntime

    session = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    actual = onnx_outputs(session, inputs)
    return max(float(np.abs(actual[name] - value).max()) for name, value in expected.items())


__all__ = ["INT8_FILE", "NotExportable", "ONNX_FILE", "TOLERANCE", "export_onnx", "onnx_outputs"]

"""Dynamic int8 quantisation of a model's Linear layers, for inference on the CPU.

Every `nn.Linear` (attention projections, feed-forward layers, pooler, heads) keeps its weight in int8 and quantises
its input on the fly, per batch; embeddings and LayerNorms stay in float32. On x86 CPUs the int8 matrix products run
on fbgemm/oneDNN kernels. What it costs in accuracy and buys in speed on the review test split is measured in
benchmarks/RESULTS.md (section 5). The ONNX export's `--int8` does the same to the ONNX graph with ONNX Runtime's
quantiser (hf_feedback.integrations.export_onnx).
"""

import warnings

import torch

from ..failures import BadInput


def int8_linear(model: torch.nn.Module) -> torch.nn.Module:
    """`model` (in eval mode) with its Linear layers replaced by dynamically quantised int8 ones; for CPU
    inference only (no gradients, no GPU)."""
    try:
        from torch.ao.quantization import quantize_dynamic
    except ImportError as error:
        raise BadInput(f"int8 needs torch.ao.quantization, which this torch ({torch.__version__}) lacks") from error
    if any(p.device.type != "cpu" for p in model.parameters()):
        raise BadInput("int8 quantisation runs on the CPU: load the model there")
    with warnings.catch_warnings():
        # torch announces this API's move to torchao; it is the one with fused int8 CPU kernels in this torch.
        warnings.simplefilter("ignore", DeprecationWarning)
        warnings.filterwarnings("ignore", message=".*quantize_per_tensor.*")
        return quantize_dynamic(model.eval(), {torch.nn.Linear}, dtype=torch.qint8)


__all__ = ["int8_linear"]

"""Section 2: model FLOPs utilisation (MFU) of a training step on fixed-length batches.

MFU = (model FLOPs of a step / its measured time) / (the machine's measured fp32 matmul rate). The model FLOPs
count only matmuls, in the convention of PaLM (Chowdhery et al. 2022, appendix B) and nanoGPT:

- every weight of an `nn.Linear` costs 2 FLOPs per input row forward (a multiply and an add) and 4 backward
  (gradients of its input and of itself): 6 per weight per row. Inside the encoder a row is a token; the pooler
  and the classifier see one row per sequence.
- attention multiplies activations by activations: Q K^T and P V cost 2 * T * H FLOPs each per token per layer
  forward, so 4 * T * H forward and 12 * T * H with the backward pass.
- embeddings (lookups), biases, LayerNorm, activations, dropout, softmax and the optimizer are not counted: they
  are elementwise, not matmuls. They still take time, which is what MFU makes visible.
"""

import torch
from torch import nn

from . import workloads
from .common import percent, repetitions_note, summarize, table, time_interleaved, verdict

TARGET_MFU = 0.40
PEAK_MATMUL_SIZE = 2048


def matmul_weights(model):
    """(weights applied to every token, weights applied once per sequence): every Linear's weight, encoder vs rest."""
    encoder = model.base_model.encoder
    per_token = sum(m.weight.numel() for m in encoder.modules() if isinstance(m, nn.Linear))
    per_sequence = sum(m.weight.numel() for m in model.modules() if isinstance(m, nn.Linear)) - per_token
    return per_token, per_sequence


def training_flops(model, batch_size, seq_len):
    """Matmul FLOPs of one training step (forward + backward) on `batch_size` unpadded sequences of `seq_len`."""
    per_token, per_sequence = matmul_weights(model)
    config = model.config
    attention = 12 * config.num_hidden_layers * seq_len * config.hidden_size  # per token
    return batch_size * (seq_len * (6 * per_token + attention) + 6 * per_sequence)


def _layer_matmuls(model, rows, device, dtype=None):
    """The forward matmuls of one encoder layer's Linears at `rows` tokens, in `dtype` (None: the weights'):
    a callable and its FLOPs."""
    layer = model.base_model.encoder.layers[0]
    weights = [m.weight.detach().to(dtype) for m in layer.modules() if isinstance(m, nn.Linear)]
    inputs = [torch.randn(rows, w.shape[1], device=device, dtype=w.dtype) for w in weights]

    def work():
        for x, w in zip(inputs, weights):
            x @ w.T

    return work, sum(2 * rows * w.numel() for w in weights)


def run(sizes, device, dtype=None, peak_size=PEAK_MATMUL_SIZE):
    """MFU of ours at `sizes` on fixed-length batches, in float32 or (`dtype`) mixed precision, whose matmuls
    the peak (`peak_size`² matmuls) and the model-shape matmuls then run in too."""
    config = workloads.model_config(sizes)
    model = workloads.ours(config).to(device)
    optimizer = workloads.optimizer_for(model)
    batch = workloads.to_device(workloads.fixed_batches(sizes, config.vocab_size), device)
    a, b = (torch.randn(peak_size, peak_size, device=device, dtype=dtype) for _ in range(2))
    layer_work, layer_flops = _layer_matmuls(model, sizes.batch_size * sizes.max_length, device, dtype)

    # The peak and the model are measured in turns, so both see the same machine load.
    times = time_interleaved(
        {"training step": workloads.training_turn(model, optimizer, batch, dtype),
         "matmul peak": lambda: a @ b,
         "model-shape matmuls": layer_work},
        sizes.repetitions, sizes.warmup, device,
    )
    times = {name: summarize(t) for name, t in times.items()}
    step_flops = training_flops(model, sizes.batch_size, sizes.max_length)
    per_token, per_sequence = matmul_weights(model)
    achieved = step_flops / times["training step"]["median_s"]
    peak = 2 * peak_size**3 / times["matmul peak"]["median_s"]
    shape_rate = layer_flops / times["model-shape matmuls"]["median_s"]
    return {
        "batch": [sizes.batch_size, sizes.max_length],
        "peak_size": peak_size,
        "repetitions": sizes.repetitions,
        "hidden_size": config.hidden_size,
        "per_token_weights": per_token,
        "per_sequence_weights": per_sequence,
        "all_parameters": model.num_parameters(),
        "step_flops": step_flops,
        "flops_per_token": step_flops / (sizes.batch_size * sizes.max_length),
        "times": times,
        "achieved_flops": achieved,
        "peak_flops": peak,
        "model_shape_flops": shape_rate,
        "mfu": achieved / peak,
    }


def render(r):
    batch, seq_len = r["batch"]
    step, peak = r["times"]["training step"], r["times"]["matmul peak"]
    lines = [
        *repetitions_note(r["repetitions"]),
        f"N = {r['per_token_weights']:,} weights per token (every `nn.Linear` weight of the encoder: Q/K/V, output, "
        f"feed-forward up and down) + {r['per_sequence_weights']:,} per sequence (pooler, classifier); the "
        f"{r['all_parameters']:,} parameters also hold embeddings, biases and LayerNorms, which are not matmuls. "
        f"Training FLOPs per token = 6·N_token + 6·N_sequence / T + 12·L·T·H (attention: Q K^T and P V, forward "
        f"and backward) at T = {seq_len}.",
        "",
        *table(["quantity", "value"], [
            ["model FLOPs per training step",
             f"{r['step_flops'] / 1e9:.2f} GFLOP ({r['flops_per_token'] / 1e6:.2f} MFLOP per token)"],
            [f"training step, (b) {batch} × {seq_len} (median of {r['repetitions']})",
             f"{1000 * step['median_s']:.1f} ms (spread {percent(step['spread'])})"],
            ["achieved", f"{r['achieved_flops'] / 1e9:.1f} GFLOP/s"],
            [f"peak: fp32 matmul {PEAK_MATMUL_SIZE}×{PEAK_MATMUL_SIZE} (median)",
             f"{r['peak_flops'] / 1e9:.1f} GFLOP/s (spread {percent(peak['spread'])})"],
            [f"one layer's Linear matmuls at {batch * seq_len} tokens (forward)",
             f"{r['model_shape_flops'] / 1e9:.1f} GFLOP/s = "
             f"{percent(r['model_shape_flops'] / r['peak_flops'])} of peak"],
            ["**MFU**", f"**{percent(r['mfu'])}**"],
        ]),
        "",
        "Targets:",
    ]
    text = f"MFU {percent(r['mfu'])} at the default size on (b) (target ≥ {percent(TARGET_MFU)})"
    if r["mfu"] < TARGET_MFU:
        shape_share = r["model_shape_flops"] / r["peak_flops"]
        matmul_share = r["achieved_flops"] / r["model_shape_flops"]
        text += (
            f"; short by {100 * (TARGET_MFU - r['mfu']):.1f} points ({r['achieved_flops'] / 1e9:.1f} of the "
            f"{TARGET_MFU * r['peak_flops'] / 1e9:.1f} GFLOP/s needed). Why: the model's own matmuls "
            f"({batch * seq_len} token rows against {r['hidden_size']}-wide weights) run at {percent(shape_share)} "
            f"of the {PEAK_MATMUL_SIZE}² peak, which caps MFU there even if nothing else took time; and the step as "
            f"a whole reaches {percent(matmul_share)} of that rate, the rest going to work the count gives no FLOPs "
            f"(GELU, LayerNorm, dropout masks, softmax, the AdamW update of all {r['all_parameters']:,} parameters, "
            f"copies). What would close it: bf16 matmuls where the CPU has them (AMX/AVX512-BF16) or a GPU; a wider "
            f"model (more FLOPs per byte moved); fusing the elementwise work (torch.compile, a fused/foreach AdamW)."
        )
    return lines + [verdict(r["mfu"] >= TARGET_MFU, text)]

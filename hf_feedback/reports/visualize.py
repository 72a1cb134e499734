"""Pictures of what an encoder attends to: attention-probability heat maps of one sentence.

The probabilities come from the eager attention path (the only one that materialises softmax(Q K^T / sqrt(hs)));
the model is switched to it for the forward pass and back to its own implementation afterwards. Figures are
`matplotlib.figure.Figure` objects saved straight to PNG, never pyplot figures, as in `hf_feedback.reports.plots`.
"""

import warnings
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from matplotlib import font_manager
from matplotlib.figure import Figure
from transformers.utils import logging

logger = logging.get_logger(__name__)

# Fonts with CJK glyphs, tried in order; matplotlib falls back glyph by glyph through the list (matplotlib >= 3.6).
_CJK_FONTS = ("Noto Sans CJK SC", "Noto Sans SC", "Source Han Sans SC", "WenQuanYi Zen Hei", "WenQuanYi Micro Hei",
              "SimHei", "Microsoft YaHei", "PingFang SC", "Heiti SC", "AR PL UMing CN")


@dataclass
class AttentionMaps:
    """Attention of one text: `probabilities[i, h, q, k]` is how much token q attends to token k in head h of
    layer `layers[i]`; each row (over k) sums to 1."""

    tokens: list[str]
    layers: list[int]
    probabilities: np.ndarray  # (len(layers), nh, T, T)


@contextmanager
def _eager_attention(model):
    # Evaluation mode (no attention dropout) on the eager path; the caller's mode and implementation come back after.
    original, was_training = model.config._attn_implementation, model.training
    model.set_attn_implementation("eager")
    model.eval()
    try:
        yield
    finally:
        model.set_attn_implementation(original)
        model.train(was_training)


def attention_probabilities(model, tokenizer, text: str, layers: list[int] | None = None,
                            max_tokens: int | None = None) -> AttentionMaps:
    """The attention probabilities `model` computes for `text`, for `layers` (indices, all by default).

    Works with any head of hf_feedback (and any transformers encoder that returns `attentions`). The text is
    truncated to `max_tokens` tokens, special tokens included (default: what the model accepts). Raises
    `ValueError` for a layer index outside the model.
    """
    num_layers = model.config.num_hidden_layers
    layers = list(range(num_layers)) if layers is None else [int(layer) for layer in layers]
    bad = [layer for layer in layers if not 0 <= layer < num_layers]
    if bad or not layers:
        raise ValueError(f"layers must be indices in [0, num_hidden_layers={num_layers}), got {layers}")
    max_length = min(tokenizer.model_max_length, model.config.max_position_embeddings, max_tokens or float("inf"))
    inputs = tokenizer(text, return_tensors="pt", truncation=True, max_length=max_length).to(model.device)
    with _eager_attention(model), torch.no_grad():
        attentions = model(**inputs, output_attentions=True).attentions  # num_layers x (1, nh, T, T)
    probabilities = torch.stack([attentions[layer][0] for layer in layers]).float().cpu().numpy()
    return AttentionMaps(tokenizer.convert_ids_to_tokens(inputs["input_ids"][0].tolist()), layers, probabilities)


def _label_fonts(tokens):
    installed = {font.name for font in font_manager.fontManager.ttflist}
    cjk = [name for name in _CJK_FONTS if name in installed]
    if not cjk and any(ord(char) >= 0x2E80 for token in tokens for char in token):
        logger.warning("No CJK font is installed (e.g. fonts-noto-cjk), so Chinese token labels draw as boxes.")
    return [*cjk, "DejaVu Sans"]


def attention_figure(maps: AttentionMaps) -> Figure:
    """A grid of heat maps, one row per layer and one column per head; query tokens down, key tokens across."""
    num_rows, num_heads, length, _ = maps.probabilities.shape
    cell = 1.2 + 0.22 * length
    figure = Figure(figsize=(cell * num_heads + 1.0, cell * num_rows + 0.4), layout="constrained")
    grid = figure.subplots(num_rows, num_heads, squeeze=False)
    fonts = _label_fonts(maps.tokens)
    ticks = np.arange(length)
    # One colour scale for every panel, up to the largest probability, so that panels compare at a glance.
    vmax = float(maps.probabilities.max())
    for row, layer in enumerate(maps.layers):
        for head in range(num_heads):
            axes = grid[row, head]
            image = axes.imshow(maps.probabilities[row, head], vmin=0.0, vmax=vmax, cmap="viridis")
            axes.set_title(f"layer {layer}, head {head}", fontsize=9)
            axes.set_xticks(ticks, maps.tokens if row == num_rows - 1 else [], rotation=90, fontsize=7,
                            fontfamily=fonts)
            axes.set_yticks(ticks, maps.tokens if head == 0 else [], fontsize=7, fontfamily=fonts)
    figure.colorbar(image, ax=grid, shrink=0.6, label="attention probability")
    return figure


def attention_heatmaps(model, tokenizer, text: str, path, layers: list[int] | None = None,
                       max_tokens: int | None = None) -> Path:
    """Draw the attention probabilities of `text` (`attention_probabilities`) as a PNG grid at `path`; return it."""
    figure = attention_figure(attention_probabilities(model, tokenizer, text, layers, max_tokens))
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with warnings.catch_warnings():
        # Missing CJK glyphs were reported once by _label_fonts; matplotlib would warn for every character.
        warnings.filterwarnings("ignore", message="Glyph .* missing from font")
        figure.savefig(path, dpi=100)
    return path


__all__ = ["AttentionMaps", "attention_figure", "attention_heatmaps", "attention_probabilities"]

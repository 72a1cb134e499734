"""Padding-free batches for every hf_feedback head: a batch's sequences end to end in one row, no padding at all.

transformers' `DataCollatorWithFlattening` packs `input_ids` into one row (1, N) with `position_ids` restarting at each
sequence and the boundaries `cu_seq_lens_q/k` and `max_length_q/k`, and the model attends within each sequence only
(FeedbackModel.forward). Its labels are a causal LM's, though, and it drops `token_type_ids`. This collator keeps
transformers' flattening and brings what the encoder's tasks need beside it:
- labels as the task has them: one per sequence (classification, regression, or a multi-hot vector for
  multi-label), a (S,) or (S, num_labels) tensor; one per token (tagging), flattened into the row;
- the masked-LM objective: `DataCollatorForLanguageModeling`'s own masking, applied to the flattened row (masking is
  token by token, so masking the row is masking each sequence);
- `token_type_ids` of text pairs, flattened alongside.
"""

from dataclasses import dataclass

import torch
from transformers import DataCollatorForLanguageModeling, DataCollatorWithFlattening

# What a feature's labels are, and how they travel in a packed batch.
LABEL_LAYOUTS = {
    "sequence": lambda values: torch.tensor(values),  # (S,) ids or numbers, or (S, num_labels) multi-hot
    "token": lambda values: torch.tensor([[label for labels in values for label in labels]]),  # (1, N), the row's
}


@dataclass
class DataCollatorForPaddingFree:
    """Packs features (`input_ids`, optionally `token_type_ids`, `special_tokens_mask` and `labels` / `label`) into
    one padding-free row for an hf_feedback model.

    Args:
        labels: `"sequence"` (a label per feature), `"token"` (a label per token) or None (no labels, or the masked
            LM's, made by `mlm`).
        mlm: a `DataCollatorForLanguageModeling` whose masking (rate, 80/10/10 split, special tokens kept) makes the
            batch's masked-LM inputs and labels.
    """

    labels: str | None = "sequence"
    mlm: DataCollatorForLanguageModeling | None = None

    def __post_init__(self):
        if self.labels is not None and self.labels not in LABEL_LAYOUTS:
            raise ValueError(f"labels must be one of {[*LABEL_LAYOUTS, None]}, got {self.labels!r}")
        if self.mlm is not None and self.labels is not None:
            raise ValueError("A masked-LM batch takes its labels from the masking: pass labels=None with mlm")

    def __call__(self, features):
        features = [feature for feature in features if len(feature["input_ids"])]  # as DataCollatorWithFlattening
        flattened = DataCollatorWithFlattening(return_flash_attn_kwargs=True)(
            [{"input_ids": feature["input_ids"]} for feature in features])
        batch = {key: flattened[key] for key in ("input_ids", "position_ids", "cu_seq_lens_q", "cu_seq_lens_k",
                                                  "max_length_q", "max_length_k")}
        if "token_type_ids" in features[0]:
            batch["token_type_ids"] = LABEL_LAYOUTS["token"]([feature["token_type_ids"] for feature in features])
        if self.labels is not None:
            key = "labels" if "labels" in features[0] else "label"
            batch["labels"] = LABEL_LAYOUTS[self.labels]([feature[key] for feature in features])
        if self.mlm is not None:
            special = (LABEL_LAYOUTS["token"]([f["special_tokens_mask"] for f in features])
                       if "special_tokens_mask" in features[0] else None)
            batch["input_ids"], batch["labels"] = self.mlm.torch_mask_tokens(batch["input_ids"], special)
        return batch


__all__ = ["DataCollatorForPaddingFree"]

"""The models, batches and steps that the speed, efficiency and memory sections share.

Two kinds of batch:
- "reviews" (a): real review lengths. The bundled reviews' train texts, tokenized by a WordPiece tokenizer trained
  once on those texts, truncated at `max_length` tokens, drawn at random (fixed seed) in batches of `batch_size`
  and padded to each batch's longest row by `DataCollatorWithPadding`, as the fine-tuning recipe does.
- "fixed" (b): `batch_size` x `max_length` random ids with an all-ones attention mask, so no padding at all.
Every model sees the same batches.
"""

import random
from contextlib import nullcontext
from dataclasses import dataclass

import torch
from transformers import (
    BertConfig,
    BertForSequenceClassification,
    DataCollatorWithPadding,
    ModernBertConfig,
    ModernBertForSequenceClassification,
)

from hf_feedback import FeedbackConfig, FeedbackForSequenceClassification
from hf_feedback.data.corpora import load_sentiment_reviews
from hf_feedback.data.tokenization import SPECIAL_TOKENS, tokenize_dataset, train_tokenizer
from hf_feedback.integrations.convert import SHARED_CONFIG_FIELDS


@dataclass(frozen=True)
class Sizes:
    model: dict  # FeedbackConfig fields that differ from its defaults
    batch_size: int
    max_length: int
    review_batches: int  # batches of real reviews in one timed turn
    repetitions: int  # timed turns per measurement (the median is reported)
    warmup: int  # untimed turns before them


# The default FeedbackConfig (vocab 10000, hidden 256, 8 heads, intermediate 512, 6 layers, gelu) for 2 labels.
DEFAULT = Sizes(model=dict(num_labels=2), batch_size=32, max_length=128, review_batches=4, repetitions=5, warmup=2)
# Toy sizes that check the whole harness in seconds; their numbers mean nothing.
QUICK = Sizes(
    model=dict(num_labels=2, hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=64),
    batch_size=8, max_length=32, review_batches=1, repetitions=2, warmup=1,
)


def model_config(sizes, vocab_size=None):
    """Our config at these sizes; `vocab_size` grows it when a tokenizer has more tokens than the default."""
    config = FeedbackConfig(**sizes.model)
    if vocab_size is not None and vocab_size > config.vocab_size:
        config.vocab_size = vocab_size
    return config


def bert_config(config):
    """The BertConfig with the same sizes, activation, dropout and LayerNorm epsilon as our `config`."""
    if config.hidden_act != "gelu" or config.norm_position != "post" or config.position_embedding_type != "absolute":
        raise ValueError("BERT is the post-norm, absolute-position, gelu case; compare at such a config")
    return BertConfig(**{name: getattr(config, name) for name in SHARED_CONFIG_FIELDS}, hidden_act="gelu",
                      num_labels=config.num_labels)


def ours(config, attn_implementation="sdpa"):
    torch.manual_seed(0)
    return FeedbackForSequenceClassification._from_config(config, attn_implementation=attn_implementation)


def bert(config, attn_implementation):
    torch.manual_seed(0)
    return BertForSequenceClassification._from_config(bert_config(config), attn_implementation=attn_implementation)


def without_dropout(config):
    return FeedbackConfig(**{**config.to_diff_dict(), "hidden_dropout_prob": 0.0, "attention_probs_dropout_prob": 0.0})


def modernbert(config, dropout):
    """transformers' ModernBERT (unpadding, RoPE, GeGLU, pre-norm) at our width, depth, heads and feed-forward size
    (its intermediate_size is the gated unit's inner width, so its feed-forward holds 1.5x the weights), sdpa
    attention, with `dropout` on embeddings, attention and feed-forward (its default is 0)."""
    torch.manual_seed(0)
    modern = ModernBertConfig(
        vocab_size=config.vocab_size, hidden_size=config.hidden_size, num_hidden_layers=config.num_hidden_layers,
        num_attention_heads=config.num_attention_heads, intermediate_size=config.intermediate_size,
        max_position_embeddings=config.max_position_embeddings, num_labels=config.num_labels,
        pad_token_id=config.pad_token_id, bos_token_id=2, eos_token_id=3, cls_token_id=2, sep_token_id=3,
        embedding_dropout=dropout, attention_dropout=dropout, mlp_dropout=dropout)
    return ModernBertForSequenceClassification._from_config(modern, attn_implementation="sdpa")


# Row name -> builder. The first row is ours; ratios are taken against it.
MODELS = {
    "ours (sdpa)": ours,
    "BERT (sdpa)": lambda config: bert(config, "sdpa"),
    "BERT (eager)": lambda config: bert(config, "eager"),
    "ModernBERT (dropout 0)": lambda config: modernbert(config, 0.0),
    "ModernBERT (dropout 0.1)": lambda config: modernbert(config, 0.1),
    # Dropout's own cost on the CPU: ours without it (ModernBERT's default).
    "ours (sdpa, dropout 0)": lambda config: ours(without_dropout(config)),
}
# The peers the targets are judged against (the other rows are for reading).
PEERS = ("BERT (sdpa)", "BERT (eager)", "ModernBERT (dropout 0)", "ModernBERT (dropout 0.1)")


# ----------------------------------------------------------------------------------------------------------------
# Batches
# ----------------------------------------------------------------------------------------------------------------
def review_tokenizer(vocab_size):
    """The WordPiece tokenizer trained once on the review train split's texts."""
    return train_tokenizer(load_sentiment_reviews()["train"]["text"], vocab_size=vocab_size)


def review_batches(sizes, tokenizer, seed=0, collate=None):
    """`sizes.review_batches` random batches of real reviews, each padded to its own longest row by
    `DataCollatorWithPadding`, or made by `collate` (the packing collator makes padding-free batches of the same
    reviews)."""
    train = load_sentiment_reviews()["train"]
    picked = random.Random(seed).sample(range(len(train)), sizes.batch_size * sizes.review_batches)
    rows = tokenize_dataset(train.select(picked), tokenizer, sizes.max_length)
    collate = collate or DataCollatorWithPadding(tokenizer, return_tensors="pt")
    return [
        dict(collate([rows[i] for i in range(start, start + sizes.batch_size)]))
        for start in range(0, len(rows), sizes.batch_size)
    ]


def fixed_batches(sizes, vocab_size, seed=0):
    """One batch of `batch_size` x `max_length` random ids (special tokens excluded), no padding."""
    generator = torch.Generator().manual_seed(seed)
    shape = (sizes.batch_size, sizes.max_length)
    input_ids = torch.randint(len(SPECIAL_TOKENS), vocab_size, shape, generator=generator)
    return [dict(
        input_ids=input_ids,
        token_type_ids=torch.zeros_like(input_ids),
        attention_mask=torch.ones_like(input_ids),
        labels=torch.randint(0, 2, (sizes.batch_size,), generator=generator),
    )]


def batch_stats(batches):
    """Sequences, real tokens and padded positions over a list of batches."""
    masks = [batch["attention_mask"] for batch in batches]
    return {
        "batches": len(batches),
        "sequences": sum(mask.shape[0] for mask in masks),
        "real_tokens": int(sum(mask.sum() for mask in masks)),
        "padded_tokens": sum(mask.numel() for mask in masks),
        "padded_lengths": [mask.shape[1] for mask in masks],
    }


def to_device(batches, device):
    # A packed batch also carries Python ints (max_length_q/k), which stay where they are.
    return [{name: value.to(device) if torch.is_tensor(value) else value for name, value in batch.items()}
            for batch in batches]


# ----------------------------------------------------------------------------------------------------------------
# Steps
# ----------------------------------------------------------------------------------------------------------------
def optimizer_for(model):
    # The fine-tuning recipe's learning rate and weight decay; the value does not change the cost of a step.
    return torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=5e-4, weight_decay=0.01)


def autocast(device, dtype):
    """Mixed precision as the Trainer runs --fp16 / --bf16: float32 weights, the forward pass and its loss under
    `torch.autocast` in `dtype`; None: float32 throughout."""
    return nullcontext() if dtype is None else torch.autocast(torch.device(device).type, dtype)


def training_step(model, optimizer, dtype=None, max_grad_norm=None):
    """A callable that runs one training step on a batch: forward and loss (under autocast in `dtype`), backward,
    the gradients clipped to `max_grad_norm` where given, AdamW. In fp16 a GradScaler scales the loss and skips the
    step on overflow, as the Trainer's does; in bf16 or float32 there is none to scale."""
    device = next(model.parameters()).device
    scaler = torch.amp.GradScaler(device.type, enabled=dtype == torch.float16)

    def step(batch):
        optimizer.zero_grad(set_to_none=True)
        with autocast(device, dtype):
            loss = model(**batch).loss
        scaler.scale(loss).backward()
        if max_grad_norm is not None:
            scaler.unscale_(optimizer)
            torch.nn.utils.clip_grad_norm_(model.parameters(), max_grad_norm)
        scaler.step(optimizer)
        scaler.update()

    return step


def training_turn(model, optimizer, batches, dtype=None):
    """A callable that runs one training step (forward + backward + AdamW; `training_step`, in `dtype` mixed
    precision where given) on each batch, dropout on."""
    step = training_step(model, optimizer, dtype)

    def turn():
        model.train()
        for batch in batches:
            step(batch)

    return turn


def inference_turn(model, batches, dtype=None):
    """A callable that runs the forward pass on each batch under `torch.inference_mode` (and autocast in `dtype`),
    dropout off."""
    inputs = [{name: tensor for name, tensor in batch.items() if name != "labels"} for batch in batches]
    device = next(model.parameters()).device

    def turn():
        model.eval()
        with torch.inference_mode(), autocast(device, dtype):
            for batch in inputs:
                model(**batch)

    return turn

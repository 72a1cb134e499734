"""The hf_feedback encoder, written from torch primitives.

Read it top-down, in the order a token flows through the model:
embeddings -> self-attention -> feed-forward -> layer (residual + LayerNorm) -> encoder -> pooling
-> pretrained base -> FeedbackModel -> task heads.

Shapes in comments: B batch, T padded sequence length, N real (non-padding) tokens in the batch, H hidden size,
nh heads, hs head size (H / nh), I intermediate size, V vocabulary size.

Padding is removed once, as the embeddings are looked up: every per-token operation (embeddings, projections,
feed-forward, LayerNorm) runs on the N real tokens only, and attention, which needs a padded layout, runs in a few length buckets, each
padded only to its own longest sequence and masked. This is the unpadding idea of MosaicBERT / ModernBERT; on
batches of real text it skips a large share of the work, and it is why a sequence gives the same outputs alone
or padded inside a batch. Compiled (torch.compile), where shapes should not depend on the mask's values, the padding is
kept as masked tokens instead (`_Unpadding.keeping_padding`), with the same outputs; exported to ONNX, the graph finds
the real tokens itself and drops the padding as eager mode does (`_Unpadding.exporting`).

This file is copied next to every saved checkpoint ("remote code"), so it imports hf_feedback code only
relatively (the configuration file). That is why it is one long file, and why three classes are long:
`_Unpadding` holds the three layouts of a padded batch (unpadded eagerly, kept padded when compiled, unpadded inside
an exported graph), `FeedbackPreTrainedModel` what every head shares (weight initialisation, input checks, character
tables) and `FeedbackModel` the encoder's forward (one screen, its steps named below it) beside the decoder's
(`_decode`).
"""

import math
from dataclasses import dataclass, fields, replace

import torch
import torch.nn.functional as F
from torch import nn
from torch.nn import BCEWithLogitsLoss, CrossEntropyLoss, MSELoss
from torch.nn.attention.flex_attention import BlockMask, create_block_mask
from transformers import PreTrainedModel
from transformers.cache_utils import Cache, DynamicCache, EncoderDecoderCache
from transformers.generation import GenerationMixin
from transformers.modeling_layers import GradientCheckpointingLayer
from transformers.modeling_rope_utils import ROPE_INIT_FUNCTIONS, dynamic_rope_update
from transformers.modeling_utils import ALL_ATTENTION_FUNCTIONS
from transformers.modeling_outputs import (
    BaseModelOutputWithPastAndCrossAttentions,
    BaseModelOutputWithPooling,
    CausalLMOutputWithPast,
    Seq2SeqLMOutput,
    Seq2SeqModelOutput,
    MaskedLMOutput,
    SequenceClassifierOutput,
    TokenClassifierOutput,
)
from transformers.utils import ModelOutput, logging
from transformers.utils.deprecation import deprecate_kwarg

from .configuration_feedback import FeedbackConfig, FeedbackSeq2SeqConfig

logger = logging.get_logger(__name__)


# ----------------------------------------------------------------------------------------------------------------
# Padding bookkeeping
# ----------------------------------------------------------------------------------------------------------------
class _Movable:
    """Index tensors that move between devices as one, like a tensor. With device_map="auto" layers sit on several
    devices, and accelerate's hooks move what a layer receives with `.to(device)`: the unpadding indices must follow
    the hidden states there."""

    def to(self, device, non_blocking=False):
        def move(value):
            if isinstance(value, (torch.Tensor, _Movable, BlockMask)):
                return value.to(device, non_blocking=non_blocking)
            return [move(v) for v in value] if isinstance(value, list) else value

        return replace(self, **{field.name: move(getattr(self, field.name)) for field in fields(self)})


@dataclass
class _Layout(_Movable):
    """Where the real tokens of a padded (B, T) batch sit, to move tensors between (B, T, ...) and (N, ...)."""

    indices: torch.Tensor | None  # (N,) positions of real tokens in the flattened (B * T) batch; None: all, in order
    sequences: torch.Tensor  # (N,) the same positions as (sequence, position) pairs
    positions: torch.Tensor
    batch_size: int
    seq_len: int
    real: torch.Tensor | None = None  # (B * T,) which positions are real, when padding is kept as tokens

    @classmethod
    def from_mask(cls, attention_mask, num_real):
        # `num_real` (N) comes from the host, so that finding the real positions needs no synchronisation (nonzero
        # would wait for the device to learn N): scatter each real position to its rank among the real ones, and
        # every padded one to a spare slot past the end.
        batch_size, seq_len = attention_mask.shape
        real = attention_mask.flatten()  # (B * T,) bool
        rank = real.cumsum(0) - 1
        slots = torch.where(real, rank, num_real)
        every = torch.arange(batch_size * seq_len, device=real.device)
        indices = every.new_empty(num_real + 1).scatter_(0, slots, every)[:num_real]  # (N,)
        return cls(indices, indices // seq_len, indices % seq_len, batch_size, seq_len)

    def unpad(self, x):
        # (B, T, ...) -> (N, ...). Indexing by (sequence, position) gathers straight from a strided view, such as
        # attention's transposed output, without first copying it into a contiguous (B, T, ...) tensor.
        return x[self.sequences, self.positions]

    def pad(self, x):
        # (N, ...) -> (B, T, ...), zeros at padding
        if self.real is not None:  # padding kept as tokens: zero it (where, not a product: it may hold NaN)
            x = torch.where(self.real.view(-1, *[1] * (x.dim() - 1)), x, 0)
        if self.indices is None:  # every position is a row already
            return x.view(self.batch_size, self.seq_len, *x.shape[1:])
        out = x.new_zeros((self.batch_size * self.seq_len, *x.shape[1:]))
        out.index_copy_(0, self.indices, x)
        return out.view(self.batch_size, self.seq_len, *x.shape[1:])


def _flat_coordinates(batch_size, seq_len, device):
    """(sequence, position) of each position of a flattened (B, T) batch, (B * T,) each, by broadcasting rather than
    // and % of a symbolic length, which the ONNX exporter cannot translate."""
    sequences = torch.arange(batch_size, device=device)[:, None].expand(batch_size, seq_len).flatten()
    positions = torch.arange(seq_len, device=device).expand(batch_size, seq_len).flatten()
    return sequences, positions


@dataclass
class _Bucket(_Movable):
    """Sequences of similar length that attend together, padded only to their own longest (Tb <= T)."""

    tokens: torch.Tensor | None  # (Nb,) their real tokens' rows in the unpadded (N, ...) batch, in `layout` order;
    # None: the one bucket of every token, in order
    sequences: torch.Tensor  # (Bb,) their rows in the batch
    layout: _Layout  # their (Bb, Tb) padded layout
    mask: torch.Tensor | None  # (Bb, 1, 1, Tb) which keys each query may attend to; None when nothing is padded


# Attention is the one operation that needs a padded layout. Sorting a batch's sequences by length and attending
# in a few buckets, each padded to its own longest, skips most of the padding there too (T^2 work per sequence).
_ATTENTION_BUCKETS = 4


@dataclass
class _Unpadding(_Movable):
    """A padded batch as its N real tokens, plus the length buckets its attention runs in."""

    layout: _Layout  # the whole (B, T) batch
    mask: torch.Tensor  # (B, 1, 1, T) the whole batch's key mask, for attention that returns its probabilities
    buckets: list[_Bucket]
    restore: torch.Tensor | None  # (N,) puts the buckets' concatenated tokens back in the batch's token order; None:
    # they are in order already
    packed: bool = False  # the input was one packed row (1, N): outputs keep that shape, sequences pool apart
    block_mask: BlockMask | None = None  # flex attention's, made by the first layer that needs it
    documents: torch.Tensor | None = None  # (N,) each token's sequence in a traced packed row (`from_positions`)

    def document_mask(self):
        """Flex attention's BlockMask for the batch's N tokens as one row: each token attends to the real tokens of
        its own sequence (block-diagonal, as the tokens come sequence by sequence). Made once per forward."""
        if self.block_mask is None:
            sequences, real = self.layout.sequences, self.layout.real  # (N,) each; real: padding kept as tokens
            if self.documents is not None:
                sequences = self.documents

            def same_sequence(batch, head, query, key):
                keep = sequences[query] == sequences[key]
                return keep if real is None else keep & real[key]

            num_tokens = sequences.shape[0]
            self.block_mask = create_block_mask(same_sequence, None, None, num_tokens, num_tokens,
                                                device=sequences.device)
        return self.block_mask

    def to_output(self, x):
        # (N, ...) -> the shape the input came in: (B, T, ...) padded, or the packed row (1, N, ...)
        return x[None] if self.packed else self.layout.pad(x)

    def from_output(self, x):
        return x[0] if self.packed else self.layout.unpad(x)

    @staticmethod
    def lengths(attention_mask):
        """(2, B) for the host: each sequence's extent (1 + its last real position) and its number of real tokens,
        all that `from_mask` needs to know on the host to plan the buckets."""
        seq_len = attention_mask.shape[1]
        extent = (attention_mask * torch.arange(1, seq_len + 1, device=attention_mask.device)).amax(1)
        return torch.stack([extent, attention_mask.sum(1)]).long()

    @classmethod
    def from_mask(cls, attention_mask, extents, counts):
        """`attention_mask` (B, T) bool; `extents` and `counts`: lists of B ints, `lengths` read on the host. Every
        shape is planned from them, so building the buckets waits on the device for nothing."""
        batch_size, seq_len = attention_mask.shape
        layout = _Layout.from_mask(attention_mask, sum(counts))
        # Row of each real token in the (N, ...) tensor.
        token_rows = (attention_mask.flatten().cumsum(0) - 1).view(batch_size, seq_len)
        order = sorted(range(batch_size), key=lambda b: -extents[b])  # longest first
        order_on_device = torch.tensor(order, device=attention_mask.device)
        buckets, start = [], 0
        num_buckets = min(_ATTENTION_BUCKETS, batch_size)
        for i in range(num_buckets):  # sizes as tensor_split gives them: the first B % k buckets one larger
            size = batch_size // num_buckets + (i < batch_size % num_buckets)
            members, sequences = order[start:start + size], order_on_device[start:start + size]
            start += size
            length = extents[members[0]]
            mask = attention_mask[sequences, :length]  # (Bb, Tb)
            bucket_layout = _Layout.from_mask(mask, sum(counts[b] for b in members))
            tokens = token_rows[sequences][bucket_layout.sequences, bucket_layout.positions]
            unmasked = all(counts[b] == length for b in members)  # every sequence fills the bucket's length
            buckets.append(_Bucket(tokens, sequences, bucket_layout, None if unmasked else mask[:, None, None, :]))
        restore = torch.cat([b.tokens for b in buckets]).argsort()
        return cls(layout, attention_mask[:, None, None, :], buckets, restore)

    @classmethod
    def from_packed(cls, cu_seq_lens, max_length, num_tokens):
        """A packed row of N tokens (transformers' `DataCollatorWithFlattening`: a batch's S sequences end to end,
        `cu_seq_lens` (S + 1,) their boundaries, `max_length` the longest) as the unpadding of the right-padded
        (S, max_length) batch it stands for: the row's tokens already are that batch's real tokens, in order, so
        they stay where they are and attention runs in one bucket of (S, max_length). Built on the device from shapes
        that are known without reading values (S from cu_seq_lens' size, max_length a Python int): no
        synchronisation, and traceable."""
        device = cu_seq_lens.device
        starts, ends = cu_seq_lens[:-1].long(), cu_seq_lens[1:].long()  # (S,) each
        num_sequences = ends.shape[0]
        token = torch.arange(num_tokens, device=device)  # (N,)
        sequences = torch.searchsorted(ends, token, right=True)  # (N,) the sequence each token belongs to
        positions = token - starts[sequences]
        layout = _Layout(sequences * max_length + positions, sequences, positions, num_sequences, max_length)
        mask = torch.arange(max_length, device=device) < (ends - starts)[:, None]  # (S, L)
        mask = mask[:, None, None, :]  # (S, 1, 1, L)
        bucket = _Bucket(token, torch.arange(num_sequences, device=device), layout, mask)
        return cls(layout, mask, [bucket], token, packed=True)

    @classmethod
    def keeping_padding(cls, attention_mask):
        # torch.compile would recompile for every new N or bucket length. Compiled, the model keeps every position as
        # a token instead: one bucket of the whole (B, T) batch, padded keys masked in attention and padding zeroed
        # whenever a tensor is padded, so outputs stay the same.
        batch_size, seq_len = attention_mask.shape
        device = attention_mask.device
        sequences, positions = _flat_coordinates(batch_size, seq_len, device)
        layout = _Layout(None, sequences, positions, batch_size, seq_len, real=attention_mask.flatten())
        mask = attention_mask[:, None, None, :]  # (B, 1, 1, T)
        bucket = _Bucket(None, torch.arange(batch_size, device=device), layout, mask)
        return cls(layout, mask, [bucket], None)

    @classmethod
    def exporting(cls, attention_mask, dtype):
        """Exported to ONNX, where the graph may read shapes from values: what `from_mask` plans on the host, planned
        inside the graph. The real tokens come from `nonzero` on the mask, so every per-token operation of the served
        model runs on them only; the sequences, sorted longest first, attend in `_ATTENTION_BUCKETS` buckets, each
        padded only to its own longest. The tokens are ordered bucket by bucket, so the buckets' outputs joined are
        already in the batch's order. (torch.compile keeps padding instead: it would recompile for every N.)"""
        batch_size, seq_len = attention_mask.shape
        device = attention_mask.device
        extents = (attention_mask * torch.arange(1, seq_len + 1, device=device)).amax(1)  # (B,) 1 + last real position
        order = extents.argsort(descending=True)  # (B,) longest first
        real = attention_mask[order].flatten().nonzero()[:, 0]  # (N,) real positions of the sorted batch, row by row
        rows, positions = (coordinate[real] for coordinate in _flat_coordinates(batch_size, seq_len, device))
        sequences = order[rows]  # rows of the sorted batch -> of the batch
        layout = _Layout(sequences * seq_len + positions, sequences, positions, batch_size, seq_len)
        mask = attention_mask[:, None, None, :]  # (B, 1, 1, T)
        # Attention reads an additive mask: ONNX has no masked softmax, and a Boolean one is exported as a fill with
        # -inf and a NaN check over every (B, nh, T, T) score; with the float minimum padded queries get finite
        # (unused) rows instead.
        additive = torch.zeros(mask.shape, dtype=dtype, device=device).masked_fill(~mask, torch.finfo(dtype).min)
        # Bucket of each sorted row, as tensor_split cuts B rows, computed on tensors: a bucket's size read from its
        # rows (nonzero) rather than from B's arithmetic keeps the graph free of guards on B (say, a bucket of one).
        num_rows = torch.ones_like(extents).sum()  # B, as a tensor
        bucket_of = torch.arange(batch_size, device=device) * _ATTENTION_BUCKETS // num_rows  # (B,) sorted rows
        sorted_extents, token_bucket, buckets = extents[order], bucket_of[rows], []
        for i in range(_ATTENTION_BUCKETS):
            sorted_rows = (bucket_of == i).nonzero()[:, 0]  # (Bb,) some buckets empty when B < buckets
            first_row = (i * num_rows + _ATTENTION_BUCKETS - 1) // _ATTENTION_BUCKETS
            extent = torch.cat([sorted_extents[sorted_rows], extents.new_zeros(1)]).amax(0).item()
            torch._check(extent >= 0)
            torch._check(extent <= seq_len)
            # at least 2 positions (all the exported graph allows for), so that no shape is one that broadcasts
            length = torch.sym_min(torch.sym_max(extent, 2), seq_len)
            tokens = (token_bucket == i).nonzero()[:, 0]  # (Nb,) their rows in the (N, ...) batch
            bucket_rows, bucket_positions = rows[tokens] - first_row, positions[tokens]
            bucket_layout = _Layout(bucket_rows * length + bucket_positions, bucket_rows, bucket_positions,
                                    sorted_rows.shape[0], length)
            members = order[sorted_rows]
            buckets.append(_Bucket(tokens, members, bucket_layout, additive[members][..., :length]))
        return cls(layout, mask, buckets, None)

    @classmethod
    def from_positions(cls, position_ids):
        """A packed row (1, N) known by its `position_ids` alone, traced: where they restart cannot be read, so the
        row stays one sequence of N tokens, and a (1, 1, N, N) mask lets each token attend to the tokens of its own
        sequence only (a new one wherever the positions do not continue), as the eager model's buckets do."""
        row = position_ids[0]  # (N,)
        restarts = torch.cat([torch.ones_like(row[:1], dtype=torch.bool), row[1:] != row[:-1] + 1])
        documents = restarts.long().cumsum(0)  # (N,)
        unpadding = cls.keeping_padding(torch.ones_like(position_ids, dtype=torch.bool))
        mask = (documents[:, None] == documents[None, :])[None, None]  # (1, 1, N, N)
        unpadding.buckets[0].mask = mask
        return replace(unpadding, mask=mask, documents=documents)


@dataclass
class _Causal(_Movable):
    """How a decoder (config.is_decoder) attends: each new token to the cached tokens and the new ones up to itself.

    Takes `_Unpadding`'s place in the attention: a decoder keeps its (B, T) padded layout, since generation appends
    to every row at once."""

    mask: torch.Tensor | None  # (B or 1, 1, T, K) which of the K cached + new keys each new token sees; None: all
    cache: Cache | None  # the keys and values of earlier steps, extended by each layer (None: no cache)
    encoder_mask: torch.Tensor | None = None  # (B, 1, 1, S) which encoder outputs cross-attention reads; None: all

    @property
    def self_attention_cache(self):
        return _self_attention_cache(self.cache)


def _self_attention_cache(cache):
    """The self-attention half of an encoder-decoder's cache, or a decoder's cache itself."""
    return cache.self_attention_cache if isinstance(cache, EncoderDecoderCache) else cache


# ----------------------------------------------------------------------------------------------------------------
# Position encodings that are computed, not learned
# ----------------------------------------------------------------------------------------------------------------
def _inverse_frequencies(dim, theta, device):
    # (dim / 2,) the wavelengths of Vaswani et al.: theta^(-2i/dim)
    return 1.0 / (theta ** (torch.arange(0, dim, 2, device=device, dtype=torch.float32) / dim))


def sinusoidal_position_embeddings(position_ids, dim, theta=10000.0):
    """Fixed sin/cos embeddings: PE[p, 2i] = sin(p / theta^(2i/dim)), PE[p, 2i+1] = cos(same); Vaswani et al.'s
    base of 10000."""
    angles = position_ids.float()[..., None] * _inverse_frequencies(dim, theta, position_ids.device)  # (B, T, dim/2)
    return torch.stack((angles.sin(), angles.cos()), dim=-1).flatten(-2)  # (B, T, dim), interleaved


class FeedbackRotaryEmbedding(nn.Module):
    """cos and sin of the RoPE rotation angles, scaled as `config.rope_parameters["rope_type"]` says.

    "default" is RoPE as published; the scaling types ("linear", "dynamic", "yarn") come from transformers'
    ROPE_INIT_FUNCTIONS, so they behave as in its own models: the module has the shape of Llama's rotary embedding,
    the attributes transformers' `dynamic_rope_update` and weight initialisation read included.
    """

    def __init__(self, config):
        super().__init__()
        self.config = config
        self.rope_type = config.rope_parameters["rope_type"]
        # "dynamic" stretches the frequencies once positions pass the length the model was trained on
        self.max_seq_len_cached = self.original_max_seq_len = config.max_position_embeddings
        compute = ROPE_INIT_FUNCTIONS.get(self.rope_type, self.compute_default_rope_parameters)
        inv_freq, self.attention_scaling = compute(config)
        self.register_buffer("inv_freq", inv_freq, persistent=False)  # (hs / 2,)
        self.register_buffer("original_inv_freq", inv_freq.clone(), persistent=False)

    @staticmethod
    def compute_default_rope_parameters(config, device=None, **kwargs):
        head_size = config.hidden_size // config.num_attention_heads
        return _inverse_frequencies(head_size, config.rope_parameters["rope_theta"], device), 1.0

    @dynamic_rope_update
    def forward(self, x, position_ids):
        # position_ids: (B, T) -> cos, sin: (B, T, hs) each, in x's dtype
        angles = position_ids.float()[..., None] * self.inv_freq.to(x.device)  # (B, T, hs / 2)
        angles = torch.cat((angles, angles), dim=-1)  # (B, T, hs)
        return (angles.cos() * self.attention_scaling).to(x.dtype), (angles.sin() * self.attention_scaling).to(x.dtype)


def _apply_rotary(x, cos, sin):
    # Rotate each (x_i, x_{i + hs/2}) pair by its position's angle ("rotate half" layout, as GPT-NeoX / Llama).
    x1, x2 = x.chunk(2, dim=-1)
    return x * cos + torch.cat((-x2, x1), dim=-1) * sin


# ----------------------------------------------------------------------------------------------------------------
# Embeddings
# ----------------------------------------------------------------------------------------------------------------
_HASH_PRIME = 2_147_483_647  # 2**31 - 1: residues stay small enough that every product below fits in int64
_HASH_BASE = 1_000_003
_HASH_SIZE_OFFSET = 40_503  # times n, added to an n-gram's code: sizes hash apart


def hashed_ngram_ids(input_ids, position_ids, sizes, num_buckets, pad_token_id, context_ids=None):
    """Bucket ids (B, T, len(sizes)) of the n-grams of token ids that end at each position, one per n in `sizes`.

    The n-gram ending at a token is the token and the n - 1 before it *in its own sequence*: `position_ids` says
    how many precede it (a token at position p has p), and places before a sequence's start count as
    `pad_token_id`. So a text gets the same ids alone, right- or left-padded, or packed after another. A decoder
    stepping with a cache passes `context_ids` (B, C): the tokens just before `input_ids`, which the cache does not
    keep. The hash is a polynomial of the ids modulo the prime 2**31 - 1, offset by n, then reduced to
    `num_buckets`: different n-grams share a bucket only by collision, as in fastText's hashing trick.
    """
    ids = input_ids.long()  # (B, T)
    length, longest = ids.shape[1], max(sizes) - 1
    before = ids[:, :0] if context_ids is None else context_ids.long()[:, -longest:]  # (B, C <= longest)
    start = before.shape[1] + longest  # where `ids` begin in `full`
    full = F.pad(torch.cat([before, ids], dim=1), (longest, 0), value=pad_token_id)  # (B, longest + C + T)
    code, order, out = ids, 1, []
    for n in sorted(sizes):
        for back in range(order, n):
            earlier = full[:, start - back:start - back + length]  # (B, T): the token `back` places before
            earlier = torch.where(position_ids >= back, earlier, pad_token_id)
            code = (code * _HASH_BASE + earlier + 1) % _HASH_PRIME
        order = n
        out.append((code + n * _HASH_SIZE_OFFSET) % _HASH_PRIME % num_buckets)
    return torch.stack(out, dim=-1)  # order of `sorted(sizes)`; the embeddings are summed, so order does not matter


class FeedbackEmbeddings(nn.Module):
    """Token + (learned or sinusoidal) position + segment embeddings, and, if configured, hashed n-gram embeddings
    (the embedding of the bigram and trigram of token ids that end at each token, from one table of
    `ngram_vocab_size` rows: word-pair evidence such as a negation before an adjective, which character n-gram
    classifiers thrive on, is in the input instead of left for attention to find) and character embeddings (the
    mean embedding of the characters a token is written with, from `char_vocab_size` rows: a rare word piece
    borrows what its characters learned in every other piece), then LayerNorm and dropout."""

    def __init__(self, config):
        super().__init__()
        self.config = config
        self.word_embeddings = nn.Embedding(config.vocab_size, config.hidden_size, padding_idx=config.pad_token_id)
        self.position_embeddings = (
            nn.Embedding(config.max_position_embeddings, config.hidden_size)
            if config.position_embedding_type == "absolute"
            else None
        )
        self.token_type_embeddings = (
            nn.Embedding(config.type_vocab_size, config.hidden_size) if config.type_vocab_size > 0 else None
        )
        self.ngram_embeddings = (
            nn.Embedding(config.ngram_vocab_size, config.hidden_size) if config.ngram_vocab_size > 0 else None
        )
        self.char_embeddings = None
        if config.char_vocab_size > 0:
            self.char_embeddings = nn.Embedding(config.char_vocab_size, config.hidden_size, padding_idx=0)
            # Row i: the character ids of token i, 0 past its last character (and for tokens without any).
            self.register_buffer("token_characters",
                                 torch.zeros(config.vocab_size, config.chars_per_token, dtype=torch.long))
        self.norm = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps)
        self.dropout = nn.Dropout(config.hidden_dropout_prob)

    def forward(self, input_ids, token_type_ids, position_ids, inputs_embeds=None, ngram_context_ids=None,
                real_tokens=None):
        # real_tokens: (B, T, ...) -> (N, ...), the batch's real tokens (of a padded batch or a packed row), to embed
        # those only (the output is then (N, H)); None embeds every position, (B, T, H)
        ngrams = None
        if self.ngram_embeddings is not None:
            if input_ids is None:
                raise ValueError("This model embeds hashed n-grams of token ids (config.ngram_vocab_size > 0): pass "
                                 "input_ids, not inputs_embeds")
            # read from the padded rows, where each token's predecessors are
            ngrams = hashed_ngram_ids(input_ids, position_ids, self.config.ngram_sizes, self.config.ngram_vocab_size,
                                      self.config.pad_token_id or 0, ngram_context_ids)  # (B, T, len(ngram_sizes))
        if real_tokens is not None:
            input_ids, token_type_ids, position_ids, inputs_embeds, ngrams = (
                None if x is None else real_tokens(x)
                for x in (input_ids, token_type_ids, position_ids, inputs_embeds, ngrams))
        embeddings = self.word_embeddings(input_ids) if inputs_embeds is None else inputs_embeds  # (B, T, H) or (N, H)
        if ngrams is not None:
            embeddings = embeddings + self.ngram_embeddings(ngrams).sum(dim=-2)
        if self.char_embeddings is not None:
            if input_ids is None:
                raise ValueError("This model adds the embeddings of each token's characters (config.char_vocab_size "
                                 "> 0): pass input_ids, not inputs_embeds")
            chars = self.token_characters[input_ids]  # (B, T, chars_per_token)
            count = (chars > 0).sum(-1, keepdim=True).clamp(min=1)  # (B, T, 1)
            embeddings = embeddings + self.char_embeddings(chars).sum(dim=-2) / count
        if self.position_embeddings is not None:
            embeddings = embeddings + self.position_embeddings(position_ids)
        elif self.config.position_embedding_type == "sinusoidal":
            pe = sinusoidal_position_embeddings(position_ids, self.config.hidden_size)
            embeddings = embeddings + pe.to(embeddings.dtype)
        if self.token_type_embeddings is not None:
            embeddings = embeddings + self.token_type_embeddings(token_type_ids)
        return self.dropout(self.norm(embeddings))


# ----------------------------------------------------------------------------------------------------------------
# Multi-head self-attention
# ----------------------------------------------------------------------------------------------------------------
# Backends that take a batch's real tokens as one row with a document mask, instead of padded length buckets.
_TOKEN_ROW_ATTENTION = ("flex_attention",)


class _MultiHeadAttention(nn.Module):
    """What self- and cross-attention share: nh heads of size hs, and softmax(Q K^T / sqrt(hs)) V computed by the
    configured backend (`_attention`)."""

    is_causal = False  # causality comes as a mask (read by transformers' sdpa function when there is none)
    keys_are_queries = True  # self-attention: a key mask also says which queries are padding

    def __init__(self, config, layer_idx=None):
        super().__init__()
        self.config = config
        self.layer_idx = layer_idx  # where a decoder's cache keeps this layer's keys and values
        self.num_heads = config.num_attention_heads
        self.head_size = config.hidden_size // config.num_attention_heads
        self.dropout_prob = config.attention_probs_dropout_prob

    def _attention(self, q, k, v, attention_mask, output_attentions):
        # q: (B, nh, T, hs); k, v: (B, nh, K, hs); attention_mask: (B, 1, 1 or T, K) bool (or additive float, when
        # exported: `_Unpadding.exporting`), a BlockMask, or None
        dropout_p = self.dropout_prob if self.training else 0.0
        probs = None
        if output_attentions or self.config._attn_implementation == "eager":
            scores = (q @ k.transpose(-1, -2)) / math.sqrt(self.head_size)  # (B, nh, T, K)
            if attention_mask is not None and attention_mask.is_floating_point():  # additive: 0 where a key is read
                attention_mask = attention_mask == 0
            if attention_mask is not None:
                scores = scores.masked_fill(~attention_mask, torch.finfo(scores.dtype).min)
            probs = scores.softmax(dim=-1)
            if (self.keys_are_queries and attention_mask is not None and attention_mask.shape[-2] == 1
                    and q.shape[-2] == k.shape[-2]):
                # a key mask: padded queries attend nowhere, all-zero rows, as the returned map shows
                probs = probs.masked_fill(~attention_mask.transpose(-1, -2), 0.0)
            context = F.dropout(probs, p=dropout_p, training=self.training) @ v  # (B, nh, T, hs)
        elif isinstance(attention_mask, torch.Tensor) and attention_mask.is_floating_point():
            # Exported (`_Unpadding.exporting`): torch's kernel itself, as transformers' sdpa wrapper tests the query
            # length, which a bucket's graph only learns from the mask's values.
            context = F.scaled_dot_product_attention(q, k, v, attn_mask=attention_mask, dropout_p=dropout_p,
                                                     scale=self.head_size ** -0.5)
        else:
            # (None: a block built outside a model, which sets the implementation, attends with sdpa)
            attention = ALL_ATTENTION_FUNCTIONS[self.config._attn_implementation or "sdpa"]
            context, _ = attention(self, q, k, v, attention_mask, dropout=dropout_p, scaling=self.head_size ** -0.5)
            return context, None  # (B, T, nh, hs)
        return context.transpose(1, 2), probs  # (B, T, nh, hs), a strided view


class FeedbackSelfAttention(_MultiHeadAttention):
    """softmax(Q K^T / sqrt(hs)) V over nh heads, with one fused projection for Q, K and V.

    The path is chosen by `config._attn_implementation` (the standard `attn_implementation` argument): "eager"
    spells the formula out here and can return the attention probabilities; any other name is a function of
    transformers' attention interface (`ALL_ATTENTION_FUNCTIONS`): "sdpa" (`F.scaled_dot_product_attention`'s fused
    kernels), "flex_attention", or one a user registered with `AttentionInterface.register`. All compute the same
    function, so a call with `output_attentions=True` takes the eager path whatever the setting. Padded-layout
    backends attend in length buckets with a key mask; flex attention attends once over the batch's real tokens as
    one row, with a document mask (`_Unpadding.document_mask`): no buckets, no padding at all.
    """

    def __init__(self, config, layer_idx=None):
        super().__init__(config, layer_idx)
        self.qkv_proj = nn.Linear(config.hidden_size, 3 * config.hidden_size)
        self.out_proj = nn.Linear(config.hidden_size, config.hidden_size)

    def forward(self, hidden_states, rotary, unpadding, output_attentions=False):
        # hidden_states: (N, H) when unpadded, else (B, T, H) with no padding at all (or a decoder's, padded)
        qkv = self.qkv_proj(hidden_states)  # (N, 3H) or (B, T, 3H)
        if isinstance(unpadding, _Causal):  # a decoder: new tokens attend to the cache and to themselves
            q, k, v = self._heads(qkv, rotary)
            if unpadding.cache is not None:  # (B, nh, K, hs): earlier steps' and these
                k, v = unpadding.self_attention_cache.update(k, v, self.layer_idx)
            context, probs = self._attention(q, k, v, unpadding.mask, output_attentions)
            return self.out_proj(context.flatten(-2)), probs  # (B, T, H)
        if unpadding is None:
            context, probs = self._attend(qkv, None, rotary, output_attentions)
            return self.out_proj(context.flatten(-2)), probs  # (B, T, H)

        layout = unpadding.layout
        if output_attentions:
            # One (B, T) layout instead of the buckets: the (B, nh, T, T) probabilities returned are then the very
            # tensor the output is computed from, so gradients reach them (attribution methods need that).
            context, probs = self._attend(layout.pad(qkv), unpadding.mask, rotary, output_attentions)
            return self.out_proj(layout.unpad(context).flatten(-2)), probs  # (N, H)

        if self.config._attn_implementation in _TOKEN_ROW_ATTENTION:
            # rotary: (B, 1, T, hs) -> each real token's, (1, 1, N, hs)
            token_rotary = None if rotary is None else tuple(
                r[layout.sequences, :, layout.positions].transpose(0, 1)[None] for r in rotary)
            context, _ = self._attend(qkv[None], unpadding.document_mask(), token_rotary, False)  # (1, N, nh, hs)
            return self.out_proj(context[0].flatten(-2)), None  # (N, H)

        contexts = []
        for bucket in unpadding.buckets:
            length = bucket.layout.seq_len
            bucket_rotary = None if rotary is None else tuple(r[bucket.sequences, :, :length] for r in rotary)
            tokens = qkv if bucket.tokens is None else qkv[bucket.tokens]
            context, _ = self._attend(bucket.layout.pad(tokens), bucket.mask, bucket_rotary, False)
            contexts.append(bucket.layout.unpad(context))  # (Nb, nh, hs)
        # (N, nh, hs), in the batch's token order
        context = torch.cat(contexts)
        context = context if unpadding.restore is None else context[unpadding.restore]
        return self.out_proj(context.flatten(-2)), None  # (N, H)

    def _attend(self, qkv, attention_mask, rotary, output_attentions):
        # qkv: (B, T, 3H) padded; attention_mask: (B, 1, 1, T) bool, a BlockMask (flex attention), or None. Returns
        # (B, T, nh, hs) and, from the eager path, the probabilities (B, nh, T, T).
        return self._attention(*self._heads(qkv, rotary), attention_mask, output_attentions)

    def _heads(self, qkv, rotary):
        # (B, T, 3H) -> q, k, v: (B, nh, T, hs) each, q and k rotated when positions are rotary
        batch_size, seq_len, _ = qkv.shape
        q, k, v = qkv.view(batch_size, seq_len, 3, self.num_heads, self.head_size).permute(2, 0, 3, 1, 4)
        if rotary is not None:
            q, k = _apply_rotary(q, *rotary), _apply_rotary(k, *rotary)
        return q, k, v



class FeedbackCrossAttention(_MultiHeadAttention):
    """A decoder's attention to the encoder's output: queries from the decoder, keys and values from the encoder
    (no positions: each decoder token may read any source token). The source's keys and values are computed once
    per sequence and kept in the cache's cross-attention half for the later steps of generation."""

    keys_are_queries = False

    def __init__(self, config, layer_idx=None):
        super().__init__(config, layer_idx)
        self.q_proj = nn.Linear(config.hidden_size, config.hidden_size)
        self.kv_proj = nn.Linear(config.hidden_size, 2 * config.hidden_size)
        self.out_proj = nn.Linear(config.hidden_size, config.hidden_size)

    def forward(self, hidden_states, encoder_hidden_states, plan, output_attentions=False):
        # hidden_states: (B, T, H) the decoder's; encoder_hidden_states: (B, S, H); plan: _Causal
        batch_size, seq_len, _ = hidden_states.shape
        q = self.q_proj(hidden_states).view(batch_size, seq_len, self.num_heads, self.head_size).transpose(1, 2)
        cache = plan.cache if isinstance(plan.cache, EncoderDecoderCache) else None
        if cache is not None and cache.is_updated.get(self.layer_idx):
            layer = cache.cross_attention_cache.layers[self.layer_idx]
            k, v = layer.keys, layer.values  # (B, nh, S, hs), from the first step
        else:
            source = encoder_hidden_states
            kv = self.kv_proj(source).view(source.shape[0], source.shape[1], 2, self.num_heads, self.head_size)
            k, v = kv.permute(2, 0, 3, 1, 4)  # (B, nh, S, hs) each
            if cache is not None:
                k, v = cache.cross_attention_cache.update(k, v, self.layer_idx)
                cache.is_updated[self.layer_idx] = True
        context, probs = self._attention(q, k, v, plan.encoder_mask, output_attentions)
        return self.out_proj(context.flatten(-2)), probs  # (B, T, H)


# ----------------------------------------------------------------------------------------------------------------
# Feed-forward layer
# ----------------------------------------------------------------------------------------------------------------
# name -> (activation, gated). A gated unit computes act(x W_gate) * (x W_up) (GLU variants, Shazeer 2020).
ACTIVATIONS = {
    "relu": (F.relu, False),
    "gelu": (F.gelu, False),
    "tanh": (torch.tanh, False),
    "sigmoid": (torch.sigmoid, False),
    "silu": (F.silu, False),
    "geglu": (F.gelu, True),
    "swiglu": (F.silu, True),
}


class FeedbackFeedForward(nn.Module):
    """Position-wise two-layer MLP: H -> I -> H with the configured activation."""

    def __init__(self, config):
        super().__init__()
        self.act, self.gated = ACTIVATIONS[config.hidden_act]
        self.up_proj = nn.Linear(config.hidden_size, config.intermediate_size * (2 if self.gated else 1))
        self.down_proj = nn.Linear(config.intermediate_size, config.hidden_size)

    def forward(self, x):
        h = self.up_proj(x)  # (..., I) or (..., 2I) when gated
        if self.gated:
            up, gate = h.chunk(2, dim=-1)
            h = self.act(gate) * up
        else:
            h = self.act(h)
        return self.down_proj(h)


# ----------------------------------------------------------------------------------------------------------------
# Encoder layer: attention and feed-forward, each with residual + LayerNorm
# ----------------------------------------------------------------------------------------------------------------
class FeedbackLayer(GradientCheckpointingLayer):
    """Self-attention, then (a decoder of an encoder-decoder: config.add_cross_attention) attention to the encoder's
    output, then the feed-forward layer, each inside a residual connection with its LayerNorm."""

    def __init__(self, config, layer_idx=None):
        super().__init__()
        self.pre_norm = config.norm_position == "pre"
        self.attention = FeedbackSelfAttention(config, layer_idx)
        self.attention_norm = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps)
        self.feed_forward = FeedbackFeedForward(config)
        self.feed_forward_norm = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps)
        self.dropout = nn.Dropout(config.hidden_dropout_prob)
        if config.add_cross_attention:
            self.cross_attention = FeedbackCrossAttention(config, layer_idx)
            self.cross_attention_norm = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps)

    def forward(self, hidden_states, rotary=None, unpadding=None, output_attentions=False,
                encoder_hidden_states=None):
        # encoder_hidden_states (B, S, H) come as an argument of their own, not inside `unpadding`: reentrant
        # gradient checkpointing passes gradients to the tensors among a layer's arguments only.
        # Returns the new hidden states, and (output_attentions) the self- and cross-attention probabilities.
        hidden_states, probs = self._residual(
            hidden_states, self.attention_norm, lambda x: self.attention(x, rotary, unpadding, output_attentions))
        cross_probs = None
        if hasattr(self, "cross_attention"):
            hidden_states, cross_probs = self._residual(
                hidden_states, self.cross_attention_norm,
                lambda x: self.cross_attention(x, encoder_hidden_states, unpadding, output_attentions))
        hidden_states, _ = self._residual(hidden_states, self.feed_forward_norm, lambda x: (self.feed_forward(x), None))
        return hidden_states, probs, cross_probs

    def _residual(self, hidden_states, norm, sublayer):
        if self.pre_norm:  # x + f(norm(x)): the residual stream is never normalised
            out, probs = sublayer(norm(hidden_states))
            return hidden_states + self.dropout(out), probs
        out, probs = sublayer(hidden_states)  # norm(x + f(x)): BERT and the original Transformer
        return norm(hidden_states + self.dropout(out)), probs


class FeedbackEncoder(nn.Module):
    def __init__(self, config):
        super().__init__()
        self.layers = nn.ModuleList(FeedbackLayer(config, i) for i in range(config.num_hidden_layers))
        # Pre-norm leaves the residual stream un-normalised; one LayerNorm at the end fixes its scale.
        self.final_norm = (
            nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps) if config.norm_position == "pre" else None
        )

    def forward(self, hidden_states, rotary, unpadding, output_attentions, output_hidden_states,
                encoder_hidden_states=None):
        # hidden_states: (N, H) when unpadded, else (B, T, H). Returns hidden states of every layer's input and of
        # the output, each (B, T, H), and each layer's attention probabilities (and a decoder's cross-attention
        # ones, (B, nh, T, S)) when asked.
        all_hidden_states = [] if output_hidden_states else None
        all_attentions = [] if output_attentions else None
        all_cross_attentions = [] if output_attentions and encoder_hidden_states is not None else None
        for layer in self.layers:
            if output_hidden_states:
                hidden_states = self._record(hidden_states, unpadding, all_hidden_states)
            hidden_states, probs, cross_probs = layer(hidden_states, rotary, unpadding, output_attentions,
                                                      encoder_hidden_states)
            if output_attentions:
                all_attentions.append(probs)
            if all_cross_attentions is not None:
                all_cross_attentions.append(cross_probs)
        if self.final_norm is not None:
            hidden_states = self.final_norm(hidden_states)
        if output_hidden_states:
            hidden_states = self._record(hidden_states, unpadding, all_hidden_states)
        return hidden_states, all_hidden_states, all_attentions, all_cross_attentions

    @staticmethod
    def _record(hidden_states, unpadding, all_hidden_states):
        # A returned hidden state must be on the autograd graph (attribution methods take gradients with respect
        # to it), so an unpadded model continues from the (B, T, H) copy it returns rather than beside it.
        if not isinstance(unpadding, _Unpadding):  # (B, T, H) already: no padding removed
            all_hidden_states.append(hidden_states)
            return hidden_states
        padded = unpadding.to_output(hidden_states)  # (N, H) -> (B, T, H), or (1, N, H) packed
        all_hidden_states.append(padded)
        return unpadding.from_output(padded)  # (N, H)


# ----------------------------------------------------------------------------------------------------------------
# Pooling: one vector per sequence
# ----------------------------------------------------------------------------------------------------------------
class FeedbackPooler(nn.Module):
    """First real token ("cls"), mean ("mean") or element-wise max ("max") over real tokens, then dense + tanh as in
    BERT."""

    def __init__(self, config):
        super().__init__()
        self.pooling = config.pooling
        self.dense = nn.Linear(config.hidden_size, config.hidden_size)

    def forward(self, hidden_states, attention_mask):
        # hidden_states: (B, T, H), attention_mask: (B, T) with 1 for real tokens
        if self.pooling == "mean":
            mask = attention_mask.unsqueeze(-1).to(hidden_states.dtype)  # (B, T, 1)
            pooled = (hidden_states * mask).sum(1) / mask.sum(1).clamp(min=1)
        elif self.pooling == "max":
            padding = ~attention_mask.bool().unsqueeze(-1)  # (B, T, 1)
            pooled = hidden_states.masked_fill(padding, torch.finfo(hidden_states.dtype).min).max(1).values
        else:
            first = attention_mask.int().argmax(1)  # (B,) the first real token, later than 0 on left-padded rows
            pooled = hidden_states[torch.arange(hidden_states.shape[0], device=first.device), first]
        return torch.tanh(self.dense(pooled))  # (B, H)


# ----------------------------------------------------------------------------------------------------------------
# Pretrained base and models
# ----------------------------------------------------------------------------------------------------------------
class FeedbackPreTrainedModel(PreTrainedModel):
    config_class = FeedbackConfig
    config: FeedbackConfig
    base_model_prefix = "feedback"
    supports_gradient_checkpointing = True
    _supports_sdpa = True
    _supports_flex_attn = True
    _supports_attention_backend = True  # any function registered with transformers' AttentionInterface
    _no_split_modules = ["FeedbackLayer"]
    _passes_ngram_context = False  # whether generate() hands a cached decoder the tokens its n-grams need

    def post_init(self):
        super().post_init()
        if self.can_generate() and self.config.ngram_vocab_size > 0 and not self._passes_ngram_context:
            # A new token's n-grams end in the tokens before it, which a cache of keys and values does not keep:
            # a decoder whose generate() does not hand them over (`ngram_context_ids`) generates without one
            # (`_decode` refuses a filled cache without them).
            self.generation_config.use_cache = False

    @staticmethod
    def create_masks_for_generate(attention_mask=None, **kwargs):
        # generate() would turn the (B, K) padding mask into a 4D one for a static cache; a decoder makes its own
        # from the padding mask, sized to what the cache returns.
        return attention_mask

    @classmethod
    def _can_set_attn_implementation(cls):
        # FeedbackSelfAttention reads config._attn_implementation at every call, so set_attn_implementation("eager")
        # works at any time. transformers' heuristic only trusts models that dispatch through ALL_ATTENTION_FUNCTIONS.
        return True

    def _read_on_host(self, input_ids, attention_mask, position_ids, cu_seq_lens, find_packing):
        """What the forward needs to know on the host, read from the device in one synchronisation (none when there
        is nothing to read: a packed row with `cu_seq_lens` and `config.check_input_values` off):
        - with `config.check_input_values`: the range of `input_ids` (checked here, with a clear message rather than
          an index error deep in an embedding kernel), whether a row without a mask starts or ends in the pad id
          (transformers' warning), and that `cu_seq_lens` ends at the row's length;
        - the mask's per-sequence lengths (`_Unpadding.lengths`), from which `from_mask` plans the attention buckets;
        - with `find_packing` (one row with `position_ids`, and neither a mask nor `cu_seq_lens`): where the positions
          restart, i.e. the boundaries of the sequences `DataCollatorWithFlattening` packed into it.
        Returns (extents, counts) of the mask or None, and the packed row's boundaries as a list or None. A traced
        model (torch.export, torch.compile) cannot read values and goes without all of them: it keeps padding as
        masked tokens, and knows a packed row by its `cu_seq_lens` only."""
        if torch.compiler.is_compiling():
            return None, None
        reads = {}
        if self.config.check_input_values and input_ids is not None and input_ids.numel() > 0:
            reads["range"] = torch.stack([input_ids.min(), input_ids.max()])
            if attention_mask is None and self.config.pad_token_id is not None and not self.config.is_decoder:
                reads["padded"] = (input_ids[:, [0, -1]] == self.config.pad_token_id).any()[None]
            if cu_seq_lens is not None:
                reads["packed_length"] = cu_seq_lens[-1:]
        if attention_mask is not None:
            reads["lengths"] = _Unpadding.lengths(attention_mask).flatten()  # (2B,) extents, then counts
        elif find_packing:
            reads["restarts"] = position_ids[0, 1:] != position_ids[0, :-1] + 1  # (T - 1,)
        if not reads:
            return None, None
        values = torch.cat([t.long() for t in reads.values()]).tolist()  # the forward's one synchronisation
        read, at = {}, 0
        for name, tensor in reads.items():
            read[name], at = values[at:at + tensor.numel()], at + tensor.numel()

        if "range" in read:
            low, high = read["range"]
            if low < 0 or high >= self.config.vocab_size:
                raise ValueError(f"input_ids must lie in [0, vocab_size={self.config.vocab_size}); got values in "
                                 f"[{low}, {high}]. Does the tokenizer match the model?")
        if "packed_length" in read and read["packed_length"][0] != input_ids.shape[1]:
            raise ValueError(f"cu_seq_lens_q must end at the packed row's length {input_ids.shape[1]}, got "
                             f"{read['packed_length'][0]}")
        boundaries = None
        if any(read.get("restarts", [])):
            row_length = position_ids.shape[1]
            boundaries = [0, *(at + 1 for at, restart in enumerate(read["restarts"]) if restart), row_length]
        elif read.get("padded") == [1]:  # a pad id at either end and no mask: transformers warns once
            self.warn_if_padding_and_no_attention_mask(input_ids, attention_mask)
        if "lengths" not in read:
            return None, boundaries
        batch_size = attention_mask.shape[0]
        return (read["lengths"][:batch_size], read["lengths"][batch_size:]), boundaries

    def _check_labels(self, labels, num_labels):
        # Cross-entropy on an out-of-range label fails with an opaque device-side assert on GPU; say what is wrong.
        # As for input_ids, a traced model (torch.export, torch.compile) goes without this check on values, and so
        # does one whose config.check_input_values is off.
        if torch.compiler.is_compiling() or not self.config.check_input_values:
            return
        outside = ((labels < 0) | (labels >= num_labels)) & (labels != -100)
        if outside.any():  # one synchronisation; the message's values are read only on failure
            valid = labels[labels != -100]
            raise ValueError(
                f"labels must lie in [0, num_labels={num_labels}) (or be -100 to ignore); got values in "
                f"[{int(valid.min())}, {int(valid.max())}]"
            )

    def _character_layers(self):
        return [m for m in self.modules() if isinstance(m, FeedbackEmbeddings) and m.char_embeddings is not None]

    def set_token_characters(self, table: torch.Tensor):
        """Say which characters each token is written with: `table` (vocab_size, chars_per_token) holds character ids
        in [0, char_vocab_size), 0 past a token's last character. Fills the `token_characters` of every embedding
        layer (an ELECTRA generator's too); `hf_feedback.data.tokenization.token_characters(tokenizer)` makes the
        table."""
        layers = self._character_layers()
        if not layers:
            raise ValueError("config.char_vocab_size is 0: this model has no character embeddings to index")
        expected = tuple(layers[0].token_characters.shape)
        if tuple(table.shape) != expected or table.dtype.is_floating_point:
            raise ValueError(f"token characters must be integer ids of shape (vocab_size, chars_per_token) = {expected}, "
                             f"got {table.dtype} of shape {tuple(table.shape)}")
        if table.numel() and (table.min() < 0 or table.max() >= self.config.char_vocab_size):
            raise ValueError(f"token characters must be ids in [0, char_vocab_size={self.config.char_vocab_size}), got "
                             f"values in [{int(table.min())}, {int(table.max())}]")
        for layer in layers:
            layer.token_characters.copy_(table)

    def resize_token_embeddings(self, *args, **kwargs):
        # New tokens have no characters until set_token_characters says them; removed ones take theirs along.
        embeddings = super().resize_token_embeddings(*args, **kwargs)
        for layer in self._character_layers():
            old, rows = layer.token_characters, embeddings.num_embeddings
            new = old.new_zeros(rows, old.shape[1])
            new[:min(rows, old.shape[0])] = old[:rows]
            layer.token_characters = new  # a registered buffer: assignment replaces it
        return embeddings


# Keyword arguments of transformers' padding-free batches (FlashAttentionKwargs; `DataCollatorWithFlattening` with
# return_flash_attn_kwargs=True): the boundaries of the sequences packed into one row, and the longest.
_PACKING_ARGUMENTS = ("cu_seq_lens_q", "cu_seq_lens_k", "max_length_q", "max_length_k")


def _token_cross_entropy(logits, labels, num_items_in_batch=None):
    """Cross-entropy of per-token `logits` (..., C) against `labels` (...), -100 ignored: the mean over labelled
    tokens, or, given Trainer's `num_items_in_batch` (the labelled-token count of the whole accumulated batch), their
    sum divided by it, so that gradient accumulation gives the update of one large batch."""
    loss = F.cross_entropy(logits.reshape(-1, logits.shape[-1]).float(), labels.reshape(-1),
                           reduction="mean" if num_items_in_batch is None else "sum")
    return loss if num_items_in_batch is None else loss / num_items_in_batch


def _packing_arguments(model, kwargs, loss_arguments=()):
    """A head's keyword arguments split: the packing ones, passed on to the encoder; `loss_arguments` the head uses
    (Trainer's `num_items_in_batch`). Anything else is a mistake, reported as Python reports it."""
    unknown = set(kwargs) - set(_PACKING_ARGUMENTS) - set(loss_arguments)
    if unknown:
        raise TypeError(f"{type(model).__name__}.forward() got unexpected keyword arguments {sorted(unknown)}")
    return {name: kwargs[name] for name in _PACKING_ARGUMENTS if name in kwargs}


class FeedbackModel(FeedbackPreTrainedModel):
    """The bare encoder: returns every token's final hidden state and the pooled sentence vector."""

    def __init__(self, config, add_pooling_layer=True):
        super().__init__(config)
        self.embeddings = FeedbackEmbeddings(config)
        self.rotary_emb = FeedbackRotaryEmbedding(config) if config.position_embedding_type == "rotary" else None
        self.encoder = FeedbackEncoder(config)
        self.pooler = FeedbackPooler(config) if add_pooling_layer else None
        self.post_init()

    def get_input_embeddings(self):
        return self.embeddings.word_embeddings

    def set_input_embeddings(self, value):
        self.embeddings.word_embeddings = value

    @deprecate_kwarg("past_key_values", "5.40.0", new_name="cache")  # transformers' name for it before 5.24
    def forward(
        self,
        input_ids=None,
        attention_mask=None,
        token_type_ids=None,
        position_ids=None,
        inputs_embeds=None,
        output_attentions=None,
        output_hidden_states=None,
        return_dict=None,
        cu_seq_lens_q=None,
        cu_seq_lens_k=None,
        max_length_q=None,
        max_length_k=None,
        cache=None,
        use_cache=None,
        encoder_hidden_states=None,
        encoder_attention_mask=None,
        ngram_context_ids=None,
    ):
        r"""
        Padded batches take `attention_mask` (B, T). A padding-free batch is one row (1, N) of several sequences end
        to end, as transformers' `DataCollatorWithFlattening` makes it: `position_ids` restarting at each sequence
        and, optionally (`return_flash_attn_kwargs=True`), `cu_seq_lens_q` (S + 1,) the boundaries and `max_length_q`
        the longest sequence (`_k`: the same, as self-attention's keys are its queries). Each sequence then attends
        only within itself; `last_hidden_state` is (1, N, H) and `pooler_output` (S, H), one vector per sequence.
        With the boundaries given, the model reads nothing from the device to place them (and compiles); from
        `position_ids` alone it finds them in its one read in eager mode, and compiled masks each token's attention
        to the tokens whose positions continue its own (no pooled output then: it needs the boundaries).

        A decoder (`config.is_decoder`, as [`FeedbackForCausalLM`] is built) attends causally and takes `cache` (a
        transformers `Cache` of earlier steps' keys and values, extended in place; `use_cache` makes one) and an
        `attention_mask` (B, K) over the cached and new tokens. The decoder of an encoder-decoder
        (`config.add_cross_attention`) also reads `encoder_hidden_states` (B, S, H), masked by `encoder_attention_mask`
        (B, S). A decoder with n-gram embeddings (`config.ngram_vocab_size`) stepping with a filled cache takes
        `ngram_context_ids` (B, C): the tokens just before `input_ids` (the last `max(ngram_sizes) - 1` suffice), as
        [`FeedbackForCausalLM`]'s generate() passes them.
        """
        config = self.config
        output_attentions = config.output_attentions if output_attentions is None else output_attentions
        output_hidden_states = config.output_hidden_states if output_hidden_states is None else output_hidden_states
        return_dict = config.return_dict if return_dict is None else return_dict
        if (input_ids is None) == (inputs_embeds is None):
            raise ValueError("Pass exactly one of input_ids or inputs_embeds")
        if config.is_decoder:
            if cu_seq_lens_q is not None or cu_seq_lens_k is not None:
                raise ValueError("A decoder (config.is_decoder) takes padded batches, not packed rows")
            return self._decode(input_ids, attention_mask, token_type_ids, position_ids, inputs_embeds,
                                output_attentions, output_hidden_states, return_dict, cache, use_cache,
                                encoder_hidden_states, encoder_attention_mask, ngram_context_ids)
        if encoder_hidden_states is not None:
            raise ValueError("encoder_hidden_states are for a decoder with cross-attention "
                             "(FeedbackConfig(is_decoder=True, add_cross_attention=True))")
        if cache is not None:  # (use_cache means nothing to an encoder, as to BERT's: nothing is cached)
            raise ValueError("cache is for a decoder (FeedbackConfig(is_decoder=True)); this model is an encoder")
        batch_size, seq_len = input_ids.shape if input_ids is not None else inputs_embeds.shape[:2]
        unpadding, attention_mask, position_ids, cu_seq_lens = self._layout(
            input_ids, inputs_embeds, attention_mask, position_ids, cu_seq_lens_q, cu_seq_lens_k, max_length_q,
            max_length_k)
        if token_type_ids is None:
            token_type_ids = torch.zeros((batch_size, seq_len), dtype=torch.long, device=position_ids.device)

        # (N, H): the real tokens only (N = B * T when padding is kept), or (B, T, H) when nothing is padded
        hidden_states = self.embeddings(input_ids, token_type_ids, position_ids, inputs_embeds,
                                        real_tokens=None if unpadding is None else unpadding.from_output)
        rotary = self._rotary_angles(hidden_states, position_ids, cu_seq_lens, unpadding)
        hidden_states, all_hidden_states, all_attentions, _ = self.encoder(
            hidden_states, rotary, unpadding, output_attentions, output_hidden_states
        )
        tokens = hidden_states
        if unpadding is not None:
            hidden_states = unpadding.to_output(tokens)  # (B, T, H) with zeros at padding, or packed (1, N, H)
        output = BaseModelOutputWithPooling(
            last_hidden_state=hidden_states,
            pooler_output=self._pool(tokens, hidden_states, unpadding, attention_mask),
            hidden_states=tuple(all_hidden_states) if output_hidden_states else None,
            attentions=tuple(all_attentions) if output_attentions else None,
        )
        return output if return_dict else output.to_tuple()

    def _layout(self, input_ids, inputs_embeds, attention_mask, position_ids, cu_seq_lens_q, cu_seq_lens_k,
                max_length_q, max_length_k):
        """Where the batch's real tokens are and how attention will find them: (unpadding plan or None, the attention
        mask, position ids (B, T), the packed sequences' boundaries or None). Padded rows are unpadded where padding
        exists; a packed row's sequences are found from its boundaries, or from where its positions restart."""
        config = self.config
        batch_size, seq_len = input_ids.shape if input_ids is not None else inputs_embeds.shape[:2]
        cu_seq_lens, max_length = self._packing(cu_seq_lens_q, cu_seq_lens_k, max_length_q, max_length_k,
                                                attention_mask, batch_size)
        find_packing = (cu_seq_lens is None and attention_mask is None and batch_size == 1
                        and position_ids is not None and position_ids.dim() == 2)
        lengths, boundaries = self._read_on_host(input_ids, attention_mask, position_ids, cu_seq_lens, find_packing)
        if boundaries is not None:  # found from where position_ids restart
            cu_seq_lens = torch.tensor(boundaries, device=position_ids.device)
            max_length = max(end - start for start, end in zip(boundaries, boundaries[1:]))
        longest = seq_len if cu_seq_lens is None else max_length
        if config.position_embedding_type == "absolute" and longest > config.max_position_embeddings:
            # Only learned positions have a table to run past; rotary and sinusoidal ones are computed.
            raise ValueError(
                f"Sequence length {longest} exceeds max_position_embeddings={config.max_position_embeddings}; "
                "truncate the inputs (tokenizer(..., truncation=True, max_length=...))"
            )
        device = input_ids.device if input_ids is not None else inputs_embeds.device

        unpadding = None
        if cu_seq_lens is not None:
            unpadding = _Unpadding.from_packed(cu_seq_lens, max_length, seq_len)
            if position_ids is None:
                position_ids = unpadding.layout.positions[None]  # (1, N), restarting at each sequence
        elif attention_mask is not None and torch.onnx.is_in_onnx_export():
            attention_mask = attention_mask.bool()
            unpadding = _Unpadding.exporting(attention_mask, self.dtype)
        elif attention_mask is not None and torch.compiler.is_compiling():
            attention_mask = attention_mask.bool()
            unpadding = _Unpadding.keeping_padding(attention_mask)
        elif find_packing and torch.compiler.is_compiling():
            if self.pooler is not None:  # one vector per sequence: a shape that depends on the positions' values
                raise ValueError("Compiled, a packed row's sequences are pooled apart only with their boundaries: "
                                 "pass cu_seq_lens_q / max_length_q (DataCollatorWithFlattening("
                                 "return_flash_attn_kwargs=True)), not position_ids alone")
            unpadding = _Unpadding.from_positions(position_ids)
        elif attention_mask is not None and any(count < seq_len for count in lengths[1]):
            attention_mask = attention_mask.bool()
            unpadding = _Unpadding.from_mask(attention_mask, *lengths)
        if position_ids is None and attention_mask is not None:
            # Count from each row's first real token, so a left-padded text gets the positions it has alone.
            position_ids = (attention_mask.long().cumsum(-1) - 1).clamp(min=0)  # (B, T)
        elif position_ids is None:
            position_ids = torch.arange(seq_len, device=device)
        position_ids = position_ids.expand(batch_size, seq_len)  # (1, T) or (T,), BERT's shapes, serve every row
        return unpadding, attention_mask, position_ids, cu_seq_lens

    def _rotary_angles(self, hidden_states, position_ids, cu_seq_lens, unpadding):
        """cos and sin of rotary positions, (B, 1, T, head size) each, or None for other position types. Attention runs
        on the padded (B, T) layout, or the (S, max_length) one a packed row stands for."""
        if self.config.position_embedding_type != "rotary":
            return None
        padded_positions = (position_ids if cu_seq_lens is None
                            else unpadding.layout.pad(position_ids[0, :, None])[..., 0])  # (S, max_length)
        cos, sin = self.rotary_emb(hidden_states, padded_positions)  # (B, T, hs) each
        return cos[:, None], sin[:, None]  # broadcast over heads

    def _pool(self, tokens, hidden_states, unpadding, attention_mask):
        """The pooler's sentence vectors: one per packed sequence, or per row of a padded batch; None without a pooler."""
        if self.pooler is None:
            return None
        if unpadding is not None and unpadding.packed:
            return self.pooler(unpadding.layout.pad(tokens), unpadding.mask[:, 0, 0])  # (S, H): each on its own
        if attention_mask is None:
            attention_mask = torch.ones(hidden_states.shape[:2], dtype=torch.bool, device=hidden_states.device)
        return self.pooler(hidden_states, attention_mask)

    def _decode(self, input_ids, attention_mask, token_type_ids, position_ids, inputs_embeds, output_attentions,
                output_hidden_states, return_dict, cache, use_cache, encoder_hidden_states, encoder_attention_mask,
                ngram_context_ids=None):
        """The decoder's forward: T new tokens per row, attending causally to the K = past + T cached and new ones."""
        config = self.config
        if config._attn_implementation in _TOKEN_ROW_ATTENTION:
            raise ValueError(f"A decoder attends with 'eager' or 'sdpa', not {config._attn_implementation!r}")
        self._read_on_host(input_ids, None, None, None, False)  # the ids' range (a decoder's ids may end in padding)
        batch_size, seq_len = input_ids.shape if input_ids is not None else inputs_embeds.shape[:2]
        device = input_ids.device if input_ids is not None else inputs_embeds.device
        if config.add_cross_attention and encoder_hidden_states is None:
            raise ValueError("This decoder attends to an encoder's output (config.add_cross_attention): pass "
                             "encoder_hidden_states")
        use_cache = config.use_cache if use_cache is None else use_cache
        if use_cache and self.training and self.is_activation_checkpointing:
            # The recompute in backward would extend the cache a second time (transformers' decoders do the same).
            logger.warning_once("use_cache=True does not go with activation checkpointing in training: no cache")
            use_cache = False
        if use_cache and cache is None:  # (an encoder-decoder's keeps the source's keys and values beside)
            cache = (EncoderDecoderCache(DynamicCache(config=config), DynamicCache(config=config))
                     if config.add_cross_attention else DynamicCache(config=config))
        past = cache.get_seq_length() if cache is not None else 0
        if past and self.embeddings.ngram_embeddings is not None and ngram_context_ids is None:
            raise ValueError("This decoder embeds the n-grams ending at each token (config.ngram_vocab_size > 0), "
                             "which need the tokens before it, and a cache keeps only their keys and values: pass "
                             "them as ngram_context_ids (FeedbackForCausalLM.generate() does), or decode without a "
                             "cache (use_cache=False)")
        key_length = past + seq_len
        if attention_mask is not None and attention_mask.shape != (batch_size, key_length):
            raise ValueError(f"A decoder's attention_mask covers the {past} cached and {seq_len} new tokens: shape "
                             f"({batch_size}, {key_length}), got {tuple(attention_mask.shape)}")
        if position_ids is None and attention_mask is not None:
            # Count from each row's first real token, so a left-padded prompt gets the positions it has alone.
            position_ids = (attention_mask.long().cumsum(-1) - 1).clamp(min=0)[:, past:]  # (B, T)
        elif position_ids is None:
            position_ids = torch.arange(past, key_length, device=device)[None]
        position_ids = position_ids.expand(batch_size, seq_len)
        if config.position_embedding_type == "absolute" and key_length > config.max_position_embeddings:
            raise ValueError(f"Sequence length {key_length} (cached and new tokens) exceeds "
                             f"max_position_embeddings={config.max_position_embeddings}")
        if token_type_ids is None:
            token_type_ids = torch.zeros((batch_size, seq_len), dtype=torch.long, device=device)

        # The keys attention will see: the cached and new ones, or a static cache's whole preallocated length (its
        # slots past the new tokens, not yet written, are later than every query and so masked as the future).
        mask_length = key_length
        if cache is not None:
            mask_length = max(key_length, _self_attention_cache(cache).get_mask_sizes(seq_len, 0)[0])
        mask = None
        if attention_mask is not None or seq_len > 1 or mask_length > key_length:
            query_at = torch.arange(past, key_length, device=device)[:, None]  # (T, 1) each new token's place
            keys = torch.arange(mask_length, device=device)[None]  # (1, K)
            mask = keys <= query_at  # (T, K): causal
            if attention_mask is not None:  # (B, T, K): and no padding
                mask = mask & F.pad(attention_mask.bool(), (0, mask_length - key_length))[:, None, :]
            mask = (mask | (keys == query_at)).view(-1, 1, seq_len, mask_length)  # a token always sees itself
            # (so a padded query has a key: no row of -inf, no NaN; its output is never read)

        hidden_states = self.embeddings(input_ids, token_type_ids, position_ids, inputs_embeds,
                                        ngram_context_ids if past else None)  # (B, T, H)
        rotary = None
        if config.position_embedding_type == "rotary":
            cos, sin = self.rotary_emb(hidden_states, position_ids)  # (B, T, hs) each
            rotary = cos[:, None], sin[:, None]
        encoder_mask = None if encoder_attention_mask is None else encoder_attention_mask.bool()[:, None, None, :]
        plan = _Causal(mask, cache, encoder_mask)
        hidden_states, all_hidden_states, all_attentions, all_cross_attentions = self.encoder(
            hidden_states, rotary, plan, output_attentions, output_hidden_states, encoder_hidden_states)
        output = BaseModelOutputWithPastAndCrossAttentions(
            last_hidden_state=hidden_states,
            cache=cache if use_cache else None,
            hidden_states=tuple(all_hidden_states) if output_hidden_states else None,
            attentions=tuple(all_attentions) if output_attentions else None,
            cross_attentions=tuple(all_cross_attentions) if all_cross_attentions is not None else None,
        )
        return output if return_dict else output.to_tuple()

    @staticmethod
    def _packing(cu_seq_lens_q, cu_seq_lens_k, max_length_q, max_length_k, attention_mask, batch_size):
        """The packed row's boundaries and longest length, checked against what else came with them (shapes only:
        nothing is read from the device here)."""
        if cu_seq_lens_q is None and cu_seq_lens_k is None:
            if max_length_q is not None or max_length_k is not None:
                raise ValueError("max_length_q / max_length_k come with cu_seq_lens_q: pass the packed row's "
                                 "boundaries too")
            return None, None
        cu_seq_lens = cu_seq_lens_q if cu_seq_lens_q is not None else cu_seq_lens_k
        other = cu_seq_lens_k if cu_seq_lens_q is not None else None
        if other is not None and other is not cu_seq_lens and other.shape != cu_seq_lens.shape:
            raise ValueError("cu_seq_lens_k must equal cu_seq_lens_q: the encoder's keys are its queries")
        if attention_mask is not None or batch_size != 1:
            raise ValueError("A packed batch (cu_seq_lens_q) is one row of input_ids of shape (1, N) without an "
                             f"attention_mask; got {batch_size} rows" + (" and a mask" if attention_mask is not None
                                                                         else ""))
        if cu_seq_lens.dim() != 1 or cu_seq_lens.shape[0] < 2:
            raise ValueError(f"cu_seq_lens_q must be a 1-D tensor of S + 1 boundaries, got shape "
                             f"{tuple(cu_seq_lens.shape)}")
        max_length = max_length_q if max_length_q is not None else max_length_k
        if max_length is None:  # read it: one synchronisation more (DataCollatorWithFlattening always sends it)
            max_length = int((cu_seq_lens[1:] - cu_seq_lens[:-1]).max())
        return cu_seq_lens, max_length


# ----------------------------------------------------------------------------------------------------------------
# Task heads
# ----------------------------------------------------------------------------------------------------------------
def _classifier_dropout(config):
    return nn.Dropout(config.classifier_dropout if config.classifier_dropout is not None else config.hidden_dropout_prob)


class FeedbackForSequenceClassification(FeedbackPreTrainedModel):
    """Pooled sentence vector -> dropout -> linear, with the loss chosen by `problem_type` as in BERT. A packed row
    (padding-free batch) gives one prediction per sequence in it: logits (S, num_labels), labels (S,)."""

    accepts_loss_kwargs = False  # **kwargs carries packing only: Trainer must average the loss over accumulation

    def __init__(self, config):
        super().__init__(config)
        self.num_labels = config.num_labels
        self.feedback = FeedbackModel(config)
        self.dropout = _classifier_dropout(config)
        self.classifier = nn.Linear(config.hidden_size, config.num_labels)
        self.post_init()

    def forward(
        self,
        input_ids=None,
        attention_mask=None,
        token_type_ids=None,
        position_ids=None,
        inputs_embeds=None,
        labels=None,
        output_attentions=None,
        output_hidden_states=None,
        return_dict=None,
        **kwargs,
    ):
        packing = _packing_arguments(self, kwargs)
        return_dict = self.config.return_dict if return_dict is None else return_dict
        outputs = self.feedback(
            input_ids, attention_mask, token_type_ids, position_ids, inputs_embeds,
            output_attentions=output_attentions, output_hidden_states=output_hidden_states, return_dict=True,
            **packing,
        )
        logits = self.classifier(self.dropout(outputs.pooler_output))  # (B, num_labels)

        loss = None
        if labels is not None:
            if self.config.problem_type is None:
                if self.num_labels == 1:
                    self.config.problem_type = "regression"
                elif labels.dtype in (torch.long, torch.int):
                    self.config.problem_type = "single_label_classification"
                else:
                    self.config.problem_type = "multi_label_classification"

            if self.config.problem_type == "regression":
                loss = MSELoss()(logits.squeeze(), labels.squeeze().to(logits.dtype)) if self.num_labels == 1 \
                    else MSELoss()(logits, labels.to(logits.dtype))
            elif self.config.problem_type == "single_label_classification":
                self._check_labels(labels, self.num_labels)
                loss = CrossEntropyLoss()(logits.view(-1, self.num_labels), labels.view(-1))
            else:
                if labels.shape != logits.shape:
                    raise ValueError(
                        f"multi-label classification needs labels of shape (batch, num_labels={self.num_labels}), "
                        f"got {tuple(labels.shape)}"
                    )
                loss = BCEWithLogitsLoss()(logits, labels.to(logits.dtype))

        output = SequenceClassifierOutput(
            loss=loss, logits=logits, hidden_states=outputs.hidden_states, attentions=outputs.attentions
        )
        return output if return_dict else output.to_tuple()


class FeedbackLMHead(nn.Module):
    """dense -> activation -> LayerNorm -> projection onto the vocabulary (weight tied to the input embeddings)."""

    def __init__(self, config):
        super().__init__()
        self.dense = nn.Linear(config.hidden_size, config.hidden_size)
        self.norm = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps)
        self.decoder = nn.Linear(config.hidden_size, config.vocab_size)

    def forward(self, hidden_states):
        return self.decoder(self.norm(F.gelu(self.dense(hidden_states))))  # (..., V)


class _FeedbackWithLMHead(FeedbackPreTrainedModel):
    """The base model and a head onto the vocabulary, tied to the input embeddings: the language models' shape."""

    _tied_weights_keys = {"lm_head.decoder.weight": "feedback.embeddings.word_embeddings.weight"}

    def __init__(self, config):
        super().__init__(config)
        self.feedback = FeedbackModel(config, add_pooling_layer=False)
        self.lm_head = FeedbackLMHead(config)
        self.post_init()

    def get_output_embeddings(self):
        return self.lm_head.decoder

    def set_output_embeddings(self, new_embeddings):
        self.lm_head.decoder = new_embeddings


class FeedbackForMaskedLM(_FeedbackWithLMHead):
    """Masked-language modelling, used to pretrain the encoder from scratch."""

    def forward(
        self,
        input_ids=None,
        attention_mask=None,
        token_type_ids=None,
        position_ids=None,
        inputs_embeds=None,
        labels=None,
        output_attentions=None,
        output_hidden_states=None,
        return_dict=None,
        **loss_kwargs,
    ):
        # loss_kwargs: packing boundaries (see FeedbackModel.forward), and `num_items_in_batch`, the masked-token
        # count of the whole accumulated batch (over every gradient-accumulation step and process), which Trainer
        # passes to models that take **kwargs. Normalising by it instead of by each micro-batch's own count makes
        # accumulation and DDP give the update of one big batch.
        packing = _packing_arguments(self, loss_kwargs, loss_arguments=("num_items_in_batch",))
        return_dict = self.config.return_dict if return_dict is None else return_dict
        outputs = self.feedback(
            input_ids, attention_mask, token_type_ids, position_ids, inputs_embeds,
            output_attentions=output_attentions, output_hidden_states=output_hidden_states, return_dict=True,
            **packing,
        )
        hidden_states = outputs.last_hidden_state  # (B, T, H)
        if labels is not None:
            self._check_labels(labels, self.config.vocab_size)
            if self.config.sparse_prediction and self.training:
                # Only labelled tokens enter the loss, so only they need the (H x V) projection. A training-time
                # saving only: evaluation keeps every position's logits, as any masked LM returns them.
                labelled = labels != -100
                hidden_states, labels = hidden_states[labelled], labels[labelled]  # (num_masked, H), (num_masked,)
        logits = self.lm_head(hidden_states)  # (B, T, V), or (num_masked, V) when sparse in training
        loss = None
        if labels is not None:
            loss = _token_cross_entropy(logits, labels, loss_kwargs.get("num_items_in_batch"))
        output = MaskedLMOutput(
            loss=loss, logits=logits, hidden_states=outputs.hidden_states, attentions=outputs.attentions
        )
        return output if return_dict else output.to_tuple()


@dataclass
class FeedbackForPreTrainingOutput(ModelOutput):
    """Output of [`FeedbackForPreTraining`].

    loss: generator MLM loss + `discriminator_loss_weight` x discriminator loss (with `labels`).
    logits: (B, T) the discriminator's score that each token was replaced (before the sigmoid).
    generator_loss, discriminator_loss: the two parts of the loss (with `labels`).
    replaced: (B, T) bool, which tokens the generator's samples replaced (with `labels`).
    """

    loss: torch.Tensor | None = None
    logits: torch.Tensor | None = None
    generator_loss: torch.Tensor | None = None
    discriminator_loss: torch.Tensor | None = None
    replaced: torch.Tensor | None = None
    hidden_states: tuple[torch.Tensor, ...] | None = None
    attentions: tuple[torch.Tensor, ...] | None = None


def generator_config(config):
    """The ELECTRA generator's configuration: the discriminator's, `generator_size` times as wide (hidden size, heads,
    feed-forward), as deep, predicting only the masked tokens."""
    heads = max(1, round(config.num_attention_heads * config.generator_size))
    head_size = max(2, round(config.hidden_size * config.generator_size / heads) // 2 * 2)  # even, for rotary
    small = FeedbackConfig(**{
        **config.to_diff_dict(), "hidden_size": heads * head_size, "num_attention_heads": heads,
        "intermediate_size": max(1, round(config.intermediate_size * config.generator_size)),
        "ngram_vocab_size": 0, "sparse_prediction": True, "auto_map": None, "architectures": None,
    })
    small._attn_implementation = config._attn_implementation  # attends as the discriminator was asked to
    return small


class FeedbackElectraGenerator(FeedbackModel):
    """The generator inside [`FeedbackForPreTraining`]: a [`FeedbackModel`] (its weights are one's), named apart so
    that the discriminator, `feedback`, is the head's one base model (the part a base checkpoint loads into and
    fine-tuning starts from)."""


class FeedbackForPreTraining(FeedbackPreTrainedModel):
    """Replaced-token detection (ELECTRA, Clark et al. 2020): a small masked-LM generator fills the masked positions
    with its own samples, and the encoder (the discriminator, `feedback`: the model fine-tuning starts from) learns
    to tell, at every token, whether it is the original. Every token teaches the discriminator, where masked-LM
    learns from the masked 15-30% only: the most compute-efficient pretraining objective at small budgets.

    Takes a masked-LM batch (`DataCollatorForLanguageModeling`: `input_ids` with masked positions, `labels` the
    original ids there, -100 elsewhere) and trains both networks with one loss: generator MLM loss +
    `config.discriminator_loss_weight` x the discriminator's binary cross-entropy over the real tokens. Samples are
    drawn without gradient (the generator learns from its MLM loss only). Without `labels`, only the discriminator
    runs on `input_ids` as given, as transformers' `ElectraForPreTraining` does.
    """

    _tied_weights_keys = {"generator_lm_head.decoder.weight": "generator.embeddings.word_embeddings.weight"}
    # Each part of the loss is a mean over its own tokens, so Trainer's `num_items_in_batch` is not used, and Trainer
    # must average the loss over gradient accumulation itself.
    accepts_loss_kwargs = False

    def __init__(self, config):
        super().__init__(config)
        self.feedback = FeedbackModel(config, add_pooling_layer=False)
        self.discriminator_dense = nn.Linear(config.hidden_size, config.hidden_size)
        self.discriminator_prediction = nn.Linear(config.hidden_size, 1)
        small = generator_config(config)
        self.generator = FeedbackElectraGenerator(small, add_pooling_layer=False)
        self.generator_lm_head = FeedbackLMHead(small)
        self.post_init()

    def get_output_embeddings(self):
        return self.generator_lm_head.decoder

    def set_output_embeddings(self, new_embeddings):
        self.generator_lm_head.decoder = new_embeddings

    def resize_token_embeddings(self, *args, **kwargs):
        # Both networks read one vocabulary: the generator's table (its LM head is tied to it) follows the
        # discriminator's, which Trainer and transformers resize through get_input_embeddings.
        self.generator.resize_token_embeddings(*args, **kwargs)
        return super().resize_token_embeddings(*args, **kwargs)

    def forward(
        self,
        input_ids=None,
        attention_mask=None,
        token_type_ids=None,
        position_ids=None,
        labels=None,
        output_attentions=None,
        output_hidden_states=None,
        return_dict=None,
        **kwargs,
    ):
        packing = _packing_arguments(self, kwargs)
        return_dict = self.config.return_dict if return_dict is None else return_dict
        if input_ids is None:
            raise ValueError("FeedbackForPreTraining needs input_ids (the generator samples token ids)")
        generator_loss = discriminator_labels = None
        if labels is not None:
            self._check_labels(labels, self.config.vocab_size)
            masked = labels != -100  # (B, T)
            hidden = self.generator(input_ids, attention_mask, token_type_ids, position_ids,
                                    **packing).last_hidden_state
            generator_logits = self.generator_lm_head(hidden[masked])  # (num_masked, V)
            generator_loss = CrossEntropyLoss()(generator_logits.float(), labels[masked])
            with torch.no_grad():  # Gumbel-max: one sample of the generator's distribution at each masked token
                # In evaluation the noise comes from a fixed seed: the same batch gets the same samples, so a
                # checkpoint's evaluation loss is reproducible and checkpoints compare on equal terms.
                seeded = None if self.training else torch.Generator(generator_logits.device).manual_seed(0)
                uniform = torch.rand(generator_logits.shape, generator=seeded, device=generator_logits.device)
                uniform = uniform.clamp_(1e-9, 1 - 1e-9)
                sampled = (generator_logits.float() - torch.log(-torch.log(uniform))).argmax(-1)
            input_ids = input_ids.masked_scatter(masked, sampled)  # (B, T): the corrupted text
            original = torch.where(masked, labels, input_ids)
            discriminator_labels = input_ids != original  # a sample equal to the original counts as original

        outputs = self.feedback(input_ids, attention_mask, token_type_ids, position_ids,
                                output_attentions=output_attentions, output_hidden_states=output_hidden_states,
                                return_dict=True, **packing)
        logits = self.discriminator_prediction(F.gelu(self.discriminator_dense(outputs.last_hidden_state)))
        logits = logits.squeeze(-1)  # (B, T)
        loss = discriminator_loss = None
        if labels is not None:
            real = attention_mask.bool() if attention_mask is not None else torch.ones_like(masked)
            discriminator_loss = BCEWithLogitsLoss()(logits[real].float(), discriminator_labels[real].float())
            loss = generator_loss + self.config.discriminator_loss_weight * discriminator_loss
        output = FeedbackForPreTrainingOutput(
            loss=loss, logits=logits, generator_loss=generator_loss, discriminator_loss=discriminator_loss,
            replaced=discriminator_labels, hidden_states=outputs.hidden_states, attentions=outputs.attentions,
        )
        return output if return_dict else output.to_tuple()


class FeedbackForCausalLM(_FeedbackWithLMHead, GenerationMixin):
    """A left-to-right language model (GPT-style): the encoder's blocks as a decoder (`config.is_decoder`: each token
    attends to those before it, with a cache of their keys and values), and the masked LM's head, tied to the input
    embeddings, predicting the next token. `generate()`, the `text-generation` pipeline and Trainer work as for any
    causal LM of transformers; the loss shifts `labels` by one inside."""

    def __init__(self, config):
        if not config.is_decoder:
            raise ValueError("FeedbackForCausalLM needs a decoder configuration: FeedbackConfig(is_decoder=True, ...) "
                             "(an encoder's tokens see the whole text, so it cannot learn to predict the next one)")
        super().__init__(config)

    _passes_ngram_context = True

    def prepare_inputs_for_generation(self, input_ids, *args, **kwargs):
        """generate()'s inputs for one step, and, for n-gram embeddings, the tokens before the step's new ones: the
        cache keeps only keys and values, and a new token's bigram and trigram end in the tokens before it."""
        inputs = super().prepare_inputs_for_generation(input_ids, *args, **kwargs)
        new = inputs.get("input_ids")
        if self.config.ngram_vocab_size > 0 and new is not None:
            before = input_ids.shape[1] - new.shape[1]
            inputs["ngram_context_ids"] = input_ids[:, max(0, before - max(self.config.ngram_sizes) + 1):before]
        return inputs

    @deprecate_kwarg("past_key_values", "5.40.0", new_name="cache")
    def forward(
        self,
        input_ids=None,
        attention_mask=None,
        token_type_ids=None,
        position_ids=None,
        inputs_embeds=None,
        labels=None,
        cache=None,
        use_cache=None,
        output_attentions=None,
        output_hidden_states=None,
        return_dict=None,
        logits_to_keep=0,
        ngram_context_ids=None,
        **loss_kwargs,
    ):
        r"""
        labels (B, T): the ids to predict, the inputs themselves (shifted inside: position t predicts t + 1); -100
            is ignored. `shift_labels` (B, T) in `loss_kwargs`: targets already aligned with the positions (what
            sequence- and context-parallel training hands over, shifted before the sequence was cut); the loss then
            reads them instead of shifting `labels`. logits_to_keep: compute logits for the last this many
            positions only (0: all), as `generate()` asks for 1. ngram_context_ids (B, C): with n-gram embeddings
            and a filled cache, the tokens just before `input_ids` (generate() passes them; see `FeedbackModel`).
        """
        packing = _packing_arguments(self, loss_kwargs, loss_arguments=("num_items_in_batch", "shift_labels"))
        return_dict = self.config.return_dict if return_dict is None else return_dict
        outputs = self.feedback(
            input_ids, attention_mask, token_type_ids, position_ids, inputs_embeds,
            output_attentions=output_attentions, output_hidden_states=output_hidden_states, return_dict=True,
            cache=cache, use_cache=False if labels is not None else use_cache,  # training keeps no cache
            ngram_context_ids=ngram_context_ids, **packing,
        )
        hidden_states = outputs.last_hidden_state  # (B, T, H)
        if logits_to_keep:
            hidden_states = hidden_states[:, -logits_to_keep:]
        logits = self.lm_head(hidden_states)  # (B, T, V)
        loss = None
        if labels is not None:
            self._check_labels(loss_kwargs.get("shift_labels", labels), self.config.vocab_size)
            # transformers' causal-LM loss: shifts the labels (unless given shift_labels), ignores -100, and divides by Trainer's
            # num_items_in_batch (the token count of the whole accumulated batch) when given.
            loss = self.loss_function(logits=logits.float(), labels=labels, vocab_size=self.config.vocab_size,
                                      **loss_kwargs)
        output = CausalLMOutputWithPast(loss=loss, logits=logits, cache=outputs.cache,
                                        hidden_states=outputs.hidden_states, attentions=outputs.attentions)
        return output if return_dict else output.to_tuple()


# ----------------------------------------------------------------------------------------------------------------
# Encoder-decoder: the encoder, and a decoder that also attends to its output
# ----------------------------------------------------------------------------------------------------------------
def _half_config(config, is_decoder):
    """The FeedbackConfig of one half of an encoder-decoder: every field of `config`, as an encoder or as a decoder
    with cross-attention."""
    half = FeedbackConfig(**{**config.to_diff_dict(), "is_decoder": is_decoder, "add_cross_attention": is_decoder,
                             "is_encoder_decoder": False, "auto_map": None, "architectures": None})
    half._attn_implementation = config._attn_implementation
    return half


def shift_tokens_right(labels, pad_token_id, decoder_start_token_id):
    """The decoder's inputs for `labels` (B, T): the start id, then the labels but the last, -100 read as padding.
    Decoding position t sees the labels before t and predicts label t (teacher forcing)."""
    if decoder_start_token_id is None:
        raise ValueError("config.decoder_start_token_id is needed to train or generate: the id each decoded "
                         "sequence starts from (the recipes use the tokenizer's [SEP])")
    shifted = labels.new_full(labels.shape, decoder_start_token_id)
    shifted[:, 1:] = labels[:, :-1]
    return shifted.masked_fill(shifted == -100, pad_token_id)


class _FeedbackSeq2SeqPreTrainedModel(FeedbackPreTrainedModel):
    """What the encoder-decoder's classes share: each half keeps a copy of the configuration (`_half_config`), so a
    change of vocabulary reaches both copies (their input checks read it)."""

    def resize_token_embeddings(self, *args, **kwargs):
        embeddings = super().resize_token_embeddings(*args, **kwargs)
        for module in self.modules():
            if isinstance(module, FeedbackModel):
                module.config.vocab_size = self.config.vocab_size
        return embeddings


class FeedbackSeq2SeqModel(_FeedbackSeq2SeqPreTrainedModel):
    """The encoder and the decoder (`config.is_decoder` and `add_cross_attention` set on its half), sharing the word
    embeddings; returns the decoder's last hidden states beside the encoder's (`Seq2SeqModelOutput`)."""

    config_class = FeedbackSeq2SeqConfig
    base_model_prefix = "model"
    _tied_weights_keys = {"decoder.embeddings.word_embeddings.weight": "encoder.embeddings.word_embeddings.weight"}

    def __init__(self, config):
        super().__init__(config)
        self.encoder = FeedbackModel(_half_config(config, is_decoder=False), add_pooling_layer=False)
        self.decoder = FeedbackModel(_half_config(config, is_decoder=True), add_pooling_layer=False)
        self.post_init()

    def get_input_embeddings(self):
        return self.encoder.embeddings.word_embeddings

    def set_input_embeddings(self, value):
        self.encoder.embeddings.word_embeddings = self.decoder.embeddings.word_embeddings = value

    def get_encoder(self):
        return self.encoder

    def get_decoder(self):
        return self.decoder

    @deprecate_kwarg("past_key_values", "5.40.0", new_name="cache")
    def forward(
        self,
        input_ids=None,
        attention_mask=None,
        decoder_input_ids=None,
        decoder_attention_mask=None,
        encoder_outputs=None,
        cache=None,
        use_cache=None,
        token_type_ids=None,
        decoder_position_ids=None,
        output_attentions=None,
        output_hidden_states=None,
        return_dict=None,
    ):
        return_dict = self.config.return_dict if return_dict is None else return_dict
        if encoder_outputs is None:  # generate() runs the encoder once and passes its outputs at every step
            encoder_outputs = self.encoder(input_ids, attention_mask, token_type_ids,
                                           output_attentions=output_attentions,
                                           output_hidden_states=output_hidden_states, return_dict=True)
        elif not isinstance(encoder_outputs, ModelOutput):
            encoder_outputs = BaseModelOutputWithPooling(*encoder_outputs)
        if decoder_input_ids is None:
            raise ValueError("Pass decoder_input_ids (or labels, to FeedbackForConditionalGeneration)")
        decoder_outputs = self.decoder(
            decoder_input_ids, decoder_attention_mask, position_ids=decoder_position_ids, cache=cache,
            use_cache=use_cache, encoder_hidden_states=encoder_outputs.last_hidden_state,
            encoder_attention_mask=attention_mask, output_attentions=output_attentions,
            output_hidden_states=output_hidden_states, return_dict=True)
        output = Seq2SeqModelOutput(
            last_hidden_state=decoder_outputs.last_hidden_state, cache=decoder_outputs.cache,
            decoder_hidden_states=decoder_outputs.hidden_states, decoder_attentions=decoder_outputs.attentions,
            cross_attentions=decoder_outputs.cross_attentions, encoder_last_hidden_state=encoder_outputs.last_hidden_state,
            encoder_hidden_states=encoder_outputs.hidden_states, encoder_attentions=encoder_outputs.attentions)
        return output if return_dict else output.to_tuple()


class FeedbackForConditionalGeneration(_FeedbackSeq2SeqPreTrainedModel, GenerationMixin):
    """Sequence to sequence (translation, transliteration, summarisation): the encoder reads the source, the decoder
    writes the target token by token, attending to what it wrote (causally, with a cache) and to the source; the
    LM head, tied to the shared embeddings, gives each next token's distribution. `labels` (B, T) are the target
    ids, -100 ignored; they are shifted right into `decoder_input_ids` (teacher forcing). `generate()`,
    `Seq2SeqTrainer` and the `text2text-generation` pipeline work as for BART."""

    config_class = FeedbackSeq2SeqConfig
    base_model_prefix = "model"
    _tied_weights_keys = {
        "lm_head.decoder.weight": "model.encoder.embeddings.word_embeddings.weight",
        "model.decoder.embeddings.word_embeddings.weight": "model.encoder.embeddings.word_embeddings.weight",
    }
    def __init__(self, config):
        super().__init__(config)
        self.model = FeedbackSeq2SeqModel(config)
        self.lm_head = FeedbackLMHead(config)
        self.post_init()
        # Copies of the shared table are never saved; Trainer reloading the best checkpoint then ties them again
        # instead of warning that they are missing. Only copies: untied (config.tie_word_embeddings=False), the LM
        # head and the decoder's embeddings are weights of their own (all_tied_weights_keys is then empty).
        self._keys_to_ignore_on_save = set(self.all_tied_weights_keys)

    def get_encoder(self):
        return self.model.encoder

    def get_decoder(self):
        return self.model.decoder

    def get_output_embeddings(self):
        return self.lm_head.decoder

    def set_output_embeddings(self, new_embeddings):
        self.lm_head.decoder = new_embeddings

    def prepare_decoder_input_ids_from_labels(self, labels):
        # DataCollatorForSeq2Seq(model=...) asks for them, so that batches carry decoder_input_ids
        return shift_tokens_right(labels, self.config.pad_token_id, self.config.decoder_start_token_id)

    @deprecate_kwarg("past_key_values", "5.40.0", new_name="cache")
    def forward(
        self,
        input_ids=None,
        attention_mask=None,
        decoder_input_ids=None,
        decoder_attention_mask=None,
        encoder_outputs=None,
        cache=None,
        use_cache=None,
        labels=None,
        token_type_ids=None,
        decoder_position_ids=None,
        output_attentions=None,
        output_hidden_states=None,
        return_dict=None,
        **loss_kwargs,
    ):
        if _packing_arguments(self, loss_kwargs, loss_arguments=("num_items_in_batch",)):
            raise ValueError("An encoder-decoder takes padded batches, not packed rows")
        return_dict = self.config.return_dict if return_dict is None else return_dict
        if labels is not None:
            self._check_labels(labels, self.config.vocab_size)
            use_cache = False  # training keeps no cache
            if decoder_input_ids is None:
                decoder_input_ids = self.prepare_decoder_input_ids_from_labels(labels)
        outputs = self.model(
            input_ids, attention_mask, decoder_input_ids, decoder_attention_mask, encoder_outputs, cache, use_cache,
            token_type_ids, decoder_position_ids, output_attentions, output_hidden_states, return_dict=True)
        logits = self.lm_head(outputs.last_hidden_state)  # (B, T, V)
        loss = None
        if labels is not None:
            loss = _token_cross_entropy(logits, labels, loss_kwargs.get("num_items_in_batch"))
        output = Seq2SeqLMOutput(
            loss=loss, logits=logits, cache=outputs.cache, decoder_hidden_states=outputs.decoder_hidden_states,
            decoder_attentions=outputs.decoder_attentions, cross_attentions=outputs.cross_attentions,
            encoder_last_hidden_state=outputs.encoder_last_hidden_state,
            encoder_hidden_states=outputs.encoder_hidden_states, encoder_attentions=outputs.encoder_attentions)
        return output if return_dict else output.to_tuple()


class FeedbackForTokenClassification(FeedbackPreTrainedModel):
    """A label per token (e.g. word segmentation or named entities); -100 labels are ignored."""

    # Trainer passes num_items_in_batch (the labelled tokens of the whole accumulated batch): micro-batches with
    # different numbers of labelled tokens then make the update of one large batch.

    def __init__(self, config):
        super().__init__(config)
        self.num_labels = config.num_labels
        self.feedback = FeedbackModel(config, add_pooling_layer=False)
        self.dropout = _classifier_dropout(config)
        self.classifier = nn.Linear(config.hidden_size, config.num_labels)
        self.post_init()

    def forward(
        self,
        input_ids=None,
        attention_mask=None,
        token_type_ids=None,
        position_ids=None,
        inputs_embeds=None,
        labels=None,
        output_attentions=None,
        output_hidden_states=None,
        return_dict=None,
        **kwargs,
    ):
        packing = _packing_arguments(self, kwargs, loss_arguments=("num_items_in_batch",))
        return_dict = self.config.return_dict if return_dict is None else return_dict
        outputs = self.feedback(
            input_ids, attention_mask, token_type_ids, position_ids, inputs_embeds,
            output_attentions=output_attentions, output_hidden_states=output_hidden_states, return_dict=True,
            **packing,
        )
        logits = self.classifier(self.dropout(outputs.last_hidden_state))  # (B, T, num_labels)
        loss = None
        if labels is not None:
            self._check_labels(labels, self.num_labels)
            loss = _token_cross_entropy(logits, labels, kwargs.get("num_items_in_batch"))
        output = TokenClassifierOutput(
            loss=loss, logits=logits, hidden_states=outputs.hidden_states, attentions=outputs.attentions
        )
        return output if return_dict else output.to_tuple()


# save_pretrained copies this file and the configuration next to the weights and records these in auto_map.
FeedbackConfig.register_for_auto_class()
FeedbackModel.register_for_auto_class("AutoModel")
FeedbackForSequenceClassification.register_for_auto_class("AutoModelForSequenceClassification")
FeedbackForMaskedLM.register_for_auto_class("AutoModelForMaskedLM")
FeedbackForTokenClassification.register_for_auto_class("AutoModelForTokenClassification")
FeedbackForPreTraining.register_for_auto_class("AutoModelForPreTraining")
FeedbackForCausalLM.register_for_auto_class("AutoModelForCausalLM")
FeedbackSeq2SeqConfig.register_for_auto_class()
FeedbackSeq2SeqModel.register_for_auto_class("AutoModel")
FeedbackForConditionalGeneration.register_for_auto_class("AutoModelForSeq2SeqLM")

__all__ = [
    "FeedbackModel",
    "FeedbackPreTrainedModel",
    "FeedbackForSequenceClassification",
    "FeedbackForMaskedLM",
    "FeedbackForTokenClassification",
    "FeedbackForPreTraining",
    "FeedbackForCausalLM",
    "FeedbackSeq2SeqModel",
    "FeedbackForConditionalGeneration",
]

"""Export an hf_feedback checkpoint as a plain BERT one: the inverse of `hf_feedback.integrations.convert`.

    python -m hf_feedback export bert FOLDER OUT

A model that is BERT's special case of our encoder (post-norm, learned absolute positions, exact GELU; a
classifier or bare encoder that pools the first token) computes BERT's function, so its weights map one to one
onto `transformers`' BertModel / BertFor* classes, read by every runtime that knows BERT and by `AutoModel` without
`trust_remote_code`. The only reshaping is splitting our fused `qkv_proj` into BERT's query, key and value; the key
map is hf_feedback.integrations.convert's, read backwards. A model without segments (type_vocab_size=0) gets BERT's one
segment, embedded as zeros. Any other setting (a decoder, an untied masked-LM output projection, ...) changes the
function, so the export refuses it and names the fields. The tokenizer is copied alongside (AutoTokenizer reads its
tokenizer.json whatever its kind). One difference remains by design: BERT pools position 0 where our `cls` pooling takes
the first real token, the same token on right-padded batches (the tokenizers' default) and not on left-padded ones.
"""

from pathlib import Path

import transformers
from transformers import AutoConfig, BertConfig

from ..failures import BadInput, load_pretrained
from ..model import modeling_feedback
from .convert import SHARED_CONFIG_FIELDS, check_folders, not_our_encoder, save_with_tokenizer, tensor_pairs

# Our saved architecture -> BERT's; a head not listed here has no BERT counterpart.
HEADS = {
    "FeedbackModel": "BertModel",
    "FeedbackForMaskedLM": "BertForMaskedLM",
    "FeedbackForSequenceClassification": "BertForSequenceClassification",
    "FeedbackForTokenClassification": "BertForTokenClassification",
}
# What a FeedbackConfig must say to be BERT (a bidirectional encoder). Pooling matters only where the pooled vector
# is an output, and the tying of the output projection only where there is one (BERT's masked LM ties it).
BERT_FIELDS = {"norm_position": "post", "position_embedding_type": "absolute", "hidden_act": "gelu",
               "ngram_vocab_size": 0, "char_vocab_size": 0, "is_decoder": False}
HEAD_FIELDS = {"FeedbackModel": {"pooling": "cls"}, "FeedbackForSequenceClassification": {"pooling": "cls"},
               "FeedbackForMaskedLM": {"tie_word_embeddings": True}}


class NotBert(BadInput, ValueError):
    """The checkpoint is not BERT's special case (or has no BERT head); the message names what differs."""


def bert_config_from_feedback(config, architecture: str) -> BertConfig:
    """The BertConfig that computes the same function as `config` with head `architecture`, or NotBert naming each
    field that differs from BERT's fixed choices."""
    required = dict(BERT_FIELDS, **HEAD_FIELDS.get(architecture, {}))
    different = [f"{name}={getattr(config, name)!r} (BERT: {value!r})" for name, value in required.items()
                 if getattr(config, name) != value]
    if different:
        raise NotBert(f"this {architecture} is not BERT's special case: {', '.join(different)}; only a model with "
                      "BERT's choices exports to BERT (the others change what it computes)")
    return BertConfig(
        **{name: getattr(config, name) for name in SHARED_CONFIG_FIELDS if name != "type_vocab_size"},
        type_vocab_size=max(config.type_vocab_size, 1),  # no segments: BERT's one segment, embedded as zeros
        hidden_act="gelu",
        initializer_range=config.initializer_range,
        pad_token_id=config.pad_token_id,
        classifier_dropout=config.classifier_dropout,
        id2label=config.id2label,
        label2id=config.label2id,
        problem_type=config.problem_type,
        architectures=[HEADS[architecture]],
    )


def export_state_dict(state: dict, num_layers: int, prefix: str) -> dict:
    """Map our tensor names onto BERT's. `prefix` is our encoder's ("" for FeedbackModel, "feedback." else), and
    BERT's ("" for BertModel, "bert." else) follows from it."""
    bert = {}
    for theirs, mine in tensor_pairs(num_layers, prefix, bert_prefix="bert." if prefix else ""):
        if isinstance(theirs, tuple):  # our fused projection: rows of Q, then K, then V
            for name, tensor in zip(theirs, state[mine].chunk(3)):
                bert[name] = tensor.clone()
        elif mine in state:
            bert[theirs] = state[mine]
    return bert


def export_bert(source: str | Path, destination: str | Path, overwrite: bool = False):
    """Export the hf_feedback checkpoint folder `source` as a BERT checkpoint in `destination`; returns the model."""
    source, destination = check_folders(source, destination, overwrite)
    config = load_pretrained(AutoConfig.from_pretrained, source)
    if not_our_encoder(config, source):
        raise NotBert(not_our_encoder(config, source))
    architecture = (config.architectures or ["FeedbackModel"])[0]
    if architecture not in HEADS:
        raise NotBert(f"{source} holds a {architecture}, which has no BERT counterpart; exportable: {list(HEADS)}")
    bert_config = bert_config_from_feedback(config, architecture)

    ours = load_pretrained(getattr(modeling_feedback, architecture).from_pretrained, source)
    prefix = "" if architecture == "FeedbackModel" else "feedback."
    state = export_state_dict(ours.state_dict(), config.num_hidden_layers, prefix)
    bert = getattr(transformers, HEADS[architecture])(bert_config)
    if config.type_vocab_size == 0:  # our model adds no segment embedding: BERT adds a zero one
        segments = ("bert." if prefix else "") + "embeddings.token_type_embeddings.weight"
        state[segments] = bert.state_dict()[segments].new_zeros(1, config.hidden_size)
    unset = set(bert.state_dict()) - set(state) - set(bert._tied_weights_keys or {})
    if unset:  # every tensor of a head in HEADS has a counterpart: a gap here is a bug, not bad input
        raise RuntimeError(f"export_bert left BERT tensors unset: {sorted(unset)}")
    bert.load_state_dict(state, strict=False)
    bert.tie_weights()
    save_with_tokenizer(bert, source, destination)
    return bert


__all__ = ["NotBert", "bert_config_from_feedback", "export_bert", "export_state_dict"]

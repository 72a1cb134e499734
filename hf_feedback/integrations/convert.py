"""Import a pretrained encoder (BERT, RoBERTa or XLM-RoBERTa, bare or with a head) as an hf_feedback checkpoint.

    python -m hf_feedback.integrations.convert SRC DST

The three are the post-norm, learned-position, GELU special case of our encoder, so their weights map one to one
onto ours. One table per source family says what differs: the prefix of the encoder inside a head checkpoint, the
names of the heads' tensors, and where positions start (RoBERTa counts them from `padding_idx + 1`, so its table's
first `padding_idx + 1` rows are never read: they are dropped and our positions count from 0, which gives the same
vectors, left padding included). The only reshaping is concatenating the separate query / key / value projections
into our fused `qkv_proj`; the explicit key maps below are the whole conversion (in the spirit of nanoGPT's GPT-2
import). The heads that have a counterpart carry over (…ForMaskedLM, …ForSequenceClassification,
…ForTokenClassification); anything else becomes a FeedbackModel. RoBERTa's classification head (dense + tanh on <s>,
then out_proj) is our pooler with `cls` pooling and our classifier. The tokenizer is copied alongside.
"""

import argparse
import os
import sys
from dataclasses import dataclass
from pathlib import Path

import torch
import transformers
from transformers import AutoConfig, AutoTokenizer, BertConfig, RobertaConfig, XLMRobertaConfig

from ..failures import DEBUG_VARIABLE, BadInput, bad_input_exits, load_pretrained
from ..model.configuration_feedback import FeedbackConfig
from ..model.modeling_feedback import (
    FeedbackForMaskedLM,
    FeedbackForSequenceClassification,
    FeedbackForTokenClassification,
    FeedbackModel,
)

# Head (class-name suffix, the same in every family) -> ours.
HEADS = {
    "ForMaskedLM": FeedbackForMaskedLM,
    "ForSequenceClassification": FeedbackForSequenceClassification,
    "ForTokenClassification": FeedbackForTokenClassification,
}

# Source key (below the encoder prefix) -> ours, shared by the three families. {i} is the layer index.
EMBEDDING_KEYS = {
    "embeddings.word_embeddings.weight": "embeddings.word_embeddings.weight",
    "embeddings.position_embeddings.weight": "embeddings.position_embeddings.weight",
    "embeddings.token_type_embeddings.weight": "embeddings.token_type_embeddings.weight",
    "embeddings.LayerNorm.weight": "embeddings.norm.weight",
    "embeddings.LayerNorm.bias": "embeddings.norm.bias",
    "pooler.dense.weight": "pooler.dense.weight",
    "pooler.dense.bias": "pooler.dense.bias",
}
LAYER_KEYS = {
    "attention.output.dense": "attention.out_proj",
    "attention.output.LayerNorm": "attention_norm",
    "intermediate.dense": "feed_forward.up_proj",
    "output.dense": "feed_forward.down_proj",
    "output.LayerNorm": "feed_forward_norm",
}
# The heads' tensors (full names on both sides; "{encoder}" is our encoder's prefix, for RoBERTa's classifier whose
# dense layer is our pooler's).
BERT_HEAD_KEYS = {
    "cls.predictions.transform.dense.weight": "lm_head.dense.weight",
    "cls.predictions.transform.dense.bias": "lm_head.dense.bias",
    "cls.predictions.transform.LayerNorm.weight": "lm_head.norm.weight",
    "cls.predictions.transform.LayerNorm.bias": "lm_head.norm.bias",
    "cls.predictions.bias": "lm_head.decoder.bias",
    "classifier.weight": "classifier.weight",
    "classifier.bias": "classifier.bias",
}
ROBERTA_HEAD_KEYS = {
    "lm_head.dense.weight": "lm_head.dense.weight",
    "lm_head.dense.bias": "lm_head.dense.bias",
    "lm_head.layer_norm.weight": "lm_head.norm.weight",
    "lm_head.layer_norm.bias": "lm_head.norm.bias",
    "lm_head.bias": "lm_head.decoder.bias",
    "classifier.dense.weight": "{encoder}pooler.dense.weight",  # sequence classification: dense + tanh on <s>
    "classifier.dense.bias": "{encoder}pooler.dense.bias",
    "classifier.out_proj.weight": "classifier.weight",
    "classifier.out_proj.bias": "classifier.bias",
    "classifier.weight": "classifier.weight",  # token classification
    "classifier.bias": "classifier.bias",
}


@dataclass(frozen=True)
class SourceFamily:
    """What one family of pretrained encoders does differently from BERT (see the module docstring)."""

    config_class: type
    class_prefix: str  # of its model classes: "Bert" -> BertModel, BertForMaskedLM, ...
    encoder_prefix: str  # of the encoder's tensors inside a head checkpoint
    head_keys: dict
    positions_from_padding: bool  # positions start at padding_idx + 1 (RoBERTa), else at 0 (BERT)

    def position_offset(self, config) -> int:
        return config.pad_token_id + 1 if self.positions_from_padding else 0


FAMILIES = {
    "bert": SourceFamily(BertConfig, "Bert", "bert.", BERT_HEAD_KEYS, False),
    "roberta": SourceFamily(RobertaConfig, "Roberta", "roberta.", ROBERTA_HEAD_KEYS, True),
    "xlm-roberta": SourceFamily(XLMRobertaConfig, "XLMRoberta", "roberta.", ROBERTA_HEAD_KEYS, True),
}

# Config fields that mean the same in BertConfig (and RoBERTa's) and FeedbackConfig (we use BERT's names), so they
# carry over as they are in either direction; the architecture switches BERT lacks (activation, norm position,
# positions, pooling) are set by whoever maps one onto the other.
SHARED_CONFIG_FIELDS = (
    "vocab_size",
    "hidden_size",
    "num_hidden_layers",
    "num_attention_heads",
    "intermediate_size",
    "hidden_dropout_prob",
    "attention_probs_dropout_prob",
    "max_position_embeddings",
    "type_vocab_size",
    "layer_norm_eps",
)


def family_of(config) -> SourceFamily:
    """The SourceFamily of a source config, or BadInput naming the model types we can import."""
    if config.model_type not in FAMILIES:
        raise BadInput(f"a {config.model_type!r} model cannot be imported; importable model types: "
                       f"{', '.join(FAMILIES)}")
    return FAMILIES[config.model_type]


def feedback_config_from_bert(source_config) -> FeedbackConfig:
    """The FeedbackConfig that computes the same function as a BERT, RoBERTa or XLM-R config; refuses the variants we
    can't match."""
    family = family_of(source_config)
    if source_config.hidden_act != "gelu":
        raise BadInput(f"hidden_act={source_config.hidden_act!r} is not supported for conversion (only exact 'gelu')")
    if getattr(source_config, "position_embedding_type", "absolute") != "absolute":
        raise BadInput("only checkpoints with absolute position embeddings can be converted")
    if getattr(source_config, "is_decoder", False):
        raise BadInput(f"{source_config.model_type} decoders (is_decoder=True) cannot be converted to an encoder")
    fields = {name: getattr(source_config, name) for name in SHARED_CONFIG_FIELDS}
    fields["max_position_embeddings"] -= family.position_offset(source_config)
    return FeedbackConfig(
        **fields,
        hidden_act="gelu",
        initializer_range=source_config.initializer_range,
        pad_token_id=source_config.pad_token_id,
        bos_token_id=getattr(source_config, "bos_token_id", None),
        eos_token_id=getattr(source_config, "eos_token_id", None),
        classifier_dropout=source_config.classifier_dropout,
        id2label=source_config.id2label,
        label2id=source_config.label2id,
        problem_type=source_config.problem_type,
        norm_position="post",
        position_embedding_type="absolute",
        pooling="cls",
    )


def tensor_pairs(num_layers: int, prefix: str, bert_prefix: str = "", head_keys: dict = BERT_HEAD_KEYS):
    """(source name, our name) of every tensor the two share, read from the key maps above; in both directions
    (here and in export_bert). `prefix` / `bert_prefix`: each encoder's prefix ("" for the bare encoder). Yields the
    fused attention projection as (the source's query, key and value names, our qkv name): Q, K, V stacked in that
    order."""
    for theirs, mine in EMBEDDING_KEYS.items():
        yield bert_prefix + theirs, prefix + mine
    for theirs, mine in head_keys.items():
        yield theirs, mine.format(encoder=prefix)
    for i in range(num_layers):
        theirs, mine = f"{bert_prefix}encoder.layer.{i}.", f"{prefix}encoder.layers.{i}."
        for kind in ("weight", "bias"):
            yield tuple(f"{theirs}attention.self.{name}.{kind}" for name in ("query", "key", "value")), \
                f"{mine}attention.qkv_proj.{kind}"
            for src, dst in LAYER_KEYS.items():
                yield f"{theirs}{src}.{kind}", f"{mine}{dst}.{kind}"


def convert_state_dict(source_state: dict, source_config, prefix: str) -> dict:
    """Map a BERT / RoBERTa / XLM-R state dict onto our names. `prefix` is our encoder's prefix: "" for FeedbackModel,
    "feedback." else."""
    family = family_of(source_config)
    source_state = {k.removeprefix(family.encoder_prefix): v for k, v in source_state.items()}
    ours = {}
    for theirs, mine in tensor_pairs(source_config.num_hidden_layers, prefix, head_keys=family.head_keys):
        if isinstance(theirs, tuple):  # (3H, H) and (3H,): rows of Q, then K, then V, as our attention splits them
            ours[mine] = torch.cat([source_state[name] for name in theirs])
        elif theirs in source_state:  # the heads' and the pooler's tensors exist only in some checkpoints
            ours[mine] = source_state[theirs]
    positions = prefix + "embeddings.position_embeddings.weight"
    ours[positions] = ours[positions][family.position_offset(source_config):]  # rows never read are dropped
    return ours


def convert(source: str | Path, destination: str | Path, overwrite: bool = False):
    """Convert the BERT, RoBERTa or XLM-R checkpoint folder `source` and save it to `destination`; returns the model."""
    source, destination = check_folders(source, destination, overwrite)
    source_config = load_pretrained(AutoConfig.from_pretrained, source)
    family = family_of(source_config)
    config = feedback_config_from_bert(source_config)

    base_class = f"{family.class_prefix}Model"
    architecture = (source_config.architectures or [base_class])[0]
    suffix = architecture.removeprefix(family.class_prefix)
    known = hasattr(transformers, architecture) and architecture.startswith(family.class_prefix)
    source_model = load_pretrained(getattr(transformers, architecture if known else base_class).from_pretrained, source)
    model_class = HEADS.get(suffix, FeedbackModel)
    model = model_class(config)
    prefix = "" if model_class is FeedbackModel else "feedback."
    state = convert_state_dict(source_model.state_dict(), source_config, prefix)

    expected = model.state_dict()
    missing = set(expected) - set(state)
    if model_class is FeedbackForMaskedLM:
        missing.discard("lm_head.decoder.weight")  # tied to the word embeddings
    if model_class is FeedbackModel and "pooler.dense.weight" not in state:
        model = FeedbackModel(model.config, add_pooling_layer=False)
        missing -= {"pooler.dense.weight", "pooler.dense.bias"}
    if missing:
        raise BadInput(f"the {architecture} checkpoint lacks tensors for: {sorted(missing)}")
    for key, tensor in state.items():
        if key in expected and expected[key].shape != tensor.shape:
            raise BadInput(f"{key}: shape {tuple(tensor.shape)} does not match {tuple(expected[key].shape)}")
    model.load_state_dict({key: tensor for key, tensor in state.items() if key in expected}, strict=False)
    model.tie_weights()

    save_with_tokenizer(model, source, destination)
    return model


def check_folders(source, destination, overwrite):
    """Before any work (here and in the exporters): `source` must be a model folder, and `destination` empty unless
    `overwrite`. Returns both as Paths."""
    source, destination = Path(source), Path(destination)
    if not (source / "config.json").is_file():
        raise FileNotFoundError(f"{source} is not a model folder: it has no config.json")
    if destination.exists() and any(destination.iterdir()) and not overwrite:
        raise FileExistsError(f"{destination} exists and is not empty; choose another folder or pass --overwrite")
    return source, destination


def not_our_encoder(config, source):
    """Why the exporters (BERT, ONNX) refuse `source`'s `config`, or None when it is an hf_feedback encoder."""
    if config.model_type == "feedback":
        return None
    if config.model_type == "feedback_seq2seq":
        return (f"{source} holds an hf_feedback encoder-decoder ({', '.join(config.architectures or [])}), which "
                "the exporters do not take: they export the encoder models (FeedbackModel and its heads)")
    return (f"{source} holds a {config.model_type!r} model, not an hf_feedback one (for other transformers models "
            "use optimum's exporter)")


def save_with_tokenizer(model, source, destination):
    """Save `model` to `destination` with the tokenizer of `source`, where it has one; the tokenizer's
    `model_max_length` is the model's longest input where it said more (or nothing), so that truncation=True fits."""
    destination.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(destination)
    try:
        tokenizer = AutoTokenizer.from_pretrained(source)
    except (OSError, ValueError):
        return  # a model folder without a tokenizer converts without one
    tokenizer.model_max_length = min(tokenizer.model_max_length, model.config.max_position_embeddings)
    tokenizer.save_pretrained(destination)


def main(argv=None):
    parser = argparse.ArgumentParser(prog="python -m hf_feedback.integrations.convert",
                                     description=__doc__.split("\n\n")[0])
    parser.add_argument("source", help="folder of a BERT, RoBERTa or XLM-RoBERTa checkpoint (config.json + weights)")
    parser.add_argument("destination", help="folder to write the hf_feedback checkpoint to")
    parser.add_argument("--overwrite", action="store_true", help="write into a non-empty destination")
    parser.add_argument("--debug", action="store_true", help=f"show the traceback of an error (also: {DEBUG_VARIABLE}=1)")
    args = parser.parse_args(argv)
    if args.debug:
        os.environ[DEBUG_VARIABLE] = "1"
    with bad_input_exits("convert: error") as set_up:
        set_up.will_create(args.destination)
        model = convert(args.source, args.destination, overwrite=args.overwrite)
    print(f"Saved {type(model).__name__} ({model.num_parameters():,} parameters) to {args.destination}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

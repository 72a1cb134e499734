"""Convert a BERT checkpoint (BertModel or a BertFor* head) into an hf_feedback checkpoint.

    python -m hf_feedback.convert_bert SRC DST

BERT is the post-norm, learned-position, GELU special case of our encoder, so its weights map one to one onto
ours; the only reshaping is concatenating the separate query / key / value projections into our fused `qkv_proj`.
The explicit key map below is the whole conversion (in the spirit of nanoGPT's GPT-2 import). The heads that
have a counterpart carry over: BertForMaskedLM -> FeedbackForMaskedLM, BertForSequenceClassification ->
FeedbackForSequenceClassification, BertForTokenClassification -> FeedbackForTokenClassification; anything else
becomes a FeedbackModel. The tokenizer is copied alongside when the source folder has one.
"""

import argparse
import os
import sys
from pathlib import Path

import torch
import transformers
from transformers import AutoTokenizer, BertConfig

from .configuration_feedback import FeedbackConfig
from .failures import DEBUG_VARIABLE, bad_input_exits, load_pretrained
from .modeling_feedback import (
    FeedbackForMaskedLM,
    FeedbackForSequenceClassification,
    FeedbackForTokenClassification,
    FeedbackModel,
)

HEADS = {
    "BertForMaskedLM": FeedbackForMaskedLM,
    "BertForSequenceClassification": FeedbackForSequenceClassification,
    "BertForTokenClassification": FeedbackForTokenClassification,
}

# BERT key (below the encoder prefix) -> ours. {i} is the layer index.
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
HEAD_KEYS = {
    "cls.predictions.transform.dense.weight": "lm_head.dense.weight",
    "cls.predictions.transform.dense.bias": "lm_head.dense.bias",
    "cls.predictions.transform.LayerNorm.weight": "lm_head.norm.weight",
    "cls.predictions.transform.LayerNorm.bias": "lm_head.norm.bias",
    "cls.predictions.bias": "lm_head.decoder.bias",
    "classifier.weight": "classifier.weight",
    "classifier.bias": "classifier.bias",
}


# Config fields that mean the same in BertConfig and FeedbackConfig (we use BERT's names), so they carry over as they
# are in either direction; the architecture switches BERT lacks (activation, norm position, positions, pooling) are
# set by whoever maps one onto the other.
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


def feedback_config_from_bert(bert_config: BertConfig) -> FeedbackConfig:
    """The FeedbackConfig that computes the same function as `bert_config`; refuses what BERT variants we can't match."""
    if bert_config.hidden_act != "gelu":
        raise ValueError(f"hidden_act={bert_config.hidden_act!r} is not supported for conversion (only exact 'gelu')")
    if getattr(bert_config, "position_embedding_type", "absolute") != "absolute":
        raise ValueError("only BERT checkpoints with absolute position embeddings can be converted")
    if getattr(bert_config, "is_decoder", False):
        raise ValueError("BERT decoders (is_decoder=True) cannot be converted to an encoder")
    return FeedbackConfig(
        **{name: getattr(bert_config, name) for name in SHARED_CONFIG_FIELDS},
        hidden_act="gelu",
        initializer_range=bert_config.initializer_range,
        pad_token_id=bert_config.pad_token_id,
        classifier_dropout=bert_config.classifier_dropout,
        id2label=bert_config.id2label,
        label2id=bert_config.label2id,
        problem_type=bert_config.problem_type,
        norm_position="post",
        position_embedding_type="absolute",
        pooling="cls",
    )


def tensor_pairs(num_layers: int, prefix: str, bert_prefix: str = ""):
    """(BERT name, our name) of every tensor the two share, read from the key maps above; in both directions
    (here and in export_bert). `prefix` / `bert_prefix`: each encoder's prefix ("" for the bare encoder). Yields the
    fused attention projection as (BERT's query, key and value names, our qkv name): Q, K, V stacked in that order."""
    for theirs, mine in (*EMBEDDING_KEYS.items(), *HEAD_KEYS.items()):
        head = theirs in HEAD_KEYS
        yield (theirs if head else bert_prefix + theirs), (mine if head else prefix + mine)
    for i in range(num_layers):
        theirs, mine = f"{bert_prefix}encoder.layer.{i}.", f"{prefix}encoder.layers.{i}."
        for kind in ("weight", "bias"):
            yield tuple(f"{theirs}attention.self.{name}.{kind}" for name in ("query", "key", "value")), \
                f"{mine}attention.qkv_proj.{kind}"
            for src, dst in LAYER_KEYS.items():
                yield f"{theirs}{src}.{kind}", f"{mine}{dst}.{kind}"


def convert_state_dict(bert_state: dict, num_layers: int, prefix: str) -> dict:
    """Map BERT tensor names onto ours. `prefix` is our encoder's prefix: "" for FeedbackModel, "feedback." else."""
    bert_state = {k.removeprefix("bert."): v for k, v in bert_state.items()}
    ours = {}
    for theirs, mine in tensor_pairs(num_layers, prefix):
        if isinstance(theirs, tuple):  # (3H, H) and (3H,): rows of Q, then K, then V, as our attention splits them
            ours[mine] = torch.cat([bert_state[name] for name in theirs])
        elif theirs in bert_state:  # the heads' and the pooler's tensors exist only in some checkpoints
            ours[mine] = bert_state[theirs]
    return ours


def convert_bert(source: str | Path, destination: str | Path, overwrite: bool = False):
    """Convert the BERT checkpoint folder `source` and save the result to `destination`; returns the model."""
    source, destination = check_folders(source, destination, overwrite)
    bert_config = load_pretrained(BertConfig.from_pretrained, source)
    if bert_config.model_type != "bert":
        raise ValueError(f"{source} holds a {bert_config.model_type!r} model, not a BERT checkpoint")

    architecture = (bert_config.architectures or ["BertModel"])[0]
    bert = load_pretrained(getattr(transformers, architecture, transformers.BertModel).from_pretrained, source)
    model_class = HEADS.get(architecture, FeedbackModel)
    model = model_class(feedback_config_from_bert(bert_config))
    prefix = "" if model_class is FeedbackModel else "feedback."
    state = convert_state_dict(bert.state_dict(), bert_config.num_hidden_layers, prefix)

    expected = model.state_dict()
    missing = set(expected) - set(state)
    if model_class is FeedbackForMaskedLM:
        missing.discard("lm_head.decoder.weight")  # tied to the word embeddings
    if model_class is FeedbackModel and "pooler.dense.weight" not in state:
        model = FeedbackModel(model.config, add_pooling_layer=False)
        missing -= {"pooler.dense.weight", "pooler.dense.bias"}
    if missing:
        raise ValueError(f"the BERT checkpoint lacks tensors for: {sorted(missing)}")
    for key, tensor in state.items():
        if expected[key].shape != tensor.shape:
            raise ValueError(f"{key}: shape {tuple(tensor.shape)} does not match {tuple(expected[key].shape)}")
    model.load_state_dict(state, strict=False)
    model.tie_weights()

    save_with_tokenizer(model, source, destination)
    return model


def check_folders(source, destination, overwrite):
    """Before any work (here and in export_bert): `source` must be a model folder, and `destination` empty unless
    `overwrite`. Returns both as Paths."""
    source, destination = Path(source), Path(destination)
    if not (source / "config.json").is_file():
        raise FileNotFoundError(f"{source} is not a model folder: it has no config.json")
    if destination.exists() and any(destination.iterdir()) and not overwrite:
        raise FileExistsError(f"{destination} exists and is not empty; choose another folder or pass --overwrite")
    return source, destination


def save_with_tokenizer(model, source, destination):
    """Save `model` to `destination` with the tokenizer of `source`, where it has one."""
    destination.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(destination)
    try:
        tokenizer = AutoTokenizer.from_pretrained(source)
    except (OSError, ValueError):
        return  # a model folder without a tokenizer converts without one
    tokenizer.save_pretrained(destination)


def main(argv=None):
    parser = argparse.ArgumentParser(prog="python -m hf_feedback.convert_bert", description=__doc__.split("\n\n")[0])
    parser.add_argument("source", help="folder of a BERT checkpoint (config.json + weights)")
    parser.add_argument("destination", help="folder to write the hf_feedback checkpoint to")
    parser.add_argument("--overwrite", action="store_true", help="write into a non-empty destination")
    parser.add_argument("--debug", action="store_true", help=f"show the traceback of an error (also: {DEBUG_VARIABLE}=1)")
    args = parser.parse_args(argv)
    if args.debug:
        os.environ[DEBUG_VARIABLE] = "1"
    with bad_input_exits("convert_bert: error") as set_up:
        set_up.will_create(args.destination)
        model = convert_bert(args.source, args.destination, overwrite=args.overwrite)
    print(f"Saved {type(model).__name__} ({model.num_parameters():,} parameters) to {args.destination}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

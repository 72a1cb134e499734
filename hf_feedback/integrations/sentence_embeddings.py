"""sentence-transformers reads a saved folder: the three small files that make it a SentenceTransformer.

    SentenceTransformer("outputs/finetune", trust_remote_code=True).encode(["质量很好", "太差了"])

A saved folder is already what sentence-transformers' Transformer module loads (config, weights, tokenizer); these
files add the module list and a Pooling module that pools the encoder's last hidden states as the model's own
`pooling` does (first real token, mean or max over real tokens), so an embedding is the model's pooled vector before
its pooler's dense + tanh (which only a classifier head was trained through). The files are written in the format
sentence-transformers has read since v2 (`sentence_transformers.models.*` module types, the `pooling_mode_*` flags),
so older and newer versions load them alike.
"""

import json
from pathlib import Path

POOLING_FOLDER = "1_Pooling"
POOLING_CONFIG = f"{POOLING_FOLDER}/config.json"
# What `write_sentence_transformers_files` adds to a folder (paths relative to it): the Hub push shares them.
FILES = ("modules.json", "sentence_bert_config.json", POOLING_CONFIG)


def write_sentence_transformers_files(folder, config, max_seq_length: int) -> None:
    """Write FILES into the saved model `folder` for `config` (its hidden size and pooling), texts cut at
    `max_seq_length` tokens as in training."""
    folder = Path(folder)
    modules = [
        {"idx": 0, "name": "0", "path": "", "type": "sentence_transformers.models.Transformer"},
        {"idx": 1, "name": "1", "path": POOLING_FOLDER, "type": "sentence_transformers.models.Pooling"},
    ]
    pooling = getattr(config, "pooling", "cls")  # a converted BERT pools its first token
    (folder / POOLING_FOLDER).mkdir(exist_ok=True)
    files = {
        "modules.json": modules,
        "sentence_bert_config.json": {"max_seq_length": max_seq_length, "do_lower_case": False},
        POOLING_CONFIG: {
            "word_embedding_dimension": config.hidden_size,
            "pooling_mode_cls_token": pooling == "cls",
            "pooling_mode_mean_tokens": pooling == "mean",
            "pooling_mode_max_tokens": pooling == "max",
            "pooling_mode_mean_sqrt_len_tokens": False,
        },
    }
    for name, content in files.items():
        (folder / name).write_text(json.dumps(content, indent=2) + "\n")


__all__ = ["FILES", "POOLING_CONFIG", "write_sentence_transformers_files"]

"""Trim a pretrained model's vocabulary to the pieces a corpus uses: the same outputs on that corpus, a fraction of
the parameters.

A multilingual encoder spends most of its parameters on the embeddings of pieces of a hundred languages: of
multilingual-e5-small's 118M, 96M are the rows of its 250k SentencePiece pieces, and fine-tuning updates each of them
(AdamW keeps two more copies) although a Chinese corpus uses ~12k. `trim_vocabulary` keeps the special tokens, every
piece the corpus's texts are tokenized into, and every single-character piece (so that a text of the same scripts
still tokenizes, into smaller pieces where a longer one was dropped, instead of into <unk>), and gathers the rows of
every tensor indexed by the vocabulary (word embeddings, the masked-LM output bias, the characters of each token).

Why the corpus's texts keep exactly their ids (renumbered): a unigram tokenizer picks the most probable segmentation
among the pieces it has; the pieces dropped are on no text's best segmentation, so removing them leaves every best
segmentation available and still the best. Only SentencePiece unigram vocabularies (XLM-R's, e5's, ours) are trimmed;
WordPiece and BPE are refused: their pieces depend on each other (merges, `##` continuations).
"""

import json
import tempfile
from pathlib import Path

import torch
from transformers import AutoTokenizer

from ..failures import BadInput

# Tensors indexed by the vocabulary (first dimension), below any head prefix.
VOCABULARY_TENSORS = ("embeddings.word_embeddings.weight", "lm_head.decoder.weight", "lm_head.decoder.bias",
                      "embeddings.token_characters")
_SPECIAL_IDS = ("pad_token_id", "bos_token_id", "eos_token_id")


def pieces_to_keep(tokenizer, texts) -> list[int]:
    """Sorted ids: the special and added tokens, the pieces of `texts` and every single-character piece."""
    vocabulary = tokenizer.convert_ids_to_tokens(list(range(len(tokenizer))))
    keep = set(tokenizer.all_special_ids) | set(tokenizer.added_tokens_decoder)  # every added token stays
    for ids in tokenizer(list(texts), add_special_tokens=False, verbose=False)["input_ids"]:  # no length warning
        keep.update(ids)
    keep.update(i for i, piece in enumerate(vocabulary) if len(piece.removeprefix("▁")) <= 1)
    return sorted(keep)


def is_unigram(tokenizer) -> bool:
    return getattr(tokenizer, "backend_tokenizer", None) is not None and \
        type(tokenizer.backend_tokenizer.model).__name__ == "Unigram"


def _unigram_json(tokenizer) -> dict:
    state = json.loads(tokenizer.backend_tokenizer.to_str())
    if state["model"]["type"] != "Unigram":
        raise BadInput(f"only SentencePiece unigram vocabularies can be trimmed; this tokenizer is "
                       f"{state['model']['type']} (pass --trim_vocabulary false)")
    return state


def trim_tokenizer(tokenizer, keep: list[int]):
    """The same tokenizer with only the pieces `keep` (old ids, sorted), renumbered 0.. in that order."""
    state = _unigram_json(tokenizer)
    new_id = {old: new for new, old in enumerate(keep)}
    pieces = state["model"]["vocab"]  # added tokens outside it (a <mask> appended by the wrapper) have the last ids
    state["model"]["vocab"] = [pieces[old] for old in keep if old < len(pieces)]
    if state["model"].get("unk_id") is not None:
        state["model"]["unk_id"] = new_id[state["model"]["unk_id"]]
    for token in state["added_tokens"]:
        token["id"] = new_id[token["id"]]
    for special in ((state.get("post_processor") or {}).get("special_tokens") or {}).values():
        special["ids"] = [new_id[i] for i in special["ids"]]
    with tempfile.TemporaryDirectory() as folder:
        tokenizer.save_pretrained(folder)
        (Path(folder) / "tokenizer.json").write_text(json.dumps(state, ensure_ascii=False))
        for stale in ("sentencepiece.bpe.model", "spiece.model", "vocab.txt"):  # would describe the old vocabulary
            (Path(folder) / stale).unlink(missing_ok=True)
        return AutoTokenizer.from_pretrained(folder)


def trim_vocabulary(model, tokenizer, texts, keep: list[int] | None = None):
    """(model, tokenizer) keeping only the pieces of `texts`, the special tokens and single characters (see the
    module docstring; `keep`: those ids, if already computed by `pieces_to_keep`). The model is changed in place and
    returned; nothing is saved."""
    _unigram_json(tokenizer)
    config = model.config
    if len(tokenizer) != config.vocab_size:
        raise BadInput(f"the tokenizer has {len(tokenizer):,} pieces and the model {config.vocab_size:,} embedding "
                       "rows: trim a tokenizer together with the model it was made for")
    keep = pieces_to_keep(tokenizer, texts) if keep is None else keep
    index, done = torch.tensor(keep), set()
    for name, tensor in model.state_dict(keep_vars=True).items():
        # tied weights (the masked-LM projection is the word embeddings) appear under two names: gather once
        if (name in VOCABULARY_TENSORS or name.split(".", 1)[-1] in VOCABULARY_TENSORS) and id(tensor) not in done:
            tensor.data = tensor.data.index_select(0, index)
            done.add(id(tensor))
    for module in model.modules():  # the sizes the gathered weights now have
        if isinstance(module, torch.nn.Embedding):
            module.num_embeddings = module.weight.shape[0]
        if isinstance(module, torch.nn.Linear):
            module.out_features = module.weight.shape[0]
    new_id = {old: new for new, old in enumerate(keep)}
    for name in _SPECIAL_IDS:  # renumbered first: each stays below the vocabulary size as it shrinks
        if getattr(config, name, None) is not None:
            setattr(config, name, new_id[getattr(config, name)])
    config.vocab_size = len(keep)
    model.get_input_embeddings().padding_idx = config.pad_token_id
    return model, trim_tokenizer(tokenizer, keep)


__all__ = ["is_unigram", "pieces_to_keep", "trim_tokenizer", "trim_vocabulary"]

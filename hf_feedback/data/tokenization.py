"""Train a BERT-style WordPiece tokenizer from scratch and wrap it as a Hugging Face tokenizer, and tokenize datasets
with it (`tokenize_dataset`, moved here from hf_feedback/data.py when that file was split)."""

import json
from collections.abc import Iterable, Iterator

import numpy as np
import torch
from scipy import sparse
from sklearn.utils.extmath import randomized_svd
from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers, processors, trainers
from transformers import PreTrainedTokenizerFast
from transformers.utils import logging

from .corpora import load_peoples_daily, load_sentiment_reviews


logger = logging.get_logger(__name__)

# Order fixes the ids: [PAD]=0, [UNK]=1, [CLS]=2, [SEP]=3, [MASK]=4.
SPECIAL_TOKENS = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]


TOKENIZER_KINDS = ("wordpiece", "unigram")


def train_tokenizer(
    texts: Iterable[str],
    vocab_size: int = 10000,
    min_frequency: int = 2,
    model_max_length: int = 512,
    kind: str = "wordpiece",
) -> PreTrainedTokenizerFast:
    """Train a tokenizer on `texts` and wrap it as a BERT-style Hugging Face tokenizer.

    Two kinds, which differ in what a Chinese token is:
    - `"wordpiece"`: BERT's. The BERT normalizer lowercases and puts spaces around every CJK
      character, so Chinese splits into single characters, while other scripts split on
      whitespace and punctuation into words that WordPiece breaks into `##` pieces.
    - `"unigram"`: SentencePiece's unigram language model (Kudo 2018) over the text between
      spaces and punctuation, so that frequent multi-character strings such as 鼠标 or 太小了
      become single tokens: the model is given words, learned from the corpus without a
      dictionary, and sequences get shorter (bundled reviews: median 46 tokens as characters,
      26 with 16k unigram pieces). Text is NFKC-normalised and lowercased; spaces are kept as
      the `▁` marker (Metaspace), so decoding restores them.

    Args:
        texts: training texts; any iterable, consumed once.
        vocab_size: target size of the vocabulary, special tokens included. WordPiece keeps
            every character it sees, so a small corpus-to-vocab ratio over many distinct CJK
            characters can exceed it (logged); size the model's embeddings from `len(tokenizer)`.
            Unigram stops below it when the corpus has fewer useful pieces.
        min_frequency: (WordPiece) a merge must occur at least this often to enter the vocabulary.
        model_max_length: the longest input, in tokens, the model will accept.
        kind: one of `TOKENIZER_KINDS`.

    Returns a `PreTrainedTokenizerFast` with the special tokens [PAD] [UNK] [CLS] [SEP] [MASK] at
    ids 0-4 that adds `[CLS] ... [SEP]` (and `[SEP]` after a second segment, with token type 1)
    and round-trips through `save_pretrained` / `AutoTokenizer.from_pretrained`.
    """
    if kind not in TOKENIZER_KINDS:
        raise ValueError(f"tokenizer kind must be one of {list(TOKENIZER_KINDS)}, got {kind!r}")
    if vocab_size <= len(SPECIAL_TOKENS):
        raise ValueError(f"vocab_size must exceed the {len(SPECIAL_TOKENS)} special tokens, got {vocab_size}")
    if min_frequency < 1:
        raise ValueError(f"min_frequency must be at least 1, got {min_frequency}")

    tokenizer = _train_wordpiece(texts, vocab_size, min_frequency) if kind == "wordpiece" else _train_unigram(
        texts, vocab_size)
    cls_id, sep_id = tokenizer.token_to_id("[CLS]"), tokenizer.token_to_id("[SEP]")
    tokenizer.post_processor = processors.TemplateProcessing(
        single="[CLS] $A [SEP]",
        pair="[CLS] $A [SEP] $B:1 [SEP]:1",
        special_tokens=[("[CLS]", cls_id), ("[SEP]", sep_id)],
    )
    return PreTrainedTokenizerFast(
        tokenizer_object=tokenizer,
        pad_token="[PAD]",
        unk_token="[UNK]",
        cls_token="[CLS]",
        sep_token="[SEP]",
        mask_token="[MASK]",
        model_max_length=model_max_length,
        # token_type_ids mark the second segment of a pair (the template's `:1`), as in BERT.
        model_input_names=["input_ids", "token_type_ids", "attention_mask"],
    )


def _train_wordpiece(texts: Iterable[str], vocab_size: int, min_frequency: int) -> Tokenizer:
    tokenizer = Tokenizer(models.WordPiece(unk_token="[UNK]"))
    tokenizer.normalizer = normalizers.BertNormalizer(clean_text=True, handle_chinese_chars=True, lowercase=True)
    tokenizer.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    tokenizer.decoder = decoders.WordPiece(prefix="##")
    trainer = trainers.WordPieceTrainer(
        vocab_size=vocab_size, min_frequency=min_frequency, special_tokens=SPECIAL_TOKENS
    )
    tokenizer.train_from_iterator(texts, trainer=trainer)
    # The trainer breaks frequency ties in hash-map order, which changes from run to run, so the same corpus
    # gave different ids (41 of 2,755 in one test). WordPiece looks pieces up by string, not by rank, so
    # renumbering them in sorted order after the special tokens loses nothing and makes ids reproducible.
    learned = sorted(set(tokenizer.get_vocab()) - set(SPECIAL_TOKENS))
    tokenizer.model = models.WordPiece(
        vocab={token: i for i, token in enumerate(SPECIAL_TOKENS + learned)}, unk_token="[UNK]"
    )
    if tokenizer.get_vocab_size() > vocab_size:
        logger.warning(
            "The tokenizer has %d tokens, more than vocab_size=%d: WordPiece keeps every character "
            "of the corpus. Use len(tokenizer) as the model's vocab_size.",
            tokenizer.get_vocab_size(),
            vocab_size,
        )
    return tokenizer


def _train_unigram(texts: Iterable[str], vocab_size: int) -> Tokenizer:
    tokenizer = Tokenizer(models.Unigram())
    # NFKC folds full-width letters, digits and punctuation (common in Chinese text) into their ASCII forms.
    tokenizer.normalizer = normalizers.Sequence([normalizers.NFKC(), normalizers.Lowercase()])
    tokenizer.pre_tokenizer = pre_tokenizers.Sequence(
        [pre_tokenizers.Metaspace(prepend_scheme="never"), pre_tokenizers.Punctuation()]
    )
    tokenizer.decoder = decoders.Metaspace(prepend_scheme="never")
    # Like WordPiece, keep every character of the corpus, so that no training text has [UNK]: a vocabulary too small
    # for them grows to fit (logged). The unigram trainer would otherwise stop with an error or quietly overshoot.
    texts = list(texts)
    characters = {c for text in texts for c in tokenizer.normalizer.normalize_str(text) if not c.isspace()}
    needed = len(characters) + len(SPECIAL_TOKENS) + 1  # + the "▁" space marker
    if vocab_size < needed:
        logger.warning(
            "vocab_size=%d cannot hold the corpus's %d distinct characters and the special tokens; the unigram "
            "tokenizer keeps every character and gets %d tokens. Use len(tokenizer) as the model's vocab_size.",
            vocab_size, len(characters), needed,
        )
        vocab_size = needed
    trainer = trainers.UnigramTrainer(
        vocab_size=vocab_size, special_tokens=SPECIAL_TOKENS, unk_token="[UNK]", max_piece_length=_MAX_PIECE_CHARS
    )
    tokenizer.train_from_iterator(texts, trainer=trainer)
    # Make the same corpus give the same tokenizer file. The trainer sums piece scores in parallel, so their last
    # digits change from run to run: round them. It appends the characters its pieces cannot spell (rare ones) below
    # the lowest learned piece with made-up, evenly spaced scores in hash-map order: give them one shared score.
    # Segmentation reads only the scores, so pieces are then numbered in sorted order after the special tokens.
    pieces = json.loads(tokenizer.to_str())["model"]["vocab"]
    scores = {piece: round(score, 9) for piece, score in pieces}
    lowest = min(scores.values())
    lowest_word = min((score for piece, score in scores.items() if len(piece) > 1 and piece not in SPECIAL_TOKENS),
                      default=lowest)
    scores |= {piece: lowest for piece, score in scores.items() if len(piece) == 1 and score < lowest_word}
    learned = sorted(set(scores) - set(SPECIAL_TOKENS))
    tokenizer.model = models.Unigram(
        [(piece, scores[piece]) for piece in SPECIAL_TOKENS + learned], unk_id=SPECIAL_TOKENS.index("[UNK]")
    )
    return tokenizer


# Unigram pieces of at most this many characters: a Chinese word rarely has more than four, and longer pieces are
# mostly phrases seen a handful of times, whose embeddings a small corpus cannot train.
_MAX_PIECE_CHARS = 4


def default_tokenizer_corpus() -> Iterator[str]:
    """Texts for the default tokenizer: the review train split, then People's Daily sentences.

    Validation and test reviews are left out so that evaluation text stays unseen.
    """
    yield from load_sentiment_reviews()["train"]["text"]
    yield from load_peoples_daily()["text"]


# Markers a tokenizer adds to a token's text that are not characters of the text: the Metaspace word start of unigram
# pieces and SentencePiece, a WordPiece continuation.
_WORD_START, _CONTINUATION = "▁", "##"


def token_characters(tokenizer) -> tuple[torch.Tensor, int]:
    """Which characters each token of `tokenizer` is written with, for `FeedbackConfig.char_vocab_size`.

    Returns `(table, char_vocab_size)`: `table` (vocab_size, longest token's character count) holds for token id i
    the ids of its characters, numbered from 1 in sorted order, then 0s; special tokens and markers ('▁', a leading
    '##') have none. `char_vocab_size` is the number of distinct characters + 1 (row 0: no character). Pass them as
    `FeedbackConfig(char_vocab_size=..., chars_per_token=table.shape[1])`, then `model.set_token_characters(table)`.
    """
    special = set(tokenizer.all_special_tokens)
    texts = []
    for token in tokenizer.convert_ids_to_tokens(list(range(len(tokenizer)))):
        if token is None or token in special:
            texts.append("")
            continue
        token = token.removeprefix(_CONTINUATION) if len(token) > len(_CONTINUATION) else token
        texts.append(token.replace(_WORD_START, ""))
    characters = {c: i for i, c in enumerate(sorted({c for text in texts for c in text}), start=1)}
    table = torch.zeros(len(texts), max(1, max(map(len, texts), default=0)), dtype=torch.long)
    for row, text in enumerate(texts):
        table[row, :len(text)] = torch.tensor([characters[c] for c in text], dtype=torch.long)
    return table, len(characters) + 1


def cooccurrence_vectors(
    sequences: Iterable[list[int]], vocab_size: int, dim: int, window: int = 5, max_tokens: int = 20_000_000,
    seed: int = 0,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Token vectors from how tokens co-occur in `sequences` (lists of token ids), for starting a new model's
    embeddings: PPMI-SVD (Levy, Goldberg & Dagan 2015, "Improving Distributional Similarity with Lessons Learned from
    Word Embeddings", where it matches word2vec on corpora of this size).

    Every pair of tokens at most `window` apart within a sequence counts 1/distance, both ways; the counts become
    positive pointwise mutual information with the context distribution smoothed by the power 0.75; a rank-`dim`
    truncated SVD U S V^T of that matrix gives token i the vector U_i sqrt(S). Only the first sequences up to
    `max_tokens` tokens are counted. Returns `(vectors, counts)`: float32 (vocab_size, dim) and int64 (vocab_size,),
    how often each token occurs; a token that never occurs, or has no neighbour with positive PMI, gets a zero row.
    """
    if window < 1:
        raise ValueError(f"window must be at least 1 token, got {window}")
    pairs = sparse.csr_matrix((vocab_size, vocab_size), dtype=np.float64)
    counts = np.zeros(vocab_size, dtype=np.int64)
    chunk, in_chunk, seen = [], 0, 0

    def add(chunk):
        # Sequences end to end, `window` gaps of -1 between them so that no pair crosses from one to the next.
        flat = np.concatenate([np.concatenate([np.asarray(s, dtype=np.int64), np.full(window, -1)]) for s in chunk])
        counts[:] += np.bincount(flat[flat >= 0], minlength=vocab_size)
        rows, cols, weights = [], [], []
        for distance in range(1, window + 1):
            first, second = flat[:-distance], flat[distance:]
            keep = (first >= 0) & (second >= 0)
            rows += [first[keep], second[keep]]
            cols += [second[keep], first[keep]]
            weights.append(np.full(2 * int(keep.sum()), 1.0 / distance))
        return sparse.csr_matrix((np.concatenate(weights), (np.concatenate(rows), np.concatenate(cols))),
                                 shape=(vocab_size, vocab_size))

    for sequence in sequences:
        sequence = list(sequence)[: max_tokens - seen]
        chunk.append(sequence)
        seen += len(sequence)
        in_chunk += len(sequence)
        if in_chunk >= 1_000_000:  # bounded memory: pairs of a million tokens at a time
            pairs, chunk, in_chunk = pairs + add(chunk), [], 0
        if seen >= max_tokens:
            break
    if chunk:
        pairs = pairs + add(chunk)
    vectors = np.zeros((vocab_size, dim), dtype=np.float32)
    if pairs.nnz:
        total = pairs.sum()
        word = np.asarray(pairs.sum(1)).ravel() / total
        context = np.asarray(pairs.sum(0)).ravel() ** 0.75
        context /= context.sum()
        pairs = pairs.tocoo()
        pmi = np.log(pairs.data / total / (word[pairs.row] * context[pairs.col]))
        positive = pmi > 0
        ppmi = sparse.csr_matrix((pmi[positive], (pairs.row[positive], pairs.col[positive])),
                                 shape=(vocab_size, vocab_size))
        rank = min(dim, vocab_size - 1)
        if ppmi.nnz and rank > 0:
            u, s, _ = randomized_svd(ppmi, n_components=rank, random_state=seed)
            vectors[:, :rank] = u * np.sqrt(s)
            vectors[np.diff(ppmi.indptr) == 0] = 0  # exactly zero, not the SVD's rounding, where nothing is known
    return torch.from_numpy(vectors), torch.from_numpy(counts)


TRUNCATIONS = ("head", "head_tail")


def _column_names(dataset):
    """The columns of a `Dataset`, or of a `DatasetDict`'s splits (the same in each)."""
    return next(iter(dataset.values())).column_names if isinstance(dataset, dict) else dataset.column_names


def tokenize_dataset(dataset, tokenizer, max_length: int, text_column: str = "text", truncation: str = "head"):
    """Tokenize `text_column` of a `Dataset` or `DatasetDict`, cutting texts to `max_length` tokens. A `text_pair`
    column beside it makes each row a pair, `[CLS] text [SEP] text_pair [SEP]` with token_type_ids 0 then 1, cut
    longest first (the longer text loses a token until the pair fits, so both keep a share of the budget).

    `truncation` says which tokens of a longer text are kept:
    - `"head"`: the first `max_length` (BERT's usual cut).
    - `"head_tail"`: the first quarter of `max_length` and the last three quarters, the cut Sun et al. (2019,
      "How to Fine-Tune BERT for Text Classification?") found best for long reviews and news: a text's opening
      and its conclusion carry most of its label. [CLS] and the final [SEP] are kept either way.

    No padding: `DataCollatorWithPadding` / `DataCollatorForLanguageModeling` pad each batch
    to its own longest row. The text column is removed; every other column (e.g. `label`)
    is kept. Results are cached by `datasets`' fingerprinting when the data came from files.
    """
    if max_length < 1:
        raise ValueError(f"max_length must be a positive integer, got {max_length}")
    if truncation not in TRUNCATIONS:
        raise ValueError(f"truncation must be one of {list(TRUNCATIONS)}, got {truncation!r}")
    columns = _column_names(dataset)
    if "text_pair" in columns:
        if truncation != "head":
            raise ValueError(f"truncation={truncation!r} applies to single texts; pairs are cut longest first")
        return dataset.map(
            lambda batch: tokenizer(batch[text_column], batch["text_pair"], truncation="longest_first",
                                    max_length=max_length),
            batched=True, remove_columns=[text_column, "text_pair"], desc="Tokenizing pairs")

    def tokenize(batch):
        if truncation == "head":
            return tokenizer(batch[text_column], truncation=True, max_length=max_length)
        encoded = tokenizer(batch[text_column])
        head = max_length // 4
        for i, ids in enumerate(encoded["input_ids"]):
            if len(ids) > max_length:
                tail_start = len(ids) - (max_length - head)
                for values in encoded.values():
                    values[i] = values[i][:head] + values[i][tail_start:]
        return encoded

    return dataset.map(tokenize, batched=True, remove_columns=[text_column], desc="Tokenizing")


def tokenize_corpus(dataset, tokenizer, max_length: int, text_column: str = "text"):
    """Tokenize a pretraining corpus (a `Dataset` or `DatasetDict`) keeping every token: a text longer than
    `max_length` tokens becomes consecutive windows of it, each framed as a text of its own ([CLS] ... [SEP]), as
    run_clm.py's blocks keep a long document whole rather than its first block only. Other columns are repeated
    for each window of their row."""
    if max_length < 3:
        raise ValueError(f"max_length must leave room for a token between [CLS] and [SEP], got {max_length}")

    def tokenize(batch):
        encoded = tokenizer(batch[text_column], truncation=True, max_length=max_length,
                            return_overflowing_tokens=True)
        rows = encoded.pop("overflow_to_sample_mapping")
        return {**encoded, **{name: [values[row] for row in rows] for name, values in batch.items()
                              if name != text_column}}

    columns = _column_names(dataset)
    return dataset.map(tokenize, batched=True, remove_columns=columns, desc="Tokenizing")

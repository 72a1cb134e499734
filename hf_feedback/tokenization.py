"""Train a BERT-style WordPiece tokenizer from scratch and wrap it as a Hugging Face tokenizer."""

from collections.abc import Iterable, Iterator

from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers, processors, trainers
from transformers import PreTrainedTokenizerFast
from transformers.utils import logging

from .data import load_peoples_daily, load_sentiment_reviews


logger = logging.get_logger(__name__)

# Order fixes the ids: [PAD]=0, [UNK]=1, [CLS]=2, [SEP]=3, [MASK]=4.
SPECIAL_TOKENS = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]


def train_tokenizer(
    texts: Iterable[str],
    vocab_size: int = 10000,
    min_frequency: int = 2,
    model_max_length: int = 512,
) -> PreTrainedTokenizerFast:
    """Train a WordPiece tokenizer on `texts`, set up like BERT's uncased Chinese-capable one.

    The BERT normalizer lowercases and puts spaces around every CJK character, so the
    BERT pre-tokenizer splits Chinese into single characters while other scripts split on
    whitespace and punctuation into words that WordPiece breaks into `##` pieces.

    Args:
        texts: training texts; any iterable, consumed once.
        vocab_size: target size of the vocabulary, special tokens included. The trainer keeps
            every character it sees, so a small corpus-to-vocab ratio over many distinct CJK
            characters can exceed it (logged); size the model's embeddings from `len(tokenizer)`.
        min_frequency: a merge must occur at least this often to enter the vocabulary.
        model_max_length: the longest input, in tokens, the model will accept.

    Returns a `PreTrainedTokenizerFast` that adds `[CLS] ... [SEP]` (and `[SEP]` after a
    second segment, with token type 1) and round-trips through `save_pretrained` /
    `AutoTokenizer.from_pretrained`.
    """
    if vocab_size <= len(SPECIAL_TOKENS):
        raise ValueError(f"vocab_size must exceed the {len(SPECIAL_TOKENS)} special tokens, got {vocab_size}")
    if min_frequency < 1:
        raise ValueError(f"min_frequency must be at least 1, got {min_frequency}")

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


def default_tokenizer_corpus() -> Iterator[str]:
    """Texts for the default tokenizer: the review train split, then People's Daily sentences.

    Validation and test reviews are left out so that evaluation text stays unseen.
    """
    yield from load_sentiment_reviews()["train"]["text"]
    yield from load_peoples_daily()["text"]

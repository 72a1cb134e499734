"""Configuration of the hf_feedback encoder.

This file is copied next to every saved checkpoint (Hugging Face "remote code"), so it may only import from
the standard library, torch/transformers and, relatively, its sibling files. `FeedbackConfig` is a long class
because its docstring is the reference of every field (transformers' convention); the rules the fields follow are
tables beside it (`_FIELD_RULES`, `_JOINT_RULES`).
"""

from numbers import Real

from transformers import PretrainedConfig
from transformers.modeling_rope_utils import ROPE_INIT_FUNCTIONS

HIDDEN_ACTS = ("relu", "gelu", "tanh", "sigmoid", "silu", "geglu", "swiglu")
NORM_POSITIONS = ("post", "pre")
POSITION_EMBEDDING_TYPES = ("absolute", "sinusoidal", "rotary")
POOLINGS = ("cls", "mean", "max")
PROBLEM_TYPES = (None, "regression", "single_label_classification", "multi_label_classification")
# RoPE as published, and the scaling types transformers' common tests exercise (computed by its ROPE_INIT_FUNCTIONS).
ROPE_TYPES = ("default", "linear", "dynamic", "yarn")
assert set(ROPE_TYPES[1:]) <= set(ROPE_INIT_FUNCTIONS)
DEFAULT_ROPE_THETA = 10000.0  # RoFormer's base; sinusoidal positions always use it (Vaswani et al.)


def _default_rope(key, value) -> bool:
    """Whether a RoPE setting (`rope_parameters`, a legacy `rope_theta` or `rope_scaling`) says nothing but the
    default: what every config saved before rope parameters were kept to rotary positions carries."""
    if key == "rope_theta":
        return value == DEFAULT_ROPE_THETA
    return value is None or value == {"rope_type": "default", "rope_theta": DEFAULT_ROPE_THETA}

# ----------------------------------------------------------------------------------------------------------------
# The rules a configuration follows: each field's, then those that tie fields together. A rule returns what the
# value must be (the error message's end) when the value breaks it, else None.
# ----------------------------------------------------------------------------------------------------------------
def _integer(minimum):
    """An integer >= `minimum` (a function of the config where another field decides it)."""
    def check(value, config):
        low = minimum(config) if callable(minimum) else minimum
        if isinstance(value, bool) or not isinstance(value, int) or value < low:
            return f"an integer >= {low}"
    return check


def _number(low, high=None, low_open=False):
    """A number in [low, high] ((low, high] with `low_open`; no upper bound without `high`)."""
    def check(value, config):
        if (isinstance(value, bool) or not isinstance(value, Real) or value < low or (low_open and value == low)
                or (high is not None and value > high)):
            if high is None:
                return f"a number {'>' if low_open else '>='} {low}"
            return f"a number in {'(' if low_open else '['}{low}, {high}]"
    return check


def _optional(check):
    return lambda value, config: None if value is None else check(value, config)


def _flag(value, config):
    if not isinstance(value, bool):
        return "True or False"


def _choice(allowed):
    return lambda value, config: None if value in allowed else f"one of {list(allowed)}"


def _token_id(value, config):
    if value is not None and not 0 <= value < config.vocab_size:
        return f"None or in [0, vocab_size={config.vocab_size})"


def _ngram_sizes(value, config):
    if (not isinstance(value, (list, tuple)) or not value or len(set(value)) != len(value)
            or any(isinstance(n, bool) or not isinstance(n, int) or n < 2 for n in value)):
        return "a non-empty list of distinct integers >= 2"


_FIELD_RULES = {
    **dict.fromkeys(("vocab_size", "hidden_size", "num_hidden_layers", "num_attention_heads", "intermediate_size",
                     "max_position_embeddings"), _integer(1)),
    **dict.fromkeys(("type_vocab_size", "ngram_vocab_size", "char_vocab_size"), _integer(0)),
    "chars_per_token": _integer(lambda config: 1 if config.char_vocab_size else 0),
    "ngram_sizes": _ngram_sizes,
    **dict.fromkeys(("is_decoder", "use_cache", "add_cross_attention", "check_input_values"), _flag),
    **dict.fromkeys(("hidden_dropout_prob", "attention_probs_dropout_prob"), _number(0.0, 1.0)),
    "classifier_dropout": _optional(_number(0.0, 1.0)),
    "generator_size": _number(0, 1, low_open=True),
    "discriminator_loss_weight": _number(0.0),
    "initializer_range": _number(0.0),
    "layer_norm_eps": _number(0, low_open=True),
    "hidden_act": _choice(HIDDEN_ACTS),
    "norm_position": _choice(NORM_POSITIONS),
    "position_embedding_type": _choice(POSITION_EMBEDDING_TYPES),
    "pooling": _choice(POOLINGS),
    "problem_type": _choice(PROBLEM_TYPES),
    **dict.fromkeys(("pad_token_id", "bos_token_id", "eos_token_id"), _token_id),
}

# (message, or a function of the config giving it; whether the config breaks the rule)
_JOINT_RULES = [
    ("FeedbackConfig.add_cross_attention needs is_decoder=True: only a decoder reads an encoder's output",
     lambda c: c.add_cross_attention and not c.is_decoder),
    (lambda c: f"FeedbackConfig.hidden_size ({c.hidden_size}) must be divisible by num_attention_heads "
               f"({c.num_attention_heads})",
     lambda c: c.hidden_size % c.num_attention_heads),
    ("FeedbackConfig.position_embedding_type='rotary' needs an even head size (hidden_size / num_attention_heads)",
     lambda c: c.position_embedding_type == "rotary" and (c.hidden_size // c.num_attention_heads) % 2),
    ("FeedbackConfig.position_embedding_type='sinusoidal' needs an even hidden_size",
     lambda c: c.position_embedding_type == "sinusoidal" and c.hidden_size % 2),
]


# Every Auto class a checkpoint can be opened with, whichever head saved it. transformers itself only records
# the class that was saved, so a classifier folder could not be opened with AutoModel on a machine without
# hf_feedback installed.
FEEDBACK_AUTO_MAP = {
    "AutoConfig": "configuration_feedback.FeedbackConfig",
    "AutoModel": "modeling_feedback.FeedbackModel",
    "AutoModelForSequenceClassification": "modeling_feedback.FeedbackForSequenceClassification",
    "AutoModelForMaskedLM": "modeling_feedback.FeedbackForMaskedLM",
    "AutoModelForTokenClassification": "modeling_feedback.FeedbackForTokenClassification",
    "AutoModelForPreTraining": "modeling_feedback.FeedbackForPreTraining",
    "AutoModelForCausalLM": "modeling_feedback.FeedbackForCausalLM",
}
# An encoder-decoder checkpoint is another model type: AutoModel gives its encoder-decoder, not a lone encoder.
SEQ2SEQ_AUTO_MAP = {
    "AutoConfig": "configuration_feedback.FeedbackSeq2SeqConfig",
    "AutoModel": "modeling_feedback.FeedbackSeq2SeqModel",
    "AutoModelForSeq2SeqLM": "modeling_feedback.FeedbackForConditionalGeneration",
}


class FeedbackConfig(PretrainedConfig):
    r"""
    Configuration of a [`FeedbackModel`]: a Transformer encoder (embeddings, then `num_hidden_layers` blocks of
    multi-head self-attention and a feed-forward layer, each wrapped in a residual connection and LayerNorm,
    then pooling). Fields shared with BERT keep `BertConfig`'s names and meaning. Every field is checked by one
    function wherever a value enters: construction, `from_pretrained(..., field=value)` and later assignment; a bad
    value raises `ValueError` naming the field and its allowed values.

    Args:
        vocab_size (`int`, defaults to 10000): number of token ids the embeddings accept.
        hidden_size (`int`, defaults to 256): width d_model of every token vector.
        num_hidden_layers (`int`, defaults to 6): number of encoder blocks.
        num_attention_heads (`int`, defaults to 8): heads per self-attention; must divide `hidden_size`.
        intermediate_size (`int`, defaults to 512): inner width of the feed-forward layer.
        hidden_act (`str`, defaults to `"gelu"`): feed-forward activation, one of relu, gelu, tanh, sigmoid,
            silu, or the gated variants geglu / swiglu (act(x W_gate) * (x W_up), as in Shazeer 2020).
        hidden_dropout_prob (`float`, defaults to 0.1): dropout on embeddings and on each residual branch.
        attention_probs_dropout_prob (`float`, defaults to 0.1): dropout on the attention probabilities.
        max_position_embeddings (`int`, defaults to 512): longest sequence of absolute (learned) positions, the
            size of their table; rotary and sinusoidal positions have no table and accept longer sequences (RoPE
            scaling reads this as the length the model was trained on).
        type_vocab_size (`int`, defaults to 2): number of segment (token type) ids; 0 disables them.
        layer_norm_eps (`float`, defaults to 1e-12): LayerNorm epsilon.
        initializer_range (`float`, defaults to 0.02): std of the normal initialisation of weights.
        pad_token_id (`int`, defaults to 0): id of the padding token (its embedding is kept at zero).
        bos_token_id, eos_token_id (`int`, *optional*): ids of the tokenizer's begin / end of sequence tokens,
            as in `BertConfig`. The model does not use them; transformers' warning about padded `input_ids`
            without an `attention_mask` reads them (a pad id equal to one of them makes padding ambiguous).
        classifier_dropout (`float`, *optional*): dropout before classification heads; `None` uses
            `hidden_dropout_prob`.
        norm_position (`str`, defaults to `"post"`): `"post"` normalises after each residual add (BERT, the
            original Transformer); `"pre"` normalises the input of each sub-layer and adds a final LayerNorm,
            which trains more stably when deep.
        position_embedding_type (`str`, defaults to `"absolute"`): `"absolute"` learned position embeddings
            (BERT), `"sinusoidal"` fixed sin/cos added to the embeddings (Vaswani et al.), or `"rotary"`
            (RoPE, rotates queries and keys inside attention). Without `position_ids`, positions count from
            each sequence's first real token, so left padding does not shift them.
        rope_parameters (`dict`, defaults to `{"rope_type": "default", "rope_theta": 10000.0}`): transformers'
            v5 RoPE parameters, carried by a config with rotary positions only (transformers takes a config that
            has them for a RoPE model). `rope_theta` is the base of the rotary frequencies; `rope_type` is
            `"default"` or one of transformers' scaling types `"linear"`, `"dynamic"` or `"yarn"` with their keys
            (`factor`, ...). A config saved with a top-level `rope_theta` (before rope_parameters) loads into
            `{"rope_type": "default", "rope_theta": <its value>}`. Sinusoidal positions use Vaswani et al.'s base
            of 10000; a config of learned or sinusoidal positions refuses any other RoPE setting (a saved one that
            carries the default loads, dropping it).
        pooling (`str`, defaults to `"mean"`): sentence vector for the pooler: the mean over real tokens
            (`"mean"`, padding excluded), their element-wise maximum (`"max"`, padding excluded: max-over-time
            pooling, which keeps the strongest evidence of a long text instead of averaging it away) or the first
            real token (`"cls"`, BERT's choice, after any left padding; converted BERT checkpoints use it). Mean is the default because our pretraining is masked-LM only: nothing trains [CLS] to
            summarise the sentence, and a classifier trained from scratch on [CLS] learned far more slowly in
            our runs (chance accuracy after 100 steps of the default job, where mean pooling had 72%).
        problem_type (`str`, *optional*): loss of [`FeedbackForSequenceClassification`]: `"regression"`,
            `"single_label_classification"` or `"multi_label_classification"`; `None` infers it from
            `num_labels` and the labels' dtype, as BERT does.
        tie_word_embeddings (`bool`, defaults to `True`): share the masked-LM output projection with the input
            embeddings.
        sparse_prediction (`bool`, defaults to `False`): when [`FeedbackForMaskedLM`] gets labels in training
            mode, project only the labelled (masked) tokens onto the vocabulary, and return logits of shape
            (num_masked, V) instead of (B, T, V). The loss is the same; with 15% masking it skips most of the
            largest matmul of pretraining (H x V per token). ModernBERT's option of the same name, except that
            in evaluation mode (what `from_pretrained` returns, and Trainer's evaluation) the logits are always
            (B, T, V), labels or not: a checkpoint pretrained with the flag on serves inference as any masked LM.
        ngram_vocab_size (`int`, defaults to 0): rows of a table of hashed n-gram embeddings added to each token's
            embedding (the n-grams of token ids that end at the token, one per size in `ngram_sizes`; fastText's
            hashing trick, or the n-gram input vocabulary of Huang et al. 2025, "Over-Tokenized Transformer"); 0 turns
            them off. The model then needs `input_ids` (not `inputs_embeds`), and a decoder generates without a KV
            cache (a cache does not keep the tokens a new token's n-grams end in).
        ngram_sizes (`list[int]`, defaults to `[2, 3]`): the n-gram sizes (each >= 2) hashed into that table.
        char_vocab_size (`int`, defaults to 0): rows of a table of character embeddings; when > 0, each token's
            embedding adds the mean of the embeddings of the characters it is written with (character-enhanced word
            embeddings, Chen et al. 2015; fastText's subword vectors), so that a word piece seen a few times shares
            what its characters learned everywhere else ('很干净' with '干净' and '很'). Row 0 is "no character".
            Which characters each token holds is the model's buffer `token_characters` (vocab_size x
            `chars_per_token` ids, saved with the weights), filled by `set_token_characters` from
            `hf_feedback.data.tokenization.token_characters(tokenizer)`; 0 turns them off. The model then needs
            `input_ids` (not `inputs_embeds`).
        chars_per_token (`int`, defaults to 0): the width of `token_characters`, the longest token's character
            count; at least 1 when `char_vocab_size` > 0.
        generator_size (`float`, defaults to 0.25): [`FeedbackForPreTraining`] (ELECTRA) only: the generator's
            width (hidden size, heads, feed-forward size) as a fraction of the model's; ELECTRA's best was 1/4-1/2.
        discriminator_loss_weight (`float`, defaults to 50.0): [`FeedbackForPreTraining`] only: weight of the
            replaced-token-detection loss against the generator's masked-LM loss (ELECTRA's lambda).
        check_input_values (`bool`, defaults to `True`): check the values of each forward's inputs on the host:
            `input_ids` within the vocabulary, labels within the classes, a packed row's boundaries against its
            length, and transformers' warning about padded ids without a mask. On a GPU each check waits for the
            device; with it off, a padded batch waits once (its lengths plan the attention buckets) and a packed row
            with `cu_seq_lens` never: turn it off for training on data already checked. Traced models skip the checks.
        is_decoder (`bool`, defaults to `False`): attend causally (each token to itself and those before it) and keep
            a cache of keys and values for generation, as `BertConfig.is_decoder`: the configuration of
            [`FeedbackForCausalLM`]. Padding stays in place (no unpadding) and attention is eager or sdpa.
        use_cache (`bool`, defaults to `True`): a decoder returns its cache for the next step (`generate()` uses it).
        add_cross_attention (`bool`, defaults to `False`): a decoder's layers also attend to an encoder's output
            (`encoder_hidden_states`), as `BertConfig.add_cross_attention`: the decoder inside
            [`FeedbackForConditionalGeneration`], which sets it itself.
    """

    model_type = "feedback"
    _default_auto_map = FEEDBACK_AUTO_MAP

    vocab_size: int = 10000
    hidden_size: int = 256
    num_hidden_layers: int = 6
    num_attention_heads: int = 8
    intermediate_size: int = 512
    hidden_act: str = "gelu"
    hidden_dropout_prob: float = 0.1
    attention_probs_dropout_prob: float = 0.1
    max_position_embeddings: int = 512
    type_vocab_size: int = 2
    layer_norm_eps: float = 1e-12
    initializer_range: float = 0.02
    pad_token_id: int | None = 0
    bos_token_id: int | None = None
    eos_token_id: int | None = None
    classifier_dropout: float | None = None
    norm_position: str = "post"
    position_embedding_type: str = "absolute"
    pooling: str = "mean"
    tie_word_embeddings: bool = True
    sparse_prediction: bool = False
    ngram_vocab_size: int = 0
    ngram_sizes: list[int] | tuple[int, ...] = (2, 3)
    char_vocab_size: int = 0
    chars_per_token: int = 0
    generator_size: float = 0.25
    discriminator_loss_weight: float = 50.0
    check_input_values: bool = True
    is_decoder: bool = False
    use_cache: bool = True
    add_cross_attention: bool = False

    def __post_init__(self, **kwargs):
        if isinstance(self.ngram_sizes, tuple):
            self.ngram_sizes = list(self.ngram_sizes)  # as config.json gives it back
        rope = {key: kwargs.pop(key) for key in ("rope_parameters", "rope_theta", "rope_scaling") if key in kwargs}
        if self.position_embedding_type == "rotary":
            self.rope_parameters = rope.pop("rope_parameters", None)
            kwargs.update(rope)  # transformers turns a legacy rope_theta / rope_scaling into rope_parameters
        elif any(not _default_rope(key, value) for key, value in rope.items()):
            raise ValueError(f"FeedbackConfig: {rope} set rotary positions, but position_embedding_type is "
                             f"{self.position_embedding_type!r}; RoPE settings need position_embedding_type='rotary'")
        self._validate()
        super().__post_init__(**kwargs)  # also fills rope_parameters (rotary only), from a legacy rope_theta
        self._validate_rope()
        if getattr(self, "auto_map", None) is None:
            self.auto_map = dict(self._default_auto_map)

    def __setattr__(self, name, value):
        # A config also changes after construction: `from_pretrained(folder, hidden_act=...)` sets its keyword
        # arguments one by one on the loaded config, and users assign fields. Check every such change with the same
        # rules as construction, and undo a rejected one so the config stays valid. (A loaded config that must
        # change several linked fields at once, e.g. hidden_size and num_attention_heads, is built anew instead.)
        checked = name in self.__dataclass_fields__ or name == "rope_parameters"
        if not checked or not getattr(self, "_post_init_done", False):
            super().__setattr__(name, value)
            return
        previous, previous_rope = getattr(self, name, None), self.__dict__.get("rope_parameters")
        super().__setattr__(name, value)
        if name == "position_embedding_type":
            # Rotary positions bring their RoPE parameters; others drop the default ones (other ones are refused).
            if value == "rotary" and previous_rope is None:
                self.__dict__["rope_parameters"] = {"rope_type": "default", "rope_theta": DEFAULT_ROPE_THETA}
            elif value != "rotary" and _default_rope("rope_parameters", previous_rope):
                self.__dict__.pop("rope_parameters", None)
        try:
            self._validate()
            self._validate_rope()
        except ValueError:
            super().__setattr__(name, previous)
            self.__dict__.pop("rope_parameters", None)
            if previous_rope is not None:
                self.__dict__["rope_parameters"] = previous_rope
            raise

    def _validate(self):
        """Every field by its rule in _FIELD_RULES, then the rules that tie fields together (_JOINT_RULES)."""
        for name, check in _FIELD_RULES.items():
            value = getattr(self, name)
            problem = check(value, self)
            if problem:
                raise ValueError(f"FeedbackConfig.{name} must be {problem}, got {value!r}")
        for message, broken in _JOINT_RULES:
            if broken(self):
                raise ValueError(message(self) if callable(message) else message)

    def _validate_rope(self):
        if self.position_embedding_type != "rotary":
            if "rope_parameters" in self.__dict__:
                raise ValueError(f"FeedbackConfig.rope_parameters set rotary positions, but position_embedding_type "
                                 f"is {self.position_embedding_type!r}; set position_embedding_type='rotary' first")
            return
        rope = self.rope_parameters
        if not isinstance(rope, dict) or rope.get("rope_type") not in ROPE_TYPES:
            raise ValueError(f"FeedbackConfig.rope_parameters must be a dict whose rope_type is one of "
                             f"{list(ROPE_TYPES)}, got {rope!r}")
        theta = rope.get("rope_theta")
        if isinstance(theta, bool) or not isinstance(theta, Real) or theta < 1:
            raise ValueError(f"FeedbackConfig.rope_parameters['rope_theta'] must be a number >= 1, got {theta!r}")
        if rope.get("partial_rotary_factor", 1.0) != 1.0:
            raise ValueError("FeedbackConfig.rope_parameters: partial_rotary_factor must be 1.0 (every head "
                             "dimension rotates)")
        try:
            self.validate_rope()  # transformers' checks of each scaling type's keys
        except KeyError as error:
            raise ValueError(f"FeedbackConfig.rope_parameters: {error.args[0]}") from None


class FeedbackSeq2SeqConfig(FeedbackConfig):
    r"""
    Configuration of [`FeedbackForConditionalGeneration`] (and [`FeedbackSeq2SeqModel`]): an encoder and a decoder
    with one vocabulary and one set of sizes and switches, BART's arrangement. Every [`FeedbackConfig`] field applies
    to both halves (the decoder attends causally, with a cache, and to the encoder's output); `is_decoder` and
    `add_cross_attention` are set per half by the model and stay False here.

    Args:
        decoder_start_token_id (`int`, *optional*): the id every decoded sequence starts from (labels are shifted
            right behind it); the recipes use the tokenizer's [SEP], which no target begins with (targets from
            the tokenizer's template begin with [CLS]). Needed to train or generate.
    """

    model_type = "feedback_seq2seq"
    _default_auto_map = SEQ2SEQ_AUTO_MAP

    decoder_start_token_id: int | None = None
    is_encoder_decoder: bool = True

    def _validate(self):
        super()._validate()
        if self.is_decoder or self.add_cross_attention:
            raise ValueError("FeedbackSeq2SeqConfig: is_decoder and add_cross_attention are set per half by the "
                             "model; leave them False")
        start = self.decoder_start_token_id
        if start is not None and (isinstance(start, bool) or not isinstance(start, int) or not 0 <= start < self.vocab_size):
            raise ValueError(f"FeedbackSeq2SeqConfig.decoder_start_token_id must be None or in [0, vocab_size="
                             f"{self.vocab_size}), got {start!r}")


__all__ = ["FeedbackConfig", "FeedbackSeq2SeqConfig"]

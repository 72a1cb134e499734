"""Command line of a saved model folder (the output of recipes/finetune.py or recipes/pretrain.py).

    python -m hf_feedback predict outputs/finetune "质量很好，物流也快" "太差了"   # label<TAB>score<TAB>text
    cat reviews.txt | python -m hf_feedback predict outputs/finetune            # one text per line on stdin
    python -m hf_feedback predict outputs/pairs "天气怎么样	今天会下雨吗"            # a pair: two texts, a tab between
    python -m hf_feedback predict outputs/token_classification "迈向充满希望的新世纪"  # words of a segmentation model
    python -m hf_feedback predict outputs/seq2seq "zhong guo ren min"            # text<TAB>what the model writes
    python -m hf_feedback attention outputs/finetune "质量很好" --output attention.png
    python -m hf_feedback predict --int8 outputs/finetune "还行"                  # Linear layers in int8 (CPU)
    python -m hf_feedback export bert outputs/finetune outputs/finetune-bert      # a plain BERT folder (BERT's case)
    python -m hf_feedback export onnx outputs/finetune outputs/finetune-onnx --int8  # ONNX (and int8 ONNX)

Models load through hf_feedback's own classes (registered with the Auto classes), so the code files inside the folder
are not run. A folder that is not a saved model (missing, no config.json, no tokenizer, or not a classifier for
`predict`) stops with one line on stderr and exit status 2.
"""

import argparse
import os
import sys
from pathlib import Path

from transformers import (
    AutoConfig,
    AutoModel,
    AutoModelForCausalLM,
    AutoModelForMaskedLM,
    AutoModelForSeq2SeqLM,
    AutoModelForSequenceClassification,
    AutoModelForTokenClassification,
    AutoTokenizer,
    pipeline,
)
from .failures import DEBUG_VARIABLE, BadInput, bad_input_exits, load_pretrained
from .reports.visualize import attention_heatmaps

_AUTO_CLASSES = {  # saved head (class-name suffix) -> Auto class that reopens it
    "ForSequenceClassification": AutoModelForSequenceClassification,
    "ForMaskedLM": AutoModelForMaskedLM,
    "ForTokenClassification": AutoModelForTokenClassification,
}


# Saved heads that write text (class-name suffix -> Auto class): predict prints what they write.
_GENERATORS = {"ForCausalLM": AutoModelForCausalLM, "ForConditionalGeneration": AutoModelForSeq2SeqLM}


class CommandError(BadInput):
    """Bad input to a command: reported as one line and exit status 2."""


def _load_config(folder):
    """The configuration of a saved model folder, or CommandError saying why it is not one."""
    folder = Path(folder)
    if not folder.is_dir():
        raise CommandError(f"{folder} is not a folder")
    if not (folder / "config.json").is_file():
        raise CommandError(f"{folder} has no config.json: it is not a saved model")
    try:
        return AutoConfig.from_pretrained(folder)
    except (OSError, ValueError, KeyError) as error:
        raise CommandError(f"{folder}/config.json is not a model configuration transformers knows ({error})") from error


def _load_tokenizer(folder):
    try:
        return AutoTokenizer.from_pretrained(folder)
    except (OSError, ValueError, TypeError) as error:
        raise CommandError(f"{folder} has no usable tokenizer ({error})")


def predict(folder, texts, batch_size=32, int8=False):
    """Print `label<TAB>score<TAB>text` for each text, with the classifier saved in `folder` (its Linear layers
    quantised to int8 with `int8`: `hf_feedback.integrations.quantization.int8_linear`). A regression prints its number
    as the score; a multi-label classifier every label whose probability passes MULTI_LABEL_THRESHOLD, with their
    probabilities, comma-separated (both empty when none does)."""
    config = _load_config(folder)
    architectures = config.architectures or []
    tagger = any(name.endswith("ForTokenClassification") for name in architectures)
    generator = next((auto for suffix, auto in _GENERATORS.items() if any(a.endswith(suffix) for a in architectures)),
                     None)
    if not tagger and generator is None and not any(name.endswith("ForSequenceClassification")
                                                    for name in architectures):
        raise CommandError(
            f"{folder} holds {', '.join(architectures) or 'a model without a saved head'}, not a classifier, tagger "
            "or generator; predict needs one (e.g. the output of recipes/finetune.py, token_classification.py, "
            "seq2seq.py or pretrain.py --objective clm)"
        )
    if not texts:
        raise CommandError("no texts: give them as arguments or one per line on stdin")
    tokenizer = _load_tokenizer(folder)
    if generator is not None:
        return write(load_pretrained(generator.from_pretrained, folder).eval(), tokenizer, texts, batch_size)
    model = load_pretrained((AutoModelForTokenClassification if tagger else AutoModelForSequenceClassification)
                            .from_pretrained, folder).eval()
    if int8:
        from .integrations.quantization import int8_linear

        model = int8_linear(model)
    max_length = min(tokenizer.model_max_length, getattr(config, "max_position_embeddings", tokenizer.model_max_length))
    if tagger:
        return tag(model, tokenizer, texts, batch_size, max_length)
    classify = pipeline("text-classification", model=model, tokenizer=tokenizer)
    # A tab splits a text into a sentence pair (a model fine-tuned with --text_pair_column), as in a TSV file.
    inputs = [dict(zip(("text", "text_pair"), text.split("\t", 1))) if "\t" in text else text for text in texts]
    if config.problem_type == "multi_label_classification":
        from .tasks.metrics import MULTI_LABEL_THRESHOLD

        results = classify(inputs, batch_size=batch_size, truncation=True, max_length=max_length, top_k=None)
        for text, scores in zip(texts, results):  # every label's sigmoid, highest first
            chosen = [score for score in scores if score["score"] > MULTI_LABEL_THRESHOLD]
            labels = ",".join(score["label"] for score in chosen)
            probabilities = ",".join(f"{score['score']:.4f}" for score in chosen)
            print(f"{labels}\t{probabilities}\t{text}")
        return
    results = classify(inputs, batch_size=batch_size, truncation=True, max_length=max_length)
    for text, result in zip(texts, results):
        result = result[0] if isinstance(result, list) else result  # a regression's one number comes in a list
        print(f"{result['label']}\t{result['score']:.4f}\t{text}")


def write(model, tokenizer, texts, batch_size, max_new_tokens=64):
    """Print `text<TAB>generated` for each text, greedily (`hf_feedback.tasks.seq2seq.generate_texts`): an
    encoder-decoder's output for it, or a causal language model's continuation of it."""
    from .tasks.seq2seq import generate_texts

    for start in range(0, len(texts), batch_size):
        batch = texts[start:start + batch_size]
        prompts = tokenizer(batch, add_special_tokens=False, truncation=True)["input_ids"]
        for text, output in zip(batch, generate_texts(model, tokenizer, prompts, max_new_tokens)):
            print(f"{text}\t{output}")


def tag(model, tokenizer, texts, batch_size, max_length):
    """Print each text tagged by the token classifier `model` (predict's for a token classifier): its words
    separated by spaces for a word segmentation model (B/M/E/S tags), else `token/tag` pairs (People's Daily's
    format). A text with spaces is read as words (what a word-level tagger such as part of speech needs), one
    without as characters."""
    from .tasks.tagging import SEGMENTATION_TAGS, predict_tags, words_from_tags

    names = [model.config.id2label[i] for i in range(model.config.num_labels)]
    words = [text.split() if " " in text.strip() else [c for c in text if not c.isspace()] for text in texts]
    for row_words, tags in zip(words, predict_tags(model, tokenizer, words, batch_size, max_length)):
        if set(names) <= set(SEGMENTATION_TAGS):
            print(" ".join(words_from_tags(row_words, tags)))
        else:
            print(" ".join(f"{word}/{t}" for word, t in zip(row_words, tags)))


def attention(folder, text, output, layers=None, max_tokens=48):
    """Save the attention heat maps of `text` under the model saved in `folder` to `output`; return the path.

    Only the first `max_tokens` tokens are drawn (a note says so when the text is longer): a map grows with the
    square of the length, and one of hundreds of tokens is too large to read or to open.
    """
    if not text.strip():
        raise CommandError("the text is empty: give the sentence whose attention to draw")
    if max_tokens < 2:
        raise CommandError(f"--max_tokens must be at least 2 (the special tokens), got {max_tokens}")
    config, tokenizer = _load_config(folder), _load_tokenizer(folder)
    architecture = (config.architectures or [""])[0]
    auto_class = next((cls for suffix, cls in _AUTO_CLASSES.items() if architecture.endswith(suffix)), AutoModel)
    model = load_pretrained(auto_class.from_pretrained, folder, attn_implementation="eager")
    length = len(tokenizer(text)["input_ids"])
    if length > max_tokens:
        print(f"the text has {length} tokens; drawing the first {max_tokens} (--max_tokens)", file=sys.stderr)
    return attention_heatmaps(model, tokenizer, text, output, layers, max_tokens=max_tokens)


def _stdin_texts():
    """One text per non-empty line of stdin, which must be UTF-8 (read as bytes, so the message can say so)."""
    # Imported here: the module imports `datasets`, which predict does not otherwise need.
    from .data.user_data import not_utf8

    data = sys.stdin.buffer.read()
    problem = not_utf8(data)
    if problem:
        raise CommandError(f"stdin {problem}; convert it, e.g. "
                           "`iconv -f GB18030 -t UTF-8 texts.txt | python -m hf_feedback predict ...`")
    return [line for line in data.decode("utf-8").splitlines() if line.strip()]


def _parser():
    parser = argparse.ArgumentParser(prog="python -m hf_feedback", description=__doc__.split("\n\n")[0])
    commands = parser.add_subparsers(dest="command", required=True)

    predict_parser = commands.add_parser("predict", help="classify texts (label, score and text per line), tag "
                                                         "them (words, or token/tag pairs) or write from them (text "
                                                         "and output)")
    predict_parser.add_argument("folder", help="a saved classifier, tagger, encoder-decoder or causal LM (model + "
                                               "tokenizer)")
    predict_parser.add_argument("texts", nargs="*", help="texts to classify; without any, one per line from stdin")
    predict_parser.add_argument("--batch_size", type=int, default=32)
    predict_parser.add_argument("--int8", action="store_true",
                                help="quantise the Linear layers to int8 (dynamic, CPU): faster, slightly different")

    attention_parser = commands.add_parser("attention", help="draw attention heat maps of one text")
    attention_parser.add_argument("folder", help="a saved model (model + tokenizer)")
    attention_parser.add_argument("text")
    attention_parser.add_argument("--output", default="attention.png", help="PNG file to write")
    attention_parser.add_argument("--layers", type=int, nargs="+", help="layer indices (default: all)")
    attention_parser.add_argument("--max_tokens", type=int, default=48,
                                  help="draw at most this many tokens (the start of a longer text)")
    export_parser = commands.add_parser("export", help="write the model in another format")
    export_parser.add_argument("format", choices=["bert", "onnx"],
                               help="bert: a transformers BertModel / BertFor* folder (BERT's special case only); "
                                    "onnx: model.onnx for ONNX Runtime")
    export_parser.add_argument("folder", help="a saved hf_feedback model")
    export_parser.add_argument("destination", help="folder to write")
    export_parser.add_argument("--overwrite", action="store_true", help="write into a non-empty destination")
    export_parser.add_argument("--int8", action="store_true",
                               help="onnx only: also write model_quantized.onnx (int8 weights, dynamic activations)")
    for command in (predict_parser, attention_parser, export_parser):
        command.add_argument("--debug", action="store_true",
                             help=f"show the traceback of an error (also: {DEBUG_VARIABLE}=1)")
    return parser


def main(argv=None):
    args = _parser().parse_args(argv)
    if args.debug:
        os.environ[DEBUG_VARIABLE] = "1"
    # Bad input, ours or found by the libraries (a layer index, a damaged file), is one line and exit status 2.
    with bad_input_exits() as set_up:
        if args.command == "predict":
            predict(args.folder, args.texts or _stdin_texts(), args.batch_size, args.int8)
        elif args.command == "attention":
            print(attention(args.folder, args.text, args.output, args.layers, args.max_tokens))
        elif args.format == "bert":
            from .integrations.export_bert import export_bert  # the exporters load only when asked for

            if args.int8:
                raise CommandError("--int8 applies to the ONNX export (a BERT folder is saved in float32)")
            set_up.will_create(args.destination)
            model = export_bert(args.folder, args.destination, overwrite=args.overwrite)
            print(f"Saved {type(model).__name__} ({model.num_parameters():,} parameters) to {args.destination}")
        else:
            from .integrations.export_onnx import export_onnx

            set_up.will_create(args.destination)
            differences = export_onnx(args.folder, args.destination, overwrite=args.overwrite, int8=args.int8)
            for name, difference in differences.items():
                print(f"Saved {Path(args.destination) / name} (largest difference from torch on a padded batch: "
                      f"{difference:.1e})")


if __name__ == "__main__":
    main()

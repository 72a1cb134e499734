"""Probe (issue "Models worth using", target 2): what an ELECTRA pretraining run has learned, checkpoint by checkpoint.

    python benchmarks/probes/electra_checkpoints.py PRETRAIN_FOLDER TOKENIZER_FOLDER [OUTPUT.txt]

For every checkpoint-N in PRETRAIN_FOLDER (recipes/pretrain.py --objective electra) and the final model: the
generator's masked-LM loss, the discriminator's loss, and how often it flags a replaced token as replaced and an
original as original, on 128 validation reviews masked at 15% (fixed seed, so checkpoints see the same masks).
A constant "original" predictor scores 0 and 1 there; the generator's unigram plateau is a loss of about 7.5.
Appends one line per checkpoint to OUTPUT.txt (default: stdout only).
"""

import re
import sys
from pathlib import Path

import torch
from transformers import AutoTokenizer, DataCollatorForLanguageModeling

from hf_feedback import FeedbackForPreTraining
from hf_feedback.data import load_sentiment_reviews


def measure(folder, tokenizer, texts):
    model = FeedbackForPreTraining.from_pretrained(folder).eval()
    collator = DataCollatorForLanguageModeling(tokenizer, mlm_probability=0.15)
    encoded = [tokenizer(text, truncation=True, max_length=128) for text in texts]
    torch.manual_seed(0)
    sums = dict(generator=0.0, discriminator=0.0, caught=0, replaced=0, kept=0, originals=0)
    for start in range(0, len(encoded), 32):
        batch = collator(encoded[start:start + 32])
        with torch.no_grad():
            out = model(**batch)
        real = batch["attention_mask"].bool()
        flagged = out.logits > 0
        replaced, originals = out.replaced & real, ~out.replaced & real
        sums["generator"] += out.generator_loss.item() / 4
        sums["discriminator"] += out.discriminator_loss.item() / 4
        sums["caught"] += (flagged & replaced).sum().item()
        sums["replaced"] += replaced.sum().item()
        sums["kept"] += (~flagged & originals).sum().item()
        sums["originals"] += originals.sum().item()
    return (f"generator_mlm_loss={sums['generator']:.3f} discriminator_loss={sums['discriminator']:.4f} "
            f"replaced_flagged={sums['caught'] / sums['replaced']:.3f} originals_kept="
            f"{sums['kept'] / sums['originals']:.3f} (replaced tokens: {sums['replaced']})")


def main(argv):
    folder, tokenizer = Path(argv[0]), AutoTokenizer.from_pretrained(argv[1])
    texts = load_sentiment_reviews()["validation"]["text"][:128]
    checkpoints = sorted(folder.glob("checkpoint-*"), key=lambda p: int(re.search(r"\d+$", p.name)[0]))
    lines = [f"{path.name}: {measure(path, tokenizer, texts)}" for path in
             [*checkpoints, *([folder] if (folder / "model.safetensors").is_file() else [])]]
    print("\n".join(lines))
    if len(argv) > 2:
        with open(argv[2], "a") as out:
            out.write(f"# {folder.name}\n" + "\n".join(lines) + "\n")


if __name__ == "__main__":
    main(sys.argv[1:])

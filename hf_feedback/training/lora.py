"""LoRA fine-tuning through peft: sensible target modules for our encoder and for BERT-family checkpoints.

peft does the work (`LoraConfig`, `get_peft_model`, `merge_and_unload`); this module only chooses defaults and
checks the user's choice before training starts, because peft silently skips a listed module that matches
nothing as long as another one matches.
"""

import re

from peft import LoraConfig, TaskType, get_peft_model
# Attention projections and both feed-forward layers of every encoder block, and the word embeddings: with a vocabulary
# of 16k they are over half the model, and frozen as the masked LM left them they cost LoRA 2.7 points against full
# fine-tuning on the reviews; adapted too (r 8, 4.5% of the parameters trainable) LoRA comes within 0.9 points
# (benchmarks/RECIPE_SEARCH.md, tapt-mlm30-rotary-lora-emb-lr2e-3 against -lora-lr2e-3).
FEEDBACK_TARGETS = ["qkv_proj", "out_proj", "up_proj", "down_proj", "word_embeddings"]
# BERT, RoBERTa, ELECTRA, ... name them query/key/value and three `dense` layers per block; the regex keeps the
# pooler's and heads' `dense` out (they train fully through modules_to_save).
BERT_FAMILY_TARGETS = r".*encoder\.layer\.\d+\.(attention\.self\.(query|key|value)|attention\.output\.dense|intermediate\.dense|output\.dense)"
# Heads that start untrained; the pooler too, because a masked-LM checkpoint has none.
MODULES_TO_SAVE = ["classifier", "pooler"]


def default_target_modules(model):
    if model.config.model_type == "feedback":
        return FEEDBACK_TARGETS
    names = {name for name, _ in model.named_modules()}
    if any(re.fullmatch(BERT_FAMILY_TARGETS, name) for name in names):
        return BERT_FAMILY_TARGETS
    raise ValueError(
        f"No default LoRA target modules for model_type={model.config.model_type!r}; pass --lora_target_modules "
        "with the names of its linear layers"
    )


def check_target_modules(model, target_modules):
    """Raise ValueError naming every requested module that matches no layer of `model`."""
    names = [name for name, _ in model.named_modules()]
    if isinstance(target_modules, str):
        if not any(re.fullmatch(target_modules, name) for name in names):
            raise ValueError(f"LoRA target regex {target_modules!r} matches no module of the model")
        return
    missing = [t for t in target_modules if not any(name == t or name.endswith("." + t) for name in names)]
    if missing:
        linear = sorted({name.rsplit(".", 1)[-1] for name, m in model.named_modules() if type(m).__name__ == "Linear"})
        raise ValueError(f"LoRA target modules {missing} do not exist in the model; its linear layers are {linear}")


def apply_lora(model, r=8, alpha=16, dropout=0.1, target_modules=None, task_type=TaskType.SEQ_CLS):
    """Wrap `model` with LoRA adapters; the heads in MODULES_TO_SAVE that the model has train fully."""
    target_modules = target_modules or default_target_modules(model)
    check_target_modules(model, target_modules)
    present = {name.rsplit(".", 1)[-1] for name, _ in model.named_modules()}
    config = LoraConfig(
        task_type=task_type,
        r=r,
        lora_alpha=alpha,
        lora_dropout=dropout,
        target_modules=target_modules,
        modules_to_save=[m for m in MODULES_TO_SAVE if m in present],
    )
    return get_peft_model(model, config)

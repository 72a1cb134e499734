"""The model card's "Training procedure" section: how the run trained (objective, loss, batches, evaluation), its
hyperparameters and its hardware, and the words for the tokenizer's vocabulary that the card uses.

Moved here from model_card.py when it passed 500 lines; model_card.py renders the card and imports these.
"""

import os
import platform
from pathlib import Path

import torch

_LANGUAGE_MODELLING = ("fill-mask", "text-generation")  # pretraining: perplexity, the corpus, no labels


# What a token is, by the kind of the tokenizer's model (tokenizers' class name).
_TOKEN_KINDS = {
    "WordPiece": "WordPiece tokens (BERT pre-tokenisation: one token per Chinese character)",
    "Unigram": "unigram pieces (multi-character words learned from the corpus; SentencePiece's unigram model)",
}


def _tokenizer_kind(tokenizer):
    backend = getattr(tokenizer, "backend_tokenizer", None)
    return type(backend.model).__name__ if backend is not None else None


def _vocabulary(tokenizer):
    kind = _tokenizer_kind(tokenizer)
    return _TOKEN_KINDS.get(kind, f"{kind} tokens" if kind else "tokens")


def _local_or_hub(name):
    # A local folder is named by its last component only: the card never shows paths of this machine.
    return Path(name).name if Path(name).exists() else name


def _procedure(trainer, model, pipeline_tag, base_model, lora, adapter_only):
    if pipeline_tag == "fill-mask":
        probability = getattr(trainer.data_collator, "mlm_probability", None)
        masked = f"{probability:.0%} of the tokens" if probability is not None else "tokens"
        text = (f"Masked-language-model pretraining (`recipes/pretrain.py`): {masked} of each batch are selected "
                "(80% replaced by [MASK], 10% by a random token, 10% kept) and predicted with cross-entropy; the "
                f"output projection is tied to the input embeddings. The tokenizer ({_vocabulary(trainer.processing_class)}) "
                "was trained on the corpus.")
    elif pipeline_tag == "text-generation":
        text = ("Causal language modelling (`recipes/pretrain.py --objective clm`): every token predicts the next "
                "one with cross-entropy, attending only to the tokens before it; the output projection is tied to "
                f"the input embeddings. The tokenizer ({_vocabulary(trainer.processing_class)}) was trained on the "
                "corpus.")
    elif pipeline_tag == "text2text-generation":
        beams = getattr(trainer.args, "generation_num_beams", None) or 1
        text = ("Sequence-to-sequence training (`recipes/seq2seq.py`) with teacher forcing: the decoder reads the "
                "target shifted right behind its start token and the cross-entropy of each next target token is "
                "minimised; the validation loss chooses the checkpoint, and the final evaluations generate ("
                + ("greedy decoding" if beams == 1 else f"beam search, {beams} beams") + ") and compare the texts. "
                f"One tokenizer ({_vocabulary(trainer.processing_class)}), trained on the source and target texts "
                "together, serves both sides.")
    elif type(model).__name__.endswith("ForPreTraining"):
        probability = getattr(trainer.data_collator, "mlm_probability", None)
        masked = f"{probability:.0%} of the tokens" if probability is not None else "tokens"
        text = (f"Replaced-token-detection pretraining (ELECTRA, Clark et al. 2020; `recipes/pretrain.py --objective "
                f"electra`): {masked} of each batch are masked, a generator {model.config.generator_size:g} times as wide "
                "fills them with its own samples, and the encoder learns to tell at every token whether it is the "
                f"original (loss: generator masked-LM cross-entropy + {model.config.discriminator_loss_weight:g} x the "
                f"encoder's binary cross-entropy). The tokenizer ({_vocabulary(trainer.processing_class)}) was "
                "trained on the corpus.")
    else:
        args = trainer.args
        weights = getattr(trainer.compute_loss_func, "weights", None)
        loss = "cross-entropy" if weights is None else (
            "class-weighted cross-entropy (weights " + ", ".join(f"{w:.2f}" for w in weights.tolist()) + ")")
        batches = "length-grouped" if args.train_sampling_strategy == "group_by_length" else "random"
        if args.eval_strategy == "no":
            evaluated = "without evaluation during training"
        else:
            evaluated = "evaluated on the validation split during training"
            if args.load_best_model_at_end:
                evaluated += f", keeping the checkpoint with the best `{args.metric_for_best_model}`"
        text = (f"Supervised fine-tuning (`recipes/finetune.py`) with {loss} on the labels, dynamic padding "
                f"and {batches} batches, {evaluated}.")
    if base_model:
        text += f" Starting point: `{_local_or_hub(base_model)}`."
    elif pipeline_tag not in _LANGUAGE_MODELLING and not type(model).__name__.endswith("ForPreTraining"):
        text += " The weights started from random initialisation and the tokenizer was trained on the train split."
    if lora:
        targets = lora.target_modules
        targets = targets if isinstance(targets, str) else ", ".join(sorted(targets))
        # peft adds its task's usual head names (e.g. "score") to modules_to_save; name only those the model has.
        present = {name.rsplit(".", 1)[-1] for name, _ in model.named_modules()}
        heads = sorted(set(lora.modules_to_save or []) & present)
        text += (f" Only LoRA adapters (peft) on `{targets}` trained, and {', '.join(heads) or 'no other module'} in "
                 "full" + ("." if adapter_only else "; the adapter was then merged into the weights."))
    return text


def _hyperparameters(trainer, config, lora):
    args = trainer.args
    noam = getattr(trainer, "noam_warmup_steps", None)
    if noam is not None:
        schedule = f"Noam (Vaswani et al.), {noam} warmup steps, factor {args.learning_rate:g}"
    else:
        warmup = args.warmup_steps
        warmup = f"{warmup:.0%} of the steps" if isinstance(warmup, float) and 0 < warmup < 1 else f"{warmup:g} steps"
        schedule = f"{_value(args.lr_scheduler_type)}, peak {args.learning_rate:g}, warmup {warmup}"
    per_step = args.per_device_train_batch_size * args.world_size * args.gradient_accumulation_steps
    precision = "bf16 mixed" if args.bf16 else "fp16 mixed" if args.fp16 else "fp32"
    rows = [
        ("learning-rate schedule", schedule),
        ("optimizer", f"{_value(args.optim)}, weight decay {args.weight_decay:g}, "
                      f"gradient norm clipped at {args.max_grad_norm:g}"),
        ("batch size", f"{per_step} ({args.per_device_train_batch_size} per device × "
                       f"{_plural(args.world_size, 'process')} × "
                       f"{_plural(args.gradient_accumulation_steps, 'accumulation step')})"),
        ("optimizer steps", f"{trainer.state.global_step} ({trainer.state.epoch or 0:.2f} epochs)"),
        # Named as in BERT; a foreign architecture (GPT-2's resid_pdrop, ...) may name them otherwise.
        ("dropout (hidden, attention)", ", ".join(
            f"{getattr(config, name):g}" if isinstance(getattr(config, name, None), (int, float)) else "n/a"
            for name in ("hidden_dropout_prob", "attention_probs_dropout_prob"))),
        ("precision", precision),
        ("seed", str(args.seed)),
    ]
    if lora:
        rows.append(("LoRA", f"r={lora.r}, alpha={lora.lora_alpha}, dropout={lora.lora_dropout:g}"))
    return rows


def _hardware(args, train_runtime):
    device = args.device
    if device.type == "cuda":
        name = torch.cuda.get_device_name(device)
    elif device.type == "cpu":
        name = f"CPU ({cpu_name()}, {os.cpu_count()} cores)"
    else:
        name = device.type
    text = f"{_plural(args.world_size, 'process')} on {name}"
    if train_runtime is not None:
        text += f"; training took {_duration(train_runtime)}"
    return text


def _value(option):
    # TrainingArguments turns some string options into enums.
    return getattr(option, "value", option)


def _plural(count, noun):
    return f"{count} {noun}" + ("" if count == 1 else "es" if noun.endswith("s") else "s")


def cpu_name():
    """The CPU model as /proc/cpuinfo names it (or what platform knows)."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine() or "unknown"


def _duration(seconds):
    seconds = float(seconds)
    if seconds < 60:
        return f"{seconds:.1f} s"
    minutes, seconds = divmod(round(seconds), 60)
    hours, minutes = divmod(minutes, 60)
    return f"{hours} h {minutes} min" if hours else f"{minutes} min {seconds} s"


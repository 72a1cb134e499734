"""Probe (issue "Models worth using", target 1): the main job with an auxiliary masked-LM loss, from scratch.

    AUX_MODE=joint AUX_W=0.1 AUX_P=0.15 python benchmarks/probes/aux_mlm.py --tokenizer_name TOKENIZER \
        --output_dir OUT --seed 42 --disable_tqdm true

recipes/finetune.py with its defaults, its Trainer swapped for one whose training loss adds AUX_W x a masked-LM loss
(AUX_P of the tokens masked as BERT does, transformers' DataCollatorForLanguageModeling.torch_mask_tokens; a
dense + GELU + LayerNorm head tied to the word embeddings) computed on the same forward pass as the classification
loss, which then sees the masked input. AUX_MODE=augment keeps the masking and drops the masked-LM loss (token
masking as augmentation alone); AUX_MODE=clean classifies the clean input and runs a second forward for the
masked LM. The head is not saved: a probe, not a recipe option. Results of the runs made (seed 42, the saved
unigram-16k tokenizer of recipe_search, CPU shared with other work): benchmarks/results/aux_mlm_probe.txt.
"""
import os, sys
import torch, torch.nn as nn, torch.nn.functional as F
sys.path.insert(0, os.path.join(os.getcwd(), "recipes"))
import finetune
from hf_feedback.training import FeedbackTrainer
from transformers import DataCollatorForLanguageModeling

W, P, MODE = float(os.environ.get("AUX_W", "1")), float(os.environ.get("AUX_P", "0.15")), os.environ.get("AUX_MODE", "joint")


class Head(nn.Module):
    def __init__(self, cfg):
        super().__init__()
        self.dense = nn.Linear(cfg.hidden_size, cfg.hidden_size)
        self.norm = nn.LayerNorm(cfg.hidden_size, eps=cfg.layer_norm_eps)
        self.bias = nn.Parameter(torch.zeros(cfg.vocab_size))

    def forward(self, h, weight):
        return F.linear(self.norm(F.gelu(self.dense(h))), weight, self.bias)


class AuxTrainer(FeedbackTrainer):
    def __init__(self, *a, **k):
        super().__init__(*a, **k)
        self.head = Head(self.model.config).to(self.args.device)
        self.masker = DataCollatorForLanguageModeling(self.processing_class, mlm_probability=P)
        self.special = torch.tensor(self.processing_class.all_special_ids)
        self.captured = None
        self.model.feedback.register_forward_hook(lambda m, i, o: setattr(self, "captured", o.last_hidden_state))
        print(f"AUX mode={MODE} w={W} p={P}", flush=True)

    def create_optimizer(self, *a, **k):
        opt = super().create_optimizer(*a, **k)
        ids = {id(q) for g in opt.param_groups for q in g["params"]}
        if id(next(self.head.parameters())) not in ids:
            opt.add_param_group({"params": list(self.head.parameters()), "weight_decay": 0.0})
        return opt

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        if not model.training:
            return super().compute_loss(model, inputs, return_outputs, num_items_in_batch)
        ids = inputs["input_ids"]
        masked, labels = self.masker.torch_mask_tokens(ids.clone(), special_tokens_mask=torch.isin(ids, self.special))
        if MODE == "clean":
            loss = super().compute_loss(model, inputs, False, num_items_in_batch)
            model(input_ids=masked, attention_mask=inputs["attention_mask"])
        else:
            loss = super().compute_loss(model, {**inputs, "input_ids": masked}, False, num_items_in_batch)
        if MODE == "augment":
            return loss
        sel = labels != -100
        h = self.captured[sel]
        mlm = F.cross_entropy(self.head(h, model.feedback.embeddings.word_embeddings.weight), labels[sel])
        return loss + W * mlm


finetune.FeedbackTrainer = AuxTrainer
if __name__ == "__main__":
    finetune.main(sys.argv[1:])

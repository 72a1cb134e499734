"""Probe (issue "Models worth using", target 1): each unigram piece's embedding plus the mean of its characters'.

    CHAR_MODE=mean python benchmarks/probes/char_compose.py --tokenizer_name TOKENIZER --output_dir OUT --seed 42 \
        --disable_tqdm true [finetune.py arguments]

The unigram tokenizer makes whole words and phrases one piece ('很干净', '一股臭味'): a rare piece's embedding is
trained by its few occurrences only, while its characters are seen everywhere, and character n-grams are what
TF-IDF + logistic regression wins with. Here every piece's input embedding gets a second term from a table of
character embeddings (the characters of the pieces, '▁' stripped; special tokens none): CHAR_MODE=mean adds the
mean of the piece's characters' embeddings (character-enhanced word embeddings, Chen et al. 2015; fastText's
subword sum). recipes/finetune.py with its defaults otherwise; the table is a submodule of the model (saved with it,
so the best checkpoint reloads it). A probe, not a recipe option.
"""
import os
import sys

import torch
import torch.nn as nn

sys.path.insert(0, os.path.join(os.getcwd(), "recipes"))
import finetune  # noqa: E402

MODE = os.environ.get("CHAR_MODE", "mean")


class CharCompose(nn.Module):
    def __init__(self, tokenizer, hidden_size):
        super().__init__()
        pieces = tokenizer.convert_ids_to_tokens(list(range(len(tokenizer))))
        special = set(tokenizer.all_special_tokens)
        chars = sorted({c for p in pieces if p not in special for c in p.replace("▁", "")})
        index = {c: i + 1 for i, c in enumerate(chars)}  # 0: no character
        width = max(len(p) for p in pieces)
        table = torch.zeros(len(pieces), width, dtype=torch.long)
        for i, p in enumerate(pieces):
            if p not in special:
                ids = [index[c] for c in p.replace("▁", "")]
                table[i, :len(ids)] = torch.tensor(ids, dtype=torch.long)
        self.register_buffer("piece_chars", table, persistent=False)
        self.register_buffer("piece_lengths", (table > 0).sum(-1, keepdim=True).clamp(min=1).float(), persistent=False)
        self.char_embeddings = nn.Embedding(len(chars) + 1, hidden_size, padding_idx=0)
        nn.init.normal_(self.char_embeddings.weight, std=0.02)
        with torch.no_grad():
            self.char_embeddings.weight[0].zero_()
        print(f"CHAR {MODE}: {len(chars)} characters, pieces up to {width}", flush=True)

    def forward(self, input_ids):
        chars = self.piece_chars[input_ids]  # (..., width)
        return self.char_embeddings(chars).sum(-2) / self.piece_lengths[input_ids]


_Trainer = finetune.FeedbackTrainer


class ProbeTrainer(_Trainer):
    def __init__(self, *a, **k):
        model = k["model"]
        model.char_compose = CharCompose(k["processing_class"], model.config.hidden_size)
        model.feedback.embeddings.word_embeddings.register_forward_hook(
            lambda module, inputs, output: output + model.char_compose(inputs[0]))
        super().__init__(*a, **k)


finetune.FeedbackTrainer = ProbeTrainer

if __name__ == "__main__":
    finetune.main()

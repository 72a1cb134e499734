"""Saved folders are self-contained: they open with every Auto class where hf_feedback cannot be imported."""

import ast
import json
import subprocess
import sys
import textwrap

import torch

from helpers import WITHOUT_HF_FEEDBACK

from hf_feedback import (
    FeedbackForCausalLM,
    FeedbackForMaskedLM,
    FeedbackForPreTraining,
    FeedbackForSequenceClassification,
    FeedbackForTokenClassification,
    FeedbackModel,
)

AUTO_CLASSES = ["AutoModel", "AutoModelForSequenceClassification", "AutoModelForMaskedLM",
                "AutoModelForTokenClassification", "AutoModelForPreTraining"]
HEAD_OUTPUT = {  # the output each saved head is compared on when reopened with its own Auto class
    FeedbackModel: ("AutoModel", "pooler_output"),
    FeedbackForSequenceClassification: ("AutoModelForSequenceClassification", "logits"),
    FeedbackForMaskedLM: ("AutoModelForMaskedLM", "logits"),
    FeedbackForTokenClassification: ("AutoModelForTokenClassification", "logits"),
    FeedbackForPreTraining: ("AutoModelForPreTraining", "logits"),
}

LOADER = WITHOUT_HF_FEEDBACK + textwrap.dedent(
    """
    import torch
    import transformers
    root = sys.argv[1]
    inputs = torch.load(root + "/inputs.pt")
    results = {}
    for folder in sys.argv[2:]:
      for name in %r:
        model = getattr(transformers, name).from_pretrained(f"{root}/{folder}", trust_remote_code=True).eval()
        assert type(model).__module__.startswith("transformers_modules"), type(model).__module__
        base = model if name == "AutoModel" else getattr(model, model.base_model_prefix)
        with torch.no_grad():
            out = model(**inputs)
            results[folder, name] = {"class": type(model).__name__, "hidden": base(**inputs).last_hidden_state,
                                     "head": out.pooler_output if name == "AutoModel" else out.logits}
    torch.save(results, root + "/out.pt")
    """
    % (AUTO_CLASSES,)
)


def test_saved_heads_open_with_every_auto_class_without_hf_feedback(tiny_config, batch, tmp_path):
    input_ids, attention_mask = batch
    torch.save({"input_ids": input_ids, "attention_mask": attention_mask}, tmp_path / "inputs.pt")
    models = {}
    for head in HEAD_OUTPUT:
        torch.manual_seed(0)
        models[head] = model = head(tiny_config(num_labels=3)).eval()
        folder = tmp_path / head.__name__
        model.save_pretrained(folder)
        # The folder carries its code and an auto_map naming every Auto class; the code imports only relatively.
        assert sorted(p.name for p in folder.iterdir()) == [
            "config.json", "configuration_feedback.py", "model.safetensors", "modeling_feedback.py"]
        auto_map = json.loads((folder / "config.json").read_text())["auto_map"]
        assert set(auto_map) == {"AutoConfig", *AUTO_CLASSES, "AutoModelForCausalLM"}
        for source in ("configuration_feedback.py", "modeling_feedback.py"):
            tree = ast.parse((folder / source).read_text())
            for node in ast.walk(tree):
                if isinstance(node, ast.ImportFrom) and node.level == 0:
                    assert not node.module.startswith("hf_feedback"), (source, node.module)
                if isinstance(node, ast.Import):
                    assert not any(a.name.startswith("hf_feedback") for a in node.names), source

    # The same number of torch threads as this process (one under xdist): equal outputs, bit for bit, need the same
    # order of each reduction.
    env = {"HF_HUB_OFFLINE": "1", "HF_MODULES_CACHE": str(tmp_path / "modules"), "PATH": "/usr/bin:/bin",
           "OMP_NUM_THREADS": str(torch.get_num_threads())}
    result = subprocess.run([sys.executable, "-c", LOADER, str(tmp_path), *(h.__name__ for h in HEAD_OUTPUT)],
                            capture_output=True, text=True, env=env, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    reopened = torch.load(tmp_path / "out.pt")

    for head, model in models.items():
        with torch.no_grad():
            base = model if head is FeedbackModel else model.feedback
            hidden = base(input_ids, attention_mask).last_hidden_state
            own_class, key = HEAD_OUTPUT[head]
            expected_head = model(input_ids, attention_mask)[key]
        for name in AUTO_CLASSES:
            got = reopened[head.__name__, name]
            assert got["class"] == {"AutoModel": "FeedbackModel",
                                    "AutoModelForSequenceClassification": "FeedbackForSequenceClassification",
                                    "AutoModelForMaskedLM": "FeedbackForMaskedLM",
                                    "AutoModelForTokenClassification": "FeedbackForTokenClassification",
                                    "AutoModelForPreTraining": "FeedbackForPreTraining"}[name]
            # Every Auto class shares the saved encoder exactly.
            torch.testing.assert_close(got["hidden"], hidden, atol=0, rtol=0)
        torch.testing.assert_close(reopened[head.__name__, own_class]["head"], expected_head, atol=0, rtol=0)


def _reopened_without_hf_feedback(model, tokenizer, folder, loader):
    """Save `model` and `tokenizer` to `folder`, run `loader` on it in a fresh interpreter where hf_feedback cannot
    be imported, and return what the loader saved and the two texts' inputs it ran on."""
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    encoded = tokenizer(["今天天气很好", "不好"], padding=True, return_tensors="pt")
    inputs = {"input_ids": encoded["input_ids"], "attention_mask": encoded["attention_mask"]}
    torch.save(inputs, folder.parent / "inputs.pt")
    env = {"HF_HUB_OFFLINE": "1", "HF_MODULES_CACHE": str(folder.parent / "modules"), "PATH": "/usr/bin:/bin"}
    result = subprocess.run([sys.executable, "-c", loader, str(folder)], capture_output=True, text=True, env=env,
                            timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    return torch.load(folder.parent / "reopened.pt"), inputs


CAUSAL_LOADER = WITHOUT_HF_FEEDBACK + textwrap.dedent(
    """
    import torch
    from transformers import AutoModel, AutoModelForCausalLM, pipeline
    folder = sys.argv[1]
    inputs = torch.load(folder + "/../inputs.pt")
    model = AutoModelForCausalLM.from_pretrained(folder, trust_remote_code=True).eval()
    assert type(model).__module__.startswith("transformers_modules"), type(model).__module__
    base = AutoModel.from_pretrained(folder, trust_remote_code=True).eval()
    generator = pipeline("text-generation", model=folder, trust_remote_code=True)
    with torch.no_grad():
        results = {"class": type(model).__name__, "base": type(base).__name__, "logits": model(**inputs).logits,
                   "hidden": base(**inputs).last_hidden_state,
                   "greedy": model.generate(**inputs, max_new_tokens=6, do_sample=False),
                   "text": generator("今天天气", max_new_tokens=4, do_sample=False)[0]["generated_text"]}
    from transformers import AutoTokenizer
    for flag in (False, True, None):  # None: not at a terminal, nobody to ask whether to run the folder's code
        loaded = AutoTokenizer.from_pretrained(folder, trust_remote_code=flag)
        results[f"tokenizer {flag}"] = (type(loaded).__module__, type(loaded).__name__, loaded("今天天气很好")["input_ids"])
    torch.save(results, folder + "/../reopened.pt")
    """
)


def test_a_saved_causal_lm_generates_without_hf_feedback(tiny_config, tmp_path):
    # AutoModelForCausalLM, AutoModel (the decoder's base) and the text-generation pipeline from the folder's own
    # code: the same logits, the same greedy tokens and the same text as the model that saved it.
    from transformers import pipeline

    from hf_feedback.data.corpora import load_sentiment_reviews
    from hf_feedback.data.tokenization import train_tokenizer

    tokenizer = train_tokenizer(load_sentiment_reviews()["train"]["text"][:300], vocab_size=600, kind="wordpiece")
    torch.manual_seed(0)
    model = FeedbackForCausalLM(tiny_config(is_decoder=True, vocab_size=len(tokenizer), norm_position="pre",
                                            position_embedding_type="rotary", eos_token_id=tokenizer.sep_token_id,
                                            bos_token_id=tokenizer.cls_token_id)).eval()
    reopened, inputs = _reopened_without_hf_feedback(model, tokenizer, tmp_path / "causal", CAUSAL_LOADER)
    assert (reopened["class"], reopened["base"]) == ("FeedbackForCausalLM", "FeedbackModel")
    with torch.no_grad():
        torch.testing.assert_close(reopened["logits"], model(**inputs).logits, atol=0, rtol=0)
        torch.testing.assert_close(reopened["hidden"], model.feedback(**inputs).last_hidden_state, atol=0, rtol=0)
        assert torch.equal(reopened["greedy"], model.generate(**inputs, max_new_tokens=6, do_sample=False))
    text = pipeline("text-generation", model=model, tokenizer=tokenizer)("今天天气", max_new_tokens=4, do_sample=False)
    assert reopened["text"] == text[0]["generated_text"] and reopened["text"].startswith("今天天气")
    # The tokenizer beside the model is transformers' own class, no code of ours: trust_remote_code False, True or
    # unset give the same one (at a terminal, unset, AutoTokenizer asks first: it reads config.json, whose auto_map
    # names the model's code).
    ids = tokenizer("今天天气很好")["input_ids"]
    for flag in (False, True, None):
        module, name, got = reopened[f"tokenizer {flag}"]
        assert module.startswith("transformers.") and name == "TokenizersBackend" and got == ids, (flag, module, name)


SEQ2SEQ_LOADER = WITHOUT_HF_FEEDBACK + textwrap.dedent(
    """
    import torch
    from transformers import AutoModel, AutoModelForSeq2SeqLM
    folder = sys.argv[1]
    inputs = torch.load(folder + "/../inputs.pt")
    model = AutoModelForSeq2SeqLM.from_pretrained(folder, trust_remote_code=True).eval()
    assert type(model).__module__.startswith("transformers_modules"), type(model).__module__
    base = AutoModel.from_pretrained(folder, trust_remote_code=True).eval()
    with torch.no_grad():
        results = {"class": type(model).__name__, "base": type(base).__name__,
                   "greedy": model.generate(**inputs, max_new_tokens=6, do_sample=False),
                   "hidden": base(**inputs, decoder_input_ids=torch.full((2, 1), 2)).last_hidden_state}
    torch.save(results, folder + "/../reopened.pt")
    """
)


def test_a_saved_encoder_decoder_generates_without_hf_feedback(tiny_config, tmp_path):
    # AutoModelForSeq2SeqLM and AutoModel (the bare encoder-decoder) from the folder's own code, as the model that
    # saved it. (transformers 5 removed the text2text-generation pipeline: generate() is the way.)
    from hf_feedback import FeedbackForConditionalGeneration, FeedbackSeq2SeqConfig
    from hf_feedback.model.configuration_feedback import SEQ2SEQ_AUTO_MAP
    from hf_feedback.data.corpora import load_sentiment_reviews
    from hf_feedback.data.tokenization import train_tokenizer

    tokenizer = train_tokenizer(load_sentiment_reviews()["train"]["text"][:300], vocab_size=600, kind="wordpiece")
    fields = {k: v for k, v in tiny_config().to_diff_dict().items()
              if k not in ("auto_map", "model_type", "transformers_version")}
    config = FeedbackSeq2SeqConfig(**{**fields, "vocab_size": len(tokenizer), "norm_position": "pre",
                                      "position_embedding_type": "rotary", "initializer_range": 0.5,
                                      "decoder_start_token_id": tokenizer.cls_token_id,
                                      "eos_token_id": tokenizer.sep_token_id})
    torch.manual_seed(0)
    model = FeedbackForConditionalGeneration(config).eval()
    reopened, inputs = _reopened_without_hf_feedback(model, tokenizer, tmp_path / "seq2seq", SEQ2SEQ_LOADER)
    assert json.loads((tmp_path / "seq2seq" / "config.json").read_text())["auto_map"] == SEQ2SEQ_AUTO_MAP
    assert (reopened["class"], reopened["base"]) == ("FeedbackForConditionalGeneration", "FeedbackSeq2SeqModel")
    with torch.no_grad():
        assert torch.equal(reopened["greedy"], model.generate(**inputs, max_new_tokens=6, do_sample=False))
        torch.testing.assert_close(reopened["hidden"], model.model(**inputs, decoder_input_ids=torch.full(
            (2, 1), 2)).last_hidden_state, atol=0, rtol=0)

"""transformers pipelines on checkpoints saved by the recipes (tiny runs): the numbers are the model's own."""


import pytest
import torch
from transformers import AutoModelForMaskedLM, AutoModelForSequenceClassification, AutoTokenizer, pipeline

from helpers import run_recipe

from hf_feedback import FeedbackModel

TEXTS = ["质量很好，物流也快", "太差了，再也不买了", "一般般，还可以吧", "书的内容不错，但是纸张很差，印刷也模糊", "好"]




@pytest.fixture(scope="module")
def classifier(tmp_path_factory):
    output_dir = tmp_path_factory.mktemp("finetune")
    run_recipe("finetune", ["--output_dir", str(output_dir), "--config_overrides",
                            "hidden_size=32,num_hidden_layers=1,num_attention_heads=2,intermediate_size=64",
                            "--tokenizer_vocab_size", "2000", "--max_train_samples", "256", "--max_eval_samples", "32",
                            "--max_steps", "2", "--per_device_train_batch_size", "16", "--learning_rate", "3e-3",
                            "--logging_steps", "1", "--eval_strategy", "no", "--save_strategy", "no",
                            "--disable_tqdm", "true"])
    return output_dir


@pytest.fixture(scope="module")
def masked_lm(tmp_path_factory):
    output_dir = tmp_path_factory.mktemp("pretrain")
    run_recipe("pretrain", ["--output_dir", str(output_dir), "--max_train_samples", "400", "--max_steps", "2",
                            "--config_overrides", "hidden_size=32,num_hidden_layers=2,num_attention_heads=2,"
                            "intermediate_size=64", "--tokenizer_vocab_size", "2000", "--learning_rate", "2e-3",
                            "--per_device_train_batch_size", "16", "--logging_steps", "1", "--eval_strategy", "no",
                            "--save_strategy", "no", "--disable_tqdm", "true"])
    return output_dir


def softmax_of_logits(folder, texts):
    model = AutoModelForSequenceClassification.from_pretrained(folder).eval()
    tokenizer = AutoTokenizer.from_pretrained(folder)
    with torch.no_grad():
        return [model(**tokenizer(text, return_tensors="pt")).logits.softmax(-1)[0] for text in texts]


def test_text_classification_pipeline_gives_the_models_probabilities(classifier):
    classify = pipeline("text-classification", model=str(classifier), trust_remote_code=True)
    assert classify.model.config.id2label == {0: "negative", 1: "positive"}  # saved by the recipe

    expected = softmax_of_logits(classifier, TEXTS)
    best = classify(TEXTS[0])
    assert best == [{"label": ["negative", "positive"][int(expected[0].argmax())],
                     "score": pytest.approx(float(expected[0].max()), abs=1e-6)}]

    one_by_one = [classify(text, top_k=None) for text in TEXTS]
    for scores, probabilities in zip(one_by_one, expected):
        by_label = {entry["label"]: entry["score"] for entry in scores}
        assert set(by_label) == {"negative", "positive"}
        assert sum(by_label.values()) == pytest.approx(1.0, abs=1e-6)
        assert [by_label["negative"], by_label["positive"]] == pytest.approx(probabilities.tolist(), abs=1e-6)

    # Padded into batches of 4, the texts score as they do alone.
    batched = classify(TEXTS, top_k=None, batch_size=4)
    for alone, in_batch in zip(one_by_one, batched):
        assert [e["label"] for e in in_batch] == [e["label"] for e in alone]
        assert [e["score"] for e in in_batch] == pytest.approx([e["score"] for e in alone], abs=1e-5)


def test_fill_mask_pipeline_gives_the_masked_lm_probabilities(masked_lm):
    fill = pipeline("fill-mask", model=str(masked_lm), trust_remote_code=True)
    text = "中国[MASK]民银行"
    predictions = fill(text, top_k=5)

    tokenizer = AutoTokenizer.from_pretrained(masked_lm)
    model = AutoModelForMaskedLM.from_pretrained(masked_lm).eval()
    inputs = tokenizer(text, return_tensors="pt")
    position = int((inputs["input_ids"][0] == tokenizer.mask_token_id).nonzero())
    with torch.no_grad():
        probabilities = model(**inputs).logits[0, position].softmax(-1)
    top = probabilities.topk(5)
    assert [p["token"] for p in predictions] == top.indices.tolist()
    assert [p["score"] for p in predictions] == pytest.approx(top.values.tolist(), abs=1e-6)
    assert [p["token_str"] for p in predictions] == [tokenizer.decode([i]) for i in top.indices.tolist()]


def test_feature_extraction_pipeline_gives_the_encoders_last_hidden_states(classifier):
    extract = pipeline("feature-extraction", model=str(classifier), trust_remote_code=True)
    features = extract(TEXTS[3], return_tensors=True)  # (1, T, H)

    encoder = FeedbackModel.from_pretrained(classifier).eval()
    tokenizer = AutoTokenizer.from_pretrained(classifier)
    with torch.no_grad():
        hidden = encoder(**tokenizer(TEXTS[3], return_tensors="pt")).last_hidden_state
    assert features.shape == hidden.shape == (1, len(tokenizer(TEXTS[3])["input_ids"]), 32)
    torch.testing.assert_close(features, hidden, atol=1e-5, rtol=1e-5)

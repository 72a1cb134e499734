"""`python -m hf_feedback predict | attention` on a real saved checkpoint (tiny model, trained tokenizer)."""

import os
import subprocess
import sys

import pytest
import torch
from matplotlib.image import imread
from transformers import AutoTokenizer

from helpers import ROOT

from hf_feedback import FeedbackForMaskedLM, FeedbackForSequenceClassification
from hf_feedback.__main__ import main
from hf_feedback.failures import BadInput
from hf_feedback.data.corpora import SENTIMENT_LABELS, load_sentiment_reviews
from hf_feedback.data.tokenization import train_tokenizer

TEXTS = ["质量很好，物流也快", "太差了，再也不买了", "一般般"]


@pytest.fixture
def classifier(tiny_config, tmp_path):
    """A saved classifier folder: tiny model with the sentiment labels + a tokenizer trained on 300 reviews."""
    tokenizer = train_tokenizer(load_sentiment_reviews()["train"]["text"][:300], vocab_size=500, model_max_length=64)
    torch.manual_seed(0)
    config = tiny_config(vocab_size=len(tokenizer), id2label=dict(enumerate(SENTIMENT_LABELS)),
                         label2id={name: i for i, name in enumerate(SENTIMENT_LABELS)})
    folder = tmp_path / "classifier"
    FeedbackForSequenceClassification(config).save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder


def expected_rows(folder, texts):
    model = FeedbackForSequenceClassification.from_pretrained(folder).eval()
    tokenizer = AutoTokenizer.from_pretrained(folder)
    rows = []
    for text in texts:
        with torch.no_grad():
            probabilities = model(**tokenizer(text, return_tensors="pt")).logits.softmax(-1)[0]
        rows.append((SENTIMENT_LABELS[int(probabilities.argmax())], float(probabilities.max()), text))
    return rows


def parse(output):
    rows = [line.split("\t") for line in output.splitlines()]
    return [(label, float(score), text) for label, score, text in rows]


def assert_rows(got, expected):
    assert [(label, text) for label, _, text in got] == [(label, text) for label, _, text in expected]
    assert [score for _, score, _ in got] == pytest.approx([score for _, score, _ in expected], abs=1e-4)


def test_predict_reads_one_text_per_line_from_stdin(classifier):
    # A real `python -m hf_feedback` process with texts piped in; blank lines are skipped.
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}
    result = subprocess.run([sys.executable, "-m", "hf_feedback", "predict", str(classifier)], cwd=ROOT, env=env,
                            input=f"{TEXTS[0]}\n\n{TEXTS[1]}\r\n{TEXTS[2]}", capture_output=True, text=True,
                            encoding="utf-8", timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    assert_rows(parse(result.stdout), expected_rows(classifier, TEXTS))


def test_predict_prints_label_score_and_text_per_argument(classifier, capsys):
    main(["predict", str(classifier), *TEXTS, "--batch_size", "2"])
    assert_rows(parse(capsys.readouterr().out), expected_rows(classifier, TEXTS))


def test_attention_command_writes_the_heat_maps(classifier, tmp_path, capsys):
    # In-process, as the other commands here: the subprocess test above covers `python -m hf_feedback` itself.
    output = tmp_path / "heatmap.png"
    main(["attention", str(classifier), TEXTS[0], "--output", str(output), "--layers", "1"])
    assert capsys.readouterr().out.strip() == str(output)
    assert imread(output)[..., :3].std() > 0.05


def test_a_folder_that_is_not_a_classifier_exits_with_status_2(classifier, tiny_config, tmp_path, capsys):
    masked_lm = tmp_path / "masked_lm"
    FeedbackForMaskedLM(tiny_config()).save_pretrained(masked_lm)
    (tmp_path / "empty").mkdir()
    for folder, words in [(tmp_path / "missing", "is not a folder"), (tmp_path / "empty", "no config.json"),
                          (masked_lm, "FeedbackForMaskedLM, not a classifier, tagger or generator")]:
        with pytest.raises(SystemExit) as exit_info:
            main(["predict", str(folder), "text"])
        assert exit_info.value.code == 2
        captured = capsys.readouterr()
        assert words in captured.err and not captured.out, captured.err
    with pytest.raises(SystemExit) as exit_info:
        main(["attention", str(classifier), "text", "--layers", "5", "--output", str(tmp_path / "a.png")])
    assert exit_info.value.code == 2 and "num_hidden_layers=2" in capsys.readouterr().err


def run_cli(args, **kwargs):
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}
    env.pop("HF_FEEDBACK_DEBUG", None)
    env.update(kwargs.pop("env", {}))
    return subprocess.run([sys.executable, "-m", "hf_feedback", *args], cwd=ROOT, env=env, capture_output=True,
                          timeout=300, **kwargs)


def test_gbk_on_stdin_is_named_in_one_line(classifier):
    result = run_cli(["predict", str(classifier)], input="质量很好\n太差了\n".encode("gbk"))
    error = result.stderr.decode()
    assert result.returncode == 2 and result.stdout == b""
    assert error.startswith("error: stdin is not UTF-8 (it decodes as GBK") and error.count("\n") == 1, error


def test_a_damaged_checkpoint_is_named_without_a_traceback_unless_debugging(classifier, monkeypatch):
    weights = classifier / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:1000])  # a copy cut short
    result = run_cli(["predict", str(classifier), "好"], text=True)
    assert result.returncode == 2 and "Traceback" not in result.stderr
    line = result.stderr.strip().splitlines()[-1]
    assert line.startswith(f"error: {classifier}: the weights (model.safetensors) are damaged or incomplete"), line
    # Debugging (the flag, or the variable) lets the error through with its traceback (in this process: raised).
    for debug, variable in ((["--debug"], "0"), ([], "1")):  # (the flag sets the variable: monkeypatch restores it)
        monkeypatch.setenv("HF_FEEDBACK_DEBUG", variable)
        with pytest.raises(BadInput, match="damaged or incomplete"):
            main(["predict", str(classifier), "好", *debug])


def test_attention_refuses_an_empty_text_and_draws_the_start_of_a_long_one(classifier, tmp_path, capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["attention", str(classifier), "  ", "--output", str(tmp_path / "empty.png")])
    assert exit_info.value.code == 2 and "the text is empty" in capsys.readouterr().err
    assert not (tmp_path / "empty.png").exists()

    long_text = TEXTS[0] * 200
    short, long = tmp_path / "short.png", tmp_path / "long.png"
    main(["attention", str(classifier), long_text, "--output", str(long), "--layers", "0", "--max_tokens", "16"])
    assert "drawing the first 16 (--max_tokens)" in capsys.readouterr().err
    # The same picture as the text's first 14 tokens (16 with [CLS] and [SEP]) drawn whole.
    tokenizer = AutoTokenizer.from_pretrained(classifier)
    start = tokenizer.decode(tokenizer(long_text, add_special_tokens=False)["input_ids"][:14]).replace(" ", "")
    assert len(tokenizer(start)["input_ids"]) == 16
    main(["attention", str(classifier), start, "--output", str(short), "--layers", "0"])
    assert imread(long).shape == imread(short).shape

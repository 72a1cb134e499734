"""hf_feedback/tasks/seq2seq.py and recipes/seq2seq.py: the pinyin task, its baseline, the generation metrics, and tiny
real runs of the encoder-decoder recipe."""

import hashlib
import json
import math
from collections import Counter

import datasets
import pytest
import torch
from transformers import AutoModelForSeq2SeqLM, AutoTokenizer

from helpers import load_recipe, losses

from hf_feedback import FeedbackForConditionalGeneration, FeedbackSeq2SeqConfig
from hf_feedback.__main__ import main as cli
from hf_feedback.data.tokenization import train_tokenizer
from hf_feedback.tasks.metrics import load_metric_module
from hf_feedback.tasks.seq2seq import (
    PinyinConstraint,
    character_corpus,
    decode_generated,
    detokenize,
    load_pinyin_task,
    most_frequent_character_baseline,
    pinyin_candidates,
    pinyin_of,
    tokenize_pairs,
    write_from_pinyin,
)

seq2seq = load_recipe("seq2seq")
TINY_MODEL = "hidden_size=64,num_hidden_layers=2,num_attention_heads=4,intermediate_size=128"


@pytest.fixture(scope="module")
def pinyin_task():
    return load_pinyin_task(max_sentences=1500)


def test_pinyin_items_align_with_characters_and_read_in_context(pinyin_task):
    # One item per character: toneless syllables (ü as v), and characters that are not Chinese as themselves.
    assert pinyin_of("１９９８年，中国人民银行决定下调利率。") == [
        "１", "９", "９", "８", "nian", "，", "zhong", "guo", "ren", "min", "yin", "hang", "jue", "ding", "xia",
        "tiao", "li", "lv", "。"]
    assert pinyin_of("银行") == ["yin", "hang"] and pinyin_of("行走") == ["xing", "zou"]  # the phrase decides
    for split, data in pinyin_task.items():
        for source, target in zip(data["source"], data["target"]):
            assert len(source.split(" ")) == len(target)
            bucket = int(hashlib.md5(target.encode("utf-8")).hexdigest(), 16) % 10
            assert split == {0: "test", 1: "validation"}.get(bucket, "train")
    assert sum(map(len, pinyin_task.values())) == 1500 and len(pinyin_task["test"]) > 100


def test_the_baseline_writes_each_syllable_as_its_most_frequent_character():
    train = {"source": ["shi shi", "shi jie", "jie shi"], "target": ["事实", "世界", "解释"]}
    test = {"source": ["shi jie ， ok", "jie"], "target": ["", ""]}
    # shi: 事 1, 实 1, 世 1, 释 1 -> the first counted wins ties (事); jie: 界 1, 解 1 -> 界
    assert most_frequent_character_baseline(train, test) == ["事界，ok", "界"]


def test_generation_metrics_count_edits_exact_sentences_and_sacrebleu_scores():
    metric = load_metric_module("generation")
    scores = metric.compute(predictions=["今天天气很好", "你好", "猫"], references=["今天天气不好", "你好", "小猫"])
    assert scores["cer"] == pytest.approx((1 + 0 + 1) / (6 + 2 + 2))  # one substitution, one deletion
    assert scores["sentence_accuracy"] == pytest.approx(1 / 3)
    perfect = metric.compute(predictions=["今天天气很好"], references=["今天天气很好"])
    assert perfect["cer"] == 0 and perfect["bleu"] == pytest.approx(100) and perfect["chrf"] == pytest.approx(100)
    assert detokenize(" 今 天 ， 1998 年 ") == "今天， 1998 年"  # decode's spaces between Chinese tokens go


@pytest.fixture(scope="module")
def pinyin_files(pinyin_task, tmp_path_factory):
    folder = tmp_path_factory.mktemp("pinyin")
    for split, data in pinyin_task.items():
        data.rename_columns({"source": "pinyin", "target": "hanzi"}).to_csv(str(folder / f"{split}.csv"))
    return folder


def test_the_recipe_learns_to_write_characters_and_its_folder_generates(pinyin_files, tmp_path, capsys):
    output_dir = tmp_path / "run"
    seq2seq.main(["--output_dir", str(output_dir), "--train_file", str(pinyin_files / "train.csv"),
                  "--validation_file", str(pinyin_files / "validation.csv"),
                  "--test_file", str(pinyin_files / "test.csv"), "--source_column", "pinyin",
                  "--target_column", "hanzi", "--config_overrides", TINY_MODEL, "--tokenizer_vocab_size", "3000",
                  "--max_eval_samples", "16", "--max_steps", "40", "--learning_rate", "3e-3", "--logging_steps", "10",
                  "--eval_steps", "20", "--save_steps", "20", "--generation_max_length", "32",
                  "--disable_tqdm", "true"])
    assert "test character error rate:" in capsys.readouterr().out
    loss = losses(output_dir)
    assert loss[-1] < loss[0] - 1, loss  # from ~log(vocabulary): it learns which characters a syllable can be
    predictions = (output_dir / "generated_predictions.txt").read_text().splitlines()
    assert len(predictions) == 16  # one line per test pair, special tokens dropped
    assert not any(token in text for text in predictions for token in ("[CLS]", "[SEP]", "[PAD]"))
    results = json.loads((output_dir / "test_results.json").read_text())
    assert {"test_cer", "test_sentence_accuracy", "test_bleu", "test_chrf"} <= set(results)
    assert 0 < results["test_cer"] <= 1.5 and results["test_samples"] == 16
    card = (output_dir / "README.md").read_text()
    assert "pipeline_tag: text2text-generation" in card and "Character error rate" in card
    model = AutoModelForSeq2SeqLM.from_pretrained(output_dir).eval()
    tokenizer = AutoTokenizer.from_pretrained(output_dir)
    assert type(model).__name__ == "FeedbackForConditionalGeneration"
    with torch.no_grad():
        generated = model.generate(**tokenizer(["zhong guo ren min"], return_tensors="pt"), max_new_tokens=8)
    assert generated[0, 0] == tokenizer.sep_token_id and generated.shape[1] > 1  # the start token
    capsys.readouterr()
    cli(["predict", str(output_dir), "zhong guo ren min", "jin tian"])  # text<TAB>what it writes, per line
    lines = capsys.readouterr().out.splitlines()
    assert [line.split("\t")[0] for line in lines] == ["zhong guo ren min", "jin tian"]
    with torch.no_grad():  # greedy, 64 new tokens at most, as predict writes
        alone = model.generate(**tokenizer(["zhong guo ren min"], return_tensors="pt"), max_new_tokens=64)
    assert lines[0].split("\t")[1] == decode_generated(alone.numpy(), tokenizer)[0]


def test_pairs_cut_to_their_limits_keep_sep_and_are_flagged():
    tokenizer = train_tokenizer(["ni hao shi jie", "你好世界"] * 5, vocab_size=100, kind="wordpiece")
    pairs = datasets.Dataset.from_dict({"source": ["ni hao shi jie ni hao", "ni"], "target": ["你好世界你好", "你"]})
    tokenized = tokenize_pairs(pairs, tokenizer, max_source_length=5, max_target_length=4)
    assert tokenized["input_ids"] == [tokenizer(s, truncation=True, max_length=5)["input_ids"] for s in pairs["source"]]
    assert tokenized["labels"] == [tokenizer("你好世", add_special_tokens=False)["input_ids"] + [tokenizer.sep_token_id],
                                   tokenizer("你", add_special_tokens=False)["input_ids"] + [tokenizer.sep_token_id]]
    assert tokenized["cut"] == [True, False] and all(len(mask) <= 5 for mask in tokenized["attention_mask"])
    # A tokenizer without Rust encodings (a Python one) is asked for the whole rows instead: the same answer.
    from transformers import BatchEncoding

    from hf_feedback.tasks.seq2seq import _overflowed

    sources = list(pairs["source"])
    fast = tokenizer(sources, truncation=True, max_length=5)
    assert _overflowed(tokenizer, sources, BatchEncoding(dict(fast))) == _overflowed(tokenizer, sources, fast) == [
        True, False]


def test_bad_seq2seq_input_fails_before_training(pinyin_files, tmp_path, capsys):
    def refused(args, *words):
        output_dir = tmp_path / str(len(list(tmp_path.iterdir())))
        with pytest.raises(SystemExit) as exit_info:
            seq2seq.main(["--output_dir", str(output_dir), *args, "--max_steps", "1"])
        assert exit_info.value.code == 2 and not output_dir.exists()
        message = capsys.readouterr().err
        assert all(word in message for word in words), message

    train = str(pinyin_files / "train.csv")
    refused(["--train_file", train], "has no column(s) ['source', 'target']", "--source_column")
    refused(["--train_file", train, "--source_column", "pinyin", "--target_column", "hanzi", "--padding_free",
             "true"], "an encoder-decoder takes padded batches")
    refused(["--validation_file", train], "--validation_file / --test_file come with --train_file")
    refused(["--train_file", train, "--source_column", "pinyin", "--target_column", "hanzi", "--max_target_length",
             "2"], "--max_target_length must be at least 4")
    # A checkpoint with 64 learned positions cannot take the default 128 tokens a side.
    checkpoint = tmp_path / "absolute"
    tokenizer = train_tokenizer(["ni hao", "你好"], vocab_size=100, kind="wordpiece")
    FeedbackForConditionalGeneration(FeedbackSeq2SeqConfig(
        vocab_size=len(tokenizer), hidden_size=32, num_hidden_layers=1, num_attention_heads=2, intermediate_size=64,
        max_position_embeddings=64, position_embedding_type="absolute", pad_token_id=tokenizer.pad_token_id,
        decoder_start_token_id=tokenizer.sep_token_id)).save_pretrained(checkpoint)
    tokenizer.save_pretrained(checkpoint)
    refused(["--train_file", train, "--source_column", "pinyin", "--target_column", "hanzi", "--model_name_or_path",
             str(checkpoint)], "allow 128 tokens, more than the 64 learned positions of", "give at most 64")


def test_a_folder_driven_as_run_translation_can_learn_its_first_target_token():
    # transformers' run_translation.py tokenizes targets with the tokenizer's own template (`text_target`: [CLS]
    # target [SEP]) and lets DataCollatorForSeq2Seq shift them behind config.decoder_start_token_id. Were the start
    # token the one targets begin with, the decoder would read [CLS] [CLS]: with rotary positions, positions 0 and 1
    # give the same logits (to 1e-6), and the first target token could never be learned.
    from transformers import DataCollatorForSeq2Seq

    from hf_feedback.training.recipe_arguments import FineTuningModelArguments
    from hf_feedback.data.tokenization import train_tokenizer

    texts = ["a b c d", "h g f e", "c a b h"]
    tokenizer = train_tokenizer(texts, vocab_size=20, min_frequency=1)
    model = seq2seq.load_model(FineTuningModelArguments(config_overrides="hidden_size=32,num_hidden_layers=1,"
                                                        "num_attention_heads=2,intermediate_size=64"), tokenizer, 16)
    features = [{**tokenizer(text), "labels": tokenizer(text_target=text)["input_ids"]} for text in texts]
    batch = DataCollatorForSeq2Seq(tokenizer, model=model)(features)
    assert (batch["labels"][:, 0] == tokenizer.cls_token_id).all()
    assert (batch["decoder_input_ids"][:, 0] == model.config.decoder_start_token_id).all()
    with torch.no_grad():
        logits = model.eval()(**batch).logits  # (B, T, V)
    assert (logits[:, 0] - logits[:, 1]).abs().amax() > 1e-3


def test_a_causal_lm_writes_one_candidate_character_per_pinyin_item(pinyin_task):
    """write_from_pinyin under PinyinConstraint: greedy equals a step-by-step argmax, over the characters each item
    spelled in training, of the model's log-probability + log P(item | character); beam search keeps in step too;
    an item never seen in training is written as itself."""
    from hf_feedback import FeedbackConfig, FeedbackForCausalLM
    from hf_feedback.data.tokenization import train_tokenizer

    train, test = pinyin_task["train"], pinyin_task["test"]
    tokenizer = train_tokenizer(character_corpus(train["target"]), vocab_size=6000, kind="wordpiece")
    assert all(len(tokenizer(text)["input_ids"]) == len(text.replace(" ", "")) + 2
               for text in character_corpus(train["target"][:50]))  # one token per character
    torch.manual_seed(0)
    model = FeedbackForCausalLM(FeedbackConfig(vocab_size=len(tokenizer), hidden_size=32, num_hidden_layers=1,
                                               num_attention_heads=2, intermediate_size=64, is_decoder=True)).eval()
    candidates = pinyin_candidates(train)
    sources = [*test["source"][:3], "zhong ＠ guo"]  # "＠" never occurs in training
    greedy = write_from_pinyin(model, tokenizer, sources, candidates, num_beams=1, batch_size=2)
    beams = write_from_pinyin(model, tokenizer, sources, candidates, num_beams=3, batch_size=2)
    for source, *written in zip(sources, greedy, beams):
        items = source.split(" ")
        for text in written:
            assert len(text) == len(items)
            assert all(c in candidates[i] if i in candidates else c == i for i, c in zip(items, text)), (items, text)
    totals = sum((counts for counts in candidates.values()), start=Counter())
    vocab = tokenizer.get_vocab()
    for source, text in zip(sources, greedy):
        ids = [tokenizer.cls_token_id]
        for item in source.split(" "):
            if item not in candidates:
                ids.append(tokenizer.unk_token_id)
                continue
            with torch.no_grad():
                log_probs = model(torch.tensor([ids])).logits[0, -1].log_softmax(-1)
            best = max((c for c in candidates[item] if c in vocab),
                       key=lambda c: log_probs[vocab[c]].item() + math.log(candidates[item][c] / totals[c]))
            ids.append(vocab[best])
        assert text == "".join(i if i not in candidates else t for i, t in
                               zip(source.split(" "), tokenizer.convert_ids_to_tokens(ids[1:]))), (source, text)
    constraint = PinyinConstraint(["zhong guo"], candidates, tokenizer)
    scores = constraint(torch.tensor([[tokenizer.cls_token_id, vocab["中"], vocab["国"]]]), torch.zeros(1, len(vocab)))
    assert torch.isfinite(scores).sum() == 1 and scores[0, tokenizer.sep_token_id] == 0  # then only the end

"""The benchmarks' arithmetic (the model-FLOP count behind MFU, checked against a count by hand) and the accuracy
section's command lines."""

import pytest

from benchmarks import workloads
from benchmarks.efficiency import matmul_weights, training_flops
from hf_feedback import FeedbackForSequenceClassification


def test_training_flops_match_a_count_by_hand(tiny_config):
    # hidden 32, intermediate 48, 2 layers, 2 labels. Per layer the Linear weights are
    # qkv 32*96 + out 32*32 + up 32*48 + down 48*32 = 3072 + 1024 + 1536 + 1536 = 7168 -> 14,336 per token;
    # pooler 32*32 + classifier 32*2 = 1088 per sequence.
    model = FeedbackForSequenceClassification(tiny_config(num_labels=2))
    assert matmul_weights(model) == (14_336, 1_088)
    # Batch 2 of 9 tokens: per sequence 6 * 14,336 * 9 (weights) + 6 * 1,088 (head)
    # + 12 * 2 layers * 9 * 9 * 32 (QK^T and PV over 9 tokens, forward + backward) = 774,144 + 6,528 + 62,208.
    assert training_flops(model, batch_size=2, seq_len=9) == 2 * 842_880


def test_gated_feed_forward_counts_its_doubled_up_projection(tiny_config):
    # swiglu's up_proj is 32 -> 2 * 48: per layer 3072 + 1024 + 3072 + 1536 = 8704.
    model = FeedbackForSequenceClassification(tiny_config(num_labels=2, hidden_act="swiglu"))
    assert matmul_weights(model) == (2 * 8_704, 1_088)


def test_bert_baseline_has_our_sizes_and_parameter_count():
    # BERT keeps Q, K and V separate where we fuse them: the same weights, so the same parameter count.
    config = workloads.model_config(workloads.QUICK)
    ours, bert = workloads.ours(config), workloads.bert(config, "sdpa")
    assert ours.num_parameters() == bert.num_parameters()


def test_fixed_batches_have_no_padding_and_stay_in_the_vocabulary():
    (batch,) = workloads.fixed_batches(workloads.QUICK, vocab_size=50)
    assert batch["input_ids"].shape == (workloads.QUICK.batch_size, workloads.QUICK.max_length)
    assert bool(batch["attention_mask"].all())
    assert 5 <= int(batch["input_ids"].min()) and int(batch["input_ids"].max()) < 50
    assert workloads.batch_stats([batch])["real_tokens"] == batch["input_ids"].numel()


@pytest.mark.parametrize("flag, expected", [("--lora_r", "4"), ("--missing", None)])
def test_recipe_flags_are_read_back_as_argparse_would(flag, expected):
    from benchmarks.accuracy import _flag

    assert _flag(["finetune.py", "--lora_r", "8", "--use_lora", "--lora_r", "4"], flag) == expected


@pytest.mark.parametrize("quick", [False, True])
def test_accuracy_runs_give_each_new_model_one_merged_config_overrides(quick):
    """argparse keeps the last of two --config_overrides, so --quick's toy sizes must be merged into the rotary
    override rather than appended; runs that start from a checkpoint keep its architecture."""
    from benchmarks.accuracy import QUICK_SIZES, ROTARY, _flag, runs

    all_runs = runs(quick)

    def overrides(name):
        value = _flag(all_runs[name].command, "--config_overrides")
        return sorted(value.split(",")) if value else []

    sizes = QUICK_SIZES.split(",") if quick else []
    assert all(run.command.count("--config_overrides") <= 1 for run in all_runs.values())
    assert overrides("scratch") == sorted(sizes)
    assert overrides("scratch_rotary") == overrides("pretrain") == sorted([ROTARY, *sizes])
    for name in ("pretrained_full", "pretrained_lora", "minilm_full", "minilm_lora"):
        assert overrides(name) == []
        assert _flag(all_runs[name].command, "--model_name_or_path") == str(all_runs[all_runs[name].needs].output)

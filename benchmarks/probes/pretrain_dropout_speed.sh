#!/bin/bash
# Probe (issue "Models worth using", target 2): what dropout costs a task-adaptive pretraining step on the 2-core CPU.
#
#     bash benchmarks/probes/pretrain_dropout_speed.sh > benchmarks/results/pretrain_dropout_speed.txt
#
# recipes/pretrain.py on the reviews' training texts as recipe_search.py's PRETRAINS run it (its saved unigram-16k
# tokenizer and train-texts.jsonl must exist: run a tapt variant first), 40 steps each, no evaluation or saving:
# dropout 0.1 (FeedbackConfig's default), no dropout, no dropout with batches of 128, and each dropout alone
# (attention's or the hidden states'). Each line: the variant,
# Trainer's train_runtime in seconds, and the logged training losses. Made the `tapt-mlm30-rotary-nodrop` choice.
set -e
R=benchmarks/runs/recipe_search
OUT=${PROBE_DIR:-/tmp/pretrain_dropout_speed}
mkdir -p $OUT
for v in "drop0.1 64 hidden_dropout_prob=0.1" \
         "drop0 64 hidden_dropout_prob=0.0,attention_probs_dropout_prob=0.0" \
         "drop0-b128 128 hidden_dropout_prob=0.0,attention_probs_dropout_prob=0.0" \
         "attn0 64 hidden_dropout_prob=0.1,attention_probs_dropout_prob=0.0" \
         "hidden0 64 hidden_dropout_prob=0.0,attention_probs_dropout_prob=0.1"; do
  set -- $v
  python recipes/pretrain.py --train_file $R/reviews/train-texts.jsonl --text_column text \
    --tokenizer_name $R/tokenizers/reviews-unigram-16000 --output_dir $OUT/$1 --overwrite_output_dir --seed 42 \
    --disable_tqdm true --mlm_probability 0.3 --config_overrides norm_position=pre,position_embedding_type=rotary,$3 \
    --per_device_train_batch_size $2 --max_steps 40 --logging_steps 20 --eval_strategy no --save_strategy no \
    > $OUT/$1.log 2>&1
  echo "$1 $(grep -o "'train_runtime': '[0-9.]*'" $OUT/$1.log) $(grep -o "'loss': '[0-9.]*'" $OUT/$1.log | tr '\n' ' ')"
done

#!/usr/bin/env bash
# The GPU path, once: the default fine-tuning job on one GPU through accelerate, in fp16 (and bf16).
#   bash benchmarks/gpu_check.sh [RESULTS_DIR]
# Prints the machine, the versions, each run's wall time and test accuracy; copies the results JSON to RESULTS_DIR.
set -euo pipefail
results=${1:-outputs/gpu_check}
mkdir -p "$results"
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader
python3 -c "import torch, transformers, accelerate, peft, datasets; print('torch', torch.__version__, '| transformers', transformers.__version__, '| accelerate', accelerate.__version__, '| peft', peft.__version__, '| datasets', datasets.__version__)"
for precision in fp16 bf16; do
    start=$(date +%s)
    accelerate launch --config_file recipes/configs/single_gpu_fp16.yaml --mixed_precision "$precision" \
        recipes/finetune.py --output_dir "runs/gpu_$precision" --overwrite_output_dir --"$precision" \
        --disable_tqdm true "${@:2}"
    echo "$precision: wall time $(( $(date +%s) - start )) s"
    cp "runs/gpu_$precision/all_results.json" "$results/all_results_$precision.json"
done

#!/usr/bin/env bash
# The speed benchmarks on a GPU, one after another, each under a time limit; logs go to
# $OUT (default bench/gpu-out). Run from the repository root with the package importable:
#
#     bash bench/gpu.sh
#
# scores.py (c) and sweep.py measure what batching along the batch axis buys: on a
# 2-core CPU a forward is compute-bound and batching cannot pay, on a GPU it should.
# gpu_1b.py runs first (the one never measured yet): capture, keys mode and the sweep
# on a random ~1B Llama in bf16.
# The last step checks the GPU path of the canonical-task experiments (--device cuda);
# SKIP_TASKS=1 leaves it out.
set -u
out=${OUT:-bench/gpu-out}
mkdir -p "$out"
export PYTHONUNBUFFERED=1
py=${PYTHON:-python3}
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv 2>&1 | tee "$out/gpu.txt"
"$py" -c "import torch, transformers, transformer_lens as tl; print('torch', torch.__version__, 'transformers', transformers.__version__)" 2>&1 | tee -a "$out/gpu.txt"
timeout 300 "$py" bench/gpu_1b.py --device cuda 2>&1 | tee "$out/gpu_1b.txt"
timeout 200 "$py" bench/scores.py --device cuda 2>&1 | tee "$out/scores.txt"
timeout 120 "$py" bench/sweep.py --device cuda --repeat 3 2>&1 | tee "$out/sweep.txt"
timeout 120 "$py" bench/sweep.py --device cuda --repeat 3 --batch-conditions 4 2>&1 | tee "$out/sweep4.txt"
[ -n "${SKIP_TASKS:-}" ] && exit 0
timeout 200 "$py" -m rope_behavior.cli.app tasks --quick --device cuda --out /tmp/rb-tasks-gpu --overwrite 2>&1 \
    | tail -40 | tee "$out/tasks.txt"
cp /tmp/rb-tasks-gpu/results.csv "$out/tasks-results.csv" 2>/dev/null || true

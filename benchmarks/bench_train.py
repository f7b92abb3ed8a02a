"""Training throughput: the full step (data + synthesis + model) vs the model's own rate.

The target is that data and synthesis never bound training: the full step should reach at least
90% of the images/s of forward + backward + optimiser step on ready-made batches. Both are
measured in one run, on the same model, batch and device, and printed as a ratio.

    python benchmarks/bench_train.py                      # CPU, 128 px (demo settings)
    python benchmarks/bench_train.py --size 256 --k 8 --batch 32 --steps 20   # paper settings
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import torch

from adps.config import ModelConfig, TrainConfig
from adps.data.datasets import MVTecAD
from adps.engine.losses import adps_loss
from adps.engine.train import Trainer

SHARED = Path(__file__).resolve().parents[1] / ".." / "shared" / "datasets"


def timed(fn, steps: int, device: torch.device) -> float:
    fn()  # warm-up (allocations, cudnn autotune)
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    start = time.perf_counter()
    for _ in range(steps):
        fn()
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--size", type=int, default=128)
    parser.add_argument("--k", type=int, default=4)
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--device", default="auto")
    parser.add_argument("--data", default=str(SHARED / "mvtec_ad"))
    parser.add_argument("--textures", default=str(SHARED / "dtd" / "images"))
    args = parser.parse_args()

    config = TrainConfig(batch_size=args.batch, epochs=1, texture_dir=args.textures)
    trainer = Trainer(ModelConfig(image_size=args.size, k=args.k), config,
                      MVTecAD(args.data, "bottle", "train", size=args.size), "/tmp/bench-train",
                      device=args.device, progress=False)
    device = trainer.device
    trainer.model.train()
    index = trainer.epoch_indices(0)[0]

    # the model alone, on one fixed synthesised batch
    images = trainer.images[index].float().div_(255.0)
    images, masks = trainer.synthesizer(images, trainer.generator)
    images = images.contiguous(memory_format=trainer.memory_format)

    def model_step() -> None:
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=trainer.use_amp):
            outputs = trainer.net(images)
        loss, _ = adps_loss(outputs, masks, config)
        trainer.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        trainer.optimizer.step()

    def synthesis_only() -> None:
        trainer.synthesizer(trainer.images[index].float().div_(255.0), trainer.generator)

    model_s = timed(model_step, args.steps, device)
    full_s = timed(lambda: trainer.train_step(index), args.steps, device)
    synth_s = timed(synthesis_only, args.steps, device)
    n = args.steps * args.batch
    print(f"device {device} ({torch.get_num_threads()} CPU threads), {args.size} px, k={args.k}, "
          f"batch {args.batch}, {args.steps} timed steps after 1 warm-up, AMP={trainer.use_amp}")
    print(f"model fwd+bwd+step  : {n / model_s:8.1f} img/s")
    print(f"full training step  : {n / full_s:8.1f} img/s (index, rotate, synthesis, model)")
    print(f"synthesis alone     : {n / synth_s:8.1f} img/s (DTD textures)")
    print(f"full / model ratio  : {model_s / full_s:8.3f}  (target >= 0.90)")


if __name__ == "__main__":
    main()

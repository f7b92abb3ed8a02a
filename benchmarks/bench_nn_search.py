"""The memory prior's nearest-neighbour search: adps's torch search (one 1 x 1 convolution per
bank chunk and a running minimum, :func:`adps.models.memory.nearest_distances`) against faiss's
exact flat L2 index, on the prior's shapes (152 channels, a 4096-row bank, 32 x 32 positions
per 256-px image), batch 1 and 32, in one process and the same thread count.

    pip install faiss-cpu    # not an adps dependency; only this benchmark imports it
    python benchmarks/bench_nn_search.py [--threads 2] [--bank 4096] [--repeats 20]
"""

from __future__ import annotations

import argparse
import statistics
import time

import numpy as np
import torch

from adps.models.memory import nearest_distances


def median_ms(fn, repeats: int) -> float:
    fn()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times) * 1000


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--bank", type=int, default=4096)
    p.add_argument("--channels", type=int, default=152)
    p.add_argument("--side", type=int, default=32, help="positions per image side")
    p.add_argument("--batches", type=int, nargs="+", default=[1, 32])
    p.add_argument("--repeats", type=int, default=20)
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    rng = np.random.default_rng(0)
    bank = rng.normal(size=(args.bank, args.channels)).astype(np.float32)
    bank_t = torch.from_numpy(bank)
    maps = {
        b: torch.from_numpy(
            rng.normal(size=(b, args.channels, args.side, args.side)).astype(np.float32)
        )
        for b in args.batches
    }
    ours, torch_ms = {}, {}
    with torch.no_grad():  # timed before faiss is imported: its OpenMP runtime slows torch's
        for batch, x in maps.items():
            for _ in range(5):  # oneDNN builds its convolution primitives on the first calls
                ours[batch] = nearest_distances(x, bank_t)[:, 0].reshape(-1).numpy()
            torch_ms[batch] = median_ms(lambda: nearest_distances(x, bank_t), args.repeats)
    import faiss

    faiss.omp_set_num_threads(args.threads)
    index = faiss.IndexFlatL2(args.channels)
    index.add(bank)
    print(
        f"bank {args.bank} x {args.channels}, {args.side}x{args.side} positions per image, "
        f"{args.threads} threads, faiss {faiss.__version__}, torch {torch.__version__}"
    )
    print("| images | torch ms | faiss ms | faiss / torch | max distance difference |")
    print("|---|---|---|---|---|")
    for batch, x in maps.items():
        rows = x.permute(0, 2, 3, 1).reshape(-1, args.channels).contiguous().numpy()
        theirs = np.sqrt(index.search(rows, 1)[0][:, 0])
        faiss_ms = median_ms(lambda: index.search(rows, 1), args.repeats)
        print(
            f"| {batch} | {torch_ms[batch]:.1f} | {faiss_ms:.1f} | "
            f"{faiss_ms / torch_ms[batch]:.2f} | {np.abs(ours[batch] - theirs).max():.1e} |"
        )


if __name__ == "__main__":
    main()

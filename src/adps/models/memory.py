"""A memory of normal teacher features (PatchCore's idea) as a prior beside the PSM.

ADPS learns "anomalous" only from synthetic defects, so a real defect unlike both the normal
images and the synthetic ones is a guess. The teacher's features of the normal training images
say what normal looks like without any training: the distance of a position's feature to its
nearest normal features is high wherever the part looks unlike every training image. The bank
is a buffer of the module, so it travels inside the checkpoint and every export as a constant.

The pieces are plain functions (feature embedding, greedy coreset, chunked nearest-neighbour
distances) so that each can be tested against brute force; :class:`MemoryPrior` holds the bank,
the prior's statistics on normal images, and the fusion with the PSM.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import nn

MEMORY_LEVELS = (1, 2)  # the teacher's stride-8 and stride-16 features (PatchCore's layers)
PROJECTION_DIM = 128  # the coreset selection works on a random projection above this width
_CANDIDATES = 1024  # rows a coreset round chooses among (greedy_coreset)
_UPDATE_CHUNK = 16384  # rows per distance update of a coreset round: a 64 MiB block at 1024


# the standardized decision: score statistics that standardise nothing, before they are fitted
UNFITTED_SCORE_STATS = (0.0, 1.0, 0.0, 1.0)
UNCALIBRATED_Z = 3.0  # standardized_score's 0.5: this many standard deviations above normal


def embed(features: list[torch.Tensor], levels: tuple[int, ...] = MEMORY_LEVELS) -> torch.Tensor:
    """(B, C, h, w) patch features at the finest chosen level: each level averaged over a 3 x 3
    neighbourhood (a little context, robust to a one-cell shift), coarser ones upsampled, all
    concatenated, in float32."""
    chosen = [F.avg_pool2d(features[i].float(), 3, stride=1, padding=1) for i in levels]
    size = chosen[0].shape[-2:]
    chosen = [chosen[0]] + [
        F.interpolate(f, size=size, mode="bilinear", align_corners=False) for f in chosen[1:]
    ]
    return torch.cat(chosen, dim=1)


def greedy_coreset(
    features: torch.Tensor,
    size: int,
    seed: int = 0,
    progress: Callable[[int], object] | None = None,
) -> torch.Tensor:
    """Indices of ``size`` rows chosen by greedy k-centre selection (PatchCore): start from row 0,
    then repeatedly take the row farthest from everything chosen so far. It keeps the rare
    features that random subsampling would drop, so the bank covers all of normal.

    Distances are squared Euclidean; above :data:`PROJECTION_DIM` channels they are taken on a
    seeded Gaussian random projection (Johnson-Lindenstrauss), which keeps the ranking and cuts
    the cost.

    The selection is the plain greedy one, computed in rounds so that the work is matrix
    products rather than one pass over every row per chosen row: a round takes the
    :data:`_CANDIDATES` rows farthest from the chosen set, runs the greedy steps among them
    (their distances to each other are one small Gram matrix) for as long as the farthest
    candidate is still at least as far as the nearest row left out of the round (so that no
    row outside could have been the greedy choice), and then updates every row's distance to
    the chosen set with one matrix product per chunk of rows. Ties aside, the result is the
    sequential greedy's. ``progress`` is called with the number of rows chosen after each round.
    """
    n, dim = features.shape
    if not 0 < size <= n:
        raise ValueError(f"coreset size must be in 1..{n}, got {size}")
    x = features.float() if features.dtype in (torch.float16, torch.bfloat16) else features
    if dim > PROJECTION_DIM:
        generator = torch.Generator().manual_seed(seed)
        projection = torch.randn(dim, PROJECTION_DIM, generator=generator, dtype=x.dtype)
        x = x @ (projection / PROJECTION_DIM**0.5).to(x.device)
    norms = x.pow(2).sum(dim=1)
    nearest = torch.full((n,), float("inf"), dtype=x.dtype, device=x.device)

    def update(centres: torch.Tensor) -> None:
        # min_j |x - c_j|^2 = |x|^2 + min_j (|c_j|^2 - 2 x.c_j): one product per chunk of rows
        c, c_norms = x[centres], norms[centres]
        for start in range(0, n, _UPDATE_CHUNK):
            rows = slice(start, start + _UPDATE_CHUNK)
            d = torch.addmm(c_norms[None, :], x[rows], c.T, alpha=-2).amin(dim=1)
            torch.minimum(nearest[rows], d.add_(norms[rows]).clamp_min_(0), out=nearest[rows])

    chosen = torch.zeros(1, dtype=torch.long, device=x.device)
    update(chosen)
    while len(chosen) < size:
        m = min(_CANDIDATES, n)
        top, candidates = nearest.topk(min(m + 1, n))
        bound = top[m] if m < n else top.new_tensor(-1.0)  # the farthest row left out
        distance = top[:m].clone()
        cx, c_norms = x[candidates[:m]], norms[candidates[:m]]
        gram = (c_norms[:, None] + c_norms[None, :]).addmm_(cx, cx.T, alpha=-2).clamp_min_(0)
        picked: list[torch.Tensor] = []
        while len(chosen) + len(picked) < size:
            j = distance.argmax()
            if picked and not distance[j] >= bound:
                break  # a row outside the round could be farther now
            picked.append(j)
            torch.minimum(distance, gram[j], out=distance)
        centres = candidates[torch.stack(picked)]
        chosen = torch.cat([chosen, centres])
        update(centres)
        if progress is not None:
            progress(len(chosen))
    return chosen


def nearest_distances(
    queries: torch.Tensor,
    bank: torch.Tensor,
    neighbors: int = 1,
    chunk: int = 4096,
    query_groups: torch.Tensor | None = None,
    bank_groups: torch.Tensor | None = None,
) -> torch.Tensor:
    """(B, neighbors, h, w) Euclidean distances from each position of a (B, C, h, w) map to its
    nearest rows of the (N, C) bank, ascending along dim 1.

    Each chunk of the bank is one 1 x 1 convolution (|b|^2 - 2 q.b, with |b|^2 as its bias) and
    a running top-k, so memory stays at ``chunk`` distances per position whatever the bank's
    size (the loop unrolls into a static graph on export). A convolution needs no reshape of
    the batch into rows, and measured faster than the matrix product in torch and in OpenVINO
    (see benchmarks/bench_nn_search.py). With ``query_groups`` (B,) and ``bank_groups`` (N,)
    (say, the image each row came from), a position never matches a bank row of its own group:
    leave-one-image-out distances.
    """
    best: torch.Tensor | None = None
    for start in range(0, bank.shape[0], chunk):
        part = bank[start : start + chunk]
        d2 = F.conv2d(queries, (-2 * part)[:, :, None, None], part.pow(2).sum(dim=1))
        if query_groups is not None and bank_groups is not None:
            same = query_groups[:, None] == bank_groups[None, start : start + chunk]
            d2 = d2.masked_fill(same[:, :, None, None], float("inf"))
        if best is not None:
            d2 = torch.cat([best, d2], dim=1)
        best = (
            d2.amin(dim=1, keepdim=True)
            if neighbors == 1
            else d2.topk(min(neighbors, d2.shape[1]), dim=1, largest=False).values
        )
    if best is None:
        raise ValueError("an empty bank has no nearest rows")
    # |q|^2 is the same for every bank row, so it is added after the search
    best = best + queries.pow(2).sum(dim=1, keepdim=True)
    return best.clamp_min(0).sqrt()


def leave_one_out_distances(
    rows: torch.Tensor,
    groups: torch.Tensor,
    bank: torch.Tensor,
    bank_groups: torch.Tensor,
    neighbors: int = 1,
    chunk: int = 512,
    progress: Callable[[int], object] | None = None,
) -> torch.Tensor:
    """(N,) mean Euclidean distance of each of the (N, C) ``rows`` to its ``neighbors`` nearest
    rows of the (M, C) ``bank`` among those of another group (``groups`` (N,) and
    ``bank_groups`` (M,), say the image each came from): what a new normal image's position
    sees, for the prior's statistics on the training images.

    The fit's path, not the model's: rows rather than maps, and one matrix product per
    ``chunk`` rows, a block small enough to stay in cache (2.5x faster than
    :func:`nearest_distances`'s convolution on the fit's 630,000 x 4,096 distances).
    ``progress`` is called with the number of rows done after each block."""
    if bank.shape[0] == 0:
        raise ValueError("an empty bank has no nearest rows")
    bank_t, bank_norms = bank.T.contiguous(), bank.pow(2).sum(dim=1)
    out = torch.empty(len(rows), dtype=rows.dtype, device=rows.device)
    k = min(neighbors, bank.shape[0])
    for start in range(0, len(rows), chunk):
        part = rows[start : start + chunk]
        d2 = torch.addmm(bank_norms[None, :], part, bank_t, alpha=-2)
        d2.masked_fill_(groups[start : start + chunk, None] == bank_groups[None, :], float("inf"))
        nearest = d2.amin(dim=1, keepdim=True) if k == 1 else d2.topk(k, largest=False).values
        nearest = nearest.add_(part.pow(2).sum(dim=1, keepdim=True)).clamp_min_(0).sqrt_()
        out[start : start + chunk] = nearest.mean(dim=1)
        if progress is not None:
            progress(min(start + chunk, len(rows)))
    return out


class MemoryPrior(nn.Module):
    """The bank of normal patch features, and the two ways its prior map meets the PSM.

    ``forward(teacher_features, size, neighbors)`` gives the prior map (B, 1, H, W): per
    position, the mean distance to the ``neighbors`` nearest bank features, upsampled to the
    image size. The module holds data only (the bank and its statistics); its settings come from
    the model's config at every call, so the config is the one place they live.

    Late fusion, :meth:`fuse` (:func:`late_fusion`), multiplies the prior by ``1 + boost * p``
    (p the PSM's probability): the memory says where the part looks unlike any normal one, the
    PSM sharpens and confirms it. A product, unlike a sum, needs no common scale for the two
    maps, and it keeps the prior's ranking where the PSM is silent, which matters where the
    synthetic defects taught the PSM little (docs/benchmarks/memory-prior.md). The result is
    squashed to [0, 1) by ``1 - 2^(-r)``, with ``r`` the boosted prior over the prior's 99.9th
    percentile on normal images, so the pixel threshold 0.5 keeps a meaning: farther from normal
    than almost every normal pixel. ``exponent`` < 1 flattens the prior before the product, so
    the PSM's sharper map decides more of the ranking: right where the synthetic defects
    resemble the real ones, wrong where they do not, so it is fitted per surface on labelled
    defects (engine/fusion.py).

    Early fusion, :meth:`standardized`, gives the PSM the prior as an input, in units of its
    spread on normal images; in training each image is scored without its own bank entries
    (``groups``), as a new image would be.
    """

    bank: torch.Tensor
    sources: torch.Tensor
    stats: torch.Tensor
    score_stats: torch.Tensor

    def __init__(self, channels: int):
        super().__init__()
        self.register_buffer("bank", torch.zeros(0, channels))
        self.register_buffer("sources", torch.zeros(0, dtype=torch.long))  # each row's image
        # the prior's mean, standard deviation and 99.9th percentile on normal images
        self.register_buffer("stats", torch.tensor([0.0, 1.0, 1.0]))
        # the standardized decision (:meth:`decide`): mean and standard deviation of the
        # memory's image score, then of the PSM's, on normal images the model did not learn from
        self.register_buffer("score_stats", torch.tensor(UNFITTED_SCORE_STATS))
        # plain data, so that an export traces one branch: models from before the standardized
        # decision, and models whose statistics were never fitted, decide on the fused map
        self.decision_fitted = False

    @property
    def fitted(self) -> bool:
        return self.bank.shape[0] > 0

    def _load_from_state_dict(self, state_dict, prefix, *args, **kwargs):
        for name in ("bank", "sources"):  # their size is the checkpoint's, not the constructor's
            value = state_dict.get(prefix + name)
            if value is not None:
                setattr(self, name, torch.empty_like(value, device=self.bank.device))
        stats = state_dict.get(prefix + "score_stats")
        if stats is None and prefix + "bank" in state_dict:
            # a checkpoint from before the standardized decision: it loads unfitted
            stats = state_dict[prefix + "score_stats"] = torch.tensor(UNFITTED_SCORE_STATS)
        if stats is not None:
            self.decision_fitted = tuple(stats.tolist()) != UNFITTED_SCORE_STATS
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)

    def set_score_stats(self, stats: torch.Tensor) -> None:
        """The standardized decision's statistics (:func:`standardized_score`), fitted by
        adps.engine.prior.fit_decision."""
        self.score_stats = stats.detach().float().to(self.bank.device)
        self.decision_fitted = True

    def decide(
        self, memory_score: torch.Tensor, psm_score: torch.Tensor, psm_weight: float
    ) -> torch.Tensor:
        """The standardized decision (:func:`standardized_score`) with this memory's statistics."""
        return standardized_score(memory_score, psm_score, self.score_stats, psm_weight)

    def set_bank(self, bank: torch.Tensor, sources: torch.Tensor) -> None:
        self.bank = bank.detach().float().to(self.bank.device).contiguous()
        self.sources = sources.detach().to(self.bank.device)

    def distances(
        self, embedding: torch.Tensor, neighbors: int = 1, groups: torch.Tensor | None = None
    ) -> torch.Tensor:
        """(B, 1, h, w) mean distance of each position of an :func:`embed` output to its
        ``neighbors`` nearest bank features; with ``groups`` (B,), never to rows that came from
        that image."""
        if not self.fitted:
            raise RuntimeError("the memory bank is empty: fit it with adps.engine.prior.fit_prior")
        nearest = nearest_distances(
            embedding, self.bank, neighbors, query_groups=groups, bank_groups=self.sources
        )
        return nearest.mean(dim=1, keepdim=True)

    def standardized(
        self,
        teacher_features: list[torch.Tensor],
        neighbors: int = 1,
        groups: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """The prior at the embedding's stride (B, 1, h, w), as (distance - mean) / std of
        normal images: the PSM's extra input under early fusion."""
        mean, std, _ = self.stats
        return (self.distances(embed(teacher_features), neighbors, groups) - mean) / std

    def forward(
        self, teacher_features: list[torch.Tensor], size: tuple[int, int], neighbors: int = 1
    ) -> torch.Tensor:
        prior = self.distances(embed(teacher_features), neighbors)
        return F.interpolate(prior, size=size, mode="bilinear", align_corners=False)

    def fuse(
        self, psm_map: torch.Tensor, prior_map: torch.Tensor, boost: float, exponent: float = 1.0
    ) -> torch.Tensor:
        return late_fusion(psm_map, prior_map / self.stats[2], boost, exponent)


def standardized_score(
    memory_score: torch.Tensor,
    psm_score: torch.Tensor,
    score_stats: torch.Tensor,
    psm_weight: float = 1.0,
) -> torch.Tensor:
    """(B,) image scores in [0, 1) from the memory's and the PSM's (B,) image scores.

    Each is standardised by its (mean, std) on normal images, ``score_stats`` =
    (memory mean, memory std, PSM mean, PSM std); their sum, the PSM's weighted by
    ``psm_weight``, divided by its standard deviation for independent unit-variance terms,
    is ``z``. The score is ``sigmoid(z - 3)``: monotone in ``z`` (so it ranks, and a calibrated
    threshold decides, as ``z`` does), and the uncalibrated threshold 0.5 (``Thresholds``)
    sits three standard deviations above normal images.
    """
    m_mean, m_std, p_mean, p_std = score_stats.unbind()
    z = (memory_score - m_mean) / m_std + psm_weight * (psm_score - p_mean) / p_std
    return torch.sigmoid(z / math.sqrt(1 + psm_weight**2) - UNCALIBRATED_Z)


def late_fusion(
    psm_map: torch.Tensor, scaled_prior: torch.Tensor, boost: float, exponent: float = 1.0
) -> torch.Tensor:
    """``1 - 2^-r`` with ``r = scaled_prior^exponent x (1 + boost x psm_map)``, the prior in
    units of its 99.9th percentile on normal images (see :class:`MemoryPrior`)."""
    if exponent != 1:  # the default graph has no Pow node
        scaled_prior = scaled_prior.pow(exponent)
    ratio = scaled_prior * (1 + boost * psm_map)
    # 2^(-r) as exp(-r ln 2): the TorchScript-based ONNX exporter has no exp2 (the dynamo
    # exporter it then falls back to gave OpenVINO a slower graph)
    return 1 - torch.exp(ratio * -math.log(2))


__all__ = [
    "MEMORY_LEVELS",
    "MemoryPrior",
    "embed",
    "greedy_coreset",
    "late_fusion",
    "leave_one_out_distances",
    "nearest_distances",
    "standardized_score",
]

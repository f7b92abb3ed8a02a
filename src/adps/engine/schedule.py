"""Learning rate as a function of training progress, and the time-budget arithmetic.

Progress runs from 0 to 1: the share of the planned steps done, or with a time budget the share
of the budget spent. Laying the schedule over progress rather than over epochs is what lets the
same recipe (warm-up, decay, milestones) fit a 5-minute and a 5-hour run.
"""

from __future__ import annotations

import math
import re

from adps.config import TrainConfig
from adps.errors import AdpsError

__all__ = ["format_duration", "lr_factor", "parse_duration"]


def lr_factor(progress: float, config: TrainConfig) -> float:
    """The multiplier of ``config.lr`` at ``progress`` in [0, 1].

    A linear warm-up over the first ``warmup`` share, then either the paper's steps (x ``lr_gamma``
    at each milestone passed) or a cosine decay to ``lr_final_share`` of the peak at the end.
    """
    progress = min(max(progress, 0.0), 1.0)
    warm = config.warmup
    if warm > 0 and progress < warm:
        return (progress + 1e-3) / (warm + 1e-3)  # never exactly 0: the first step still moves
    if config.lr_schedule == "multistep":
        return config.lr_gamma ** sum(progress >= m for m in config.lr_milestones)
    t = (progress - warm) / (1.0 - warm) if warm < 1 else 1.0
    low = config.lr_final_share
    return low + (1.0 - low) * 0.5 * (1.0 + math.cos(math.pi * t))


_UNITS = {"s": 1, "m": 60, "h": 3600}


def parse_duration(text: str) -> float:
    """Seconds from "90s", "20m", "1.5h", "1h30m" or a plain number of seconds."""
    value = text.strip().lower()
    if re.fullmatch(r"\d+(\.\d+)?", value):
        seconds = float(value)
    else:
        parts = re.findall(r"(\d+(?:\.\d+)?)([smh])", value)
        if not parts or "".join(n + u for n, u in parts) != value:
            raise AdpsError(
                f"time budget '{text}' is not a duration; use e.g. 90s, 20m, 2h or 1h30m"
            )
        seconds = sum(float(n) * _UNITS[u] for n, u in parts)
    if seconds <= 0:
        raise AdpsError(f"time budget '{text}' must be longer than zero")
    return seconds


def format_duration(seconds: float) -> str:
    seconds = max(0, round(seconds))
    h, rest = divmod(seconds, 3600)
    m, s = divmod(rest, 60)
    if h:
        return f"{h}h{m:02d}m"
    return f"{m}m{s:02d}s" if m else f"{s}s"

"""Per-channel statistics of a split, gathered while it is cached (numpy only: cache workers
import no torch). Normalisation uses the *training* split's statistics for every split.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class ChannelStats:
    """Mean, population std, min and max per channel."""

    mean: np.ndarray
    std: np.ndarray
    min: np.ndarray
    max: np.ndarray

    def to_dict(self) -> dict[str, list[float]]:
        return {k: np.asarray(getattr(self, k), dtype=np.float64).tolist()
                for k in ("mean", "std", "min", "max")}

    @classmethod
    def from_dict(cls, raw: dict) -> ChannelStats:
        return cls(**{k: np.asarray(raw[k], dtype=np.float64) for k in ("mean", "std", "min", "max")})

    def select(self, channels: list[int]) -> ChannelStats:
        """The statistics of a channel subset (RGB is S2 channels [2, 1, 0])."""
        return ChannelStats(self.mean[channels], self.std[channels], self.min[channels], self.max[channels])


class ChannelStatsAccumulator:
    """Streaming sums (float64) of x and x², and min/max, per channel; mergeable across workers."""

    def __init__(self, channels: int) -> None:
        self.count = 0
        self.total = np.zeros(channels)
        self.squares = np.zeros(channels)
        self.low = np.full(channels, np.inf)
        self.high = np.full(channels, -np.inf)

    def update(self, array: np.ndarray) -> None:
        """Add an array of shape (C, H, W) or (N, C, H, W)."""
        values = np.asarray(array, dtype=np.float64)
        values = values.reshape((-1,) + values.shape[-3:]) if values.ndim == 4 else values[None]
        axes = (0, 2, 3)
        self.count += values.shape[0] * values.shape[2] * values.shape[3]
        self.total += values.sum(axis=axes)
        self.squares += np.square(values).sum(axis=axes)
        self.low = np.minimum(self.low, values.min(axis=axes))
        self.high = np.maximum(self.high, values.max(axis=axes))

    def merge(self, other: ChannelStatsAccumulator) -> ChannelStatsAccumulator:
        """Fold ``other`` into this accumulator and return it."""
        self.count += other.count
        self.total += other.total
        self.squares += other.squares
        self.low = np.minimum(self.low, other.low)
        self.high = np.maximum(self.high, other.high)
        return self

    def result(self) -> ChannelStats:
        mean = self.total / self.count
        variance = np.maximum(self.squares / self.count - mean**2, 0.0)
        return ChannelStats(mean, np.sqrt(variance), self.low.copy(), self.high.copy())

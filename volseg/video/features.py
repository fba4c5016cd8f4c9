"""Per-frame inputs of the video GP on a reduced working grid: filter-bank features and optical flow.

Features are the training-free :class:`volseg.features.FilterBank` computed on the frame shrunk by
``scale`` per axis (its scales are in working-grid pixels, so a scale of 4 means 4x larger at full
resolution).  They are standardised with the mean and std of one reference frame for the whole
video -- per-frame statistics would shift as the object moves, and matching across frames needs
one feature space.  Flow is OpenCV's DIS optical flow (training-free) on the grey working frames.
"""
from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np

from ..features import FilterBank


@dataclass(frozen=True)
class Grid:
    """The working grid: frame (H, W) shrunk to (h, w)."""

    H: int
    W: int
    h: int
    w: int

    @classmethod
    def for_frame(cls, H: int, W: int, scale: float) -> "Grid":
        return cls(H, W, max(2, int(round(H / scale))), max(2, int(round(W / scale))))

    @property
    def factor(self) -> tuple[float, float]:
        return self.H / self.h, self.W / self.w

    def to_work(self, rc) -> np.ndarray:
        """Full-resolution (row, col) -> working-grid coordinates (pixel centres aligned)."""
        rc = np.atleast_2d(np.asarray(rc, np.float64))
        return (rc + 0.5) / np.asarray(self.factor) - 0.5

    def shrink(self, a: np.ndarray) -> np.ndarray:
        return cv2.resize(a, (self.w, self.h), interpolation=cv2.INTER_AREA)

    def grow(self, a: np.ndarray) -> np.ndarray:
        """Bilinear upsampling of a (h, w) map to (H, W)."""
        return cv2.resize(a, (self.W, self.H), interpolation=cv2.INTER_LINEAR)

    def positions(self) -> np.ndarray:
        r, c = np.mgrid[0:self.h, 0:self.w]
        return np.stack([r.ravel(), c.ravel()], 1).astype(np.float32)


class FrameFeatures:
    def __init__(self, grid: Grid, bank: FilterBank | None = None) -> None:
        self.grid = grid
        self.bank = bank or FilterBank()
        self._params = None
        self._mean = self._std = None

    @property
    def n_features(self) -> int:
        return self.bank.n_features(2, 3)

    def fit_standardisation(self, frame: np.ndarray) -> None:
        small = self.grid.shrink(frame)
        self._params = self.bank.prepare(small)
        raw = self.bank.raw(small, (1.0, 1.0), self._params).reshape(-1, self.n_features)
        self._mean = raw.mean(0)
        std = raw.std(0)
        self._std = np.where(std > 1e-6, std, 1.0).astype(np.float32)

    def __call__(self, frame: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(features (h, w, D) float32 standardised, grey (h, w) uint8 for the flow)."""
        if self._params is None:
            self.fit_standardisation(frame)
        small = self.grid.shrink(frame)
        raw = self.bank.raw(small, (1.0, 1.0), self._params)
        feats = (raw - self._mean) / self._std
        grey = cv2.cvtColor(small, cv2.COLOR_RGB2GRAY)
        return feats.astype(np.float32, copy=False), grey


class Flow:
    """Dense optical flow between working frames; ``flow(a, b)[r, c]`` = (drow, dcol) taking (r, c) in a
    to its match in b."""

    def __init__(self, preset: str = "ultrafast") -> None:
        presets = {"ultrafast": cv2.DISOPTICAL_FLOW_PRESET_ULTRAFAST, "fast": cv2.DISOPTICAL_FLOW_PRESET_FAST,
                   "medium": cv2.DISOPTICAL_FLOW_PRESET_MEDIUM}
        self._dis = cv2.DISOpticalFlow_create(presets[preset])

    def __call__(self, a: np.ndarray, b: np.ndarray) -> np.ndarray:
        f = self._dis.calc(a, b, None)  # (h, w, 2) as (dx, dy)
        return np.ascontiguousarray(f[..., ::-1])


def warp(maps: np.ndarray, flow: np.ndarray) -> np.ndarray:
    """Pull (K, h, w) maps from frame b into frame a along ``flow(a, b)`` (bilinear, border replicated)."""
    h, w = flow.shape[:2]
    r, c = np.mgrid[0:h, 0:w].astype(np.float32)
    map_r, map_c = r + flow[..., 0], c + flow[..., 1]
    return np.stack([cv2.remap(m.astype(np.float32), map_c, map_r, cv2.INTER_LINEAR, borderMode=cv2.BORDER_REPLICATE)
                     for m in maps])

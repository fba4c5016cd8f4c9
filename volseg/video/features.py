"""Per-frame inputs of the video GP on a reduced working grid: filter-bank features and optical flow.

Features are the training-free :class:`volseg.features.FilterBank` computed on the frame shrunk by
``scale`` per axis (its scales are in working-grid pixels, so a scale of 4 means 4x larger at full
resolution).  They are standardised with the mean and std of one reference frame for the whole
video -- per-frame statistics would shift as the object moves, and matching across frames needs
one feature space.  Flow is OpenCV's DIS optical flow (training-free) on the grey working frames.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass

import cv2
import numpy as np

from ..features import FilterBank
from ..features.scale_space import exact_derivatives_2d
from ..features.stream import standardisation


@dataclass(frozen=True)
class Grid:
    """The working grid: frame (H, W) shrunk to (h, w)."""

    H: int
    W: int
    h: int
    w: int

    @classmethod
    def for_frame(cls, H: int, W: int, scale: float, min_side: int = 96) -> "Grid":
        """Shrink by ``scale`` per axis, but keep the short side at least ``min_side`` (small videos
        are not shrunk into a handful of cells)."""
        scale = max(1.0, min(float(scale), min(H, W) / float(min_side)))
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


def make_bank(**settings) -> FilterBank:
    """A FilterBank with the given settings, superpixels off unless asked for (SLIC costs more per frame
    than everything else together); settings this FilterBank version does not have are ignored."""
    known = {f.name for f in dataclasses.fields(FilterBank)}
    settings = {"superpixel_sizes": (), **settings}
    return FilterBank(**{k: v for k, v in settings.items() if k in known})


class FrameFeatures:
    def __init__(self, grid: Grid, bank: FilterBank | None = None) -> None:
        self.grid = grid
        self.bank = bank or make_bank()
        self._params = None
        self._mean = self._scale = None
        self.n_features = 0

    def fit_standardisation(self, frame: np.ndarray) -> None:
        """Mean and scale per feature from ``frame``, kept for every later frame; the bank's per-group
        weights (its ARD lengthscales), where it has them, are folded into the scale."""
        small = self.grid.shrink(frame)
        self._params = self.bank.prepare(small)
        raw = self.raw(small)
        self.n_features = D = raw.shape[-1]
        flat = raw.reshape(-1, D)
        self._mean, scale = standardisation(self.bank, raw.shape[:-1], small.shape[-1], flat.mean(0), flat.std(0))
        self._scale = scale.astype(np.float32)

    def __call__(self, frame: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(features (h, w, D) float32 standardised, grey (h, w) uint8 for the flow)."""
        small, grey = self.shrink(frame)
        return self.standardised(small), grey

    def shrink(self, frame: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(working frame (h, w, 3), its grey (h, w) uint8 for the flow)."""
        if self._params is None:
            self.fit_standardisation(frame)
        small = self.grid.shrink(frame)
        return small, cv2.cvtColor(small, cv2.COLOR_RGB2GRAY)

    @property
    def reach(self) -> int:
        """Working pixels a feature reads on either side (the largest Gaussian's truncation)."""
        b = self.bank
        return int(4.0 * max(b.smoothing_scales + b.gradient_scales + b.hessian_scales) + 0.5) + 1

    def standardised(self, small: np.ndarray, box: tuple[int, int, int, int] | None = None) -> np.ndarray:
        """Standardised features (h, w, D) of a working frame, or only of ``box`` = (r0, r1, c0, c1)
        (computed on the box grown by :attr:`reach`, so they equal the whole frame's inside it)."""
        if box is None:
            raw = self.raw(small)
        else:
            r0, r1, c0, c1 = box
            m = self.reach
            a0, a1, b0, b1 = max(0, r0 - m), min(small.shape[0], r1 + m), max(0, c0 - m), min(small.shape[1], c1 + m)
            raw = self.raw(np.ascontiguousarray(small[a0:a1, b0:b1]))[r0 - a0:r1 - a0, c0 - b0:c1 - b0]
        return ((raw - self._mean) * self._scale).astype(np.float32, copy=False)

    def raw(self, small: np.ndarray) -> np.ndarray:
        """The bank's unstandardised features of a working frame, its Gaussian derivatives filtered
        directly (:func:`volseg.features.scale_space.exact_derivatives_2d`: the faster backend on
        these small frames)."""
        return self.bank.raw(small, (1.0, 1.0), self._params, derivatives=_exact_derivatives)


def _exact_derivatives(channel: int, x: np.ndarray, sigma, orders) -> list[np.ndarray]:
    return exact_derivatives_2d(x, sigma, orders)


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


def flow_confidence(backward: np.ndarray, forward: np.ndarray) -> np.ndarray:
    """(h, w) confidence in [0, 1] of the backward flow (this frame -> previous) by forward-backward
    consistency (Sundaram, Brox and Keutzer, ECCV 2010): following ``backward`` then ``forward`` should
    come back to the start; the round trip's error is tolerated in proportion to the motion."""
    there = warp(np.moveaxis(forward, -1, 0), backward)  # the forward flow where each pixel lands
    err = ((backward + np.moveaxis(there, 0, -1)) ** 2).sum(-1)
    tol = 0.01 * ((backward ** 2).sum(-1) + (there ** 2).sum(0)) + 0.5
    return np.exp(-0.5 * err / tol).astype(np.float32)


def warp(maps: np.ndarray, flow: np.ndarray) -> np.ndarray:
    """Pull (K, h, w) maps from frame b into frame a along ``flow(a, b)`` (bilinear, border replicated)."""
    h, w = flow.shape[:2]
    r, c = np.mgrid[0:h, 0:w].astype(np.float32)
    map_r, map_c = r + flow[..., 0], c + flow[..., 1]
    return np.stack([cv2.remap(m.astype(np.float32), map_c, map_r, cv2.INTER_LINEAR, borderMode=cv2.BORDER_REPLICATE)
                     for m in maps])

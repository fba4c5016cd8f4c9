"""Per-frame inputs of the video GP on a reduced working grid: features and optical flow.

Features are the training-free :class:`volseg.features.FilterBank` computed on the frame shrunk by
``scale`` per axis (its scales are in working-grid pixels, so a scale of 4 means 4x larger at full
resolution), and/or learned extractors (``VideoConfig.features``, e.g. ``learned2d+filterbank``): a
learned embedding is computed on the full frame (the network sees the resolution it was trained for)
and shrunk to the working grid.  They are standardised with the mean and std of one reference frame
for the whole video -- per-frame statistics would shift as the object moves, and matching across
frames needs one feature space.  Flow is OpenCV's DIS optical flow (training-free) on the grey
working frames.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass

import cv2
import numpy as np

from ..features import FeatureExtractor, FilterBank, feature_parts
from ..features.scale_space import exact_derivatives_2d
from ..features.stream import standardisation
from ..image import Image


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


def frame_extractors(spec: str, device: str = "cpu") -> tuple[bool, list[FeatureExtractor]]:
    """(whether the filter bank is one of the parts, the other parts loaded) of a ``features`` setting
    such as ``learned2d+filterbank``.  The filter bank is the video's own (working grid, its scales from
    VideoConfig), not the 2D default that :func:`volseg.features.get_extractor` would make."""
    parts = feature_parts(spec, device)
    return any(isinstance(p, FilterBank) for p in parts), [p for p in parts if not isinstance(p, FilterBank)]


class FrameFeatures:
    """Standardised per-frame features on the working grid: the filter bank's, then the ``learned``
    extractors' embeddings (their channels in order).

    A working frame (:meth:`shrink`) is the shrunk RGB frame, with the learned embeddings appended as
    extra channels when there are learned extractors: the network runs once per frame on the full
    frame, and a region's features (:meth:`standardised` with a box) are a slice of them.

    With learned extractors the features come ``prescaled`` as in :class:`volseg.features.StackedFeatures`:
    each part divided by its own lengthscale (the filter bank's 1, a learned part's the one it was trained
    with) times sqrt(its number of features), so the kernel is the product of the parts' kernels and the
    video's ``feature_lengthscale`` is applied to it as a whole."""

    def __init__(self, grid: Grid, bank: FilterBank | None = None, learned=(), learned_long_side: int = 0,
                 learned_zoom: float = 1.0) -> None:
        self.grid = grid
        self.learned = list(learned)
        self.learned_long_side = learned_long_side
        self.learned_zoom = float(learned_zoom)
        self.bank = bank if bank is not None or self.learned else make_bank()
        self.prescaled = bool(self.learned)
        self._params = None
        self._mean = self._scale = None
        self.n_features = 0
        self._learned_dims = 0  # embedding channels at the end of a working frame
        self._part_dims: list[int] = []  # ... of each learned extractor

    def fit_standardisation(self, frame: np.ndarray) -> None:
        """Mean and scale per feature from ``frame``, kept for every later frame; the bank's per-group
        weights (its ARD lengthscales), where it has them, are folded into the scale, and so are the
        parts' lengthscales when the features are :attr:`prescaled`."""
        self._learned_dims = 0
        small = self.grid.shrink(frame)
        if self.bank is not None:
            self._params = self.bank.prepare(small)
        if self.learned:
            small = self._with_embeddings(frame, small)
        raw = self.raw(small)
        self.n_features = D = raw.shape[-1]
        # float32 sums over location-major rows: the order the benchmarks were measured with (another
        # order changes the statistics in their last bits, and the propagation carries that into the masks)
        flat = np.ascontiguousarray(raw).reshape(-1, D)
        mean, std = flat.mean(0), flat.std(0)
        means, scales, start = [], [], 0
        if self.bank is not None:
            Db = D - self._learned_dims
            m, sc = standardisation(self.bank, raw.shape[:-1], small.shape[-1] - self._learned_dims, mean[:Db],
                                    std[:Db])
            means.append(m)
            scales.append(sc / Db ** 0.5 if self.prescaled else sc)
            start = Db
        for ex, E in zip(self.learned, self._part_dims):
            m, sd = mean[start:start + E], std[start:start + E]
            sd = np.where(sd > 1e-6 * (1.0 + np.abs(m)), sd, 1.0)  # a constant channel stays constant
            means.append(m)
            scales.append(1.0 / (sd * ex.gp_config.get("feature_lengthscale", 1.0) * E ** 0.5))
            start += E
        self._mean = np.concatenate(means)
        self._scale = np.concatenate(scales).astype(np.float32)

    def __call__(self, frame: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(features (h, w, D) float32 standardised, grey (h, w) uint8 for the flow)."""
        small, grey = self.shrink(frame)
        return self.standardised(small), grey

    def shrink(self, frame: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(working frame (h, w, C): the shrunk RGB, then any learned embedding channels; its grey (h, w)
        uint8 for the flow)."""
        if self._mean is None:
            self.fit_standardisation(frame)
        small = self.grid.shrink(frame)
        grey = cv2.cvtColor(small, cv2.COLOR_RGB2GRAY)
        return (self._with_embeddings(frame, small) if self.learned else small), grey

    def grey(self, frame: np.ndarray) -> np.ndarray:
        """The grey working frame (h, w) uint8 of ``frame``, for the flow (no features computed)."""
        return cv2.cvtColor(self.grid.shrink(frame), cv2.COLOR_RGB2GRAY)

    def _with_embeddings(self, frame: np.ndarray, small: np.ndarray) -> np.ndarray:
        """The working frame ``small`` with the learned extractors' embeddings of ``frame`` (computed on the
        frame shrunk to :attr:`learned_long_side`, but no smaller than the working grid or the network's
        input, then shrunk to the working grid) appended as float32 channels.

        A network runs at its own inference size times :attr:`learned_zoom` (up to the frame's size): a small
        object's working grid is finer than the default one, and the network sees it enlarged as much, at the
        scale it learned objects at, rather than a few pixels wide."""
        H, W = frame.shape[:2]
        sizes = [min(round(ex.infer_long_side * self.learned_zoom), max(H, W)) if hasattr(ex, "infer_long_side")
                 else None for ex in self.learned]
        side = max(self.learned_long_side, self.grid.h, self.grid.w, *(n or 0 for n in sizes))
        if self.learned_long_side and side < max(H, W):
            s = side / max(H, W)
            frame = cv2.resize(frame, (max(1, round(W * s)), max(1, round(H * s))), interpolation=cv2.INTER_AREA)
        image = Image.from_array(frame, channel_axis=-1 if frame.ndim == 3 else None)
        blocks = [np.asarray(ex.features(image) if n is None else ex.features(image, long_side=n), np.float32)
                  for ex, n in zip(self.learned, sizes)]
        self._part_dims = [b.shape[-1] for b in blocks]
        self._learned_dims = sum(self._part_dims)
        # cv2's area resize takes at most 4 channels at a time
        shrunk = [self.grid.shrink(np.ascontiguousarray(b[..., i:i + 4])).reshape(self.grid.h, self.grid.w, -1)
                  for b in blocks for i in range(0, b.shape[-1], 4)]
        rgb = small.reshape(self.grid.h, self.grid.w, -1).astype(np.float32)
        return np.concatenate([rgb, *shrunk], axis=-1)

    @property
    def reach(self) -> int:
        """Working pixels a feature reads on either side (the largest Gaussian's truncation; a learned
        embedding is computed on the whole frame once, so a box is a slice of it)."""
        b = self.bank
        if b is None:
            return 0
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
        """The unstandardised features of a working frame: the bank's, its Gaussian derivatives filtered
        directly (:func:`volseg.features.scale_space.exact_derivatives_2d`: the faster backend on these
        small frames), then the learned embedding channels the working frame carries."""
        E = self._learned_dims
        if not E:
            return self.bank.raw(small, (1.0, 1.0), self._params, derivatives=_exact_derivatives)
        embedding = small[..., -E:]
        if self.bank is None:
            return embedding
        rgb = small[..., :-E].astype(np.uint8)  # the shrunk uint8 frame, carried exactly as float32
        bank = self.bank.raw(rgb, (1.0, 1.0), self._params, derivatives=_exact_derivatives)
        return np.concatenate([bank.astype(np.float32, copy=False), embedding], axis=-1)


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

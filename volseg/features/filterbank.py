"""The training-free default: a multiscale filter bank, one n-D code path for 2D and 3D.

Per location: Gaussian-smoothed channels at several scales (Lab colour for RGB, normalised
intensity otherwise), gradient magnitude and Hessian eigenvalues of the first channel
(luminance).  Scales are in world units (mm; pixels for rasters) and converted per axis with
the spacing, so anisotropic volumes are filtered isotropically in millimetres.

The bank is *local*: a slab's features depend only on the slab plus a halo of ``4 sigma``,
which is what lets :mod:`volseg.features.stream` compute a whole CT slab by slab.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import ClassVar, Sequence

import numpy as np
import torch
from skimage.feature import hessian_matrix_eigvals
from skimage.segmentation import slic

from ..colour import looks_rgb, rgb_to_lab
from .base import FeatureExtractor, feature_budget
from .scale_space import MAX_FACTOR, gaussian_derivatives
from .stream import compute_features

TRUNCATE = 4.0  # scipy's default Gaussian truncation, in sigmas; also the halo a slab needs


@dataclass(frozen=True)
class FilterBank(FeatureExtractor):
    """The training-free FeatureExtractor: no learned GP settings, no prior-mean head."""

    prescaled: ClassVar[bool] = False
    # float32 maps a slab needs besides its D features: channels, one scale's derivatives, work arrays
    temporaries: ClassVar[int] = 10
    smoothing_scales: tuple[float, ...] = (0.0, 1.0, 2.0, 4.0, 8.0)  # 0: the raw channel
    gradient_scales: tuple[float, ...] = (1.0, 3.0)
    hessian_scales: tuple[float, ...] = (2.0,)
    superpixel_sizes: tuple[float, ...] = (100.0, 400.0)  # voxels per SLIC superpixel; () disables
    compactness: float = 0.1
    superpixel_max_voxels: int = 1_500_000  # SLIC's cost grows with the voxels: larger images skip it
    # relative weights of the standardised groups (an ARD lengthscale per group, tuned on Berkeley)
    raw_weight: float = 1.0
    smooth_weight: float = 1.0
    edge_weight: float = 0.3
    superpixel_weight: float = 1.0
    # grey volumes: intensities through their own distribution function first (histogram equalisation), so
    # the range a body is made of gets the feature range; None: volumes only (2D keeps the linear map)
    equalise: bool | None = None
    equalise_share: float = 0.5  # ... blended with the linear map by this share
    name: str = "filterbank"

    # -- per-image constants ---------------------------------------------------------------------
    def prepare(self, array: np.ndarray) -> dict:
        """Constants that must be global for slabs to agree: channel normalisation."""
        a = array.reshape(-1, array.shape[-1])
        sample = a[:: max(1, a.shape[0] // 2_000_000)].astype(np.float32)
        sp = self.superpixels_for(a.shape[0])
        if looks_rgb(sample):
            return {"colour": "lab", "superpixels": sp}
        lo, hi = np.percentile(sample, [0.5, 99.5], axis=0).astype(np.float32)
        # a constant channel (lo == hi) gets a span of one, not 1e-6: lo + 1e-6 rounds back to lo in
        # float32 once lo >= 32, and the division then makes NaN features
        hi = np.where(hi > lo, hi, lo + np.maximum(1, np.abs(lo)))
        params = {"colour": "none", "lo": lo, "hi": hi, "superpixels": sp}
        if self.equalise or (self.equalise is None and array.ndim - 1 >= 3):
            # a CT spends most of its range on air and bone: soft tissues 40 HU apart are a few percent of
            # it, and the feature kernel cannot tell them apart; their share of the voxels is far larger
            params["quantiles"] = np.percentile(sample, np.linspace(0.0, 100.0, 257), axis=0).astype(np.float32)
        return params

    def halo(self, spacing: Sequence[float]) -> tuple[int, ...]:
        s = max(self.smoothing_scales + self.gradient_scales + self.hessian_scales)
        # the Gaussian's reach, plus one coarse block for the pyramid's interpolation, plus the differences
        return tuple(int(math.ceil(TRUNCATE * s / sp)) + MAX_FACTOR + 2 for sp in spacing)

    def superpixels_for(self, n_voxels: int) -> tuple[float, ...]:
        return self.superpixel_sizes if n_voxels <= self.superpixel_max_voxels else ()

    def n_features(self, ndim: int, channels: int, n_voxels: int = 0) -> int:
        return len(self.weights(ndim, channels, n_voxels))

    def weights(self, ndim: int, channels: int, n_voxels: int = 0) -> np.ndarray:
        """Per-feature weights in the order :meth:`raw` stacks them."""
        c = 3 if channels == 3 else channels
        per_channel = [self.raw_weight if s == 0 else self.smooth_weight for s in self.smoothing_scales]
        w = per_channel * c + [self.edge_weight] * (len(self.gradient_scales) + ndim * len(self.hessian_scales))
        w += [self.superpixel_weight] * (c * len(self.superpixels_for(n_voxels)))
        return np.asarray(w, dtype=np.float32)

    @property
    def gp_config(self) -> dict:
        return {}

    def features(self, image, budget: int | None = None) -> np.ndarray:
        """Standardised features (*spatial, D), computed in slabs (:func:`volseg.features.stream.compute_features`)."""
        return compute_features(self, image, budget=feature_budget(budget))

    def prior_mean(self, image) -> None:
        return None

    # -- the filters -----------------------------------------------------------------------------
    def channels(self, array: np.ndarray, params: dict) -> np.ndarray:
        """(*spatial, C) channels on a comparable scale (about 0..1)."""
        if params["colour"] == "lab":
            return rgb_to_lab(array) / np.array([100.0, 128.0, 128.0], dtype=np.float32)
        a = array.astype(np.float32, copy=False)
        linear = np.clip((a - params["lo"]) / (params["hi"] - params["lo"]), -0.5, 1.5)
        if "quantiles" not in params:
            return linear
        q, levels = params["quantiles"], np.linspace(0.0, 1.0, params["quantiles"].shape[0])
        ranked = np.stack([_interp(a[..., c], _increasing(q[:, c]), levels) for c in range(a.shape[-1])], axis=-1)
        w = np.float32(self.equalise_share)
        return ranked * w + linear * (1 - w) if w < 1 else ranked

    def raw(self, array: np.ndarray, spacing: Sequence[float], params: dict, derivatives=None) -> np.ndarray:
        """Unstandardised features (*spatial, D) of a slab (with its halo) or a whole image, in the
        order of :meth:`weights`.  Each feature is written into the result as soon as it is made and
        its intermediates dropped, so a slab holds about D + 10 float32 maps (:attr:`temporaries`).
        Superpixels are the one non-local part: they are used only when the image is small enough
        to be a single slab (``params["superpixels"]``, set by :meth:`prepare`).
        ``derivatives(channel, x, sigma, orders)``, if given, stands in for :func:`gaussian_derivatives`
        of channel ``x`` (:mod:`volseg.features.tiles` serves coarse scales from whole-image maps)."""
        deriv = derivatives or (lambda c, x, sigma, orders: gaussian_derivatives(x, sigma, orders))
        ch = self.channels(array, params)
        sp = np.asarray(spacing, dtype=np.float64)
        d, C = ch.ndim - 1, ch.shape[-1]
        S, G = len(self.smoothing_scales), len(self.gradient_scales)
        zero = (0,) * d
        first = [tuple(_unit(d, k)) for k in range(d)]
        second = [tuple(int(i == a) + int(i == b) for i in range(d)) for a in range(d) for b in range(a, d)]
        sizes = params.get("superpixels", ())
        D = C * S + G + d * len(self.hessian_scales) + C * len(sizes)
        # channel-first storage behind the (*spatial, D) view: each feature is written as one contiguous
        # plane (interleaved, every write strides across all D), and consumers read features plane by plane
        out = np.moveaxis(np.empty((D,) + ch.shape[:-1], np.float32), 0, -1)
        for c in range(C):
            for i, s in enumerate(self.smoothing_scales):
                out[..., c * S + i] = ch[..., c] if s == 0 else deriv(c, ch[..., c], s / sp, [zero])[0]
        lum = ch[..., 0]
        for g, s in enumerate(self.gradient_scales):
            # derivatives per mm, not per voxel, so anisotropic grids agree with isotropic ones; the
            # magnitude is then scale-normalised (times sigma)
            grads = deriv(0, lum, s / sp, first)
            for k, x in enumerate(grads):
                x *= np.float32(1.0 / sp[k])
            out[..., C * S + g] = np.sqrt(sum(x * x for x in grads)) * np.float32(s)
            del grads
        for h, s in enumerate(self.hessian_scales):
            # scale-normalised (times sigma^2), per mm^2
            elems = deriv(0, lum, s / sp, second)
            for o, x in zip(second, elems):
                x *= np.float32(s * s / np.prod([sp[i] ** n for i, n in enumerate(o)]))
            col, step = C * S + G + h * d, max(1, ch.shape[0] // 8)
            for lo in range(0, ch.shape[0], step):  # pointwise, so in chunks: few temporaries at a time
                part = slice(lo, lo + step)
                out[part, ..., col: col + d] = np.moveaxis(symmetric_eigenvalues([e[part] for e in elems], d), 0, -1)
            del elems
        col = C * S + G + d * len(self.hessian_scales)
        for j, size in enumerate(sizes):
            means = superpixel_means(ch, size, sp, self.compactness)
            out[..., col + j * C: col + (j + 1) * C] = np.moveaxis(means, 0, -1)
        return out


def symmetric_eigenvalues(elems: list[np.ndarray], d: int) -> np.ndarray:
    """Eigenvalues (decreasing) of a field of symmetric d x d matrices given as their upper triangle
    (skimage's order).  Closed forms for d = 2 and 3 -- a batched eigvalsh is far slower on a volume."""
    if d == 2:
        a, b, c = elems
        half_tr, root = (a + c) / 2, np.sqrt(((a - c) / 2) ** 2 + b * b)
        return np.stack([half_tr + root, half_tr - root])
    if d != 3:
        return hessian_matrix_eigvals(elems)
    # trigonometric solution of the characteristic cubic (symmetric matrices have real roots), in
    # float32 torch: multi-threaded, and a feature needs no more than float32's 7 digits
    a11, a12, a13, a22, a23, a33 = (torch.from_numpy(np.ascontiguousarray(e, dtype=np.float32)) for e in elems)
    q = (a11 + a22 + a33) / 3
    b11, b22, b33 = a11 - q, a22 - q, a33 - q
    p = torch.sqrt((b11 * b11 + b22 * b22 + b33 * b33 + 2 * (a12 * a12 + a13 * a13 + a23 * a23)) / 6)
    safe = torch.where(p > 1e-12, p, torch.ones_like(p))
    det = (b11 * (b22 * b33 - a23 * a23) - a12 * (a12 * b33 - a23 * a13) + a13 * (a12 * a23 - b22 * a13)) / safe ** 3
    phi = torch.arccos(torch.clamp(det / 2, -1.0, 1.0)) / 3
    e1 = q + 2 * p * torch.cos(phi)
    e3 = q + 2 * p * torch.cos(phi + 2 * math.pi / 3)
    return torch.stack([e1, 3 * q - e1 - e3, e3]).numpy()


def superpixel_means(channels: np.ndarray, size: float, spacing: np.ndarray, compactness: float) -> np.ndarray:
    """Each channel averaged over SLIC superpixels of about ``size`` voxels: features that are constant
    inside a region and jump at its edges, which is what makes the GP mask follow image boundaries."""
    n_segments = max(2, int(np.prod(channels.shape[:-1]) / size))
    labels = slic(channels, n_segments=n_segments, compactness=compactness, spacing=spacing, channel_axis=-1,
                  convert2lab=False, start_label=0, enforce_connectivity=True)
    counts = np.bincount(labels.ravel())
    flat = labels.ravel()
    return np.stack([(np.bincount(flat, weights=channels[..., c].ravel()) / np.maximum(counts, 1))[labels]
                     for c in range(channels.shape[-1])]).astype(np.float32)


LOOKUP_MIN_SIZE = 1 << 20   # arrays this large try the lookup table of :func:`_interp` ...
LOOKUP_MAX_VALUES = 1 << 16  # ... when their values are integers spanning at most this many


def _interp(x: np.ndarray, knots: np.ndarray, levels: np.ndarray) -> np.ndarray:
    """``np.interp(x, knots, levels)`` as float32.  A scanner stores CT and MR as integers, so a large
    integer-valued ``x`` takes a lookup table of ``np.interp`` over its value range: the same values
    bit for bit, without a binary search per voxel (the slowest step of a whole CT's features)."""
    if x.size >= LOOKUP_MIN_SIZE:
        lo, hi = float(x.min()), float(x.max())
        if hi - lo < LOOKUP_MAX_VALUES and lo == math.floor(lo) and np.array_equal(x, np.rint(x)):
            table = np.interp(np.arange(lo, hi + 1.0), knots, levels).astype(np.float32)
            return table[(x - np.float32(lo)).astype(np.intp)]
    return np.interp(x, knots, levels).astype(np.float32)


def _increasing(knots: np.ndarray) -> np.ndarray:
    """Quantiles made strictly increasing (ties: many voxels of one value), as np.interp needs."""
    return knots + np.arange(knots.shape[0], dtype=np.float64) * 1e-6 * max(float(knots[-1] - knots[0]), 1.0)


def _unit(ndim: int, k: int) -> list[int]:
    o = [0] * ndim
    o[k] = 1
    return o


"""Edge-aware upsampling of a working-grid probability to full resolution: bilinear, then a guided filter.

The guided filter (He, Sun and Tang, ECCV 2010) fits, in every window of radius ``r``, the
probability as a linear function of the guide image's intensity, so the coarse map's transitions
snap to the frame's edges.  It is made of box filters only (OpenCV ``boxFilter``), O(1) per pixel
whatever the radius; ``cv2.ximgproc`` (which has one) is not in the headless OpenCV wheels.  Work is
limited to the box around the uncertain band, since elsewhere the map is flat and the filter an
identity.

:func:`cut_to_edges` then moves each object's 0.5 level onto the frame's edges with the 2D session's
minimum cut (:func:`volseg.boundary.cut`, its colour model refitted to the object's own mask), at full
resolution, on a ring around that level: thin parts the working grid blurs away can come back where the
frame's edges and colours hold them.
"""
from __future__ import annotations

import cv2
import numpy as np
from scipy.special import ndtri

from .. import boundary
from .step import grown

PROBIT_CLIP = 1e-4  # probabilities are clipped to [this, 1 - this] before the probit: latents within +-3.7


def _box(a: np.ndarray, r: int) -> np.ndarray:
    return cv2.boxFilter(a, cv2.CV_32F, (2 * r + 1, 2 * r + 1), normalize=True, borderType=cv2.BORDER_REFLECT)


def guided_filter(guide: np.ndarray, p: np.ndarray, radius: int, eps: float, subsample: int = 1) -> np.ndarray:
    """Grey guided filter: guide (H, W) float32 in [0, 1], p (C, H, W) float32 -> (C, H, W).

    ``subsample`` > 1 is the fast guided filter (He and Sun, 2015): the linear coefficients are
    fitted on a grid that much coarser and upsampled, only ``a * I + b`` is done at full size."""
    H, W = guide.shape
    s = max(1, int(subsample))
    g = cv2.resize(guide, (max(1, W // s), max(1, H // s)), interpolation=cv2.INTER_AREA) if s > 1 else guide
    r = max(1, radius // s)
    mean_i = _box(g, r)
    var_i = _box(g * g, r) - mean_i * mean_i
    out = np.empty_like(p)
    for k in range(p.shape[0]):
        pk = cv2.resize(p[k], (g.shape[1], g.shape[0]), interpolation=cv2.INTER_AREA) if s > 1 else p[k]
        mean_p = _box(pk, r)
        a = (_box(g * pk, r) - mean_i * mean_p) / (var_i + eps)
        b = mean_p - a * mean_i
        ma, mb = _box(a, r), _box(b, r)
        if s > 1:
            ma = cv2.resize(ma, (W, H), interpolation=cv2.INTER_LINEAR)
            mb = cv2.resize(mb, (W, H), interpolation=cv2.INTER_LINEAR)
        out[k] = ma * guide + mb
    return out


def upsample(prob: np.ndarray, frame: np.ndarray, *, radius: int = 8, eps: float = 1e-3,
             band: tuple[float, float] = (0.02, 0.98), subsample: int = 2) -> np.ndarray:
    """(K, h, w) probabilities -> (K, H, W), bilinear then guided by ``frame`` (H, W, 3) uint8 where any
    object is uncertain; ``radius`` 0 turns the guided step off."""
    H, W = frame.shape[:2]
    up = np.stack([cv2.resize(np.ascontiguousarray(m, dtype=np.float32), (W, H), interpolation=cv2.INTER_LINEAR)
                   for m in prob])
    if radius <= 0:
        return up
    unsure = ((up > band[0]) & (up < band[1])).any(0)
    if not unsure.any():
        return up
    rows, cols = np.flatnonzero(unsure.any(1)), np.flatnonzero(unsure.any(0))
    m = 2 * radius  # the filter reads radius around each output and its coefficients another radius
    r0, r1 = max(0, rows[0] - m), min(H, rows[-1] + m + 1)
    c0, c1 = max(0, cols[0] - m), min(W, cols[-1] + m + 1)
    guide = cv2.cvtColor(np.ascontiguousarray(frame[r0:r1, c0:c1]), cv2.COLOR_RGB2GRAY).astype(np.float32) / 255.0
    up[:, r0:r1, c0:c1] = np.clip(guided_filter(guide, up[:, r0:r1, c0:c1], radius, eps, subsample), 0.0, 1.0)
    return up


def cut_to_edges(prob: np.ndarray, frame: np.ndarray, *, strength: float, band: float = 1.5, reach: float = 20.0,
                 appearance_weight: float = 0.5, step: int = 1, colour_stride: int = 4,
                 connectivity: int = 1) -> np.ndarray:
    """(K, H, W) full-resolution probabilities, each object's moved onto the frame's edges by a minimum cut
    (the probability's probit is the cut's latent); returns a copy with the cut's foreground above 0.5 and
    its background below.  ``reach`` in pixels of the frame; ``step`` > 1 cuts on the frame shrunk that
    many times; ``connectivity`` 1: the 4-neighbourhood's pairs, 2: the 8-neighbourhood's.

    A video's probabilities are soft nearly everywhere, so the band is also limited to ``reach`` of the
    0.5 level, and every per-pixel step runs on that ring alone: its colours in Lab, the edge weights of
    its pairs (:func:`volseg.boundary.sparse_edge_weights`), and the colour model's ratio (the model's
    histograms from every ``colour_stride``-th pixel of the ring's box)."""
    out = prob.copy()
    lo, hi = PROBIT_CLIP, 1.0 - PROBIT_CLIP
    for k in range(prob.shape[0]):
        p = prob[k] if step == 1 else cv2.resize(prob[k], (prob.shape[2] // step, prob.shape[1] // step),
                                                 interpolation=cv2.INTER_AREA)
        image = frame if step == 1 else cv2.resize(frame, p.shape[::-1], interpolation=cv2.INTER_AREA)
        fg = (p > 0.5).astype(np.uint8)
        if not fg.any() or fg.all():
            continue
        edge = fg ^ cv2.erode(fg, np.ones((3, 3), np.uint8), borderType=cv2.BORDER_REPLICATE)
        ring = grown(edge > 0, reach / step)  # within reach of the mask's boundary
        rows, cols = np.flatnonzero(ring.any(1)), np.flatnonzero(ring.any(0))
        box = (slice(max(0, rows[0] - 1), rows[-1] + 2), slice(max(0, cols[0] - 1), cols[-1] + 2))
        ring_box = ring[box]
        # outside the ring the latent is pinned beyond the band, so the cut keeps the mask's label there
        latent = np.where(fg[box] > 0, 2.0 * band, -2.0 * band)
        latent[ring_box] = ndtri(np.clip(p[box][ring_box], lo, hi))
        free = ring_box & (np.abs(latent) < band)
        if not free.any():
            continue
        known = cv2.dilate(free.astype(np.uint8), np.ones((3, 3), np.uint8)) > 0
        channels = np.zeros(known.shape + (3,), np.float32)
        channels[known] = boundary.contrast_channels(image[box][known][None])[0]
        weights = boundary.sparse_edge_weights(channels, known, (1.0, 1.0), connectivity=connectivity)
        appearance = None
        if appearance_weight > 0:  # refitted to this frame's mask, as the 2D session refits it to its GP's
            sample = (slice(None, None, colour_stride),) * 2
            model = boundary.ColourModel(boundary.contrast_channels(image[box][sample]))
            appearance = np.zeros(known.shape, np.float32)
            table = model.table(fg[box][sample] > 0)
            appearance[free] = appearance_weight * table[model.codes(channels[free])]
        cut = boundary.cut(latent, weights, strength=strength, band=band, reach=np.inf, appearance=appearance)
        mask = fg > 0
        mask[box] = cut
        if step > 1:
            mask = cv2.resize(mask.astype(np.uint8), prob.shape[:0:-1], interpolation=cv2.INTER_NEAREST) > 0
        out[k] = np.where(mask, np.maximum(prob[k], 0.5 + 1e-3), np.minimum(prob[k], 0.5 - 1e-3))
    return out


def to_labels(prob: np.ndarray, objects: list[int]) -> np.ndarray:
    """(K, H, W) object probabilities -> label map: the most likely object where it beats 0.5, else 0."""
    ids = np.asarray(objects, np.int32)
    if prob.shape[0] == 1:
        return np.where(prob[0] > 0.5, ids[0], 0).astype(np.uint8 if ids.max() < 256 else np.uint16)
    best = prob.argmax(0)
    lab = np.where(np.take_along_axis(prob, best[None], 0)[0] > 0.5, ids[best], 0)
    return lab.astype(np.uint8 if ids.max() < 256 else np.uint16)

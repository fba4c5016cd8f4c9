"""Edge-aware upsampling of a working-grid probability to full resolution: bilinear, then a guided filter.

The guided filter (He, Sun and Tang, ECCV 2010) fits, in every window of radius ``r``, the
probability as a linear function of the guide image's intensity, so the coarse map's transitions
snap to the frame's edges.  It is made of box filters only (OpenCV ``boxFilter``), O(1) per pixel
whatever the radius; ``cv2.ximgproc`` (which has one) is not in the headless OpenCV wheels.  Work is
limited to the box around the uncertain band, since elsewhere the map is flat and the filter an
identity.
"""
from __future__ import annotations

import cv2
import numpy as np


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


def to_labels(prob: np.ndarray, objects: list[int]) -> np.ndarray:
    """(K, H, W) object probabilities -> label map: the most likely object where it beats 0.5, else 0."""
    ids = np.asarray(objects, np.int32)
    if prob.shape[0] == 1:
        return np.where(prob[0] > 0.5, ids[0], 0).astype(np.uint8 if ids.max() < 256 else np.uint16)
    best = prob.argmax(0)
    lab = np.where(np.take_along_axis(prob, best[None], 0)[0] > 0.5, ids[best], 0)
    return lab.astype(np.uint8 if ids.max() < 256 else np.uint16)

"""Where a click can change the posterior, so a click re-evaluates only there.

Adding (or removing) training point x* moves the posterior by

    d mean(x) = sum_i d alpha_i k(x, x_i)                  (i over the clicks, x* included)
    d var(x)  = -(k(x, x*) - sum_i w_i k(x, x_i))^2 / d2   (w = A^-1 k(X, x*), d2 its Schur complement)

and the spatial factor of the kernel bounds every k(x, x_i) by a function of the distance to x_i
alone.  Each click i so gets its own radius, outside which its terms cannot add up to the
tolerance: clicks whose weight barely moved get a small ball or none.  The union of those balls
is covered by boxes thin along the first axis (:func:`ball_boxes`), about two thirds of the
volume of one box per ball and far less than the bounding box of them all.
"""
from __future__ import annotations

from typing import Sequence

import numpy as np

Box = tuple[slice, ...]


def influence_radii(kernel, mean_weights: np.ndarray, var_weights: np.ndarray, tolerance: float) -> np.ndarray:
    """Per click, the kernel-space radius beyond which it moves neither the mean nor the variance by
    ``tolerance`` (0: nowhere).  ``mean_weights`` are |d alpha_i|, ``var_weights`` |w_i| / sqrt(d2)
    (the changed click: 1 / sqrt(d2)); the tolerance is split evenly over the clicks that matter."""
    scale = float(kernel.outputscale)
    c_mean = scale * np.abs(np.asarray(mean_weights, np.float64))
    c_var = scale * np.abs(np.asarray(var_weights, np.float64))
    m = max(1, int(np.count_nonzero((c_mean > 0) | (c_var > 0))))
    radii = np.zeros(c_mean.shape, np.float64)
    # a term c k stays below its share t once k < t / c; (sum of var terms)^2 < tol needs sum < sqrt(tol)
    for c, share in ((c_mean, tolerance / m), (c_var, np.sqrt(tolerance) / m)):
        live = c > share
        radii[live] = np.maximum(radii[live], [kernel.radius(share / v) for v in c[live]])
    return radii


def ball_boxes(centres: np.ndarray, half_widths: np.ndarray, shape: Sequence[int],
               bands_per_ball: int = 16) -> list[Box]:
    """Disjoint boxes covering the union of axis-aligned ellipsoids (centres and half-widths in voxels, (m, ndim)),
    clipped to ``shape``.  Axis 0 is cut into bands; in each band an ellipsoid contributes the box of
    its widest cross-section there, and overlapping boxes of one band merge."""
    centres = np.asarray(centres, np.float64).reshape(-1, len(shape))
    half_widths = np.asarray(half_widths, np.float64).reshape(-1, len(shape))
    keep = (half_widths > 0).all(1)
    centres, half_widths = centres[keep], half_widths[keep]
    if not len(centres):
        return []
    lo0 = max(0, int(np.floor((centres[:, 0] - half_widths[:, 0]).min())))
    hi0 = min(shape[0], int(np.ceil((centres[:, 0] + half_widths[:, 0]).max())) + 1)
    band = max(1, int(np.ceil(2.0 * half_widths[:, 0].min() / bands_per_ball)))
    starts = np.arange(lo0, hi0, band)
    stops = np.minimum(starts + band, hi0)
    # per band (rows) and ellipsoid (columns): its widest cross-section's half-widths in the band
    nearest = np.clip(centres[None, :, 0], starts[:, None], stops[:, None] - 1)  # the band's plane nearest each centre
    u = (nearest - centres[None, :, 0]) / half_widths[None, :, 0]
    w = half_widths[None, :, 1:] * np.sqrt(np.clip(1.0 - u * u, 0.0, None))[..., None]
    extent = np.asarray(shape[1:], np.int64)
    lo = np.maximum(0, np.floor(centres[None, :, 1:] - w)).astype(np.int64)
    hi = np.minimum(extent, np.ceil(centres[None, :, 1:] + w).astype(np.int64) + 1)
    hit = (np.abs(u) <= 1.0) & (hi > lo).all(-1)
    boxes: list[Box] = []
    for k, (b0, b1) in enumerate(zip(starts.tolist(), stops.tolist())):
        rects = [tuple(slice(a, b) for a, b in zip(lo[k, j].tolist(), hi[k, j].tolist()))
                 for j in np.flatnonzero(hit[k])]
        boxes += [(slice(b0, b1),) + r for r in merge_boxes(rects)]
    return boxes


def merge_boxes(boxes: list[Box]) -> list[Box]:
    """Merge overlapping boxes into their bounding boxes until none overlap, so no location is evaluated twice."""
    out: list[Box] = []
    for b in boxes:
        merged = True
        while merged:
            merged = False
            for i, o in enumerate(out):
                if all(x.start < y.stop and y.start < x.stop for x, y in zip(b, o)):
                    b = tuple(slice(min(x.start, y.start), max(x.stop, y.stop)) for x, y in zip(b, o))
                    out.pop(i)
                    merged = True
                    break
        out.append(b)
    return out


def box_size(box: Box) -> int:
    n = 1
    for s in box:
        n *= s.stop - s.start
    return n

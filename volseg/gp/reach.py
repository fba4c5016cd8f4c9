"""Where a click can change the posterior, so a click re-evaluates only there.

Adding (or removing) training point x* moves the posterior by

    d mean(x) = sum_i d alpha_i k(x, x_i)                  (i over the clicks, x* included)
    d var(x)  = -(k(x, x*) - sum_i w_i k(x, x_i))^2 / d2   (w = A^-1 k(X, x*), d2 its Schur complement)

and the spatial factor of the kernel bounds every k(x, x_i) by a function of the distance to x_i
alone.  Each click i so gets its own radius, outside which its terms cannot add up to the
tolerance: clicks whose weight barely moved get a small ball or none.  The union of those balls
is covered by boxes thin along the first axis (:func:`ball_boxes`), about two thirds of the
volume of one box per ball and far less than the bounding box of them all.

A refit (a sum kernel's solve, :func:`moved_weights`) moves every weight at once; the same balls
then bound its change, from each point's weight change and its row of the change of ``A^-1``.
Changes that are not a kernel's, such as a supervoxel field's, are covered block by block
(:func:`block_boxes`).
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


def moved_weights(keys_before: Sequence, alpha_before: np.ndarray, inverse_before: np.ndarray,
                  keys_after: Sequence, alpha_after: np.ndarray, inverse_after: np.ndarray
                  ) -> tuple[list, np.ndarray, np.ndarray]:
    """What a refit moved, per training point of either fit (keyed by location, e.g. its voxel): the
    weights for :func:`influence_radii` of the mean, ``|d alpha_i|`` (largest over objects), and of the
    variance, ``sqrt(sum_j |D_ij|)`` with ``D = A_after^-1 - A_before^-1`` on the union of the points
    (0 where a point is absent).  The variance moves by ``-k^T D k`` (k the kernel to the points), and
    ``|k^T D k| <= sum_i k_i^2 sum_j |D_ij|``, so ``sum_i k_i sqrt(sum_j |D_ij|)`` below ``sqrt(tolerance)``
    keeps it below the tolerance, the form :func:`influence_radii` takes variance weights in."""
    keys = list(dict.fromkeys([*keys_before, *keys_after]))
    index = {k: i for i, k in enumerate(keys)}
    before = np.array([index[k] for k in keys_before], np.int64)
    after = np.array([index[k] for k in keys_after], np.int64)
    columns = max(np.shape(alpha_before)[1] if len(keys_before) else 0,
                  np.shape(alpha_after)[1] if len(keys_after) else 0, 1)
    d_alpha = np.zeros((len(keys), columns))
    d_inverse = np.zeros((len(keys), len(keys)))
    if len(after):
        d_alpha[after] += alpha_after
        d_inverse[np.ix_(after, after)] += inverse_after
    if len(before):
        d_alpha[before] -= alpha_before
        d_inverse[np.ix_(before, before)] -= inverse_before
    return keys, np.abs(d_alpha).max(1), np.sqrt(np.abs(d_inverse).sum(1))


def block_boxes(lo: np.ndarray, hi: np.ndarray, shape: Sequence[int], block: int = 16) -> list[Box]:
    """Disjoint boxes, aligned to a grid of ``block`` voxels, covering the union of boxes ``[lo, hi)``
    ((m, ndim) each, in voxels): the boxes are marked on the coarse grid, and each plane of it along the
    first axis gives runs along the last axis, consecutive rows with the same runs merged."""
    shape = tuple(int(n) for n in shape)
    if len(shape) not in (2, 3):
        raise ValueError(f"block_boxes covers 2D and 3D grids, not {len(shape)}D")
    dims = [-(-n // block) for n in shape]
    # each box adds +-1 at the corners of its block range; the running sums along every axis then count
    # the boxes over each block
    first = np.asarray(lo, np.int64).reshape(-1, len(shape)) // block
    last = -(-np.asarray(hi, np.int64).reshape(-1, len(shape)) // block)
    size = [n + 1 for n in dims]
    count = np.zeros(int(np.prod(size)), np.int64)
    for corner in np.ndindex(*(2,) * len(shape)):
        at = np.ravel_multi_index(tuple(np.where(np.asarray(corner, bool), last, first).T), size)
        count += (-1) ** sum(corner) * np.bincount(at, minlength=len(count))
    count = count.reshape(size)
    for axis in range(len(shape)):
        count = count.cumsum(axis)
    grid = count[tuple(slice(0, n) for n in dims)] > 0
    boxes: list[Box] = []

    def cut(lo_block: int, hi_block: int, n: int) -> slice:
        return slice(lo_block * block, min(hi_block * block, n))

    for i in np.flatnonzero(grid.reshape(grid.shape[0], -1).any(1)).tolist():
        plane = grid[i].reshape(-1, grid.shape[-1]).astype(np.int8)  # 2D: one row; 3D: the rows of axis 1
        # a run starts where a row steps up and stops where it steps down (in row order, then column)
        step = np.diff(np.pad(plane, ((0, 0), (1, 1))), axis=1)
        at_row, at_col = np.nonzero(step)
        per_row: dict[int, list[int]] = {}
        for j, c in zip(at_row.tolist(), at_col.tolist()):
            per_row.setdefault(j, []).append(c)
        rows: list[tuple[int, int, tuple]] = []  # (first row, last row + 1, runs along the last axis)
        for j, edges in per_row.items():
            runs = tuple(zip(edges[::2], edges[1::2]))
            if rows and rows[-1][1] == j and rows[-1][2] == runs:
                rows[-1] = (rows[-1][0], j + 1, runs)
            elif runs:
                rows.append((j, j + 1, runs))
        for j0, j1, runs in rows:
            rest = () if len(shape) == 2 else (cut(j0, j1, shape[1]),)
            for r0, r1 in runs:
                boxes.append((cut(i, i + 1, shape[0]),) + rest + (cut(r0, r1, shape[-1]),))
    return boxes


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

"""Segmentation measures of every benchmark, for binary masks of any dimension.

Excluded pixels are called ``ignore`` everywhere: a boolean mask of pixels that count in neither
the ground truth nor the prediction (ignored bands of the 2D benchmarks, DAVIS's void label).

Overlap:

* :func:`iou` (the Jaccard index, DAVIS's J): |A∩B| / |A∪B|; two empty masks score 1.0.
* :func:`dice`: 2|A∩B| / (|A|+|B|); two empty masks score 1.0 (nothing to find, nothing found).

Boundary (DAVIS F; Perazzi et al., CVPR 2016, and the davis2017-evaluation package's conventions):

* :func:`boundary_map`: the pixels that differ from a neighbour one step further along any
  non-empty set of axes (in 2D: right, lower, lower-right -- the seg2bmap rule of the Berkeley
  benchmark, one pixel wide and offset half a pixel towards the origin).  Only neighbours inside
  the array count: in 2D the last row compares to the right only, the last column to below only,
  and the corner is never boundary.
* :func:`boundary_f`: precision is the fraction of predicted boundary pixels within ``tol`` of a
  true boundary pixel, recall the other way round; ``tol = ceil(0.008 * array diagonal)`` pixels
  (4 at 854x480), matched by dilating with a ball of that radius.  An empty predicted boundary has
  precision 1 (recall 0 if the truth has one); F = 0 when both are 0.

Surface (distances in mm):

* :func:`nsd`: normalised surface Dice (Nikolov et al. 2021) with surface *voxels* (boundary =
  mask XOR its face-connected erosion, the array border counting as outside) and Euclidean
  distances from ``scipy.ndimage.distance_transform_edt(sampling=spacing)``: the fraction of both
  surfaces lying within ``tolerance`` mm of the other.  Two empty masks: 1.0, one empty: 0.0.
  This equals ``monai.metrics.compute_surface_dice(use_subvoxels=False)`` (checked in the tests);
  this version avoids one-hot torch tensors, works for any dimension and crops to the objects'
  bounding box, which matters on whole CT volumes.

Per-click curves (one value per click of one instance):

* NoC@t (:func:`noc`): the first click count k (1-based) with IoU >= t; ``max_clicks`` when never
  reached.  NoF@t (:func:`nof`): the number of instances that never reach t within ``max_clicks``
  (RITM's table counts instances whose NoC equals ``max_clicks``, which also counts those reaching t
  exactly at the last click; ``ritm=True`` gives that variant).
* mIoU@k (:func:`miou_curve`): mean over instances of the IoU after k clicks; an instance that
  stopped early (no error left) keeps its last IoU.
* NoIC (:func:`noic`): clicks whose own pixel the next prediction gives the other label, and clicks
  after which the IoU drops.
* :func:`auc`: area under the curve (trapezoid over clicks 1..N) divided by N-1, so 1.0 means
  perfect from the first click.  (The interactive-3D challenges report the raw trapezoid over
  0..N-1, i.e. this value times N-1.)

Per-frame sequences (DAVIS): :func:`statistics` gives mean, recall (fraction of frames above 0.5)
and decay (mean of the first quarter of the frames minus that of the last quarter, four bins with
shared edges).
"""
from __future__ import annotations

import itertools
import math
from typing import Iterable, Sequence

import cv2
import numpy as np
from scipy import integrate, ndimage

from .clicks import Click

THRESHOLDS = (0.85, 0.90)
DEFAULT_TOLERANCE_MM = 2.0
BOUND_TH = 0.008


def boolean_pair(gt: np.ndarray, pred: np.ndarray, ignore: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Both masks as booleans of one shape, ``ignore`` pixels cleared in both."""
    g, p = np.asarray(gt, bool), np.asarray(pred, bool)
    if g.shape != p.shape:
        raise ValueError(f"prediction of shape {p.shape} does not match the ground truth's {g.shape}")
    if ignore is not None:
        keep = ~np.asarray(ignore, bool)
        g, p = g & keep, p & keep
    return g, p


def axis_spacing(spacing: Sequence[float] | None, ndim: int) -> tuple[float, ...]:
    """Voxel size in mm per axis, checked against ``ndim``; 1 per axis when None."""
    if spacing is None:
        return (1.0,) * ndim
    s = tuple(float(v) for v in spacing)
    if len(s) != ndim:
        raise ValueError(f"spacing {s} does not match {ndim} axes")
    return s


# -- overlap ---------------------------------------------------------------------------------------
def iou(gt: np.ndarray, pred: np.ndarray, ignore: np.ndarray | None = None) -> float:
    """Intersection over union (Jaccard, DAVIS's J), ``ignore`` pixels left out; 1.0 when both are empty."""
    g, p = boolean_pair(gt, pred, ignore)
    union = np.count_nonzero(g | p)
    return 1.0 if union == 0 else np.count_nonzero(g & p) / union


def dice(gt: np.ndarray, pred: np.ndarray, ignore: np.ndarray | None = None) -> float:
    """2|A∩B| / (|A|+|B|), ``ignore`` pixels left out; 1.0 when both are empty."""
    g, p = boolean_pair(gt, pred, ignore)
    total = int(g.sum()) + int(p.sum())
    if total == 0:
        return 1.0
    return 2.0 * int(np.logical_and(g, p).sum()) / total


# -- boundary F ------------------------------------------------------------------------------------
def boundary_map(mask: np.ndarray) -> np.ndarray:
    """One-pixel boundary of a binary mask (seg2bmap rule generalised to n-D, see the module docstring)."""
    m = np.asarray(mask, bool)
    b = np.zeros_like(m)
    for k in range(1, m.ndim + 1):
        for axes in itertools.combinations(range(m.ndim), k):
            here = tuple(slice(0, -1) if a in axes else slice(None) for a in range(m.ndim))
            there = tuple(slice(1, None) if a in axes else slice(None) for a in range(m.ndim))
            b[here] |= m[here] ^ m[there]
    return b


def boundary_tolerance(shape: Sequence[int], bound_th: float = BOUND_TH) -> int:
    """Matching distance in pixels: ``bound_th`` itself if >= 1, else that fraction of the diagonal (rounded up)."""
    return int(bound_th) if bound_th >= 1 else int(math.ceil(bound_th * math.hypot(*shape)))


def _ball(radius: int, ndim: int) -> np.ndarray:
    """The pixels within ``radius`` of the centre (skimage's ``disk`` in 2D)."""
    grid = np.indices((2 * radius + 1,) * ndim) - radius
    return (grid**2).sum(axis=0) <= radius**2


def _dilate(mask: np.ndarray, ball: np.ndarray) -> np.ndarray:
    if mask.ndim == 2:
        # OpenCV's dilation, as the reference implementation uses in 2D
        return cv2.dilate(mask.astype(np.uint8), ball.astype(np.uint8)) > 0
    return ndimage.binary_dilation(mask, structure=ball)


def boundary_f(gt: np.ndarray, pred: np.ndarray, ignore: np.ndarray | None = None,
               bound_th: float = BOUND_TH) -> float:
    """Boundary F-measure (DAVIS's F) of two binary masks, ``ignore`` pixels left out."""
    g, p = boolean_pair(gt, pred, ignore)
    bp, bg = boundary_map(p), boundary_map(g)
    n_p, n_g = int(bp.sum()), int(bg.sum())
    if n_p == 0 and n_g == 0:
        return 1.0
    if n_p == 0 or n_g == 0:
        return 0.0  # one of precision / recall is 0 and the other 1
    ball = _ball(boundary_tolerance(g.shape, bound_th), g.ndim)
    near_g, near_p = _dilate(bg, ball), _dilate(bp, ball)
    precision = np.count_nonzero(bp & near_g) / n_p
    recall = np.count_nonzero(bg & near_p) / n_g
    return 0.0 if precision + recall == 0 else 2.0 * precision * recall / (precision + recall)


# -- surface distances -----------------------------------------------------------------------------
def surface(mask: np.ndarray) -> np.ndarray:
    """Boundary voxels: in the mask with at least one face neighbour outside it (or off the array)."""
    m = np.asarray(mask, dtype=bool)
    return m & ~ndimage.binary_erosion(m, border_value=0)


def _bbox(mask: np.ndarray, margin: int = 1) -> tuple[slice, ...]:
    idx = np.nonzero(mask)
    return tuple(slice(max(int(i.min()) - margin, 0), int(i.max()) + margin + 1) for i in idx)


def surface_distances(gt: np.ndarray, pred: np.ndarray,
                      spacing: Sequence[float] | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Distances (mm) from each gt surface voxel to the pred surface, and from each pred surface voxel to gt's.

    Both masks must be non-empty.
    """
    g, p = boolean_pair(gt, pred)
    sp = axis_spacing(spacing, g.ndim)
    # Every surface voxel lies in the union's bounding box, so distances computed inside it are exact.
    box = _bbox(g | p)
    g, p = g[box], p[box]
    sg, spd = surface(g), surface(p)
    to_pred = ndimage.distance_transform_edt(~spd, sampling=sp)
    to_gt = ndimage.distance_transform_edt(~sg, sampling=sp)
    return to_pred[sg], to_gt[spd]


def nsd(gt: np.ndarray, pred: np.ndarray, spacing: Sequence[float] | None = None,
        tolerance: float = DEFAULT_TOLERANCE_MM) -> float:
    """Normalised surface Dice at ``tolerance`` mm."""
    g, p = boolean_pair(gt, pred)
    if tolerance < 0 or not np.isfinite(tolerance):
        raise ValueError(f"tolerance must be a finite number >= 0 mm, got {tolerance}")
    has_g, has_p = bool(g.any()), bool(p.any())
    if not (has_g or has_p):
        return 1.0
    if not (has_g and has_p):
        return 0.0
    d_gp, d_pg = surface_distances(g, p, spacing)
    return float((np.count_nonzero(d_gp <= tolerance) + np.count_nonzero(d_pg <= tolerance)) / (d_gp.size + d_pg.size))


# -- per-click curves ------------------------------------------------------------------------------
def pad_ious(ious: Sequence[float], max_clicks: int) -> np.ndarray:
    """IoU after 1..max_clicks clicks; a run that stopped early carries its last value forward."""
    a = np.asarray(list(ious)[:max_clicks], dtype=np.float64)
    if len(a) == 0:
        return np.zeros(max_clicks)
    return np.concatenate([a, np.full(max_clicks - len(a), a[-1])])


def noc(ious: Sequence[float], thr: float, max_clicks: int = 20) -> int:
    """Number of clicks to reach IoU ``thr`` (``max_clicks`` if never reached)."""
    hit = pad_ious(ious, max_clicks) >= thr
    return int(np.argmax(hit)) + 1 if hit.any() else max_clicks


def nof(all_ious: Iterable[Sequence[float]], thr: float, max_clicks: int = 20, *, ritm: bool = False) -> int:
    """Number of instances failing to reach ``thr`` within ``max_clicks`` (``ritm``: NoC == max_clicks)."""
    if ritm:
        return sum(noc(i, thr, max_clicks) == max_clicks for i in all_ious)
    return sum(not (pad_ious(i, max_clicks) >= thr).any() for i in all_ious)


def miou_curve(all_ious: Iterable[Sequence[float]], max_clicks: int = 20) -> np.ndarray:
    """mIoU after 1..max_clicks clicks (index k-1 holds mIoU@k)."""
    rows = [pad_ious(i, max_clicks) for i in all_ious]
    return np.mean(rows, axis=0) if rows else np.full(max_clicks, np.nan)


def iou_drops(ious: Sequence[float], tol: float = 1e-9) -> int:
    """Clicks after which the IoU is lower than before that click (the first click cannot drop)."""
    a = np.asarray(ious, dtype=np.float64)
    return int(np.count_nonzero(a[1:] < a[:-1] - tol))


def noic(clicks: Sequence[Click], preds_at_click: Sequence[bool], ious: Sequence[float]) -> dict:
    """Both NoIC counts of one instance; ``preds_at_click[k]`` is the prediction at click k's pixel
    right after click k (as recorded by the runner)."""
    ignored = sum(bool(p) != c.positive for c, p in zip(clicks, preds_at_click))
    return {"label": int(ignored), "drop": iou_drops(ious)}


def auc(values: Sequence[float]) -> float:
    """Normalised area under a metric-per-click curve: trapezoid over clicks 1..N divided by N-1."""
    v = np.asarray(values, dtype=np.float64)
    if v.size == 0:
        return float("nan")
    if v.size == 1:
        return float(v[0])
    return float(integrate.trapezoid(v) / (v.size - 1))


# -- per-frame sequences ---------------------------------------------------------------------------
def statistics(values: Sequence[float]) -> dict[str, float]:
    """Mean, recall (> 0.5) and decay of per-frame values."""
    v = np.asarray(values, np.float64)
    if v.size == 0:
        return {"mean": float("nan"), "recall": float("nan"), "decay": float("nan")}
    edges = (np.round(np.linspace(1, v.size, 5) + 1e-10) - 1).astype(int)
    bins = [v[edges[i]: edges[i + 1] + 1] for i in range(4)]
    return {"mean": float(np.nanmean(v)), "recall": float(np.nanmean(v > 0.5)),
            "decay": float(np.nanmean(bins[0]) - np.nanmean(bins[3]))}


__all__ = ["BOUND_TH", "DEFAULT_TOLERANCE_MM", "THRESHOLDS", "auc", "axis_spacing", "boundary_f", "boundary_map",
           "boundary_tolerance", "dice", "iou", "iou_drops", "miou_curve", "noc", "nof", "noic", "nsd", "pad_ious",
           "statistics", "surface", "surface_distances"]

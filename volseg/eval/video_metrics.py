"""DAVIS video-segmentation measures: region similarity J and boundary accuracy F, per frame and
per sequence (mean, recall, decay), written from the benchmark's definitions
(Perazzi et al., CVPR 2016; the davis2017-evaluation package's conventions):

* J: intersection over union of object and prediction; 1 when both are empty; void pixels
  (label 255 in the ground truth) count in neither.
* F: boundary F-measure.  A mask's boundary is the set of pixels that differ from their right,
  lower or lower-right neighbour (the seg2bmap rule of the Berkeley benchmark, one pixel wide and
  offset half a pixel towards the origin; the last row compares to the right only, the last column
  to below only, the corner is never boundary).  Precision: fraction of predicted boundary pixels
  within ``tol`` of a true boundary pixel; recall the other way round; ``tol = ceil(0.008 *
  image diagonal)`` pixels (4 at 854x480), matched by dilating with a disk of that radius.
  An empty predicted boundary has precision 1 (recall 0 if the truth has one); F = 0 when both
  precision and recall are 0.
* Sequence statistics: mean, recall (fraction of frames above 0.5) and decay (mean of the first
  quarter of the frames minus that of the last quarter, four bins with shared edges).
"""
from __future__ import annotations

import math

import cv2
import numpy as np
from skimage.morphology import disk

VOID = 255
BOUND_TH = 0.008


def jaccard(gt: np.ndarray, pred: np.ndarray, void: np.ndarray | None = None) -> float:
    gt, pred = np.asarray(gt, bool), np.asarray(pred, bool)
    if gt.shape != pred.shape:
        raise ValueError(f"prediction of shape {pred.shape} does not match the annotation's {gt.shape}")
    if void is not None:
        keep = ~np.asarray(void, bool)
        gt, pred = gt & keep, pred & keep
    union = np.count_nonzero(gt | pred)
    return 1.0 if union == 0 else np.count_nonzero(gt & pred) / union


def boundary_map(mask: np.ndarray) -> np.ndarray:
    """One-pixel boundary of a binary mask (seg2bmap rule, see the module docstring)."""
    m = np.asarray(mask, bool)
    right = np.zeros_like(m)
    below = np.zeros_like(m)
    diag = np.zeros_like(m)
    right[:, :-1] = m[:, 1:]
    below[:-1, :] = m[1:, :]
    diag[:-1, :-1] = m[1:, 1:]
    b = (m ^ right) | (m ^ below) | (m ^ diag)
    b[-1, :] = m[-1, :] ^ right[-1, :]
    b[:, -1] = m[:, -1] ^ below[:, -1]
    b[-1, -1] = False
    return b


def tolerance(shape, bound_th: float = BOUND_TH) -> int:
    """Matching distance in pixels: ``bound_th`` itself if >= 1, else that fraction of the diagonal (rounded up)."""
    return int(bound_th) if bound_th >= 1 else int(math.ceil(bound_th * math.hypot(*shape[:2])))


def boundary_f(gt: np.ndarray, pred: np.ndarray, void: np.ndarray | None = None,
               bound_th: float = BOUND_TH) -> float:
    gt, pred = np.asarray(gt, bool), np.asarray(pred, bool)
    if gt.shape != pred.shape:
        raise ValueError(f"prediction of shape {pred.shape} does not match the annotation's {gt.shape}")
    if void is not None:
        keep = ~np.asarray(void, bool)
        gt, pred = gt & keep, pred & keep
    bp, bg = boundary_map(pred), boundary_map(gt)
    n_p, n_g = int(bp.sum()), int(bg.sum())
    if n_p == 0 and n_g == 0:
        return 1.0
    if n_p == 0 or n_g == 0:
        return 0.0  # one of precision / recall is 0 and the other 1
    se = disk(tolerance(gt.shape, bound_th)).astype(np.uint8)
    near_g = cv2.dilate(bg.astype(np.uint8), se) > 0
    near_p = cv2.dilate(bp.astype(np.uint8), se) > 0
    precision = np.count_nonzero(bp & near_g) / n_p
    recall = np.count_nonzero(bg & near_p) / n_g
    return 0.0 if precision + recall == 0 else 2.0 * precision * recall / (precision + recall)


def frame_scores(gt_labels: np.ndarray, pred_labels: np.ndarray, objects) -> dict[int, tuple[float, float]]:
    """{object: (J, F)} for one frame of label maps; 255 in the ground truth is void."""
    void = gt_labels == VOID
    void = void if void.any() else None
    return {int(k): (jaccard(gt_labels == k, pred_labels == k, void), boundary_f(gt_labels == k, pred_labels == k, void))
            for k in objects}


def statistics(values) -> dict[str, float]:
    """Mean, recall (> 0.5) and decay of per-frame values."""
    v = np.asarray(values, np.float64)
    if v.size == 0:
        return {"mean": float("nan"), "recall": float("nan"), "decay": float("nan")}
    edges = (np.round(np.linspace(1, v.size, 5) + 1e-10) - 1).astype(int)
    bins = [v[edges[i]: edges[i + 1] + 1] for i in range(4)]
    return {"mean": float(np.nanmean(v)), "recall": float(np.nanmean(v > 0.5)),
            "decay": float(np.nanmean(bins[0]) - np.nanmean(bins[3]))}

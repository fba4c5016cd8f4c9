"""The simulated user of the 2D benchmarks: the RITM / f-BRS click robot.

Given the ground truth and the current prediction:

1. false negatives (object, not predicted) and false positives (predicted, not object), both
   without ignored pixels;
2. each padded by one empty pixel, so the image border counts as region boundary, then an exact
   L2 distance transform (OpenCV ``distanceTransform``, ``DIST_L2``, mask size 0 -- exact
   Euclidean) with the padding cropped off;
3. pixels clicked before are excluded;
4. the click is positive if the largest FN distance is larger than the largest FP distance
   (a tie is negative), placed at the first pixel (row-major order) of that maximum.

At the first click the prediction is empty, so the first click is the object's deepest point.
One deviation: with no error left RITM would still emit a meaningless negative click at pixel
(0, 0); here :func:`next_click` returns ``None`` and the runner stops clicking.

Arrays of any dimension work; 2D uses OpenCV (the reference implementation), others
``scipy.ndimage.distance_transform_edt`` (the same exact Euclidean transform).
"""
from __future__ import annotations

import numpy as np

from ..clicks import Click
from .datasets import IGNORE


def split_gt(gt: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """``(object, ignore)`` boolean masks from a ground truth holding 1 / 0 / :data:`IGNORE`
    (a boolean array has nothing ignored)."""
    g = np.asarray(gt)
    if g.dtype == bool:
        return g, np.zeros(g.shape, bool)
    return g == 1, g == IGNORE


def error_masks(obj: np.ndarray, pred: np.ndarray, ignore: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
    """False-negative and false-positive masks, ignored pixels removed."""
    obj, pred = np.asarray(obj, bool), np.asarray(pred, bool)
    if obj.shape != pred.shape:
        raise ValueError(f"prediction of shape {pred.shape} does not match the ground truth's {obj.shape}")
    valid = np.ones(obj.shape, bool) if ignore is None else ~np.asarray(ignore, bool)
    return obj & ~pred & valid, ~obj & pred & valid


def border_distance(mask: np.ndarray) -> np.ndarray:
    """Distance of each mask pixel to the nearest non-mask pixel, the outside of the array counting
    as non-mask (one pixel of padding, cropped after the transform); 0 outside the mask."""
    m = np.pad(np.asarray(mask, bool), 1)
    inner = (slice(1, -1),) * m.ndim
    if m.ndim == 2:
        import cv2

        return cv2.distanceTransform(m.astype(np.uint8), cv2.DIST_L2, 0)[inner]
    from scipy.ndimage import distance_transform_edt

    return distance_transform_edt(m).astype(np.float32)[inner]


def next_click(
    obj: np.ndarray, pred: np.ndarray, *, ignore: np.ndarray | None = None, clicked: np.ndarray | None = None
) -> Click | None:
    """The robot's next click for binary ground truth ``obj`` and binary prediction ``pred``;
    ``clicked`` marks pixels clicked before (never clicked again).  ``None`` when nothing is wrong."""
    fn, fp = error_masks(obj, pred, ignore)
    fn_dt, fp_dt = border_distance(fn), border_distance(fp)
    if clicked is not None:
        fn_dt[clicked] = 0
        fp_dt[clicked] = 0
    fn_max, fp_max = float(fn_dt.max()), float(fp_dt.max())
    if fn_max == 0 and fp_max == 0:
        return None
    positive = fn_max > fp_max
    dt = fn_dt if positive else fp_dt
    flat = int(np.argmax(dt))  # first maximum in row-major (C) order
    return Click(tuple(float(i) for i in np.unravel_index(flat, dt.shape)), positive)


class Robot:
    """Clicks on one ground truth, remembering where it clicked."""

    def __init__(self, gt: np.ndarray):
        self.obj, self.ignore = split_gt(gt)
        self.clicked = np.zeros(self.obj.shape, bool)
        self.clicks: list[Click] = []

    def click(self, pred: np.ndarray) -> Click | None:
        c = next_click(self.obj, pred, ignore=self.ignore, clicked=self.clicked)
        if c is not None:
            self.clicked[c.voxel()] = True
            self.clicks.append(c)
        return c

"""Classical baselines, driven by the same robot as the GP: clicks become small seed disks.

Each implements the :class:`volseg.eval.methods.Method` protocol.

Both recompute from all seeds after every click (they have no incremental state), and later
clicks paint over earlier ones where disks overlap.

* :class:`RandomWalkerMethod` -- Grady's random walker (``skimage.segmentation.random_walker``)
  on CIE Lab; the output is the foreground label's probability (``return_full_prob``).  The
  1-pixel image frame is a background seed wherever no click disk covers it: a random walker needs
  two labels from the first (positive) click on, and keeping the frame afterwards avoids the
  collapse seen when it is dropped at the first negative click (one small background disk against
  the foreground disks).  30 of the 100 Berkeley objects touch the frame, mostly for a few pixels;
  clicks there paint over it.
* :class:`GrabCutMethod` -- OpenCV GrabCut (``GC_INIT_WITH_MASK``, 5 iterations, fresh colour
  models each call): positive disks definite foreground, negative disks definite background,
  probable foreground within ``pr_fg_radius`` of a positive click, probable background elsewhere.
  The output is hard (0/1).
"""
from __future__ import annotations

import warnings
from typing import Sequence

import cv2
import numpy as np
from skimage.color import rgb2lab
from skimage.segmentation import random_walker

from ..clicks import Click
from ..errors import InputError

FG, BG = 1, 2


def disk_offsets(radius: float, ndim: int = 2) -> np.ndarray:
    """Integer offsets (n, ndim) of the ball ``|d| <= radius``."""
    r = int(np.floor(radius))
    grid = np.stack(np.meshgrid(*[np.arange(-r, r + 1)] * ndim, indexing="ij"), -1).reshape(-1, ndim)
    return grid[(grid**2).sum(1) <= radius**2 + 1e-9]


def paint(labels: np.ndarray, centre: Sequence[int], radius: float, value: int) -> None:
    """Set the ball around ``centre`` (clipped to the array) to ``value``, in place."""
    pts = np.asarray(centre, dtype=np.int64) + disk_offsets(radius, labels.ndim)
    pts = pts[np.all((pts >= 0) & (pts < np.asarray(labels.shape)), axis=1)]
    labels[tuple(pts.T)] = value


def seed_labels(shape: Sequence[int], clicks: Sequence[Click], radius: float) -> np.ndarray:
    """Seed map: 0 unlabelled, :data:`FG` positive disks, :data:`BG` negative disks (later clicks win)."""
    labels = np.zeros(tuple(shape), np.int32)
    for c in clicks:
        paint(labels, c.voxel(), radius, FG if c.positive else BG)
    return labels


def _frame(shape: Sequence[int]) -> np.ndarray:
    f = np.ones(tuple(shape), bool)
    f[(slice(1, -1),) * len(shape)] = False
    return f


class RandomWalkerMethod:
    """Random walker with click disks as seeds."""

    name = "random-walker"

    def __init__(self, beta: float = 130.0, radius: float = 5.0, space: str = "lab", mode: str = "bf",
                 tol: float = 1e-4,
                 frame_background: bool = True):
        if space not in ("lab", "rgb"):
            raise InputError(f"random walker colour space must be 'lab' or 'rgb', got {space!r}")
        self.beta, self.radius, self.space, self.mode, self.tol = float(beta), float(radius), space, mode, float(tol)
        self.frame_background = bool(frame_background)
        self.data: np.ndarray | None = None

    def set_image(self, image: np.ndarray) -> None:
        rgb = np.asarray(image, dtype=np.float64) / 255.0
        if self.space == "lab":
            self.data = rgb2lab(rgb)
        else:
            self.data = rgb

    def predict(self, clicks: Sequence[Click]) -> np.ndarray:
        assert self.data is not None, "set_image first"
        shape = self.data.shape[:-1]
        labels = seed_labels(shape, clicks, self.radius)
        if self.frame_background:
            labels[_frame(shape) & (labels == 0)] = BG
        present = set(np.unique(labels)) - {0}
        if present != {FG, BG}:  # one label only: the walk has nothing to decide
            return np.full(shape, 1.0 if FG in present else 0.0, np.float32)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # "probability outside [0, 1]" from solver round-off
            prob = random_walker(self.data, labels, beta=self.beta, mode=self.mode, tol=self.tol,
                                 return_full_prob=True, channel_axis=-1)
        return np.clip(prob[0], 0.0, 1.0).astype(np.float32)

    def config(self) -> dict:
        return {"method": self.name, "beta": self.beta, "radius": self.radius, "space": self.space, "mode": self.mode,
                "frame_background": self.frame_background}


class GrabCutMethod:
    """OpenCV GrabCut with click disks as hard constraints."""

    name = "grabcut"

    def __init__(self, radius: float = 5.0, iterations: int = 5, pr_fg_radius: float = 20.0):
        self.radius, self.iterations, self.pr_fg_radius = float(radius), int(iterations), float(pr_fg_radius)
        self.image: np.ndarray | None = None

    def set_image(self, image: np.ndarray) -> None:
        self.image = np.ascontiguousarray(image, dtype=np.uint8)

    def predict(self, clicks: Sequence[Click]) -> np.ndarray:
        assert self.image is not None, "set_image first"
        shape = self.image.shape[:2]
        mask = np.full(shape, cv2.GC_PR_BGD, np.uint8)
        if self.pr_fg_radius > 0:
            for c in clicks:
                if c.positive:
                    paint(mask, c.voxel(), self.pr_fg_radius, cv2.GC_PR_FGD)
        for c in clicks:
            paint(mask, c.voxel(), self.radius, cv2.GC_FGD if c.positive else cv2.GC_BGD)
        fg = np.isin(mask, (cv2.GC_FGD, cv2.GC_PR_FGD))
        if not fg.any() or fg.all():  # GrabCut needs pixels for both colour models
            return fg.astype(np.float32)
        bgd, fgd = np.zeros((1, 65), np.float64), np.zeros((1, 65), np.float64)
        cv2.grabCut(self.image, mask, None, bgd, fgd, self.iterations, cv2.GC_INIT_WITH_MASK)
        return np.isin(mask, (cv2.GC_FGD, cv2.GC_PR_FGD)).astype(np.float32)

    def config(self) -> dict:
        return {"method": self.name, "radius": self.radius, "iterations": self.iterations,
                "pr_fg_radius": self.pr_fg_radius}

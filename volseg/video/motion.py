"""A clicked frame's own motion, as features of its 2D session.

A video's object is usually what moves against its surroundings, and colour alone often cannot say so: a
dancer's dark top against a crowd in the same colours, a car against a road of its grey.  The session that
makes a clicked frame's mask (:mod:`volseg.video.frame_session`) therefore sees, beside the filter bank,
the frame's velocity relative to the frame's dominant motion (the camera's, as the median over the frame):
a click's label then spreads over what moves with the clicked pixel and stops where the motion changes.

The velocity is the mean of the flows to the two neighbouring frames (DIS, OpenCV; training-free), smoothed
over a few pixels (DIS works in blocks).  Each part of a feature stack brings its own lengthscale
(:mod:`volseg.features.stack`), so the motion joins the session's features as one more part: a product
kernel whose motion factor is near 1 for pixels that move alike.  Its unit is the relative motion's spread
over the frame, but never below ``MOTION_FLOOR`` pixels a frame, so the flow's noise on a still frame does
not become a feature.
"""
from __future__ import annotations

from typing import Sequence

import cv2
import numpy as np

from ..features import get_extractor
from ..features.base import FeatureExtractor
from ..features.stack import StackedFeatures
from .features import Flow

MOTION_SIGMA = 2.0         # pixels: the flow is smoothed this much before use (DIS is blocky)
MOTION_FLOOR = 0.5         # pixels a frame: a spread of relative motion below this is the flow's noise
MOTION_LENGTHSCALE = 1.5   # the motion part's lengthscale in the stack (benchmarks/README.md, stop 49)


def frame_velocity(frames: Sequence[np.ndarray], t: int) -> np.ndarray:
    """(H, W, 2) velocity of frame ``t`` in (rows, cols) per frame: the mean of the flow to frame t + 1 and the
    reversed flow to frame t - 1 (one of them at either end), smoothed; zeros for a one-frame video."""
    T = len(frames)
    if not 0 <= t < T:
        raise IndexError(f"frame {t} is not in a video of {T} frames")
    def grey(i: int) -> np.ndarray:
        return cv2.cvtColor(np.ascontiguousarray(frames[i]), cv2.COLOR_RGB2GRAY)

    here, flow = grey(t), Flow("medium")
    flows = [sign * flow(here, grey(other)) for other, sign in ((t + 1, 1.0), (t - 1, -1.0)) if 0 <= other < T]
    if not flows:
        return np.zeros((*here.shape, 2), np.float32)
    return cv2.GaussianBlur(np.mean(flows, axis=0).astype(np.float32), (0, 0), MOTION_SIGMA)


def relative_motion(velocity: np.ndarray) -> np.ndarray:
    """(H, W, 3) motion features of a velocity field: its two components relative to the frame's median
    motion and the relative speed, in units of the relative motion's spread (at least ``MOTION_FLOOR``)."""
    v = np.asarray(velocity, np.float32)
    rel = v - np.median(v.reshape(-1, 2), axis=0)
    speed = np.sqrt((rel ** 2).sum(-1, keepdims=True))
    spread = max(float(np.sqrt((rel ** 2).sum(-1).mean() / 2)), MOTION_FLOOR)
    return (np.concatenate([rel, speed], axis=-1) / spread).astype(np.float32)


class MotionFeatures(FeatureExtractor):
    """One frame's motion features (:func:`relative_motion`) as a feature-stack part: ``features(image)``
    gives them for an image of the frame's size (the frame itself, or a box of it brought to this size)."""

    name = "motion"
    prescaled = False
    trained_ndim = 2

    def __init__(self, motion: np.ndarray, lengthscale: float = MOTION_LENGTHSCALE) -> None:
        self.motion = np.asarray(motion, np.float32)
        if self.motion.ndim != 3:
            raise ValueError(f"motion features must be (H, W, C), got shape {self.motion.shape}")
        self.gp_config = {"feature_lengthscale": float(lengthscale)}

    def features(self, image, budget: int | None = None) -> np.ndarray:
        if tuple(image.shape) != self.motion.shape[:2]:
            raise ValueError(f"motion features are for a {self.motion.shape[:2]} frame, not {tuple(image.shape)}")
        return self.motion

    def prior_mean(self, image) -> None:
        return None


def with_motion(features, motion: np.ndarray | None) -> FeatureExtractor:
    """The extractor ``features`` names (as :func:`volseg.features.get_extractor`), with the frame's motion
    features as one more part of its stack; ``features`` alone where ``motion`` is None."""
    base = get_extractor(features)
    if motion is None:
        return base
    parts = base.parts if isinstance(base, StackedFeatures) else [base]
    return StackedFeatures([*parts, MotionFeatures(motion)])


__all__ = ["MOTION_FLOOR", "MOTION_LENGTHSCALE", "MotionFeatures", "frame_velocity", "relative_motion",
           "with_motion"]

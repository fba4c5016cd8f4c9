"""The 2D session that makes a clicked frame's mask, zoomed in on the objects (RITM's zoom-in).

A video's objects are often small in the frame (drift-chicane's car covers 0.6% of it), and the 2D
session's scales are the frame's: its spatial lengthscale is a fraction of the frame's diagonal and the
filter bank's smallest scales are a pixel or two, so a small object gets few distinct features and a
click's label spreads over its surroundings.  After the first mask, :class:`FrameSession` runs the
session on a box around the current mask and the clicks (``ZOOM_EXPAND`` times their extent, at least
``ZOOM_MIN_SIDE`` pixels a side) enlarged to ``ZOOM_LONG_SIDE`` pixels on its long side (at most
``ZOOM_MAX`` times): the session then sees the object at a working scale, as RITM's zoom-in does (Sofiiuk
et al., "Reviving iterative training with mask guidance for interactive segmentation", 2022).  Outside
the box the frame is background: the box holds the previous mask with a margin, so only the session's
own changes move the mask.

A propagated frame's prior can come with the propagation's probability of the object (``belief``): the
session's prior mean is then ``prior_strength (2p - 1)`` instead of the labels' full strength, so a click
clears a region the propagation was unsure of (a flood at p 0.6 needs a kernel value over 0.17 to flip, not
0.5) while a sure object keeps its label.  The frame's objects stay the labels'.

The frame's motion features (``motion``, :mod:`volseg.video.motion`) go with the frame: each session gets
those of its box, brought to the box's size as the frame is.

The box follows the mask click by click; when it changes, the session is made again on the new box
(features of the box, then the frame's clicks replayed).  A frame whose box covers it, or a first click
with no mask yet, uses the whole frame.  :meth:`volseg.video.VideoSegmenter.session_for` zooms only with
the video setting ``session_zoom`` (off by default: README, "DAVIS-2016 dev").
"""
from __future__ import annotations

import time
from typing import Callable, Sequence

import cv2
import numpy as np

from ..clicks import Click, make_click

ZOOM_EXPAND = 2.0       # the box spans this many times the extent of the mask and the clicks
ZOOM_MIN_SIDE = 100     # ... and at least this many frame pixels a side
ZOOM_LONG_SIDE = 400    # the box is enlarged to this long side ...
ZOOM_MAX = 4.0          # ... by at most this factor (never shrunk)


def zoom_box(mask: np.ndarray, points: Sequence[Sequence[float]]) -> tuple[int, int, int, int]:
    """(row0, row1, col0, col1): the box around the mask's support and the points, ``ZOOM_EXPAND`` times
    their extent and at least ``ZOOM_MIN_SIDE`` a side, clipped to the frame."""
    H, W = mask.shape
    rows = [float(p[0]) for p in points]
    cols = [float(p[1]) for p in points]
    r, c = np.nonzero(mask)
    if r.size:
        rows += [r.min(), r.max()]
        cols += [c.min(), c.max()]
    half_h = max((max(rows) - min(rows) + 1) * ZOOM_EXPAND, ZOOM_MIN_SIDE) / 2
    half_w = max((max(cols) - min(cols) + 1) * ZOOM_EXPAND, ZOOM_MIN_SIDE) / 2
    mid_r, mid_c = (max(rows) + min(rows)) / 2, (max(cols) + min(cols)) / 2
    return (int(max(0, mid_r - half_h)), int(min(H, np.ceil(mid_r + half_h))),
            int(max(0, mid_c - half_w)), int(min(W, np.ceil(mid_c + half_w))))


class FrameSession:
    """A frame's interactive session (``add_click``, ``mask``, ``uncertainty``, ``suggest_click``, as
    :class:`volseg.Session`), run on a zoomed box around the objects (module doc); ``zoom`` False: always the
    whole frame.  ``make_session(motion)`` gives a fresh Session with the video's session settings, whose
    features include ``motion`` (the box's (h, w, C) motion features, or None); ``prior``: the frame's
    current label map (None: no mask yet); ``belief``: the object's (H, W) probability, the prior mean's
    strength where the prior is a propagation's (module doc); ``motion``: the frame's (H, W, C) motion
    features, or None."""

    def __init__(self, frame: np.ndarray, prior: np.ndarray | None, make_session: Callable, *, zoom: bool = True,
                 belief: np.ndarray | None = None, motion: np.ndarray | None = None):
        self.frame = np.asarray(frame)
        self.shape = self.frame.shape[:2]
        self.prior = prior if prior is not None and prior.any() else None
        # the session's prior mean: the object's probability where one is given, else the prior's labels
        self.belief = None if self.prior is None or belief is None else np.asarray(belief, np.float32)
        self.make_session = make_session
        self.motion = None if motion is None else np.asarray(motion, np.float32)
        self.zoom = bool(zoom)
        self.clicks: list[Click] = []
        self.box = (0, self.shape[0], 0, self.shape[1])
        self._session = None  # zoomed: made at the first click, on the box that click asks for
        self._mask = np.zeros(self.shape, np.uint8) if self.prior is None else self.prior.astype(np.uint8)
        if not self.zoom and self.prior is not None:  # the whole frame's session: its mask of the prior alone
            self._mask = self.session.mask()

    @property
    def session(self):
        """The Session on the current box (the whole frame until a click asks for a box)."""
        if self._session is None:
            self._session = self._session_on(self.box)
        return self._session

    @property
    def objects(self) -> list[int]:
        """Object ids of the prior and of the positive clicks so far."""
        ids = set() if self.prior is None else {int(v) for v in np.unique(self.prior) if v}
        return sorted(ids | {c.object for c in self.clicks if c.positive})

    def _factors(self, box) -> tuple[float, float, tuple[int, int]]:
        """Rows' and columns' enlargement of ``box`` and the enlarged size (h, w)."""
        h, w = box[1] - box[0], box[3] - box[2]
        if box == (0, self.shape[0], 0, self.shape[1]):
            return 1.0, 1.0, (h, w)
        f = min(max(1.0, ZOOM_LONG_SIDE / max(h, w)), ZOOM_MAX)
        size = (max(1, round(h * f)), max(1, round(w * f)))
        return size[0] / h, size[1] / w, size

    def _to_box(self, position) -> tuple[float, float]:
        fr, fc, (h, w) = self._factors(self.box)
        return (min(max((float(position[0]) - self.box[0] + 0.5) * fr - 0.5, 0.0), h - 1.0),
                min(max((float(position[1]) - self.box[2] + 0.5) * fc - 0.5, 0.0), w - 1.0))

    def _session_on(self, box):
        r0, r1, c0, c1 = box
        _, _, (h, w) = self._factors(box)
        given = self.prior if self.belief is None else self.belief
        crop, prior = self.frame[r0:r1, c0:c1], None if given is None else given[r0:r1, c0:c1]
        motion = None if self.motion is None else self.motion[r0:r1, c0:c1]
        if (h, w) != crop.shape[:2]:
            crop = cv2.resize(np.ascontiguousarray(crop), (w, h), interpolation=cv2.INTER_LINEAR)
            if prior is not None:
                prior = cv2.resize(np.ascontiguousarray(prior), (w, h), interpolation=cv2.INTER_NEAREST
                                   if self.belief is None else cv2.INTER_LINEAR)
            if motion is not None:
                motion = cv2.resize(np.ascontiguousarray(motion), (w, h), interpolation=cv2.INTER_LINEAR)
        s = self.make_session(motion)
        s.set_image(crop, prior=prior if prior is not None and prior.any() else None)
        return s

    def add_click(self, position, positive: bool = True, object: int = 1) -> float:
        """Add a click (frame pixel coordinates); returns the seconds it took (a new box's features included)."""
        t0 = time.perf_counter()
        self.clicks.append(make_click(position, positive, object))
        box = self.box
        if self.zoom and self._mask.any():
            box = zoom_box(self._mask, [c.position for c in self.clicks])
        if box != self.box or self._session is None:
            self.box = box
            self._session = self._session_on(box)
            for c in self.clicks:
                self._session.add_click(self._to_box(c.position), c.positive, c.object)
        else:
            self._session.add_click(self._to_box(position), positive, object)
        self._mask = self._paste(self._session.mask(), cv2.INTER_NEAREST)
        return time.perf_counter() - t0

    def _paste(self, inside: np.ndarray, interpolation) -> np.ndarray:
        """A map of the box (enlarged) brought back onto the frame; 0 outside the box."""
        r0, r1, c0, c1 = self.box
        out = np.zeros(self.shape, inside.dtype)
        if inside.shape != (r1 - r0, c1 - c0):
            inside = cv2.resize(np.ascontiguousarray(inside), (c1 - c0, r1 - r0), interpolation=interpolation)
        out[r0:r1, c0:c1] = inside
        return out

    def mask(self) -> np.ndarray:
        """(H, W) label map of the frame."""
        return self._mask.copy()

    def uncertainty(self) -> np.ndarray:
        """(H, W) posterior std of the box's session (0 outside the box, which is background)."""
        return self._paste(self.session.uncertainty().astype(np.float32), cv2.INTER_LINEAR)

    def suggest_click(self):
        """The box session's suggestion, in frame coordinates."""
        g = self.session.suggest_click()
        fr, fc, _ = self._factors(self.box)
        row = min(int((g.position[0] + 0.5) / fr - 0.5 + self.box[0] + 0.5), self.shape[0] - 1)
        col = min(int((g.position[1] + 0.5) / fc - 0.5 + self.box[2] + 0.5), self.shape[1] - 1)
        return type(g)((row, col), g.predicted_label, g.score)

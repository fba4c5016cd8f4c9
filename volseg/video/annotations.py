"""The frames of a video the user gave input on (clicks and/or a mask), and the objects they name."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Iterable, Sequence

import numpy as np

from ..clicks import MAX_VIDEO_OBJECT_ID, Click
from ..errors import InputError


@dataclass
class Annotation:
    """User input on one frame: clicks and/or a dense mask, and the frame's resulting label map."""

    frame: int
    labels: np.ndarray                  # (H, W) the frame's mask: exact output for this frame
    clicks: list[Click] = field(default_factory=list)
    dense: np.ndarray | None = None     # a mask the user gave (kept as the prior for later clicks)


class AnnotatedFrames:
    """frame -> :class:`Annotation` (``frames``), and the object ids seen so far in the order they appeared
    (``objects``): the order of the probability channels of every propagated frame."""

    def __init__(self, shape: Sequence[int], n_frames: int) -> None:
        self.shape, self.n_frames = tuple(shape), int(n_frames)
        self.frames: dict[int, Annotation] = {}
        self.objects: list[int] = []

    def add_objects(self, ids: Iterable[int]) -> None:
        for i in sorted(set(int(v) for v in ids) - {0}):
            if i not in self.objects:
                self.objects.append(i)

    def set_mask(self, frame: int, labels: np.ndarray) -> None:
        """Frame ``frame`` gets a dense mask (label map, object ids > 0); its clicks so far stay."""
        labels = np.asarray(labels)
        if labels.shape != self.shape:
            raise InputError(f"mask for frame {frame} has shape {labels.shape}, the video's frames are {self.shape}")
        if not 0 <= frame < self.n_frames:
            raise InputError(f"mask for frame {frame}: the video has {self.n_frames} frames")
        top = int(labels.max(initial=0))
        if top > MAX_VIDEO_OBJECT_ID:  # a grey or 16-bit image given as a mask: its values are not object ids
            raise InputError(f"mask for frame {frame} has object id {top}: a video's masks are palette PNGs, object "
                             f"ids 1-{MAX_VIDEO_OBJECT_ID} (is it a label map?)")
        self.add_objects(np.unique(labels))
        old = self.frames.get(frame)
        self.frames[frame] = Annotation(frame, labels.astype(np.uint8), list(old.clicks) if old else [],
                                        dense=labels)

    def annotate(self, frame: int, clicks: Sequence[Click], labels: np.ndarray) -> None:
        """Clicks on ``frame`` and the mask they produced: added to the frame's earlier clicks."""
        old = self.frames.get(frame)
        self.add_objects(c.object for c in clicks if c.positive)
        self.add_objects(np.unique(labels))
        self.frames[frame] = Annotation(frame, np.asarray(labels), (list(old.clicks) if old else []) + list(clicks),
                                        dense=old.dense if old else None)


def clicks_by_frame(clicks: Sequence[Click]) -> dict[int, list[Click]]:
    """The clicks of each frame, in their order."""
    by_frame: dict[int, list[Click]] = {}
    for c in clicks:
        by_frame.setdefault(int(c.frame), []).append(c)
    return by_frame

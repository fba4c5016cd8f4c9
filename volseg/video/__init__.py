"""Video object masking: clicks (or a mask) on some frames, a mask on every frame.

The same GP classification as the 2D/3D engine, with the frames' clicks and a bounded memory
of earlier frames as training points (see :mod:`volseg.video.propagate`).
"""
from __future__ import annotations

from .annotations import Annotation
from .config import VideoConfig
from .memory import MemoryBank, sample_informative
from .propagate import VideoSegmenter

__all__ = ["Annotation", "MemoryBank", "VideoConfig", "VideoSegmenter", "sample_informative"]

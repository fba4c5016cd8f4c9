"""volseg: click-driven interactive segmentation of 2D images, 3D volumes and videos as GP classification.

Pipeline: read (io) -> Image -> features -> GP posterior (gp) -> probability / uncertainty -> mask -> write.
"""
from __future__ import annotations

__version__ = "0.1.0"

from .clicks import Click, load_clicks
from .config import GPConfig
from .errors import VolsegError
from .image import Image
from .io import read_image, write_mask
from .session import Session

__all__ = ["Click", "GPConfig", "Image", "Session", "VolsegError", "load_clicks", "read_image", "write_mask",
           "__version__"]

"""Per-frame results of a video on disk, so that a long video's results stay out of RAM."""
from __future__ import annotations

import shutil
import tempfile
from pathlib import Path

import numpy as np


class FrameStore:
    """Per-frame arrays in a folder (np.save), so results for long videos stay out of RAM."""

    def __init__(self, workdir: str | Path | None) -> None:
        self._own = workdir is None
        self.root = Path(tempfile.mkdtemp(prefix="volseg-video-")) if workdir is None else Path(workdir)
        self.root.mkdir(parents=True, exist_ok=True)

    def _p(self, key: str, t: int) -> Path:
        return self.root / f"{key}_{t:06d}.npy"

    def save(self, key: str, t: int, a: np.ndarray) -> None:
        np.save(self._p(key, t), a)

    def load(self, key: str, t: int) -> np.ndarray | None:
        p = self._p(key, t)
        return np.load(p) if p.is_file() else None

    def has(self, key: str, t: int) -> bool:
        return self._p(key, t).is_file()

    def drop(self, key: str, t: int) -> None:
        self._p(key, t).unlink(missing_ok=True)

    def close(self) -> None:
        if self._own:
            shutil.rmtree(self.root, ignore_errors=True)

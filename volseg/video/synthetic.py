"""Generated videos with known masks: moving shapes on a textured background (tests and demos)."""
from __future__ import annotations

from pathlib import Path

import numpy as np
from scipy import ndimage as ndi


class ShapesVideo:
    """Frame t of a generated video, made on request (so a long or large video costs no memory):
    object 1 a red disk sweeping the upper half left and right, object 2 a blue square doing the
    opposite in the lower half, on smooth green-grey texture with per-frame pixel noise."""

    def __init__(self, n_frames: int = 20, height: int = 64, width: int = 96, *, seed: int = 0,
                 step: float = 1.5) -> None:
        rng = np.random.default_rng(seed)
        small = (max(8, height // 4), max(8, width // 4))  # texture made small and enlarged: cheap at any size
        tex = ndi.gaussian_filter(rng.standard_normal((*small, 3)), (0.75, 0.75, 0))
        tex = ndi.zoom(tex, (height / small[0], width / small[1], 1), order=1)[:height, :width]
        tex = (tex - tex.min()) / (np.ptp(tex) + 1e-9)
        self.background = (np.array([90, 130, 80]) + 60 * (tex - 0.5)).astype(np.float32)
        self.n, self.shape, self.seed, self.step = n_frames, (height, width), seed, step
        self.names = [f"{t:05d}" for t in range(n_frames)]
        self.fps = 10.0
        self.path = Path(".")

    def __len__(self) -> int:
        return self.n

    def _geometry(self, t: int):
        H, W = self.shape
        radius, half = 0.15 * H, 0.13 * H
        span = max(1.0, W - 2 * radius - 4)
        u = (t * self.step) % (2 * span)
        x1 = 2 + radius + (u if u < span else 2 * span - u)
        return (0.3 * H, x1, radius), (0.72 * H, W - 1 - x1, half)

    def labels(self, t: int) -> np.ndarray:
        H, W = self.shape
        (cy1, x1, radius), (cy2, x2, half) = self._geometry(t)
        r, c = np.ogrid[0:H, 0:W]
        out = np.zeros((H, W), np.uint8)
        out[(r - cy1) ** 2 + (c - x1) ** 2 <= radius ** 2] = 1
        out[(np.abs(r - cy2) <= half) & (np.abs(c - x2) <= half)] = 2
        return out

    def __getitem__(self, t: int) -> np.ndarray:
        if not 0 <= t < self.n:
            raise IndexError(t)
        lab = self.labels(t)
        img = self.background.copy()
        img[lab == 1] = [200, 50, 45]
        img[lab == 2] = [40, 60, 190]
        img += np.random.default_rng([self.seed, t]).normal(0, 6, img.shape).astype(np.float32)
        return np.clip(img, 0, 255).astype(np.uint8)


def moving_shapes(n_frames: int = 20, height: int = 64, width: int = 96, *, seed: int = 0,
                  step: float = 1.5) -> tuple[np.ndarray, np.ndarray]:
    """(frames (T, H, W, 3) uint8 RGB, labels (T, H, W) uint8) of a :class:`ShapesVideo`."""
    v = ShapesVideo(n_frames, height, width, seed=seed, step=step)
    return np.stack([v[t] for t in range(n_frames)]), np.stack([v.labels(t) for t in range(n_frames)])


class ArrayFrames:
    """A FrameSource over an in-memory (T, H, W, 3) array (tests; real videos use volseg.io.video)."""

    def __init__(self, frames: np.ndarray, names=None, path=".") -> None:
        self.frames = np.asarray(frames)
        self.shape = tuple(self.frames.shape[1:3])
        self.names = list(names) if names is not None else [f"{t:05d}" for t in range(len(self.frames))]
        self.path = Path(path)
        self.fps = 10.0

    def __len__(self) -> int:
        return len(self.frames)

    def __getitem__(self, t: int) -> np.ndarray:
        return self.frames[t]

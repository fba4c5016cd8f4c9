"""Generated videos with known masks: moving shapes on a textured background (tests and demos)."""
from __future__ import annotations

import numpy as np
from scipy import ndimage as ndi


def moving_shapes(n_frames: int = 20, height: int = 64, width: int = 96, *, seed: int = 0,
                  step: float = 1.5) -> tuple[np.ndarray, np.ndarray]:
    """(frames (T, H, W, 3) uint8 RGB, labels (T, H, W) uint8): object 1 a red disk moving right,
    object 2 a blue square moving left then back, on smooth green-grey texture with pixel noise."""
    rng = np.random.default_rng(seed)
    tex = ndi.gaussian_filter(rng.standard_normal((height, width, 3)), (3, 3, 0))
    tex = (tex - tex.min()) / (np.ptp(tex) + 1e-9)
    background = np.array([90, 130, 80]) + 60 * (tex - 0.5)
    r, c = np.mgrid[0:height, 0:width]
    radius, half = 0.15 * height, 0.13 * height
    frames = np.empty((n_frames, height, width, 3), np.uint8)
    labels = np.zeros((n_frames, height, width), np.uint8)
    span = max(1.0, width - 2 * radius - 4)
    for t in range(n_frames):
        # the disk sweeps the upper half left to right and back; the square the lower half the other way
        x1 = 2 + radius + (t * step) % (2 * span) if (t * step) % (2 * span) < span else 2 + radius + 2 * span - (t * step) % (2 * span)
        cy1 = 0.3 * height
        x2 = width - 1 - x1
        cy2 = 0.72 * height
        disk = (r - cy1) ** 2 + (c - x1) ** 2 <= radius ** 2
        square = (np.abs(r - cy2) <= half) & (np.abs(c - x2) <= half)
        img = background.copy()
        img[disk] = [200, 50, 45]
        img[square] = [40, 60, 190]
        img += rng.normal(0, 6, img.shape)
        frames[t] = np.clip(img, 0, 255).astype(np.uint8)
        labels[t][disk] = 1
        labels[t][square] = 2
    return frames, labels


class ArrayFrames:
    """A FrameSource over an in-memory (T, H, W, 3) array (tests; real videos use volseg.io.video)."""

    def __init__(self, frames: np.ndarray, names=None, path=".") -> None:
        from pathlib import Path

        self.frames = np.asarray(frames)
        self.shape = tuple(self.frames.shape[1:3])
        self.names = list(names) if names is not None else [f"{t:05d}" for t in range(len(self.frames))]
        self.path = Path(path)
        self.fps = 10.0

    def __len__(self) -> int:
        return len(self.frames)

    def __getitem__(self, t: int) -> np.ndarray:
        return self.frames[t]

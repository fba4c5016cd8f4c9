"""Colour helpers shared by the features and the mask's edge cut: is an array an RGB photograph, and its
CIE Lab, the space where Euclidean distances follow perceived colour differences."""
from __future__ import annotations

import numpy as np
from skimage.color import rgb2lab


def looks_rgb(array: np.ndarray) -> bool:
    """Three channels with values in 0..255 (or 0..1): read as an RGB photograph."""
    return array.shape[-1] == 3 and float(array.min(initial=0)) >= 0.0 and float(array.max(initial=0)) <= 255.0


def rgb_to_lab(array: np.ndarray) -> np.ndarray:
    """CIE Lab (L in 0..100), float32, of RGB in 0..255 or 0..1."""
    a = array.astype(np.float32, copy=False)
    rgb = a / 255.0 if a.max(initial=0) > 1.5 else a
    return rgb2lab(np.clip(rgb, 0.0, 1.0)).astype(np.float32)


__all__ = ["looks_rgb", "rgb_to_lab"]

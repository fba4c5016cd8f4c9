"""Colour helpers shared by the features and the mask's edge cut: is an array an RGB photograph, and its
CIE Lab, the space where Euclidean distances follow perceived colour differences."""
from __future__ import annotations

import numpy as np
from skimage.color.colorconv import xyz_from_rgb, xyz_tristimulus_values

# scikit-image's sRGB -> XYZ (D65, 2 degrees) constants, in the float32 its rgb2lab computes in for float32 input
_XYZ_FROM_RGB = xyz_from_rgb.T.astype(np.float32)
_WHITE = xyz_tristimulus_values(illuminant="D65", observer="2", dtype=np.float32)


def looks_rgb(array: np.ndarray) -> bool:
    """Three channels with values in 0..255 (or 0..1): read as an RGB photograph."""
    return array.shape[-1] == 3 and float(array.min(initial=0)) >= 0.0 and float(array.max(initial=0)) <= 255.0


def _linear_rgb(rgb: np.ndarray) -> np.ndarray:
    """sRGB in 0..1 (float32) -> linear RGB, scikit-image's steps and float32 arithmetic."""
    x = np.clip(rgb, 0.0, 1.0)
    curve = x > 0.04045
    x[curve] = np.power((x[curve] + 0.055) / 1.055, 2.4)
    x[~curve] /= 12.92
    return x


# the 256 values a uint8 channel can take, linearised once: a frame's linear RGB is then a table lookup
_LINEAR_UINT8 = _linear_rgb(np.arange(256, dtype=np.float32) / 255.0)


def rgb_to_lab(array: np.ndarray) -> np.ndarray:
    """CIE Lab (L in 0..100), float32, of RGB in 0..255 or 0..1: scikit-image's ``rgb2lab`` on the float32
    image, value for value (tested), with a table lookup in place of its per-pixel power for uint8 input and
    no boolean scatters.  Stored channel-first behind the (..., 3) view, so a consumer reads each channel
    as one contiguous plane."""
    if array.dtype == np.uint8 and array.max(initial=0) > 1:
        linear = _LINEAR_UINT8[array]
    else:
        a = array.astype(np.float32, copy=False)
        linear = _linear_rgb(a / 255.0 if a.max(initial=0) > 1.5 else a)
    xyz = linear @ _XYZ_FROM_RGB
    xyz /= _WHITE
    f = np.where(xyz > 0.008856, np.cbrt(xyz), 7.787 * xyz + 16.0 / 116.0)
    x, y, z = f[..., 0], f[..., 1], f[..., 2]
    lab = np.moveaxis(np.empty((3,) + array.shape[:-1], np.float32), 0, -1)
    lab[..., 0] = 116.0 * y - 16.0
    lab[..., 1] = 500.0 * (x - y)
    lab[..., 2] = 200.0 * (y - z)
    return lab


__all__ = ["looks_rgb", "rgb_to_lab"]

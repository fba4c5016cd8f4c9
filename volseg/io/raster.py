"""2D rasters (PNG, JPEG, TIFF, BMP) through PIL: array (row, col, channel), world == index.

Pixels are taken in stored order; EXIF orientation is *not* applied, so a mask written back
lines up with the stored pixels (and with reference masks made from them).
"""
from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np
from PIL import Image as PILImage

from ..errors import InputError
from ..image import Image
from .atomic import atomic_path

# modes that PIL can only hand over as colour; alpha is dropped, not composited, so pixel values stay as stored
_TO_RGB = {"RGBA", "RGBa", "RGBX", "P", "PA", "CMYK", "YCbCr", "LAB", "HSV"}
_TO_GREY = {"1", "LA", "La"}


def _open_first_frame(path: Path) -> PILImage.Image:
    im = PILImage.open(path)
    frames = getattr(im, "n_frames", 1)
    if frames > 1:
        warnings.warn(f"{path} has {frames} pages; reading the first only", stacklevel=4)
    im.load()  # PIL decodes lazily: force it so a truncated file fails here
    return im


def read_raster(path: Path) -> Image:
    with _open_first_frame(path) as im:
        if im.mode in _TO_RGB:
            # palette transparency must go through RGBA or PIL warns; the alpha is dropped either way
            im = im.convert("RGBA").convert("RGB") if "transparency" in im.info else im.convert("RGB")
        elif im.mode in _TO_GREY:
            im = im.convert("L")
        arr = np.asarray(im)
    dtype = arr.dtype.name
    if arr.dtype != np.uint8:  # 16-bit and float rasters keep their values as float32
        arr = arr.astype(np.float32)
    if arr.ndim == 2:
        arr = arr[..., None]
    return Image(np.ascontiguousarray(arr), meta={"dtype": dtype})


def read_raster_labels(path: Path) -> np.ndarray:
    """A label raster as (row, col): palette PNGs give their indices, grey ones their values."""
    with _open_first_frame(path) as im:
        if im.mode in ("LA", "La", "PA"):
            im = im.convert(im.mode[0])
        arr = np.asarray(im)
    if arr.ndim == 3:  # colour masks are accepted only when they are grey in disguise
        if not (arr[..., :3] == arr[..., :1]).all():
            raise InputError(f"mask {path} is a colour image; save labels as a grey or palette (indexed) PNG")
        arr = arr[..., 0]
    return arr


def davis_palette() -> np.ndarray:
    """The PASCAL VOC / DAVIS colour map: label 1 dark red, 2 green, 3 olive, ..."""
    i = np.arange(256)
    pal = np.zeros((256, 3), np.uint8)
    for bit in range(8):  # label bits are spread over the channels' bits from the top down
        for ch in range(3):
            pal[:, ch] |= (((i >> (3 * bit + ch)) & 1) << (7 - bit)).astype(np.uint8)
    return pal


def write_raster(arr: np.ndarray, out: Path, *, kind: str, palette: bool = False) -> None:
    if arr.ndim != 2:
        raise InputError(f"{out.suffix} holds 2D maps only, this one has shape {arr.shape}: use .nii.gz, .nrrd or .npy")
    fmt = "PNG" if out.suffix.lower() == ".png" else "TIFF"
    if kind == "probability":
        if fmt == "PNG":
            arr = np.round(np.clip(np.nan_to_num(arr), 0, 1) * 255).astype(np.uint8)
        im = PILImage.fromarray(arr)  # TIFF keeps float32 exactly (mode F)
    else:
        if arr.max(initial=0) > (255 if palette else 65535):
            raise InputError(f"{int(arr.max())} labels do not fit a {'palette ' if palette else ''}{fmt} mask {out}")
        im = PILImage.fromarray(arr)  # uint8 -> L, uint16 -> I;16: label values are kept as they are
        if palette:  # an L image given a palette becomes P with index == label
            im = PILImage.fromarray(arr.astype(np.uint8))
            im.putpalette(davis_palette().ravel().tolist())
    with atomic_path(out) as tmp:
        im.save(tmp, format=fmt)

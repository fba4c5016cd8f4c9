"""What the page shows, as small PNGs: one slice (or frame) of the image under a window, a label map
in the objects' colours, an uncertainty heat-map; and the views that say how a slice sits on screen.

A view is a plane through the array: ``axis`` is the axis it slices, screen rows run along
``rows.axis`` and screen columns along ``cols.axis`` (``flip``: the index decreases down or to the
right).  Volumes get the radiological views of their LPS geometry -- axial (anterior up, patient's
right on the screen's left), coronal and sagittal (superior up) -- with the array axis nearest each
world axis; a 2D image or a frame gets one view in array order.
"""
from __future__ import annotations

import io
from dataclasses import asdict, dataclass

import numpy as np
from matplotlib import colormaps
from PIL import Image as PILImage

from ..image import Image

# LPS world axes: the letter at the low and the high end of each
_LOW, _HIGH = "RAI", "LPS"
# a label's colour: object k takes PALETTE[(k - 1) % len]
PALETTE = np.array([[255, 64, 64], [64, 160, 255], [80, 220, 80], [255, 200, 0], [200, 80, 255],
                    [0, 220, 220], [255, 128, 0], [255, 96, 200]], np.uint8)
# (window width, level) in the image's units; "auto" is computed per image from its percentiles
WINDOW_PRESETS = {"soft tissue": (400.0, 40.0), "lung": (1500.0, -600.0), "bone": (1800.0, 400.0)}


@dataclass(frozen=True)
class Axis:
    axis: int
    flip: bool


@dataclass(frozen=True)
class View:
    name: str
    axis: int | None        # the sliced array axis; None for a 2D image or a video frame
    rows: Axis
    cols: Axis
    row_spacing: float      # mm per screen row / column: the page keeps the physical aspect ratio
    col_spacing: float
    letters: dict           # orientation letters at the view's top, bottom, left and right ("" for 2D)

    def to_dict(self) -> dict:
        return asdict(self)


def world_axes(direction: np.ndarray) -> list[int]:
    """For each LPS world axis, the array axis that points most nearly along it (a permutation)."""
    d = np.abs(np.asarray(direction, dtype=np.float64))
    out = [-1, -1, -1]
    for _ in range(3):  # greedy on the largest cosine left: exact for any permutation, sane for oblique
        w, a = np.unravel_index(np.argmax(d), d.shape)
        out[int(w)] = int(a)
        d[w, :] = -1
        d[:, a] = -1
    return out


def views_for(image: Image) -> list[View]:
    sp = image.spacing
    if image.ndim == 2:
        return [View("image", None, Axis(0, False), Axis(1, False), sp[0], sp[1], {})]
    if image.ndim != 3:
        raise ValueError(f"cannot show an image with {image.ndim} spatial axes")
    direction = np.asarray(image.direction)
    arr = world_axes(direction)

    def screen(world: int, increasing: bool) -> tuple[Axis, str, str]:
        """Screen axis showing world axis ``world`` running low->high (``increasing``) or high->low."""
        a = arr[world]
        along = bool(direction[world, a] >= 0)  # the array index grows with the world coordinate
        first, last = (_LOW[world], _HIGH[world]) if increasing else (_HIGH[world], _LOW[world])
        return Axis(a, flip=(along != increasing)), first, last

    def view(name: str, sliced: int, row_world: int, row_up: bool, col_world: int) -> View:
        rows, top, bottom = screen(row_world, row_up)
        cols, left, right = screen(col_world, True)
        return View(name, arr[sliced], rows, cols, sp[rows.axis], sp[cols.axis],
                    {"top": top, "bottom": bottom, "left": left, "right": right})

    # LPS: x grows to the patient's left, y to posterior, z to superior
    return [view("axial", 2, 1, True, 0),        # anterior at the top, patient's right on the left
            view("coronal", 1, 2, False, 0),     # superior at the top
            view("sagittal", 0, 2, False, 1)]    # superior at the top, anterior on the left


def check_slice(view: View, index: int | None, shape) -> None:
    """IndexError unless ``index`` is a slice of ``view`` on an array of spatial ``shape`` (any index for an
    unsliced view)."""
    if view.axis is not None:
        n = shape[view.axis]
        if index is None or not 0 <= index < n:
            raise IndexError(f"slice {index} outside 0..{n - 1} of the {view.name} view")


def plane(array: np.ndarray, view: View, index: int | None) -> np.ndarray:
    """The view's slice of ``array`` (spatial axes first, any trailing axes kept), in screen order."""
    if view.axis is not None:
        check_slice(view, index, array.shape)
        array = np.take(array, index, axis=view.axis)
        rows = view.rows.axis - (view.rows.axis > view.axis)
        cols = view.cols.axis - (view.cols.axis > view.axis)
    else:
        rows, cols = view.rows.axis, view.cols.axis
    out = np.moveaxis(array, (rows, cols), (0, 1))
    if view.rows.flip:
        out = out[::-1]
    if view.cols.flip:
        out = out[:, ::-1]
    return out


def auto_window(array: np.ndarray) -> tuple[float, float]:
    """(width, level) from the 0.5th-99.5th percentiles of a subsample: MR has no fixed units."""
    a = np.asarray(array).reshape(-1)
    step = max(1, a.size // 2_000_000)
    lo, hi = np.percentile(a[::step].astype(np.float32), [0.5, 99.5])
    if hi <= lo:
        hi = lo + 1.0
    return float(hi - lo), float((hi + lo) / 2)


def grey(values: np.ndarray, width: float, level: float) -> np.ndarray:
    """Window a slice into uint8: RGB uint8 images pass through, anything else maps level+-width/2 to 0-255."""
    v = np.asarray(values)
    if v.ndim == 3 and v.shape[-1] == 1:
        v = v[..., 0]
    if v.dtype == np.uint8 and v.ndim == 3:
        return np.ascontiguousarray(v[..., :3])
    lo = level - width / 2.0
    out = (v.astype(np.float32) - lo) * (255.0 / max(width, 1e-12))
    if out.ndim == 3:  # non-uint8 colour: window every channel alike
        out = out[..., :3]
    return np.clip(out, 0, 255).astype(np.uint8)


def colour_labels(labels: np.ndarray) -> np.ndarray:
    """RGBA uint8: each object in its palette colour, opaque; background transparent."""
    lab = np.asarray(labels)
    rgba = np.zeros(lab.shape + (4,), np.uint8)
    fg = lab > 0
    if fg.any():
        rgba[fg, :3] = PALETTE[(lab[fg].astype(np.int64) - 1) % len(PALETTE)]
        rgba[fg, 3] = 255
    return rgba


_HEAT = None


def heat(values: np.ndarray, vmax: float) -> np.ndarray:
    """RGBA uint8 heat-map of values in [0, vmax] (inferno); the alpha grows with the value."""
    global _HEAT
    if _HEAT is None:
        _HEAT = (colormaps["inferno"](np.linspace(0, 1, 256)) * 255).astype(np.uint8)
    idx = np.clip(np.asarray(values, np.float32) * (255.0 / max(vmax, 1e-12)), 0, 255).astype(np.uint8)
    rgba = _HEAT[idx].copy()
    rgba[..., 3] = idx
    return rgba


def png(array: np.ndarray) -> bytes:
    """PNG bytes, fast compression: a slice is encoded on every click, so speed beats the last bytes."""
    buf = io.BytesIO()
    PILImage.fromarray(np.ascontiguousarray(array)).save(buf, format="PNG", compress_level=1)
    return buf.getvalue()

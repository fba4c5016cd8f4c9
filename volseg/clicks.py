"""Clicks: the GP's training points.

One schema, in JSON or CSV.

JSON::

    {"coordinates": "index",            # or "world" (LPS mm; "world-ras" for RAS mm)
     "clicks": [{"position": [120, 88, 14], "label": "positive", "object": 1, "frame": null}, ...]}

``"one_at_a_time": true`` says the clicks were made one after another, as `volseg serve` saves them: a
volume then gets them in that order, each one's labels held as a viewer holds them
(:class:`volseg.mask.HeldLabels`), and the mask is the one that was seen.  Without it a file's clicks act
as one step, in any order.

A bare list of click objects is accepted too.  ``label`` is ``positive``/``negative``
(also ``pos``/``neg``, ``fg``/``bg``, ``1``/``0``, ``true``/``false``).

CSV: a header with ``label``, optional ``object``, ``frame``, ``space``, and the position as
columns ``i,j[,k]`` (index) or ``x,y[,z]`` (world, LPS mm).

Index positions are in array axis order (see :mod:`volseg.image`): ``(row, col)`` for 2D
rasters, ``(i, j, k)`` for volumes.  They may be fractional; a click lands on the nearest voxel.
"""
from __future__ import annotations

import csv
import json
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Iterable, Sequence

import numpy as np

from .errors import ClickError, InputError
from .io.atomic import atomic_path

_POSITIVE = {"positive", "pos", "fg", "foreground", "1", "true", "+", "+1"}
_NEGATIVE = {"negative", "neg", "bg", "background", "0", "false", "-", "-1"}


@dataclass(frozen=True)
class Click:
    position: tuple[float, ...]  # index coordinates, array axis order
    positive: bool = True
    object: int = 1
    frame: int | None = None

    def voxel(self) -> tuple[int, ...]:
        return tuple(int(round(p)) for p in self.position)

    def to_dict(self) -> dict:
        d = asdict(self)
        d["position"] = [float(p) for p in self.position]
        d["label"] = "positive" if self.positive else "negative"
        del d["positive"]
        return d


def parse_label(value: object) -> bool:
    if isinstance(value, bool):
        return value
    text = str(value).strip().lower()
    if text in _POSITIVE:
        return True
    if text in _NEGATIVE:
        return False
    raise ClickError(f"unknown click label {value!r}: use positive or negative")


def _as_int(value: object, what: str) -> int:
    # int(2.7) would silently give 2 and int("x") a bare ValueError; both are the user's typo
    try:
        f = float(value)
    except (TypeError, ValueError):
        raise ClickError(f"click {what} {value!r} is not an integer") from None
    if not f.is_integer():
        raise ClickError(f"click {what} {value!r} is not an integer")
    return int(f)


def make_click(position: Sequence[float], positive: object = True, object: int = 1, frame: int | None = None) -> Click:
    if isinstance(position, (str, bytes)):  # a string would iterate into single digits
        raise ClickError(f"click position {position!r} is not a list of numbers")
    try:
        pos = tuple(float(p) for p in position)
    except (TypeError, ValueError):
        raise ClickError(f"click position {position!r} is not a list of numbers") from None
    if not all(np.isfinite(pos)):
        raise ClickError(f"click position {list(position)} contains NaN or Inf")
    obj = _as_int(object, "object id")
    if obj < 1:
        raise ClickError(f"click object id must be 1 or more, got {obj}")
    fr = None if frame is None or frame == "" else _as_int(frame, "frame")
    return Click(pos, parse_label(positive), obj, fr)


# a video's masks are palette PNGs (pixel value = object id): one byte per pixel
MAX_VIDEO_OBJECT_ID = 255


def validate_clicks(clicks: Iterable[Click], shape: Sequence[int], *, frames: int | None = None) -> list[Click]:
    """Check every click against a spatial shape (and, for a video, its number of frames and the object ids its
    masks can hold); return them as a list."""
    out = list(clicks)
    for n, c in enumerate(out, 1):
        if len(c.position) != len(shape):
            raise ClickError(f"click {n} has {len(c.position)} coordinates, the image has {len(shape)} axes")
        v = c.voxel()
        if any(p < 0 or p >= s for p, s in zip(v, shape)):
            raise ClickError(f"click {n} at index {list(c.position)} is outside the image of shape {tuple(shape)}")
        if frames is not None:
            if c.frame is None:
                raise ClickError(f"click {n} has no frame index; video clicks need one")
            if not 0 <= c.frame < frames:
                raise ClickError(f"click {n} is on frame {c.frame}, the video has {frames} frames")
            if c.object > MAX_VIDEO_OBJECT_ID:
                raise ClickError(f"click {n} has object id {c.object}: a video's masks are palette PNGs, object ids "
                                 f"1-{MAX_VIDEO_OBJECT_ID}")
    return out


def _to_index(points: np.ndarray, space: str, image) -> np.ndarray:
    if space == "index":
        return points
    if image is None:
        raise ClickError(f"clicks in {space} coordinates need the image's geometry")
    if points.shape[1] != image.ndim:
        raise ClickError(f"a click has {points.shape[1]} world coordinates, the image has {image.ndim} axes")
    return image.world_to_index(points, ras=(space == "world-ras"))


def load_clicks(path: str | Path, image=None) -> list[Click]:
    """Read a clicks file (JSON or CSV); world coordinates are converted with ``image``'s geometry."""
    p = Path(path)
    if not p.is_file():
        raise InputError(f"clicks file {p} does not exist")
    try:
        if p.suffix.lower() == ".csv":
            rows, space = _read_csv(p)
        else:
            rows, space = _read_json(p)
    except (json.JSONDecodeError, UnicodeDecodeError, csv.Error) as e:
        raise InputError(f"clicks file {p} is not valid {p.suffix.lstrip('.').upper() or 'JSON'}: {e}") from None
    if not rows:
        raise ClickError(f"clicks file {p} contains no clicks")
    clicks = []
    for n, r in enumerate(rows, 1):
        s = r.get("space", space)
        if s not in ("index", "world", "world-ras"):
            raise ClickError(f"click {n}: unknown coordinate space {s!r} (index, world or world-ras)")
        if "label" not in r and "positive" not in r:
            raise ClickError(f"click {n} in {p} has no label")
        c = make_click(r["position"], r.get("label", r.get("positive")), r.get("object", 1), r.get("frame"))
        if s != "index":
            idx = _to_index(np.asarray([c.position]), s, image)[0]
            c = Click(tuple(float(v) for v in idx), c.positive, c.object, c.frame)
        clicks.append(c)
    if image is not None:
        validate_clicks(clicks, image.shape)
    return clicks


def _read_json(p: Path) -> tuple[list[dict], str]:
    data = json.loads(p.read_text(encoding="utf-8-sig"))  # a BOM, as some editors write, is not an error
    space = "index"
    if isinstance(data, dict):
        space = str(data.get("coordinates", "index"))
        data = data.get("clicks")
    if not isinstance(data, list) or not all(isinstance(r, dict) and "position" in r for r in data):
        raise ClickError(f"clicks file {p}: expected a list of objects with a 'position'")
    return data, space


def _read_csv(p: Path) -> tuple[list[dict], str]:
    with p.open(newline="", encoding="utf-8-sig") as f:  # -sig: spreadsheet programs start CSVs with a BOM
        reader = csv.DictReader(f)
        cols = [c.strip().lower() for c in (reader.fieldnames or [])]
        reader.fieldnames = cols
        if {"i", "j"} <= set(cols):
            axes, space = [c for c in ("i", "j", "k") if c in cols], "index"
        elif {"x", "y"} <= set(cols):
            axes, space = [c for c in ("x", "y", "z") if c in cols], "world"
        else:
            raise ClickError(f"clicks file {p}: CSV needs columns i,j[,k] (index) or x,y[,z] (world mm)")
        rows = []
        for r in reader:
            try:
                pos = [float(r[a]) for a in axes]
            except (TypeError, ValueError):
                raise ClickError(f"clicks file {p}: row {len(rows) + 1} has a non-numeric coordinate") from None
            row = {"position": pos, "label": r.get("label", "")}
            if r.get("object"):
                row["object"] = r["object"]
            if r.get("frame"):
                row["frame"] = r["frame"]
            if r.get("space"):
                row["space"] = r["space"].strip().lower()
            rows.append(row)
    return rows, space


def save_clicks(clicks: Iterable[Click], path: str | Path, *, one_at_a_time: bool = False) -> None:
    """Write a JSON clicks file; ``one_at_a_time``: the clicks were made one after another (module doc)."""
    data = {"coordinates": "index", **({"one_at_a_time": True} if one_at_a_time else {}),
            "clicks": [c.to_dict() for c in clicks]}
    with atomic_path(path) as tmp:
        Path(tmp).write_text(json.dumps(data, indent=1))


def made_one_at_a_time(path: str | Path) -> bool:
    """Whether a clicks file (read by :func:`load_clicks` first) says its clicks were made one at a time."""
    p = Path(path)
    if p.suffix.lower() == ".csv":
        return False
    data = json.loads(p.read_text(encoding="utf-8-sig"))
    return isinstance(data, dict) and data.get("one_at_a_time") is True

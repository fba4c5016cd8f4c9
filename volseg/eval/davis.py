"""The DAVIS video benchmark's data: sequences of frames with per-frame object label maps.

Layout: ``ROOT/JPEGImages/480p/<seq>/*.jpg`` and ``ROOT/Annotations/480p/<seq>/*.png``, or the
same without the ``480p`` level.  Annotations are DAVIS-2017 palette PNGs (index = object id,
:data:`IGNORE` (255) excluded from scoring and clicking) or DAVIS-2016 grey masks (0 / 255 = one
object).
"""
from __future__ import annotations

from pathlib import Path
from typing import Sequence

import numpy as np
from PIL import Image as PILImage

from ..errors import InputError
from ..io.video import FolderFrames
from ..metrics import boundary_f, iou

IGNORE = 255


def davis_dirs(root: str | Path) -> tuple[Path, Path]:
    """(JPEGImages dir, Annotations dir), with or without the ``480p`` level."""
    root = Path(root)
    for sub in ("480p", ""):
        img, ann = root / "JPEGImages" / sub, root / "Annotations" / sub
        if img.is_dir() and ann.is_dir() and any(p.is_dir() for p in img.iterdir()):
            return img, ann
    raise InputError(f"{root} is not a DAVIS folder: expected JPEGImages/[480p/]<seq> and Annotations/[480p/]<seq>")


def sequences(root: str | Path, names: Sequence[str] | None = None) -> list[str]:
    """The sequence names under ``root`` (sorted), or ``names`` after checking they exist."""
    img, ann = davis_dirs(root)
    found = sorted(p.name for p in img.iterdir() if p.is_dir() and (ann / p.name).is_dir())
    if not names:
        return found
    missing = [n for n in names if n not in found]
    if missing:
        raise InputError(f"sequence(s) {missing} not in {root} (found {', '.join(found) or 'none'})")
    return list(names)


def read_davis_mask(path: Path) -> np.ndarray:
    """Label map of a DAVIS annotation: palette indices (2017) or 0/255 grey -> 0/1 (2016)."""
    with PILImage.open(path) as im:
        palette = im.mode == "P"
        a = np.asarray(im)
    if a.ndim == 3:
        a = a[..., 0]
    if not palette and set(np.unique(a).tolist()) <= {0, 255}:
        return (a > 0).astype(np.uint8)
    return a.astype(np.uint8)


class DavisSequence:
    """One sequence: its frames, its annotations and the object ids of the first annotation."""

    def __init__(self, root: str | Path, name: str) -> None:
        img, ann = davis_dirs(root)
        self.name = name
        self.frames = FolderFrames(img / name)
        self.masks = sorted((ann / name).glob("*.png"))
        if len(self.masks) != len(self.frames):
            raise InputError(f"sequence {name}: {len(self.frames)} frames but {len(self.masks)} annotations")
        first = self.gt(0)
        self.objects = sorted(int(v) for v in np.unique(first) if v not in (0, IGNORE))
        if not self.objects:
            raise InputError(f"sequence {name}: the first annotation has no object")

    def gt(self, t: int) -> np.ndarray:
        return read_davis_mask(self.masks[t])


def frame_scores(gt_labels: np.ndarray, pred_labels: np.ndarray, objects) -> dict[int, tuple[float, float]]:
    """{object: (J, F)} for one frame of label maps; :data:`IGNORE` in the ground truth is left out."""
    ignore = gt_labels == IGNORE
    ignore = ignore if ignore.any() else None
    scores = {}
    for k in objects:
        gt, pred = gt_labels == k, pred_labels == k
        scores[int(k)] = (iou(gt, pred, ignore), boundary_f(gt, pred, ignore))
    return scores

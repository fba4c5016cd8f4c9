"""Refuse to train on images that are copies of evaluation images.

A training set gathered from the web can hold benchmark photographs under other names, resized or
re-encoded (ECSSD held 74 Berkeley photographs). Two tests catch that before a long run:

* byte identity (SHA-256 of the file);
* near identity: the correlation of 24x24 grey thumbnails over ``threshold``, against the evaluation
  image in each of its four 90-degree rotations (some benchmark copies are stored rotated).

A thumbnail ignores the aspect ratio on purpose, so a resized or re-cropped-to-size copy still matches.
"""
from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

from ..errors import InputError

THUMB = 24
IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff")


@dataclass(frozen=True)
class Overlap:
    train: Path
    excluded: Path
    how: str  # "identical bytes" or "thumbnail correlation 0.998"


def image_files(folder: str | Path) -> list[Path]:
    folder = Path(folder)
    if not folder.is_dir():
        raise InputError(f"--exclude-like {folder}: not a folder")
    return sorted(p for p in folder.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file())


def thumbnail(path: Path) -> np.ndarray:
    """Zero-mean, unit-norm 24x24 grey thumbnail (flattened); a constant image gives zeros."""
    with Image.open(path) as im:
        t = np.asarray(im.convert("L").resize((THUMB, THUMB), Image.Resampling.BOX), dtype=np.float64)
    t = t - t.mean()
    n = np.linalg.norm(t)
    return (t / n if n > 0 else t).ravel()


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def find_overlaps(train: list[Path], excluded: list[Path], threshold: float = 0.99) -> list[Overlap]:
    """Training images that are byte-identical or near-identical to any excluded image."""
    if not train or not excluded:
        return []
    digests = {sha256(p): p for p in excluded}
    found: dict[Path, Overlap] = {}
    for p in train:
        hit = digests.get(sha256(p))
        if hit is not None:
            found[p] = Overlap(p, hit, "identical bytes")
    a = np.stack([thumbnail(p) for p in train])
    thumbs = [thumbnail(p).reshape(THUMB, THUMB) for p in excluded]
    best = np.full(len(train), -1.0)
    arg = np.zeros(len(train), int)
    for k in range(4):
        b = np.stack([np.rot90(t, k).ravel() for t in thumbs])
        corr = a @ b.T
        j = corr.argmax(1)
        c = corr[np.arange(len(train)), j]
        better = c > best
        best[better], arg[better] = c[better], j[better]
    for i in np.flatnonzero(best > threshold):
        found.setdefault(train[i], Overlap(train[i], excluded[arg[i]], f"thumbnail correlation {best[i]:.3f}"))
    return sorted(found.values(), key=lambda o: str(o.train))


def check_no_overlap(train: list[Path], exclude_dirs: list[str | Path], threshold: float = 0.99) -> None:
    """Raise InputError naming every training image that copies an image in ``exclude_dirs``."""
    excluded = [p for d in exclude_dirs for p in image_files(d)]
    overlaps = find_overlaps(train, excluded, threshold)
    if overlaps:
        shown = "; ".join(f"{o.train} ~ {o.excluded} ({o.how})" for o in overlaps[:20])
        more = f" and {len(overlaps) - 20} more" if len(overlaps) > 20 else ""
        raise InputError(f"{len(overlaps)} training images copy excluded images: {shown}{more}")


__all__ = ["Overlap", "check_no_overlap", "find_overlaps", "image_files", "thumbnail"]

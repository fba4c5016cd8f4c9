"""What the server may open: files under one root, never outside it (no ``..``, no absolute paths,
no symlinks that lead out), and what kind of thing each one is."""
from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

from ..errors import InputError
from ..io import DICOM_SUFFIXES, ITK_SUFFIXES, NIFTI_SUFFIXES, RASTER_SUFFIXES, suffix
from ..io.video import FRAME_SUFFIXES, VIDEO_SUFFIXES

# listing walks at most this deep and this many entries: a served home folder must not hang the page
MAX_DEPTH = 4
MAX_ENTRIES = 2000


class Forbidden(Exception):
    """A path that leaves the root (403)."""


class NotFound(Exception):
    """A path under the root that does not exist or cannot be opened (404)."""


@dataclass(frozen=True)
class Entry:
    path: str   # relative to the root, '/'-separated
    kind: str   # image | volume | video


def kind_of(p: Path) -> str | None:
    """'image' (2D raster), 'volume' (NIfTI, NRRD/MHA, a DICOM folder), 'video' (a video file or a
    folder of numbered frames), or None for anything else."""
    if p.is_dir():
        names = [q for q in p.iterdir() if not q.name.startswith(".")]
        if any(suffix(q) in DICOM_SUFFIXES for q in names):
            return "volume"
        frames = [q for q in names if suffix(q) in FRAME_SUFFIXES]
        if len(frames) >= 2 and all(q.stem.isdigit() for q in frames):
            return "video"
        return None
    s = suffix(p)
    if s in RASTER_SUFFIXES:
        return "image"
    if s in NIFTI_SUFFIXES or s in ITK_SUFFIXES:
        return "volume"
    if s in VIDEO_SUFFIXES:
        return "video"
    return None


class Root:
    """A served folder (or a single served file, whose folder is the root and which is all it lists)."""

    def __init__(self, path: str | Path, *, exclude: Path | None = None) -> None:
        p = Path(path).expanduser()
        if not p.exists():
            raise InputError(f"serve: {p} does not exist")
        p = p.resolve()
        # a file, a DICOM folder or a frame folder is served alone, under the name it has in its folder
        self.only = p if p.is_file() or kind_of(p) is not None else None
        self.dir = p.parent if self.only is not None else p
        self.exclude = exclude.resolve() if exclude is not None else None

    def resolve(self, rel: str) -> Path:
        """The file ``rel`` names under the root; Forbidden if it would leave the root, NotFound if absent."""
        if not isinstance(rel, str) or not rel or "\0" in rel or "\\" in rel:
            raise Forbidden(f"bad path {rel!r}")
        pure = PurePosixPath(rel)
        if pure.is_absolute() or ".." in pure.parts:
            raise Forbidden(f"path {rel!r} leaves the served folder")
        target = (self.dir / pure).resolve()  # follows symlinks: one that leads out is caught below
        if not target.is_relative_to(self.dir):
            raise Forbidden(f"path {rel!r} leaves the served folder")
        if self.only is not None and target != self.only:
            raise Forbidden(f"only {self.only.name} is served")
        if not target.exists() or kind_of(target) is None:
            raise NotFound(f"{rel} is not an image, volume or video under the served folder")
        return target

    def listing(self) -> list[Entry]:
        if self.only is not None:
            return [Entry(self.only.name, kind_of(self.only) or "image")]
        out: list[Entry] = []
        for dirpath, dirnames, filenames in os.walk(self.dir):  # os.walk does not follow symlinked folders
            d = Path(dirpath)
            depth = len(d.relative_to(self.dir).parts)
            keep = []
            for name in sorted(dirnames):
                sub = d / name
                if name.startswith(".") or (self.exclude is not None and sub.resolve() == self.exclude):
                    continue
                k = kind_of(sub)
                if k is not None:  # a DICOM series or a frame folder is one entry, not a folder to enter
                    out.append(Entry(sub.relative_to(self.dir).as_posix(), k))
                elif depth + 1 < MAX_DEPTH:
                    keep.append(name)
            dirnames[:] = keep
            for name in sorted(filenames):
                f = d / name
                k = None if name.startswith(".") else kind_of(f)
                if k is not None and f.resolve().is_relative_to(self.dir):
                    out.append(Entry(f.relative_to(self.dir).as_posix(), k))
            if len(out) >= MAX_ENTRIES:
                break
        return sorted(out[:MAX_ENTRIES], key=lambda e: e.path)

"""Video input and output: frames read lazily from a video file (decord) or a folder of images,
masks written as one indexed-colour PNG per frame (DAVIS palette, object ids kept), and an
optional overlay video for a person to look at.

Frames are RGB ``uint8 (H, W, 3)``.  A :class:`FrameSource` decodes on demand and keeps at most
``cache`` frames (one chunk) in memory, so memory does not grow with the video's length; reading
backwards (backward propagation) decodes a chunk once and serves it in any order.
"""
from __future__ import annotations

import os
import re
import tempfile
import threading
from collections import OrderedDict
from pathlib import Path
from typing import Iterator, Sequence

import cv2
import numpy as np

from ..errors import InputError, OutputExistsError
from ..image import Image
from . import check_folder_path, write_mask
from .atomic import atomic_path, check_output
from .raster import davis_palette

FRAME_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff")
VIDEO_SUFFIXES = (".mp4", ".avi", ".mov", ".mkv", ".webm", ".m4v", ".mpg", ".mpeg", ".flv", ".wmv", ".ts")


def _natural_key(name: str) -> list:
    return [int(t) if t.isdigit() else t.lower() for t in re.split(r"(\d+)", name)]


class FrameSource:
    """A video as a sequence of frames: ``len``, ``shape`` (H, W), ``names`` (output stems), ``src[t]``."""

    path: Path
    fps: float
    names: list[str]
    shape: tuple[int, int]

    # decoded chunks kept: the one being read and its neighbour (for either direction), plus one for a
    # second reader (the video segmenter's label maps run behind its propagation, in another thread)
    CHUNKS = 3

    def __init__(self, cache: int = 16) -> None:
        self.cache = max(1, int(cache))
        self._chunks: OrderedDict[int, np.ndarray] = OrderedDict()
        self._lock = threading.Lock()  # one decoder, one cache: readers in several threads take turns

    def __len__(self) -> int:
        return len(self.names)

    def __getitem__(self, t: int) -> np.ndarray:
        t = int(t)
        if not 0 <= t < len(self):
            raise IndexError(f"frame {t} outside a video of {len(self)} frames")
        c = t // self.cache
        with self._lock:
            if c not in self._chunks:
                if len(self._chunks) >= self.CHUNKS:
                    self._chunks.popitem(last=False)
                lo, hi = c * self.cache, min(len(self), (c + 1) * self.cache)
                self._chunks[c] = self._decode(lo, hi)
            else:
                self._chunks.move_to_end(c)
            return self._chunks[c][t - c * self.cache]

    def __iter__(self) -> Iterator[np.ndarray]:
        for t in range(len(self)):
            yield self[t]

    def _decode(self, lo: int, hi: int) -> np.ndarray:
        raise NotImplementedError

    def _check(self, frame: np.ndarray, where: str) -> np.ndarray:
        if frame.shape[:2] != self.shape:
            raise InputError(f"{where} has size {frame.shape[:2]}, the video's first frame {self.shape}; "
                             "all frames must match")
        return frame


class FolderFrames(FrameSource):
    """A folder of images, ordered by natural sort of their names (00000.jpg, 00001.jpg, ...)."""

    def __init__(self, folder: str | Path, cache: int = 16, fps: float = 24.0) -> None:
        super().__init__(cache)
        self.path = Path(folder)
        frames = (p for p in self.path.iterdir() if p.suffix.lower() in FRAME_SUFFIXES and not p.name.startswith("."))
        self.files = sorted(frames, key=lambda p: _natural_key(p.name))
        if not self.files:
            raise InputError(f"frame folder {self.path} holds no images ({', '.join(FRAME_SUFFIXES)})")
        self.names = [p.stem for p in self.files]
        self.fps = float(fps)
        self.shape = tuple(self._read(self.files[0]).shape[:2])

    def _read(self, p: Path) -> np.ndarray:
        a = cv2.imread(str(p), cv2.IMREAD_COLOR)
        if a is None:
            raise InputError(f"cannot read frame {p}")
        return cv2.cvtColor(a, cv2.COLOR_BGR2RGB)  # OpenCV decodes BGR

    def _decode(self, lo: int, hi: int) -> np.ndarray:
        return np.stack([self._check(self._read(p), f"frame {p}") for p in self.files[lo:hi]])


class DecordFrames(FrameSource):
    """A video file through decord (mp4 and the containers FFmpeg reads)."""

    def __init__(self, path: str | Path, cache: int = 16) -> None:
        super().__init__(cache)
        import decord  # noqa: PLC0415 -- loads FFmpeg; only video files need it, not frame folders

        self.path = Path(path)
        try:
            self._reader = decord.VideoReader(str(self.path), ctx=decord.cpu(0), num_threads=1)
        except Exception as e:  # decord raises its own DECORDError or RuntimeError for unreadable files
            msg = str(e).strip().splitlines()
            raise InputError(f"cannot read video {self.path}: {msg[0] if msg else type(e).__name__}") from None
        n = len(self._reader)
        if n == 0:
            raise InputError(f"video {self.path} has no frames")
        self.names = [f"{t:05d}" for t in range(n)]
        self.fps = float(self._reader.get_avg_fps() or 24.0)
        self.shape = tuple(self._reader[0].shape[:2])
        self._reader.seek(0)

    def _decode(self, lo: int, hi: int) -> np.ndarray:
        batch = self._reader.get_batch(list(range(lo, hi))).asnumpy()
        return np.ascontiguousarray(batch)


def open_video(path: str | Path, *, cache: int = 16) -> FrameSource:
    """A folder of frames or a video file (by suffix; anything else decord may still read)."""
    p = Path(path)
    if not p.exists():
        raise InputError(f"video {p} does not exist")
    if p.is_dir():
        return FolderFrames(p, cache=cache)
    if p.suffix.lower() in FRAME_SUFFIXES:
        raise InputError(f"{p} is a single image; a video is a video file or a folder of frames")
    return DecordFrames(p, cache=cache)


class MaskWriter:
    """One indexed-colour PNG per frame, ``OUT/<frame name>.png``: pixel value == object id."""

    def __init__(self, out: str | Path, source: FrameSource, *, overwrite: bool = False) -> None:
        self.out = Path(out)
        if self.out.exists() and not self.out.is_dir():
            raise OutputExistsError(f"output {self.out} exists and is not a folder")
        if self.out.resolve() == Path(source.path).resolve():
            raise OutputExistsError(f"output folder {self.out} is the input frame folder; "
                                    "masks would mix with the frames")
        check_folder_path(self.out, f"masks into {self.out}")
        self.out.mkdir(parents=True, exist_ok=True)
        self.source, self.overwrite = source, overwrite
        # only the shape of ``like`` is used: a zero-stride view costs no memory
        self._like = Image(np.broadcast_to(np.zeros((1, 1, 1), np.uint8), (*source.shape, 1)))
        self.written: list[Path] = []

    def path(self, t: int) -> Path:
        return self.out / f"{self.source.names[t]}.png"

    def check(self) -> None:
        """Refuse early, before any work, when masks are already there and overwrite is off."""
        if not self.overwrite:
            for t in range(len(self.source)):
                check_output(self.path(t))

    def write(self, t: int, labels: np.ndarray) -> Path:
        p = write_mask(labels, self._like, self.path(t), overwrite=self.overwrite, palette=True)
        self.written.append(p)
        return p


def overlay(frame: np.ndarray, labels: np.ndarray, alpha: float = 0.5) -> np.ndarray:
    """The frame with each object tinted in its DAVIS colour and outlined."""
    pal = davis_palette()
    out = frame.copy()
    objs = labels > 0
    if objs.any():
        out[objs] = (frame[objs] * (1 - alpha) + pal[labels[objs]] * alpha).astype(np.uint8)
        edge = cv2.morphologyEx(labels.astype(np.uint8), cv2.MORPH_GRADIENT, np.ones((3, 3), np.uint8)) > 0
        out[edge] = pal[np.maximum(labels, cv2.dilate(labels.astype(np.uint8), np.ones((3, 3), np.uint8)))[edge]]
    return out


class OverlayWriter:
    """An mp4 (OpenCV ``mp4v``) of the frames with their masks; where OpenCV has no mp4 encoder, a folder
    of JPEGs named after the video instead (``out.mp4`` -> ``out_overlay/``), reported by ``.kind``.
    The video is written to a temporary file beside the target and renamed onto it when closed."""

    def __init__(self, path: str | Path, shape: Sequence[int], fps: float, *, overwrite: bool = False) -> None:
        self.path = check_output(path, overwrite=overwrite)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd, self._tmp = tempfile.mkstemp(prefix=f".{self.path.name}.", suffix=".tmp.mp4", dir=self.path.parent)
        os.close(fd)
        h, w = int(shape[0]), int(shape[1])
        self._writer = cv2.VideoWriter(self._tmp, cv2.VideoWriter_fourcc(*"mp4v"), float(fps or 24.0), (w, h))
        self.kind = "mp4"
        if not self._writer.isOpened():
            os.unlink(self._tmp)
            self._writer = None
            self.kind = "jpeg-folder"
            self.folder = self.path.with_name(self.path.name.split(".")[0] + "_overlay")
            self.folder.mkdir(parents=True, exist_ok=True)
        self._n = 0

    def write(self, frame: np.ndarray, labels: np.ndarray) -> None:
        img = overlay(frame, labels)[..., ::-1]
        if self._writer is not None:
            self._writer.write(np.ascontiguousarray(img))
        else:
            cv2.imwrite(str(self.folder / f"{self._n:05d}.jpg"), img)
        self._n += 1

    def close(self) -> Path:
        if self._writer is None:
            return self.folder
        self._writer.release()
        os.replace(self._tmp, self.path)
        return self.path


def write_video(path: str | Path, frames: Sequence[np.ndarray] | np.ndarray, fps: float = 10.0) -> Path:
    """Write RGB frames as an mp4 (``mp4v``); used by tests and demos to make videos decord reads back."""
    frames = np.asarray(frames)
    p = Path(path)
    with atomic_path(p) as tmp:
        w = cv2.VideoWriter(tmp, cv2.VideoWriter_fourcc(*"mp4v"), float(fps), (frames.shape[2], frames.shape[1]))
        if not w.isOpened():
            raise InputError("this OpenCV build has no mp4v encoder")
        for f in frames:
            w.write(np.ascontiguousarray(f[..., ::-1]))
        w.release()
    return p

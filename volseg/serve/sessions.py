"""The server's interactive state: one object per opened file, kept in a store that hands each out
under its own lock and frees the ones nobody used for a while (closed tabs), so memory stays bounded.

* :class:`ImageState` -- a 2D image or a volume: a :class:`volseg.Session`.
* :class:`VideoState` -- a video: a :class:`volseg.video.VideoSegmenter`, with a Session on the frame
  being clicked (the same per-frame refinement ``VideoSegmenter.add_clicks`` does, kept alive between
  clicks so a click does not recompute the frame's features).

Both answer the same calls (``click``, ``undo``, ``reset``, ``labels``, ``uncertainty``, ``suggest``,
``save``) in index coordinates; :mod:`.app` turns them into HTTP.
"""
from __future__ import annotations

import contextlib
import secrets
import threading
import time
import zipfile
from collections import OrderedDict
from pathlib import Path
from typing import Iterator

import numpy as np

from .. import __version__
from ..batch import default_output_name
from ..clicks import Click, make_click, save_clicks, validate_clicks
from ..errors import ClickError, VolsegError
from ..image import Image
from ..io import read_image
from ..io.atomic import atomic_path
from ..io.video import MaskWriter, open_video
from ..provenance import file_sha256, sidecar_path, versions, write_sidecar
from ..segment import segment_file
from ..session import Session
from ..video import Annotation, VideoConfig, VideoSegmenter
from .render import Axis, View, auto_window, check_slice, plane, views_for

# above this many voxels a click's first answer is the GP's own labels on the visible slices; the
# whole-volume mask (connected parts, filled holes) follows on the next request, see ImageState.labels
EXACT_VOXELS = 4_000_000


class ImageState:
    """A 2D image or a volume and its Session."""

    def __init__(self, path: Path, name: str, settings: dict) -> None:
        self.path, self.name, self.settings = path, name, dict(settings)
        image = read_image(path)
        self.session = Session(**self.settings)
        self.session.set_image(image)
        self.image: Image = self.session.image
        self.kind = "image" if image.ndim == 2 else "volume"
        self.views = views_for(self.image)
        self.version = 0          # bumped by every change of the clicks
        self._mask: tuple[int, np.ndarray] | None = None
        self._std: tuple[int, np.ndarray, float] | None = None
        self.exact = self.image.ndim == 2 or int(np.prod(self.image.shape)) <= EXACT_VOXELS
        self.window = auto_window(self.image.array)
        self.ct_like = bool(np.issubdtype(self.image.array.dtype, np.number) and self.image.array.min() <= -500)

    # -- description ---------------------------------------------------------------------------
    def info(self) -> dict:
        img = self.image
        return {"kind": self.kind, "name": self.name, "shape": list(img.shape), "spacing": list(img.spacing),
                "channels": img.channels, "frames": None, "views": [v.to_dict() for v in self.views],
                "window": {"auto": list(self.window), "ct": self.ct_like},
                "feature_seconds": round(self.session.feature_seconds, 3), **self.state()}

    def state(self) -> dict:
        s = self.session
        return {"clicks": [c.to_dict() for c in s.clicks], "objects": list(s.objects), "version": self.version,
                "exact": self.exact}

    def frame_pixels(self, index: int | None) -> np.ndarray:
        return self.image.array

    def check_index(self, view: View, index: int | None) -> None:
        """IndexError unless ``view`` has the slice ``index``."""
        check_slice(view, index, self.image.shape)

    # -- clicks --------------------------------------------------------------------------------
    def click(self, position, positive: bool, object: int, frame: int | None) -> float:
        seconds = self.session.add_click(position, positive, object)
        self.version += 1
        return seconds

    def undo(self) -> None:
        self.session.undo()
        self.version += 1

    def reset(self) -> None:
        self.session.reset()
        self.version += 1

    # -- maps ----------------------------------------------------------------------------------
    def mask(self) -> np.ndarray:
        """The Session's mask, computed once per version of the clicks."""
        if self._mask is None or self._mask[0] != self.version:
            self._mask = (self.version, self.session.mask())
        return self._mask[1]

    def labels(self, view: View, index: int | None, *, exact: bool = True) -> np.ndarray:
        """Labels on one slice, in array order (render.plane turns them to the screen)."""
        if exact or self.exact or (self._mask is not None and self._mask[0] == self.version):
            return plane(self.mask(), view, index)
        preview = latent_labels(self.session, view, index)
        return preview if preview is not None else plane(self.mask(), view, index)

    def uncertainty(self, view: View, index: int | None) -> tuple[np.ndarray, float]:
        if self._std is None or self._std[0] != self.version:
            std = self.session.uncertainty()
            self._std = (self.version, std, float(std.max()) if std.size else 1.0)
        return plane(self._std[1], view, index), self._std[2]

    def suggest(self, frame: int | None) -> dict:
        if not self.session.clicks:
            raise ClickError("click on the object first: a suggestion needs a mask to improve")
        s = self.session.suggest_click()
        return {"position": list(s.position), "frame": None, "label": s.predicted_label, "score": s.score}

    # -- output --------------------------------------------------------------------------------
    def clicks_for_save(self) -> list[Click]:
        if not self.session.clicks:
            raise ClickError("nothing to save: there are no clicks")
        return list(self.session.clicks)

    def save(self, clicks: list[Click], out: Path) -> dict:
        """What ``volseg segment`` writes for these clicks: the mask in the input's geometry and its
        provenance sidecar, plus the clicks file it was made from.  Runs without the session's lock."""
        out.mkdir(parents=True, exist_ok=True)
        mask_path = out / default_output_name(self.path)
        clicks_path = mask_path.with_name(mask_path.name.split("_mask")[0] + "_clicks.json")
        save_clicks(clicks, clicks_path, one_at_a_time=True)  # the mask they give is the one the page showed
        rec = segment_file(self.path, clicks_path, mask_path, overwrite=True, **self.settings)
        return {"mask": str(mask_path), "sidecar": str(sidecar_path(mask_path)), "clicks": str(clicks_path),
                "download": mask_path, "voxels_per_label": rec["voxels_per_label"]}

    def close(self) -> None:
        self.session = None  # the features and maps go with it


def latent_labels(session, view: View, index: int | None) -> np.ndarray | None:
    """The GP's labels on one slice (``Session.raw_labels``: the object with the largest latent mean,
    where it is above 0), from the mean map a click has just brought up to date.  It skips the
    whole-volume clean-up of ``Session.mask`` (parts not connected to a click, holes), so it is what the
    page shows first on a large volume; the exact mask replaces it a moment later.  None for a session
    without raw labels (the caller then falls back to ``Session.mask``)."""
    raw_labels = getattr(session, "raw_labels", None)
    if raw_labels is None:
        return None
    image = session.image
    box = [slice(0, n) for n in image.shape]
    if view.axis is not None:
        check_slice(view, index, image.shape)
        box[view.axis] = slice(index, index + 1)
    # the sliced axis stays, of length 1, so plane() orders rows and columns the same way
    return plane(raw_labels(tuple(box)), view, None if view.axis is None else 0)


class VideoState:
    """A video: propagation over all frames, clicks on any frame as corrections."""

    kind = "video"
    KEEP_FRAME_SESSIONS = 2  # Sessions (features of a full frame) kept alive for the frames last clicked

    def __init__(self, path: Path, name: str, settings: dict, video_config=None) -> None:
        self.path, self.name, self.settings, self.video_config = path, name, dict(settings), video_config
        self.source = open_video(path)
        self.T = len(self.source)

        self.views = [View("frame", None, Axis(0, False), Axis(1, False), 1.0, 1.0, {})]
        self.version = 0
        self._new_segmenter()

    def _new_segmenter(self) -> None:
        # a clicked frame's 2D session: the video settings' session_features (`volseg serve` resolves them from
        # --config and --features), else the server's --features, as for images
        config = self.video_config
        if config is None:
            config = VideoConfig(session_features=self.settings.get("features", "filterbank"))
        self.seg = VideoSegmenter(self.source, config, session_config=self.settings.get("config"))
        self.frame_sessions: OrderedDict[int, object] = OrderedDict()
        self.history: list[Click] = []
        self.propagated_version = -1

    def info(self) -> dict:
        return {"kind": "video", "name": self.name, "shape": list(self.source.shape), "spacing": [1.0, 1.0],
                "channels": 3, "frames": self.T, "fps": self.source.fps, "views": [v.to_dict() for v in self.views],
                "window": {"auto": [255.0, 127.5], "ct": False}, "feature_seconds": 0.0, **self.state()}

    def state(self) -> dict:
        return {"clicks": [c.to_dict() for c in self.history], "objects": list(self.seg.objects),
                "version": self.version, "exact": True, "annotated": sorted(self.seg.annotations),
                "propagated": self.propagated_version == self.version}

    def frame_pixels(self, index: int | None) -> np.ndarray:
        self.check_index(None, index)
        return self.source[index]

    def check_index(self, view: View | None, index: int | None) -> None:
        """IndexError unless ``index`` is a frame (a video's one view is its frames)."""
        if index is None or not 0 <= index < self.T:
            raise IndexError(f"frame {index} outside 0..{self.T - 1}")

    # -- clicks --------------------------------------------------------------------------------
    def _session(self, t: int, clicks: list[Click]):
        """The frame's Session: its prior is the frame's propagated mask, its clicks ``clicks``."""
        s = self.frame_sessions.get(t)
        if s is None:
            s = self.seg.session_for(t)
            for c in clicks:
                s.add_click(c.position, c.positive, c.object)
            self.frame_sessions[t] = s
            while len(self.frame_sessions) > self.KEEP_FRAME_SESSIONS:
                self.frame_sessions.popitem(last=False)
        self.frame_sessions.move_to_end(t)
        return s

    def click(self, position, positive: bool, object: int, frame: int | None) -> float:
        c = validate_clicks([make_click(position, positive, object, frame)], self.source.shape, frames=self.T)[0]
        t = int(c.frame)
        old = self.seg.annotations.get(t)
        if old is not None and t not in self.frame_sessions:
            # the frame's mask already holds its clicks; a fresh Session starts from the propagated mask
            self._rebuild(t, list(old.clicks), dense=old.dense)
        s = self._session(t, [])
        seconds = s.add_click(c.position, c.positive, c.object)
        self.seg.annotate(t, [c], s.mask())
        self.history.append(c)
        self.version += 1
        return seconds

    def _rebuild(self, t: int, clicks: list[Click], dense) -> None:
        self.seg.annotations.pop(t, None)
        self.frame_sessions.pop(t, None)
        if clicks:
            s = self._session(t, clicks)
            self.seg.annotations[t] = Annotation(t, s.mask(), list(clicks), dense=dense)

    def undo(self) -> None:
        if not self.history:
            raise ClickError("nothing to undo: there are no clicks")
        c = self.history.pop()
        t = int(c.frame)
        ann = self.seg.annotations[t]
        self._rebuild(t, list(ann.clicks[:-1]), ann.dense)
        self.version += 1

    def reset(self) -> None:
        self.seg.close()
        self._new_segmenter()
        self.version += 1

    def propagate(self) -> dict:
        if not self.seg.annotations:
            raise ClickError("click on a frame first: propagation starts from clicked frames")
        t0 = time.perf_counter()
        changed = self.seg.update(sorted(self.seg.annotations))
        self.propagated_version = self.version
        return {"frames": len(changed), "seconds": round(time.perf_counter() - t0, 3)}

    # -- maps ----------------------------------------------------------------------------------
    def frame_labels(self, t: int) -> np.ndarray:
        if t in self.seg.annotations or self.seg.has_result(t):
            return self.seg.labels(t)
        return np.zeros(self.source.shape, np.uint8)

    def labels(self, view: View, index: int | None, *, exact: bool = True) -> np.ndarray:
        self.frame_pixels(index)  # range check
        return self.frame_labels(int(index))

    def uncertainty(self, view: View, index: int | None) -> tuple[np.ndarray, float]:
        self.frame_pixels(index)
        s = self.frame_sessions.get(int(index))
        if s is None:  # a propagated frame has no per-pixel posterior std kept
            return np.zeros(self.source.shape, np.float32), 1.0
        std = s.uncertainty()
        return std, float(std.max()) if std.size else 1.0

    def suggest(self, frame: int | None) -> dict:
        s = self.frame_sessions.get(int(frame)) if frame is not None else None
        if s is None:
            raise ClickError("click on this frame first: suggestions come from a clicked frame's posterior")
        g = s.suggest_click()
        return {"position": list(g.position), "frame": int(frame), "label": g.predicted_label, "score": g.score}

    # -- output --------------------------------------------------------------------------------
    def clicks_for_save(self) -> list[Click]:
        if not self.seg.annotations:
            raise ClickError("nothing to save: there are no clicks")
        return list(self.history)

    def save(self, clicks: list[Click], out: Path) -> dict:
        """What ``volseg propagate`` writes: one palette PNG per frame (pixel value = object id) and a
        sidecar, plus the clicks; the download is a zip of the PNGs.  Runs under the session's lock:
        the masks are the segmenter's current ones."""
        stem = Path(self.name).name.split(".")[0]
        folder = out / f"{stem}_masks"
        writer = MaskWriter(folder, self.source, overwrite=True)
        for t in range(self.T):
            writer.write(t, self.frame_labels(t))
        save_clicks(clicks, out / f"{stem}_clicks.json")
        record = {"command": "serve", "volseg": __version__, "video": str(self.path),
                  "video_sha256": file_sha256(self.path), "frames": self.T, "size": list(self.source.shape),
                  "objects": list(self.seg.objects), "annotated_frames": sorted(self.seg.annotations),
                  "propagated": self.propagated_version == self.version, "clicks": [c.to_dict() for c in clicks],
                  "config": self.seg.config.to_dict(), "versions": versions()}
        sidecar = write_sidecar(folder / "propagate.png", record)
        archive = out / f"{stem}_masks.zip"
        with atomic_path(archive) as tmp, zipfile.ZipFile(tmp, "w", zipfile.ZIP_DEFLATED) as z:
            for p in writer.written:
                z.write(p, f"{folder.name}/{p.name}")
            z.write(sidecar, f"{folder.name}/{sidecar.name}")
        return {"mask": str(folder), "sidecar": str(sidecar), "clicks": str(out / f"{stem}_clicks.json"),
                "download": archive}

    def close(self) -> None:
        self.seg.close()
        self.frame_sessions.clear()


# -- the store -----------------------------------------------------------------------------------

class SessionGone(Exception):
    """An unknown or expired session id (404: the page says to open the file again)."""


class _Entry:
    def __init__(self, state) -> None:
        self.state = state
        self.lock = threading.Lock()
        self.last_used = time.monotonic()


class SessionStore:
    """Sessions by id.  At most ``max_sessions`` live at once (opening one more frees the least recently
    used idle one); one unused for ``idle_timeout`` seconds is freed by :meth:`sweep`."""

    def __init__(self, *, idle_timeout: float = 600.0, max_sessions: int = 4) -> None:
        if idle_timeout <= 0 or max_sessions < 1:
            raise VolsegError("serve: the idle timeout must be positive and at least one session allowed")
        self.idle_timeout, self.max_sessions = float(idle_timeout), int(max_sessions)
        self._entries: OrderedDict[str, _Entry] = OrderedDict()
        self._guard = threading.Lock()

    def __len__(self) -> int:
        return len(self._entries)

    def __contains__(self, sid: str) -> bool:
        return sid in self._entries

    def make_room(self) -> None:
        """Free idle sessions until one more fits; refuse when every session is busy."""
        self.sweep()
        with self._guard:
            for sid in list(self._entries):  # least recently used first
                if len(self._entries) < self.max_sessions:
                    return
                self._try_close(sid)
            if len(self._entries) >= self.max_sessions:
                raise VolsegError(f"the server already holds {self.max_sessions} busy sessions; try again shortly")

    def add(self, state) -> str:
        sid = secrets.token_urlsafe(12)
        with self._guard:
            self._entries[sid] = _Entry(state)
        return sid

    @contextlib.contextmanager
    def use(self, sid: str) -> Iterator:
        """The session's state, under its lock (one request at a time per session)."""
        with self._guard:
            entry = self._entries.get(sid)
            if entry is None:
                raise SessionGone("this session has expired or was closed; open the file again")
            self._entries.move_to_end(sid)
            entry.last_used = time.monotonic()
        with entry.lock:
            if self._entries.get(sid) is not entry:  # freed while this request waited
                raise SessionGone("this session has expired or was closed; open the file again")
            yield entry.state
            entry.last_used = time.monotonic()

    def close(self, sid: str) -> bool:
        with self._guard:
            entry = self._entries.pop(sid, None)
        if entry is None:
            return False
        with entry.lock:  # let a running request finish first
            entry.state.close()
        return True

    def sweep(self, now: float | None = None) -> list[str]:
        """Free the sessions idle for longer than the timeout; returns their ids."""
        now = time.monotonic() if now is None else now
        freed = []
        with self._guard:
            for sid, entry in list(self._entries.items()):
                if now - entry.last_used > self.idle_timeout and self._try_close(sid):
                    freed.append(sid)
        return freed

    def _try_close(self, sid: str) -> bool:
        entry = self._entries[sid]
        if not entry.lock.acquire(blocking=False):  # busy: a request is using it
            return False
        try:
            del self._entries[sid]
            entry.state.close()
        finally:
            entry.lock.release()
        return True

    def close_all(self) -> None:
        for sid in list(self._entries):
            self.close(sid)

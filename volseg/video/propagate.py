"""Video object masking: annotate a few frames (a mask, or clicks), get every frame's mask.

    seg = VideoSegmenter(open_video("clip.mp4"))
    seg.add_clicks([Click((120, 300), True, object=1, frame=0), Click((80, 40), True, object=2, frame=0)])
    labels = seg.labels(17)                      # (H, W) uint8, object ids kept
    changed = seg.add_clicks([Click((200, 310), False, object=1, frame=40)])   # a correction

**Annotated frames** are the frames the user gave input on.  Their mask is exact: a given mask as
is, or the interactive :class:`volseg.Session` on that frame (the 2D engine, at full resolution)
with the frame's clicks, starting from the frame's current mask as a prior.

**Propagation** runs from every annotated frame forward and backward until the next annotated
frame (or the video's end); a frame between two annotated frames gets both passes, blended by
distance in time.  The working grid is ``scale`` times smaller per axis, or finer (chosen at the first
annotation) so that the smallest object covers about ``object_cells`` cells; each step works only in a
region that follows the object (its warped mask grown by ``roi_margin``).  One step of a pass:

1. prior: the previous frame's probability, pulled into this frame along DIS optical flow and
   blurred; its latent ``m0 = prior_strength * (2 p - 1)`` is the GP's prior mean (the spatial
   prior of the previous frame's mask);
2. training points: the memory bank (:mod:`volseg.video.memory`) -- clicks and mask samples of
   the two annotated frames bounding the stretch (global), samples of the last ``window``
   propagated frames moved along the flow (local), each with noise growing with its distance in
   time from the annotated frame its label descends from;
3. GP posterior mean over the working grid (:mod:`volseg.video.gp`), probit, stored per frame;
4. the frame adds its most informative points to the local memory.

Optional (off by default, see the README's DAVIS protocol for why): ``flow_check`` fades the prior
mean where the flow fails its forward-backward check; ``lost_fraction`` searches the whole frame for an
object whose warped mask has (almost) vanished, from the annotated frames' memory.

Masks at full resolution are the stored probability upsampled bilinearly and snapped to the
frame's edges with a guided filter (:mod:`volseg.video.refine`).

**Corrections**: clicks on frame t make t annotated (its mask is re-done with the clicks), and
only the frames strictly between t's annotated neighbours are propagated again
(:attr:`VideoSegmenter.last_changed`).

Memory does not grow with the video: frames are decoded lazily, the memory bank has a fixed
budget, and per-frame results live in a folder on disk (``workdir``), not in RAM.
"""
from __future__ import annotations

import shutil
import tempfile
import time
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Iterable, Sequence

import cv2
import numpy as np

from ..clicks import Click, validate_clicks
from ..errors import ClickError, InputError
from .features import Flow, FrameFeatures, Grid, flow_confidence, make_bank, warp
from .gp import MemoryPosterior, probability
from .memory import ANNOTATED, CLICK, PROPAGATED, MemoryBank, Points, sample_informative
from .refine import to_labels, upsample
from .threads import limited_threads


@dataclass(frozen=True)
class VideoConfig:
    scale: float = 4.0                 # working grid = frame / scale per axis ...
    min_side: int = 96                 # ... but its short side stays at least this (or the frame's)
    budget: int = 800                  # memory bank points (global + local)
    global_fraction: float = 0.5       # share of the budget for the annotated frames
    window: int = 2                    # local memory: the last `window` propagated frames
    feature_lengthscale: float = 0.35  # times sqrt(number of features)
    spatial_lengthscale: float = 6.0   # working-grid pixels: the spatial kernel's window (if global_weight < 1)
    global_weight: float = 1.0         # weight of appearance-only matching in the kernel (1: no spatial term)
    noise_click: float = 1e-3
    noise_annotated: float = 0.05      # mask samples of annotated frames
    noise_growth: float = 0.01         # extra noise per frame of distance from the annotated frame
    noise_max: float = 1.0
    prior_strength: float = 0.5        # |m0| of the previous frame's mask
    prior_blur: float = 1.0            # working-grid pixels
    flow: str = "ultrafast"            # DIS preset (ultrafast | fast | medium) or "none"
    refine_radius: float = 2.0         # guided-filter radius in working-grid pixels; 0: bilinear only
    refine_eps: float = 1e-3
    smoothing_scales: tuple = (0.0, 1.0, 2.0, 4.0, 8.0)  # filter bank on the working grid
    gradient_scales: tuple = (1.0, 3.0)
    hessian_scales: tuple = (2.0,)
    roi_margin: int = 10               # pixels of the `scale` grid around the prior's support where the GP
                                       # is evaluated; -1: everywhere
    object_cells: int = 2500           # >0: the grid is finer (down to full resolution) so the smallest annotated
                                       # object covers about this many cells; 0: always `scale`
    flow_check: bool = False           # forward-backward flow consistency: the prior mean fades where the flow fails
    lost_fraction: float = 0.0         # >0: an object whose warped mask has less than this fraction of its annotated
                                       # area is lost: searched for in the whole frame from the annotated frames' memory
    fine_band: float = 1.0             # on a grid finer than `scale`: exact GP only where |latent| < this;
                                       # 0: everywhere
    noise_propagated: float = 0.05     # noise of propagated frames' samples at distance 0 (annotated: noise_annotated)
    prior_mode: str = "linear"         # m0 = s (2p - 1) ("linear") or s Phi^-1(p) ("probit")
    components: bool = True            # drop object parts not touching the previous frame's mask
    targets: str = "label"             # "label": GP on +-1 labels, latent = m0 + GP; "residual": GP on y - m0
    threads: int = 1                   # BLAS / OpenCV threads while propagating (0: library default); see threads.py
    seed: int = 0

    def __post_init__(self) -> None:
        checks = [
            (self.scale >= 1, "scale must be 1 or more"), (self.budget >= 8, "budget must be 8 points or more"),
            (0 < self.global_fraction < 1, "global_fraction must be between 0 and 1"),
            (self.window >= 1, "window must be 1 or more"), (0 <= self.global_weight <= 1, "global_weight must be in [0, 1]"),
            (self.feature_lengthscale > 0 and self.spatial_lengthscale > 0, "lengthscales must be positive"),
            (min(self.noise_click, self.noise_annotated, self.noise_propagated) > 0 and self.noise_growth >= 0,
             "noise levels must be positive"),
            (self.object_cells >= 0, "object_cells must be 0 or more"),
            (0 <= self.lost_fraction < 1, "lost_fraction must be in [0, 1)"),
            (self.flow in ("ultrafast", "fast", "medium", "none"), "flow must be ultrafast, fast, medium or none"),
            (self.prior_mode in ("linear", "probit"), "prior_mode must be linear or probit"),
            (self.targets in ("label", "residual"), "targets must be label or residual"),
        ]
        bad = [msg for ok, msg in checks if not ok]
        if bad:
            raise InputError("video settings: " + "; ".join(bad))

    @classmethod
    def from_dict(cls, data: dict | None) -> "VideoConfig":
        data = dict(data or {})
        names = {f.name: f for f in fields(cls)}
        unknown = sorted(set(data) - set(names))
        if unknown:
            raise InputError(f"unknown video setting(s) {unknown}; known: {sorted(names)}")
        for k in ("smoothing_scales", "gradient_scales", "hessian_scales"):
            if k in data and not isinstance(data[k], tuple):
                data[k] = tuple(float(v) for v in (data[k] if isinstance(data[k], (list, tuple)) else [data[k]]))
        return cls(**data)

    def replace(self, **changes) -> "VideoConfig":
        return VideoConfig.from_dict({**asdict(self), **changes})

    def to_dict(self) -> dict:
        return asdict(self)


@dataclass
class Annotation:
    """User input on one frame: clicks and/or a dense mask, and the frame's resulting label map."""

    frame: int
    labels: np.ndarray                  # (H, W) the frame's mask: exact output for this frame
    clicks: list[Click] = field(default_factory=list)
    dense: np.ndarray | None = None     # a mask the user gave (kept as the prior for later clicks)


class _Store:
    """Per-frame arrays in a folder (np.save), so results for long videos stay out of RAM."""

    def __init__(self, workdir: str | Path | None) -> None:
        self._own = workdir is None
        self.root = Path(tempfile.mkdtemp(prefix="volseg-video-")) if workdir is None else Path(workdir)
        self.root.mkdir(parents=True, exist_ok=True)

    def _p(self, key: str, t: int) -> Path:
        return self.root / f"{key}_{t:06d}.npy"

    def save(self, key: str, t: int, a: np.ndarray) -> None:
        np.save(self._p(key, t), a)

    def load(self, key: str, t: int) -> np.ndarray | None:
        p = self._p(key, t)
        return np.load(p) if p.is_file() else None

    def drop(self, key: str, t: int) -> None:
        self._p(key, t).unlink(missing_ok=True)

    def close(self) -> None:
        if self._own:
            shutil.rmtree(self.root, ignore_errors=True)


class VideoSegmenter:
    def __init__(self, source, config: VideoConfig | dict | None = None, *, workdir: str | Path | None = None,
                 cache_features: bool = False, session_features="filterbank", session_config=None) -> None:
        self.source = source
        self.config = config if isinstance(config, VideoConfig) else VideoConfig.from_dict(config)
        cfg = self.config
        self.T = len(source)
        self._set_grid(cfg.scale)
        self._grid_fixed = False  # the first annotation may choose a finer grid (object_cells)
        self.flow = None if cfg.flow == "none" else Flow(cfg.flow)
        self.objects: list[int] = []
        self.annotations: dict[int, Annotation] = {}
        self.store = _Store(workdir)
        self.cache_features = cache_features
        self.session_features, self.session_config = session_features, session_config
        self.last_changed: list[int] = []
        self.stats = {"frames_propagated": 0, "seconds": 0.0, "memory_peak": 0, "memory_bytes_peak": 0,
                      "gp_points_max": 0}

    def _set_grid(self, scale: float) -> None:
        cfg = self.config
        H, W = self.source.shape
        self.grid = Grid.for_frame(H, W, scale, cfg.min_side)
        bank = make_bank(smoothing_scales=cfg.smoothing_scales, gradient_scales=cfg.gradient_scales,
                         hessian_scales=cfg.hessian_scales)
        self.features = FrameFeatures(self.grid, bank)
        self.features.fit_standardisation(self.source[0])  # one feature space for the whole video
        self.D = self.features.n_features
        self.lf = cfg.feature_lengthscale * self.D ** 0.5
        # distances in the motion model (ROI margin, prior blur, spatial window) are set on the `scale` grid:
        # the same in full-resolution pixels whatever grid the object's size picks
        self.unit = max(Grid.for_frame(H, W, cfg.scale, cfg.min_side).factor) / max(self.grid.factor)
        self.ls = cfg.spatial_lengthscale * self.unit
        self._positions = self.grid.positions()

    def _fit_grid(self, labels: np.ndarray) -> None:
        """At the first annotation: a grid fine enough that the smallest object covers ``object_cells``
        cells (its features then resolve the object's parts), never coarser than ``scale``."""
        if self._grid_fixed:
            return
        self._grid_fixed = True
        cfg = self.config
        areas = [np.count_nonzero(labels == k) for k in np.unique(labels) if k != 0]
        if cfg.object_cells <= 0 or not areas:
            return
        scale = min(cfg.scale, max(1.0, (min(areas) / cfg.object_cells) ** 0.5))
        if abs(scale - cfg.scale) > 1e-6:
            self._set_grid(scale)

    # -- cleanup -----------------------------------------------------------------------------------
    def close(self) -> None:
        self.store.close()

    def __enter__(self) -> "VideoSegmenter":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    # -- annotation --------------------------------------------------------------------------------
    def _add_objects(self, ids: Iterable[int]) -> None:
        for i in sorted(set(int(v) for v in ids) - {0}):
            if i not in self.objects:
                self.objects.append(i)

    def set_mask(self, frame: int, labels: np.ndarray, *, propagate: bool = True) -> list[int]:
        """Give frame ``frame`` a dense mask (label map, object ids > 0); returns the frames recomputed."""
        labels = np.asarray(labels)
        if labels.shape != self.source.shape:
            raise InputError(f"mask for frame {frame} has shape {labels.shape}, the video's frames are {self.source.shape}")
        if not 0 <= frame < self.T:
            raise InputError(f"mask for frame {frame}: the video has {self.T} frames")
        self._add_objects(np.unique(labels))
        self._fit_grid(labels)
        old = self.annotations.get(frame)
        self.annotations[frame] = Annotation(frame, labels.astype(np.uint8 if labels.max() < 256 else np.uint16),
                                             list(old.clicks) if old else [], dense=labels)
        return self.update([frame]) if propagate else []

    def session_for(self, frame: int):
        """A :class:`volseg.Session` on ``frame`` whose prior is the frame's current mask (none if the frame
        has no result yet); clicks added to it refine that mask at full resolution."""
        from ..config import GPConfig
        from ..session import Session

        config = self.session_config if isinstance(self.session_config, GPConfig) else GPConfig.from_dict(self.session_config)
        # frames keep the RBF unless asked otherwise: the multiscale 2D default is measured on
        # Berkeley's click protocol, not on refining a propagated mask
        s = Session(features=self.session_features, config=config.replace(kernel=config.kernel or "rbf"))
        prior = self.current_labels(frame)
        s.set_image(self.source[frame], prior=prior if prior is not None and prior.any() else None)
        return s

    def annotate(self, frame: int, clicks: Sequence[Click], labels: np.ndarray) -> None:
        """Record clicks on ``frame`` and the mask they produced (without propagating)."""
        old = self.annotations.get(frame)
        self._add_objects(c.object for c in clicks if c.positive)
        self._add_objects(np.unique(labels))
        self._fit_grid(np.asarray(labels))
        self.annotations[frame] = Annotation(frame, np.asarray(labels), (list(old.clicks) if old else []) + list(clicks),
                                             dense=old.dense if old else None)

    def add_clicks(self, clicks: Sequence[Click], *, propagate: bool = True) -> list[int]:
        """Clicks (each with a frame): redo each clicked frame's mask with a Session, then propagate.
        Returns the frames whose result was recomputed."""
        clicks = validate_clicks(clicks, self.source.shape, frames=self.T)
        by_frame: dict[int, list[Click]] = {}
        for c in clicks:
            by_frame.setdefault(int(c.frame), []).append(c)
        for t, cs in sorted(by_frame.items()):
            old = self.annotations.get(t)
            s = self.session_for(t)
            for c in (old.clicks if old else []) + cs:  # earlier clicks on this frame still hold
                s.add_click(c.position, c.positive, c.object)
            self.annotate(t, cs, s.mask())
        return self.update(list(by_frame)) if propagate else []

    # -- results -----------------------------------------------------------------------------------
    def _onehot(self, labels: np.ndarray) -> np.ndarray:
        return np.stack([self.grid.shrink((labels == k).astype(np.float32)) for k in self.objects]) if self.objects \
            else np.zeros((0, self.grid.h, self.grid.w), np.float32)

    def probability(self, t: int) -> np.ndarray:
        """(K, h, w) working-grid object probabilities of frame t (zeros where nothing reached it yet)."""
        if t in self.annotations:
            return self._onehot(self.annotations[t].labels)
        p = self.store.load("p", t)
        K = len(self.objects)
        if p is None:
            return np.zeros((K, self.grid.h, self.grid.w), np.float32)
        p = p.astype(np.float32)
        if p.shape[0] < K:  # an object that appeared after this frame was computed
            p = np.concatenate([p, np.zeros((K - p.shape[0], *p.shape[1:]), np.float32)])
        return p

    def has_result(self, t: int) -> bool:
        return t in self.annotations or self.store._p("p", t).is_file()

    def current_labels(self, t: int) -> np.ndarray | None:
        if t in self.annotations:
            return self.annotations[t].labels
        return self.labels(t) if self.has_result(t) else None

    def labels(self, t: int, frame: np.ndarray | None = None) -> np.ndarray:
        """(H, W) label map of frame t at full resolution (object ids kept; 0 background)."""
        if t in self.annotations:
            return self.annotations[t].labels
        if not self.objects:
            return np.zeros(self.source.shape, np.uint8)
        frame = self.source[t] if frame is None else frame
        radius = int(round(self.config.refine_radius * max(self.grid.factor)))
        with limited_threads(self.config.threads):
            up = upsample(self.probability(t), frame, radius=radius, eps=self.config.refine_eps)
        return to_labels(up, self.objects)

    # -- propagation -------------------------------------------------------------------------------
    def update(self, frames: Sequence[int]) -> list[int]:
        """Re-propagate around the given annotated frames: each stretch between an annotated neighbour
        (or the video's end) and them.  Returns the recomputed frames, sorted."""
        with limited_threads(self.config.threads):
            return self._update(frames)

    def _update(self, frames: Sequence[int]) -> list[int]:
        t0 = time.perf_counter()
        A = sorted(self.annotations)
        stretches = set()
        for a in frames:
            if a not in self.annotations:
                raise ClickError(f"frame {a} is not annotated")
            i = A.index(a)
            stretches.add((A[i - 1] if i > 0 else None, a))
            stretches.add((a, A[i + 1] if i + 1 < len(A) else None))
        changed: list[int] = []
        for left, right in sorted(stretches, key=lambda s: (-1 if s[0] is None else s[0])):
            changed += self._stretch(left, right)
        self.stats["seconds"] += time.perf_counter() - t0
        self.last_changed = sorted(set(changed))
        return self.last_changed

    def _stretch(self, left: int | None, right: int | None) -> list[int]:
        """Propagate into the frames strictly between two annotated frames (None: the video's end)."""
        lo = 0 if left is None else left + 1
        hi = self.T if right is None else right
        if lo >= hi:
            return []
        bounds = [a for a in (left, right) if a is not None]
        if left is None:      # before the first annotated frame: backward only
            for t, p in self._pass(right, lo - 1, -1, bounds):
                self.store.save("p", t, p.astype(np.float16))
        elif right is None:   # after the last one: forward only
            for t, p in self._pass(left, hi, +1, bounds):
                self.store.save("p", t, p.astype(np.float16))
        else:                 # both ways, blended linearly in time
            for t, p in self._pass(right, left, -1, bounds):
                self.store.save("bwd", t, p.astype(np.float16))
            for t, p in self._pass(left, right, +1, bounds):
                w = (right - t) / (right - left)
                back = self.store.load("bwd", t).astype(np.float32)
                self.store.save("p", t, (w * p + (1.0 - w) * back).astype(np.float16))
                self.store.drop("bwd", t)
        return list(range(lo, hi))

    def _frame_inputs(self, t: int) -> tuple[np.ndarray, np.ndarray]:
        if self.cache_features:
            f, g = self.store.load("f", t), self.store.load("g", t)
            if f is not None:
                return f.astype(np.float32), g
        f, g = self.features(self.source[t])
        if self.cache_features:
            self.store.save("f", t, f.astype(np.float16))
            self.store.save("g", t, g)
        return f, g

    def _annotated_points(self, a: int, n_samples: int, rng: np.random.Generator) -> tuple[Points, Points]:
        """Global memory from annotated frame a: its clicks, and informative samples of its mask."""
        feats, _ = self._frame_inputs(a)
        ann = self.annotations[a]
        K, D = len(self.objects), self.D
        flat = feats.reshape(-1, D)
        cl = [c for c in ann.clicks]
        if cl:
            pos = self.grid.to_work([c.position for c in cl]).astype(np.float32)
            cell = np.clip(np.rint(pos), 0, [self.grid.h - 1, self.grid.w - 1]).astype(int)
            y = np.full((len(cl), K), -1.0, np.float32)
            for i, c in enumerate(cl):
                if c.positive:
                    y[i, self.objects.index(c.object)] = 1.0
            clicks = Points(feats[cell[:, 0], cell[:, 1]], pos, y, np.zeros_like(y), np.full(len(cl), self.config.noise_click, np.float32),
                            np.full(len(cl), a, np.int32), np.full(len(cl), CLICK, np.int8))
        else:
            clicks = Points.empty(D, K)
        p = self._onehot(ann.labels)
        idx = sample_informative(p, n_samples, rng)
        y = np.where(p.reshape(K, -1)[:, idx].T > 0.5, 1.0, -1.0).astype(np.float32)
        samples = Points(flat[idx], self._positions[idx], y, np.zeros_like(y), np.full(idx.size, self.config.noise_annotated, np.float32),
                         np.full(idx.size, a, np.int32), np.full(idx.size, ANNOTATED, np.int8))
        return clicks, samples

    def _prior_mean(self, prior: np.ndarray) -> np.ndarray:
        """m0 (h*w, K) from the warped previous probability: linear, s (2p - 1), or probit, s Phi^-1(p)."""
        cfg = self.config
        K = prior.shape[0]
        p = prior.reshape(K, -1).T
        if cfg.prior_mode == "probit":
            from scipy.special import ndtri

            return (cfg.prior_strength * ndtri(np.clip(p, 0.02, 0.98))).astype(np.float32)
        return (cfg.prior_strength * (2.0 * p - 1.0)).astype(np.float32)

    def _roi(self, prior: np.ndarray, lost: np.ndarray) -> np.ndarray:
        """Where the objects can be in this frame: the prior's support grown by ``roi_margin`` (the whole grid
        if the margin is negative, nothing is left of the prior, or an object is lost)."""
        m = int(round(self.config.roi_margin * self.unit))
        support = (prior > 0.05).any(0)
        if self.config.roi_margin < 0 or not support.any() or lost.any():
            return np.ones(support.shape, bool)
        k = cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (2 * m + 1, 2 * m + 1))
        return cv2.dilate(support.astype(np.uint8), k) > 0

    def _latent(self, gp: MemoryPosterior, feats: np.ndarray, origin: tuple[int, int], rows: np.ndarray,
                cols: np.ndarray, row_coords: np.ndarray, col_coords: np.ndarray, m0: np.ndarray) -> np.ndarray:
        """m0 + the GP's posterior mean (n, K) at grid cells (rows, cols); ``feats`` starts at ``origin``.

        On a grid finer than ``scale`` (a small object), the GP is evaluated on a lattice as coarse as the
        ``scale`` grid and interpolated, then evaluated exactly where the result is unsure (|latent| <
        ``fine_band``): the fine resolution is spent near the object's boundary, not on the whole region."""
        r0, c0 = origin

        def exact(rr, cc):
            return gp.latent(feats[rr - r0, cc - c0] / self.lf, rr, cc, row_coords, col_coords,
                             np.zeros((rr.size, m0.shape[1]), np.float32))

        stride = int(self.unit)
        if stride < 2 or self.config.fine_band <= 0 or rows.size < 64:
            return exact(rows, cols) + m0
        lattice = [np.unique(np.append(np.arange(a.min(), a.max() + 1, stride), a.max())) for a in (rows, cols)]
        if min(len(v) for v in lattice) < 2:
            return exact(rows, cols) + m0
        lr, lc = np.meshgrid(*lattice, indexing="ij")
        coarse = exact(lr.ravel(), lc.ravel()).reshape(*lr.shape, -1)
        i = np.clip(np.searchsorted(lattice[0], rows, "right") - 1, 0, len(lattice[0]) - 2)
        j = np.clip(np.searchsorted(lattice[1], cols, "right") - 1, 0, len(lattice[1]) - 2)
        tr = ((rows - lattice[0][i]) / (lattice[0][i + 1] - lattice[0][i]))[:, None]
        tc = ((cols - lattice[1][j]) / (lattice[1][j + 1] - lattice[1][j]))[:, None]
        lat = ((1 - tr) * ((1 - tc) * coarse[i, j] + tc * coarse[i, j + 1])
               + tr * ((1 - tc) * coarse[i + 1, j] + tc * coarse[i + 1, j + 1])).astype(np.float32) + m0
        unsure = np.flatnonzero((np.abs(lat) < self.config.fine_band).any(1))
        if unsure.size:
            lat[unsure] = exact(rows[unsure], cols[unsure]) + m0[unsure]
        return lat

    def _working_frame(self, t: int) -> tuple[np.ndarray | None, np.ndarray | None, np.ndarray]:
        """(frame t's features if they are cached, else None; else its working frame, for the features of a
        region only; its grey working frame, for the flow)."""
        if self.cache_features:
            feats, grey = self._frame_inputs(t)
            return feats, None, grey
        return None, *self.features.shrink(self.source[t])

    def _pass(self, start: int, stop: int, step: int, bounds: Sequence[int]):
        """Propagate from annotated frame ``start`` towards ``stop`` (exclusive); yields (t, (K, h, w) prob)."""
        cfg = self.config
        K, D = len(self.objects), self.D
        if K == 0:  # only negative clicks so far: every frame is background
            for t in range(start + step, stop, step):
                yield t, np.zeros((0, self.grid.h, self.grid.w), np.float32)
            return
        rng = np.random.default_rng([cfg.seed, start, stop + 1])
        bank = MemoryBank(cfg.budget, cfg.global_fraction, cfg.window, D, K)
        clicks, samples = [], []
        for a in bounds:
            c, s = self._annotated_points(a, max(1, bank.global_budget // len(bounds)), rng)
            clicks.append(c)
            samples.append(s)
        # interleave the two frames' samples so that truncation to the budget keeps both
        order = np.argsort(np.concatenate([np.arange(len(s)) for s in samples]), kind="stable")
        bank.set_global(Points.concat(clicks), Points.concat(samples).take(order))
        # each object's annotated area on the grid: what "lost" is measured against
        area = np.mean([self._onehot(self.annotations[a].labels).reshape(K, -1).sum(1) for a in bounds], 0)
        gp = MemoryPosterior(cfg.global_weight)
        prev_p = self.probability(start)
        prev_g = self._working_frame(start)[2]
        h, w = self.grid.h, self.grid.w
        row_coords, col_coords = np.arange(h) / self.ls, np.arange(w) / self.ls
        for t in range(start + step, stop, step):
            whole, small, grey = self._working_frame(t)
            prior = prev_p
            confidence = None
            if self.flow is not None:
                backward, forward = self.flow(grey, prev_g), self.flow(prev_g, grey)
                prior = warp(prev_p, backward)
                bank.move(forward)
                if cfg.flow_check:
                    confidence = flow_confidence(backward, forward)
            blur = cfg.prior_blur * self.unit
            if blur > 0:
                prior = np.stack([cv2.GaussianBlur(m, (0, 0), blur) for m in prior])
            lost = (prior > 0.5).reshape(K, -1).sum(1) < cfg.lost_fraction * area  # what is left of its mask
            if lost.any():  # the memory of the frames since it went missing only says "background"
                bank.clear_local()
            m0 = self._prior_mean(prior)
            if confidence is not None:  # where the flow fails, appearance (the GP) decides, not the warped prior
                m0 *= confidence.reshape(-1, 1)
            m0[:, lost] = 0.0
            roi = self._roi(prior, lost)
            idx = np.flatnonzero(roi)
            rows, cols = idx // w, idx % w
            r0, r1, c0, c1 = rows.min(), rows.max() + 1, cols.min(), cols.max() + 1
            feats = whole[r0:r1, c0:c1] if whole is not None else self.features.standardised(small, (r0, r1, c0, c1))
            train = bank.training()
            resid = train.y - train.m0 if cfg.targets == "residual" else train.y
            gp.fit(train.feat / self.lf, train.pos / self.ls, resid, train.noise, keep=train.keep)
            lat = self._latent(gp, feats, (r0, c0), rows, cols, row_coords, col_coords, m0[idx])
            p = np.zeros((h * w, K), np.float32)  # outside the region of interest: background
            p[idx] = probability(lat)
            p = p.T.reshape(K, h, w)
            if cfg.components:
                p = _drop_detached(p, prior, ~lost)
            for k in np.flatnonzero(lost):
                p[k] = _redetected(p[k], cfg.lost_fraction * area[k])
            self.stats["frames_propagated"] += 1
            self.stats["gp_points_max"] = max(self.stats["gp_points_max"], len(train))
            if not lost.any():
                pick = sample_informative(p, bank.per_frame, rng, candidates=roi)
                y = np.where(p.reshape(K, -1)[:, pick].T > 0.5, 1.0, -1.0).astype(np.float32)
                noise = min(cfg.noise_propagated + cfg.noise_growth * abs(t - start), cfg.noise_max)
                pr, pc = pick // w - r0, pick % w - c0
                bank.add_frame(Points(feats[pr, pc], self._positions[pick], y, m0[pick].astype(np.float32),
                                      np.full(pick.size, noise, np.float32), np.full(pick.size, t, np.int32),
                                      np.full(pick.size, PROPAGATED, np.int8)))
                self.stats["memory_peak"] = max(self.stats["memory_peak"], bank.peak)
                self.stats["memory_bytes_peak"] = max(self.stats["memory_bytes_peak"], bank.nbytes)
            yield t, p
            prev_p, prev_g = p, grey


def _redetected(p: np.ndarray, min_area: float) -> np.ndarray:
    """A lost object found again: of the pieces the appearance match found anywhere in the frame, only the
    one with the most probability mass, and only if it is at least ``min_area`` cells; else nothing."""
    n, comp = cv2.connectedComponents((p > 0.5).astype(np.uint8), connectivity=8)
    if n <= 1:
        return np.zeros_like(p)
    mass = np.bincount(comp.ravel(), weights=p.ravel(), minlength=n)[1:]
    best = int(np.argmax(mass)) + 1
    keep = comp == best
    return np.where(keep, p, 0.0).astype(p.dtype) if keep.sum() >= min_area else np.zeros_like(p)


def _drop_detached(p: np.ndarray, prior: np.ndarray, which: np.ndarray) -> np.ndarray:
    """Zero each object's connected pieces (p > 1/2) that do not overlap its warped previous mask:
    a new blob away from the object is a look-alike in the background, not the object."""
    out = p.copy()
    for k in np.flatnonzero(which):
        n, comp = cv2.connectedComponents((p[k] > 0.5).astype(np.uint8), connectivity=8)
        if n <= 2:
            continue
        touching = np.unique(comp[(prior[k] > 0.5) & (comp > 0)])
        detached = np.isin(comp, touching, invert=True) & (comp > 0)
        out[k][detached] = 0.0
    return out

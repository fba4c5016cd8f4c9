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
annotation) so that the smallest object covers about ``object_cells`` cells; each step works in a region
around the object: where its warped probability exceeds ``roi_level``, grown by ``roi_margin``.  At the
default level that region soon spans the frame (the posterior far from the memory is Phi(m0), about 0.3,
not 0), so appearance matching can find the object anywhere; ``roi_level`` 0.5 keeps it to the warped
mask and its margin.  One step of a pass:

1. prior: the previous frame's probability, pulled into this frame along DIS optical flow and
   blurred; its latent ``m0 = prior_strength * (2 p - 1)`` is the GP's prior mean (the spatial
   prior of the previous frame's mask);
2. training points: the memory bank (:mod:`volseg.video.memory`) -- clicks and mask samples of
   the two annotated frames bounding the stretch (global), samples of the last ``window``
   propagated frames moved along the flow (local), each with noise growing with its distance in
   time from the annotated frame its label descends from;
3. GP posterior mean over the working grid (:mod:`volseg.video.gp`; with ``expert_points``, the memory as
   local experts, each location matched against the memory points that look like it), probit, stored per frame;
   the GP is fitted again only when its memory changed;
4. every ``memory_every``-th frame adds its most informative points to the local memory.

``lost_fraction``: an object whose warped mask has (almost) vanished is searched for in the whole frame,
from the annotated frames' memory; the frames where that happened are logged in ``stats["lost"]`` as
(the pass's start frame, frame, object).  Optional (off by default, see the README's DAVIS protocol for
why): ``flow_check`` fades the prior mean where the flow fails its forward-backward check, and
``detached_gap`` keeps a detached part near the object that moves with it (one coming out from behind a
thin occluder), which :func:`volseg.video.step.drop_detached` would otherwise drop as a look-alike.

Masks at full resolution are the stored probability upsampled bilinearly, snapped to the frame's
edges with a guided filter, then moved onto them by the 2D session's minimum cut on a ring around the
0.5 level (``edge_strength``; :mod:`volseg.video.refine`).  No mask feeds the propagation, so
:meth:`VideoSegmenter.label_maps` makes them in a second thread while the propagation runs.

**Corrections**: clicks on frame t make t annotated (its mask is re-done with the clicks), and
only the frames strictly between t's annotated neighbours are propagated again
(:attr:`VideoSegmenter.last_changed`).

Memory does not grow with the video: frames are decoded lazily, the memory bank has a fixed
budget, and per-frame results live in a folder on disk (``workdir``, :mod:`volseg.video.store`), not in RAM.

This module schedules the passes and runs them; the settings are :mod:`volseg.video.config`, the
annotated frames :mod:`volseg.video.annotations`, and the pieces of one step :mod:`volseg.video.step`.
"""
from __future__ import annotations

import threading
import time
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from typing import Iterator, Sequence

import cv2
import numpy as np

from ..clicks import Click, validate_clicks
from ..config import GPConfig
from ..errors import ClickError
from ..session import Session
from .annotations import AnnotatedFrames, Annotation, clicks_by_frame
from .config import VideoConfig
from .features import Flow, FrameFeatures, Grid, flow_confidence, frame_extractors, make_bank, warp
from .frame_session import FrameSession
from .gp import LocalExperts, probability
from .memory import ANNOTATED, CLICK, PROPAGATED, MemoryBank, Points, sample_informative
from .motion import frame_velocity, relative_motion, with_motion
from .refine import cut_to_edges, to_labels, upsample
from .step import drop_detached, latent, prior_mean, redetected, region_of_interest
from .store import FrameStore
from .threads import limited_threads


class VideoSegmenter:
    def __init__(self, source, config: VideoConfig | dict | None = None, *, workdir: str | Path | None = None,
                 cache_features: bool = False, session_config=None) -> None:
        self.source = source
        self.config = config if isinstance(config, VideoConfig) else VideoConfig.from_dict(config)
        cfg = self.config
        self.T = len(source)
        # the learned extractors are loaded once (a finer grid at the first annotation reuses them)
        self._use_bank, self._learned = frame_extractors(cfg.features)
        self._set_grid(cfg.scale)
        self._grid_fixed = False  # the first annotation may choose a finer grid (object_cells)
        self.flow = None if cfg.flow == "none" else Flow(cfg.flow)
        self.annotated = AnnotatedFrames(source.shape, self.T)
        # the same objects as the bookkeeping's, under the names callers read (and serve writes frames into)
        self.objects: list[int] = self.annotated.objects
        self.annotations: dict[int, Annotation] = self.annotated.frames
        self.store = FrameStore(workdir)
        self.cache_features = cache_features
        self.session_config = session_config  # a clicked frame's 2D session's GP settings
        self.last_changed: list[int] = []
        self.stats = {"frames_propagated": 0, "seconds": 0.0, "memory_peak": 0, "memory_bytes_peak": 0,
                      "gp_points_max": 0, "gp_fits": 0, "lost": []}

    def _set_grid(self, scale: float) -> None:
        cfg = self.config
        H, W = self.source.shape
        self.grid = Grid.for_frame(H, W, scale, cfg.min_side)
        bank = make_bank(smoothing_scales=cfg.smoothing_scales, gradient_scales=cfg.gradient_scales,
                         hessian_scales=cfg.hessian_scales) if self._use_bank else None
        # distances in the motion model (ROI margin, prior blur, spatial window) are set on the `scale` grid:
        # the same in full-resolution pixels whatever grid the object's size picks
        self.unit = max(Grid.for_frame(H, W, cfg.scale, cfg.min_side).factor) / max(self.grid.factor)
        self.features = FrameFeatures(self.grid, bank, self._learned, cfg.learned_long_side,
                                      learned_zoom=self.unit if cfg.learned_zoom else 1.0)
        self.features.fit_standardisation(self.source[0])  # one feature space for the whole video
        self.D = self.features.n_features
        # prescaled features (with a learned part) come divided by sqrt(D) per part already
        self.lf = cfg.feature_lengthscale * (1.0 if self.features.prescaled else self.D ** 0.5)
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
    def set_mask(self, frame: int, labels: np.ndarray, *, propagate: bool = True) -> list[int]:
        """Give frame ``frame`` a dense mask (label map, object ids > 0); returns the frames recomputed."""
        self.annotated.set_mask(frame, labels)
        self._fit_grid(np.asarray(labels))
        return self.update([frame]) if propagate else []

    def session_for(self, frame: int) -> FrameSession:
        """The interactive session of ``frame`` (:class:`volseg.video.frame_session.FrameSession`: a 2D
        :class:`volseg.Session`, zoomed in on the objects with ``session_zoom``) whose prior is the frame's
        current mask (none if the frame has no result yet); clicks added to it refine that mask at full
        resolution.  With ``session_soft_prior`` a propagated frame of one object gives the session its
        probability as well, the prior mean's strength (an annotated frame's labels are sure)."""
        config = self.session_config
        config = config if isinstance(config, GPConfig) else GPConfig.from_dict(config)
        # frames keep the RBF unless asked otherwise: the multiscale 2D default is measured on
        # Berkeley's click protocol, not on refining a propagated mask
        config = config.replace(kernel=config.kernel or "rbf")
        image, belief = self.source[frame], None
        if self.config.session_soft_prior and frame not in self.annotations and self.has_result(frame) \
                and len(self.objects) == 1:
            with limited_threads(self.config.threads):  # the frame's labels from the same upsampled probability
                up = self._upsampled(frame, image)
                labels, belief = self._labels_of(up, image), up[0]
        else:
            labels = self.current_labels(frame)
        motion = relative_motion(frame_velocity(self.source, frame)) if self.config.session_motion else None
        features = self.config.session_features
        return FrameSession(image, labels, lambda m: Session(features=with_motion(features, m), config=config),
                            zoom=self.config.session_zoom, belief=belief, motion=motion)

    def annotate(self, frame: int, clicks: Sequence[Click], labels: np.ndarray) -> None:
        """Record clicks on ``frame`` and the mask they produced (without propagating)."""
        self.annotated.annotate(frame, clicks, labels)
        self._fit_grid(np.asarray(labels))

    def add_clicks(self, clicks: Sequence[Click], *, propagate: bool = True) -> list[int]:
        """Clicks (each with a frame): redo each clicked frame's mask with a Session, then propagate.
        Returns the frames whose result was recomputed."""
        clicks = validate_clicks(clicks, self.source.shape, frames=self.T)
        by_frame = clicks_by_frame(clicks)
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
        return t in self.annotations or self.store.has("p", t)

    def current_labels(self, t: int) -> np.ndarray | None:
        if t in self.annotations:
            return self.annotations[t].labels
        return self.labels(t) if self.has_result(t) else None

    def labels(self, t: int, frame: np.ndarray | None = None) -> np.ndarray:
        """(H, W) label map of frame t at full resolution (object ids kept; 0 background)."""
        with limited_threads(self.config.threads):
            return self._labels(t, frame)

    def _upsampled(self, t: int, frame: np.ndarray) -> np.ndarray:
        """(K, H, W) object probabilities of frame t at full resolution, before the edge cut."""
        radius = int(round(self.config.refine_radius * max(self.grid.factor)))
        return upsample(self.probability(t), frame, radius=radius, eps=self.config.refine_eps)

    def _labels(self, t: int, frame: np.ndarray | None = None) -> np.ndarray:
        if t in self.annotations:
            return self.annotations[t].labels
        if not self.objects:
            return np.zeros(self.source.shape, np.uint8)
        frame = self.source[t] if frame is None else frame
        return self._labels_of(self._upsampled(t, frame), frame)

    def _labels_of(self, up: np.ndarray, frame: np.ndarray) -> np.ndarray:
        """The label map of full-resolution probabilities ``up`` (K, H, W): moved onto ``frame``'s edges."""
        if self.config.edge_strength > 0:
            up = cut_to_edges(up, frame, strength=self.config.edge_strength, reach=self.config.edge_reach,
                              step=self.config.edge_step, connectivity=self.config.edge_connectivity)
        return to_labels(up, self.objects)

    def label_maps(self, frames: Sequence[int], *, propagate: Sequence[int] = ()) -> Iterator[tuple[int, np.ndarray]]:
        """(t, :meth:`labels` of t) for each of ``frames``, in their order, after re-propagating around the
        annotated frames ``propagate`` (as :meth:`update`; :attr:`last_changed` is set once it is done).

        A label map never feeds the propagation, so with ``label_threads`` > 0 the propagation runs in a
        thread of its own and that many threads make the label maps of the frames it has finished (the
        full-resolution steps, OpenCV and the max-flow, release the GIL for most of their work).  Label maps
        are made at most a few frames ahead of the one the caller takes, so memory stays flat in the length
        of the video."""
        frames = list(frames)
        workers = self.config.label_threads
        with limited_threads(self.config.threads):
            if workers == 0:
                if propagate:
                    self._update(propagate)
                for t in frames:
                    yield t, self._labels(t)
                return
            pending = set(self._recomputed(propagate)) if propagate else set()
            finished = threading.Condition()
            failure: list[BaseException] = []

            def run() -> None:
                def done(t: int) -> None:
                    with finished:
                        pending.discard(t)
                        finished.notify_all()
                try:
                    self._update(propagate, done=done)
                except BaseException as e:  # handed to the caller's thread
                    failure.append(e)
                finally:
                    with finished:
                        pending.clear()
                        finished.notify_all()

            def ready(t: int) -> np.ndarray:
                with finished:
                    finished.wait_for(lambda: t not in pending)
                if failure:
                    raise failure[0]
                return self._labels(t)

            propagation = threading.Thread(target=run, name="volseg-propagation", daemon=True)
            if propagate:
                propagation.start()
            ahead = 2 * workers
            try:
                with ThreadPoolExecutor(workers, thread_name_prefix="volseg-labels") as pool:
                    queued: dict[int, Future] = {}
                    for i, t in enumerate(frames):
                        for u in frames[i:i + ahead + 1]:
                            if u not in queued:
                                queued[u] = pool.submit(ready, u)
                        yield t, queued.pop(t).result()
            finally:
                if propagation.is_alive():
                    propagation.join()
            if failure:
                raise failure[0]

    # -- propagation -------------------------------------------------------------------------------
    def update(self, frames: Sequence[int]) -> list[int]:
        """Re-propagate around the given annotated frames: each stretch between an annotated neighbour
        (or the video's end) and them.  Returns the recomputed frames, sorted."""
        with limited_threads(self.config.threads):
            return self._update(frames)

    def _stretches(self, frames: Sequence[int]) -> list[tuple[int | None, int | None]]:
        """The stretches (left, right annotated frame; None: the video's end) around annotated ``frames``."""
        A = sorted(self.annotations)
        stretches = set()
        for a in frames:
            if a not in self.annotations:
                raise ClickError(f"frame {a} is not annotated")
            i = A.index(a)
            stretches.add((A[i - 1] if i > 0 else None, a))
            stretches.add((a, A[i + 1] if i + 1 < len(A) else None))
        return sorted(stretches, key=lambda s: (-1 if s[0] is None else s[0]))

    def _between(self, left: int | None, right: int | None) -> range:
        """The frames strictly between two annotated frames (None: the video's end)."""
        return range(0 if left is None else left + 1, self.T if right is None else right)

    def _recomputed(self, frames: Sequence[int]) -> list[int]:
        """The frames :meth:`update` of ``frames`` recomputes."""
        return [t for left, right in self._stretches(frames) for t in self._between(left, right)]

    def _update(self, frames: Sequence[int], done=None) -> list[int]:
        t0 = time.perf_counter()
        changed: list[int] = []
        for left, right in self._stretches(frames):
            changed += self._stretch(left, right, done)
        self.stats["seconds"] += time.perf_counter() - t0
        self.last_changed = sorted(set(changed))
        return self.last_changed

    def _stretch(self, left: int | None, right: int | None, done=None) -> list[int]:
        """Propagate into the frames strictly between two annotated frames (None: the video's end);
        ``done(t)`` is called once frame t's result is stored."""
        frames = self._between(left, right)
        if not frames:
            return []
        lo, hi = frames.start, frames.stop
        done = done or (lambda t: None)
        bounds = [a for a in (left, right) if a is not None]
        if left is None:      # before the first annotated frame: backward only
            for t, p in self._pass(right, lo - 1, -1, bounds):
                self.store.save("p", t, p.astype(np.float16))
                done(t)
        elif right is None:   # after the last one: forward only
            for t, p in self._pass(left, hi, +1, bounds):
                self.store.save("p", t, p.astype(np.float16))
                done(t)
        else:                 # both ways, blended linearly in time
            for t, p in self._pass(right, left, -1, bounds):
                self.store.save("bwd", t, p.astype(np.float16))
            for t, p in self._pass(left, right, +1, bounds):
                w = (right - t) / (right - left)
                back = self.store.load("bwd", t).astype(np.float32)
                self.store.save("p", t, (w * p + (1.0 - w) * back).astype(np.float16))
                self.store.drop("bwd", t)
                done(t)
        return list(frames)

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
            clicks = Points(feats[cell[:, 0], cell[:, 1]], pos, y, np.zeros_like(y),
                            np.full(len(cl), self.config.noise_click, np.float32),
                            np.full(len(cl), a, np.int32), np.full(len(cl), CLICK, np.int8))
        else:
            clicks = Points.empty(D, K)
        p = self._onehot(ann.labels)
        idx = sample_informative(p, n_samples, rng, min_share=self.config.label_share)
        y = np.where(p.reshape(K, -1)[:, idx].T > 0.5, 1.0, -1.0).astype(np.float32)
        samples = Points(flat[idx], self._positions[idx], y, np.zeros_like(y),
                         np.full(idx.size, self.config.noise_annotated, np.float32),
                         np.full(idx.size, a, np.int32), np.full(idx.size, ANNOTATED, np.int8))
        return clicks, samples

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
        gp = LocalExperts(cfg.global_weight, cfg.expert_points)
        fitted = -1  # the bank's version the GP was fitted to
        prev_p = self.probability(start)
        # the start frame's features are in the memory already: the flow needs only its grey
        prev_g = self.features.grey(self.source[start])
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
                self.stats["lost"] += [[start, t, self.objects[k]] for k in np.flatnonzero(lost)]
            m0 = prior_mean(prior, cfg)
            if confidence is not None:  # where the flow fails, appearance (the GP) decides, not the warped prior
                m0 *= confidence.reshape(-1, 1)
            m0[:, lost] = 0.0
            roi = region_of_interest(prior, lost, cfg.roi_margin, self.unit, cfg.roi_level)
            idx = np.flatnonzero(roi)
            rows, cols = idx // w, idx % w
            r0, r1, c0, c1 = rows.min(), rows.max() + 1, cols.min(), cols.max() + 1
            feats = whole[r0:r1, c0:c1] if whole is not None else self.features.standardised(small, (r0, r1, c0, c1))
            if bank.version != fitted or cfg.global_weight < 1.0:  # with a spatial window, the points' moves count
                train = bank.training()
                resid = train.y - train.m0 if cfg.targets == "residual" else train.y
                gp.fit(train.feat / self.lf, train.pos / self.ls, resid, train.noise, keep=train.keep)
                fitted = bank.version
                self.stats["gp_fits"] += 1
            lat = latent(gp, feats, (r0, c0), rows, cols, row_coords, col_coords, m0[idx], feature_lengthscale=self.lf,
                         unit=self.unit, fine_band=cfg.fine_band)
            p = np.zeros((h * w, K), np.float32)  # outside the region of interest: background
            p[idx] = probability(lat)
            p = p.T.reshape(K, h, w)
            if cfg.components:
                p = drop_detached(p, prior, ~lost, cfg.detached_gap * np.sqrt(area),
                                  backward if self.flow is not None else None)
            for k in np.flatnonzero(lost):
                p[k] = redetected(p[k], cfg.lost_fraction * area[k])
            self.stats["frames_propagated"] += 1
            self.stats["gp_points_max"] = max(self.stats["gp_points_max"], gp.largest)
            if not lost.any() and abs(t - start) % cfg.memory_every == 0:
                pick = sample_informative(p, bank.per_frame, rng, min_share=cfg.label_share, candidates=roi)
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



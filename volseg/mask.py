"""Posterior -> label map, kept up to date box by box: the mask stage of a Session (:class:`MaskStage`).

The label of a location is the object with the largest positive latent mean (0: none), then
``clean_topology``: each object keeps only its parts connected to one of its positive clicks, and
its enclosed holes are filled unless a negative click lies in them.  Thresholding is pointwise;
the topology step is not, but it is bounded: every part that survives lies in the foreground
before the topology step (the *raw* labels), and every hole lies within the bounding box of the
part that encloses it (a location outside that box sees the image border along some axis).

So after a click, :class:`LabelMap` re-thresholds only the boxes where the latent moved, and
reruns the topology step only on the bounding box of the raw foreground (plus the changed boxes,
plus one voxel): outside it the label map was and stays 0.  The result is the same label map as a
recomputation over the whole image, at a cost that follows the objects, not the image.

Where an image-wide step sits between the two (the 2D edge cut, :class:`EdgeCut`, refits a colour
model to the whole labelling), every update is a full one, computed exactly as it always was.
"""
from __future__ import annotations

import functools
from typing import Callable, Sequence

import numpy as np
from scipy import ndimage as ndi

from . import boundary
from .clicks import Click
from .config import GPConfig
from .gp.reach import Box
from .image import Image

# foreground (bool, *spatial) from the best object's latent mean (*spatial), over the whole image
Snap = Callable[[np.ndarray], np.ndarray]


class MaskStage:
    """The label map of one image under a Session's settings: threshold, the edge cut where the settings
    ask for it (:class:`EdgeCut`), then each object's connected parts and holes (:func:`clean_topology`),
    brought up to date where the latent moved (:class:`LabelMap`)."""

    def __init__(self, image: Image, config: GPConfig) -> None:
        self.connected, self.fill_holes = config.connected, config.fill_holes
        self.edge_cut = EdgeCut(image, config) if EdgeCut.applies(image, config) else None
        self._label_map = LabelMap(image.shape)

    def invalidate(self, boxes: list[Box] | None = None) -> None:
        """Mark where the latent mean moved (``None``: everywhere)."""
        self._label_map.invalidate(boxes)

    def labels(self, mean, objects: Sequence[int], clicks: Sequence[Click], *, topology: bool) -> np.ndarray:
        """The up-to-date label map (the object itself: copy it before changing it) for the latent ``mean``
        (K, *spatial) of ``objects`` (ids, in channel order) and the training ``clicks``; ``topology``:
        apply :func:`clean_topology`."""
        snap = None if self.edge_cut is None else functools.partial(self.edge_cut, clicks=clicks)
        return self._label_map.labels(mean, objects, clicks, topology=topology, connected=self.connected,
                                      fill_holes=self.fill_holes, snap=snap)


class EdgeCut:
    """Foreground (any object) from the largest latent mean, moved onto image edges by a minimum cut
    (:func:`volseg.boundary.cut`); clicked locations are hard constraints.  The cut's edge weights and
    colour model depend only on the image: made on first use, once."""

    def __init__(self, image: Image, config: GPConfig) -> None:
        self.image, self.config = image, config
        self._terms: tuple | None = None

    @staticmethod
    def applies(image: Image, config: GPConfig) -> bool:
        """Whether the settings cut this image: a positive edge strength for its dimension, and not too large."""
        return config.edge_strength_for(image.ndim) > 0 and int(np.prod(image.shape)) <= config.edge_max_locations

    def __call__(self, latent: np.ndarray, clicks: Sequence[Click]) -> np.ndarray:
        cfg = self.config
        if self._terms is None:
            channels = boundary.contrast_channels(self.image.array)
            weights = boundary.edge_weights(channels, self.image.spacing, min(cfg.edge_connectivity, latent.ndim))
            self._terms = weights, boundary.ColourModel(channels)
        weights, colours = self._terms
        appearance = None
        if cfg.appearance_weight > 0:  # refitted to the GP's labelling, as GrabCut refits to its last mask
            appearance = cfg.appearance_weight * colours.log_ratio(latent > 0)
        return boundary.cut(latent, weights, strength=cfg.edge_strength_for(latent.ndim), band=cfg.edge_band,
                            reach=cfg.edge_reach, spacing=self.image.spacing,
                            positives=[c.voxel() for c in clicks if c.positive],
                            negatives=[c.voxel() for c in clicks if not c.positive],
                            appearance=appearance)


def clean_topology(labels: np.ndarray, clicks: Sequence[Click], *, connected: bool = True, fill_holes: bool = True,
                   offset: Sequence[int] | None = None) -> np.ndarray:
    """The GP says 'looks like the object'; topology says 'is the object that was clicked'.
    Each object keeps only its parts connected to one of its positive clicks, and its enclosed
    holes are filled unless a negative click lies in them.  Clicked voxels keep their label:
    positive ones lie in kept parts, negative ones in unfilled holes or outside.

    ``labels`` (modified in place) may be a crop of the image starting at ``offset``; it must then
    hold every foreground location of the image with one voxel to spare (see the module's doc).
    Clicks outside the crop lie on background and change nothing."""
    offset = np.zeros(labels.ndim, np.int64) if offset is None else np.asarray(offset, np.int64)

    for obj in {c.object for c in clicks if c.positive}:
        found = ndi.find_objects((labels == obj).view(np.uint8))
        if not found:
            continue
        # the object's bounding box, one voxel wider: it holds all its parts and all its holes, and
        # its margin is connected to the image border outside the box, as the array border is
        box = tuple(slice(max(0, s.start - 1), min(n, s.stop + 1)) for s, n in zip(found[0], labels.shape))
        corner = offset + [s.start for s in box]
        part = labels[box]  # a view: the object's work is written into ``labels``

        def inside(c: Click) -> tuple[int, ...] | None:
            v = np.asarray(c.voxel(), np.int64) - corner
            return tuple(int(x) for x in v) if ((v >= 0) & (v < part.shape)).all() else None

        region = part == obj
        if connected:
            comp, n = ndi.label(region)
            if n > 1:
                keep = [comp[v] for v in (inside(c) for c in clicks if c.positive and c.object == obj) if v is not None]
                part[region & ~np.isin(comp, keep)] = 0
                region = part == obj
        if fill_holes:
            holes = enclosed(~region) & (part == 0)
            negatives = [v for v in (inside(c) for c in clicks if not c.positive) if v is not None]
            if negatives and holes.any():
                comp, _ = ndi.label(holes)
                holes &= ~np.isin(comp, [comp[v] for v in negatives if comp[v] > 0])
            part[holes] = obj
    return labels


def enclosed(background: np.ndarray) -> np.ndarray:
    """The parts of ``background`` not connected to the array's border (face neighbours): what
    ``ndi.binary_fill_holes`` adds, found by one labelling instead of its repeated dilations."""
    comp, n = ndi.label(background)
    if n == 0:
        return np.zeros_like(background)
    border = np.zeros(n + 1, dtype=bool)
    border[0] = True  # label 0: not background at all
    for a in range(background.ndim):
        for end in (0, -1):
            border[comp.take(end, axis=a)] = True
    return ~border[comp]


class LabelMap:
    """The label map of one image, brought up to date from the latent mean where it changed.

    ``invalidate(boxes)`` marks where the mean moved (``None``: everywhere); ``labels(...)``
    returns the up-to-date map (the object itself: copy it before changing it)."""

    def __init__(self, shape: Sequence[int]) -> None:
        self.shape = tuple(int(n) for n in shape)
        self._labels: np.ndarray | None = None  # final labels
        self._raw: np.ndarray | None = None     # labels before the topology step
        self._plane_counts: list[np.ndarray] = []  # per axis, raw foreground locations in each plane
        self._dirty: list[Box] | None = None    # None: everything
        self._applied: tuple = ()               # what the current labels were made with

    def invalidate(self, boxes: list[Box] | None = None) -> None:
        if boxes is None or self._dirty is None:
            self._dirty = None
        else:
            self._dirty = self._dirty + list(boxes)

    def labels(self, mean, objects: Sequence[int], clicks: Sequence[Click], *, topology: bool, connected: bool = True,
               fill_holes: bool = True, snap: Snap | None = None) -> np.ndarray:
        """The label map for the latent ``mean`` (K, *spatial), objects ``objects`` (their ids, in
        channel order), training ``clicks``; ``topology``: apply :func:`clean_topology`; ``snap``:
        an image-wide step from the best latent to the foreground (every update is then full)."""
        dtype = label_dtype(objects)
        settings = (tuple(objects), dtype, topology, connected, fill_holes, snap is None)
        click_set = {(c.voxel(), c.positive, c.object) for c in clicks}
        if self._labels is None or self._dirty is None or snap is not None or settings != self._applied[0]:
            self._full(mean, objects, dtype, clicks, topology, connected, fill_holes, snap)
        else:
            changed = click_set ^ self._applied[1]
            boxes = self._dirty + [tuple(slice(v, v + 1) for v in voxel) for voxel, _, _ in changed]
            if boxes:
                self._local(mean, objects, dtype, clicks, boxes, topology, connected, fill_holes)
        self._dirty, self._applied = [], (settings, click_set)
        return self._labels

    # -- the two updates ---------------------------------------------------------------------------
    def _full(self, mean, objects, dtype, clicks, topology, connected, fill_holes, snap) -> None:
        if not objects:
            self._labels = np.zeros(self.shape, dtype=dtype)
            self._raw = None
            return
        whole = tuple(slice(0, n) for n in self.shape)
        if snap is not None:  # image-wide: the whole map, as one piece (no local state kept)
            labels = threshold(mean, objects, whole, dtype, snap)
            self._labels = clean_topology(labels, clicks, connected=connected, fill_holes=fill_holes) \
                if topology else labels
            self._raw = None
            return
        self._raw = threshold(mean, objects, whole, dtype)
        # counted from the foreground's coordinates: the foreground is mostly a small part of a volume
        where = np.unravel_index(np.flatnonzero(self._raw), self.shape)
        self._plane_counts = [np.bincount(w, minlength=n).astype(np.int64) for w, n in zip(where, self.shape)]
        if not topology:
            self._labels = self._raw.copy()
            return
        self._labels = np.zeros(self.shape, dtype=dtype)
        self._clean(clicks, [], connected, fill_holes)

    def _local(self, mean, objects, dtype, clicks, boxes, topology, connected, fill_holes) -> None:
        for box in boxes:
            new = threshold(mean, objects, box, dtype)
            old = self._raw[box]
            for a, counts in enumerate(self._plane_counts):
                others = tuple(b for b in range(len(self.shape)) if b != a)
                counts[box[a]] += new.astype(bool).sum(others, dtype=np.int64) \
                    - old.astype(bool).sum(others, dtype=np.int64)
            self._raw[box] = new
            if not topology:
                self._labels[box] = new
        if topology:
            self._clean(clicks, boxes, connected, fill_holes)

    def _clean(self, clicks, boxes: list[Box], connected: bool, fill_holes: bool) -> None:
        """Rerun the topology step on the raw foreground's bounding box and the changed boxes
        (one voxel wider, so that holes are told from the outside as on the whole image)."""
        lo = [min([n] + [b[a].start for b in boxes]) for a, n in enumerate(self.shape)]
        hi = [max([0] + [b[a].stop for b in boxes]) for a in range(len(self.shape))]
        for a, counts in enumerate(self._plane_counts):
            hit = np.flatnonzero(counts)
            if hit.size:
                lo[a], hi[a] = min(lo[a], int(hit[0])), max(hi[a], int(hit[-1]) + 1)
        if any(h <= low for low, h in zip(lo, hi)):  # no foreground and nothing changed
            return
        crop = tuple(slice(max(0, low - 1), min(n, h + 1)) for low, h, n in zip(lo, hi, self.shape))
        # outside the crop the raw labels are 0 now and were 0 or changed since (inside the boxes):
        # the final labels there were and stay 0
        self._labels[crop] = clean_topology(self._raw[crop].copy(), clicks, connected=connected,
                                            fill_holes=fill_holes, offset=[s.start for s in crop])


def label_dtype(objects: Sequence[int]) -> type:
    """The label map's dtype for these object ids."""
    return np.uint8 if max(objects, default=0) < 256 else np.uint16


def threshold(mean, objects: Sequence[int], box: Box, dtype, snap: Snap | None = None) -> np.ndarray:
    """Raw labels of a box: the object with the largest latent mean where it is foreground, else 0;
    foreground is a positive largest mean, or ``snap`` of it.  One object needs no arg-max, whose
    int64 index map would be 8 bytes a voxel on a whole CT."""
    part = mean[(slice(None),) + tuple(box)]
    ids = np.asarray(objects, dtype=dtype)
    best, arg = part.max(0) if len(objects) > 1 else (part[0], None)
    best = _numpy(best)
    fg = (best > 0) if snap is None else snap(best)
    if arg is None:
        return fg.astype(dtype) * ids[0]
    return ids[_numpy(arg)] * fg.astype(dtype)


def _numpy(t) -> np.ndarray:
    return t.cpu().numpy() if hasattr(t, "cpu") else np.asarray(t)

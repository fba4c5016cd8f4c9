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

With ``hysteresis`` (volumes), the raw labels also remember the last click's: :class:`HeldLabels`
moves them after each click where the latent moved, and a location changes label only where the
posterior decides it.  The topology step is the same on them.
"""
from __future__ import annotations

import contextlib
import functools
from typing import Callable, Sequence

import numpy as np
from scipy import ndimage as ndi
from scipy.special import ndtr, ndtri

from . import boundary
from .clicks import Click
from .config import GPConfig
from .gp.reach import Box
from .image import Image

# foreground (bool, *spatial) from the best object's latent mean (*spatial), over the whole image
Snap = Callable[[np.ndarray], np.ndarray]


class MaskStage:
    """The label map of one image under a Session's settings: threshold (held across clicks where the
    settings ask for it, :class:`HeldLabels`), the edge cut where they ask for it (:class:`EdgeCut`), then each
    object's connected parts and holes (:func:`clean_topology`), brought up to date where the latent moved
    (:class:`LabelMap`)."""

    def __init__(self, image: Image, config: GPConfig, max_variance: float = 1.0) -> None:
        """``max_variance``: the latent's prior variance, which bounds the posterior's (for held labels)."""
        self.connected, self.fill_holes = config.connected, config.fill_holes
        self.edge_cut = EdgeCut(image, config) if EdgeCut.applies(image, config) else None
        # the cut redoes the whole labelling from the latent each time: nothing to hold
        self.held = HeldLabels(image.shape, config.hysteresis, max_variance) \
            if config.hysteresis > 0 and self.edge_cut is None else None
        self._label_map = LabelMap(image.shape)
        self._step: dict | None = None  # inside one_step: where the latent moved, and its last state

    @contextlib.contextmanager
    def one_step(self):
        """Clicks added inside count as one for held labels (a clicks file, a batch): the labels move once,
        at the end, from the latent all of them made; alone they would depend on the clicks' order."""
        if self.held is None or self._step is not None:
            yield
            return
        self._step = {"boxes": [], "latent": None}
        try:
            yield
        finally:
            step, self._step = self._step, None
            if step["latent"] is not None:
                mean, variance_at, objects, clicks, made = step["latent"]
                self._label_map.invalidate(self.held.update(mean, variance_at, objects, step["boxes"], clicks, made))

    def invalidate(self, boxes: list[Box] | None = None) -> None:
        """Mark where the labels must be redone (``None``: everywhere), the latent unchanged."""
        self._label_map.invalidate(boxes)

    def moved(self, boxes: list[Box] | None, mean, objects: Sequence[int], clicks: Sequence[Click], made: int,
              variance_at: Callable[[np.ndarray], np.ndarray]) -> None:
        """The latent ``mean`` (K, *spatial) moved over ``boxes`` (``None``: everywhere) after ``made``
        clicks, whose training ``clicks`` are these; ``variance_at(voxels)`` gives the posterior variance at
        (n, ndim) voxels, asked for only where labels are held."""
        if self._step is not None:  # one step of several clicks: the held labels, read as raw, move at its end
            moved = self._step["boxes"]
            self._step["boxes"] = None if boxes is None or moved is None else moved + list(boxes)
            self._step["latent"] = (mean, variance_at, objects, clicks, made)
        elif self.held is not None:  # the raw labels changed only where the held ones did
            self._label_map.invalidate(self.held.update(mean, variance_at, objects, boxes, clicks, made))
        else:
            self._label_map.invalidate(boxes)

    def undo(self, made: int) -> None:
        """Bring held labels back to where they were before the last of ``made`` clicks (the latent follows)."""
        if self.held is not None:
            self._label_map.invalidate(self.held.undo(made))

    def forget(self) -> None:
        """No clicks any more: held labels start again from the next threshold."""
        if self.held is not None:
            self.held = HeldLabels(self.held.shape, self.held.margin, self.held.max_variance)
        self._label_map.invalidate(None)

    def raw(self, mean, objects: Sequence[int], box: Box) -> np.ndarray:
        """Labels of ``box`` before the topology step and the cut."""
        dtype = label_dtype(objects)
        if self.held is not None and self.held.state is not None:
            return self.held.state[box].astype(dtype)
        return threshold(mean, objects, box, dtype)

    def labels(self, mean, objects: Sequence[int], clicks: Sequence[Click], *, topology: bool) -> np.ndarray:
        """The up-to-date label map (the object itself: copy it before changing it) for the latent ``mean``
        (K, *spatial) of ``objects`` (ids, in channel order) and the training ``clicks``; ``topology``:
        apply :func:`clean_topology`."""
        snap = None if self.edge_cut is None else functools.partial(self.edge_cut, clicks=clicks)
        raw = None if self.held is None else functools.partial(self.raw, mean, objects)
        return self._label_map.labels(mean, objects, clicks, topology=topology, connected=self.connected,
                                      fill_holes=self.fill_holes, snap=snap, raw=raw)


class HeldLabels:
    """Raw labels with hysteresis over clicks: after a click, a location keeps the label the last click
    gave it unless another label's probability beats that one's by more than ``margin`` (one object: it
    joins above 1/2 + margin and leaves below 1/2 - margin).

    Why: a click moves the latent a little far from itself, and where the kernel half believes a look-alike
    region (a probability near 1/2), that little floods it into the mask, or takes part of the object out;
    the next click then swings it back.  The posterior's own variance sets how far a latent must move to
    count (the probit of the mean over sqrt(1 + variance)).  The plain threshold still applies at clicked
    locations (a click keeps its label), at a click that brings a new object (the first click fills as
    far as it does), and before any click.  Each click's changes are kept so that undo restores the labels
    exactly."""

    def __init__(self, shape: Sequence[int], margin: float, max_variance: float = 1.0) -> None:
        self.shape, self.margin = tuple(int(n) for n in shape), float(margin)
        self.max_variance = float(max_variance)  # bounds the posterior variance: it spares most variance calls
        self.state: np.ndarray | None = None  # object ids after the last update
        self._clicks, self._objects = 0, ()  # what made the state
        self._undo: list[tuple[int, tuple, list]] = []  # per click: clicks and objects before, the changes
        self._redo_all = False  # the next update covers the whole image (after undoing part of a step)

    def update(self, mean, variance_at: Callable[[np.ndarray], np.ndarray], objects: Sequence[int],
               boxes: list[Box] | None, clicks: Sequence[Click], made: int) -> list[Box]:
        """The latent ``mean`` moved over ``boxes`` (None: everywhere) after ``made`` clicks (training
        ``clicks``: one a location); ``variance_at(voxels)``: the posterior variance at (n, ndim) voxels.
        Returns boxes around the labels that changed."""
        n, objects = made, tuple(objects)
        if boxes is None or self._redo_all:
            boxes, self._redo_all = [tuple(slice(0, s) for s in self.shape)], False
        dtype = label_dtype(objects)
        if self.state is None:
            self.state = np.zeros(self.shape, dtype)
        elif np.dtype(dtype).itemsize > self.state.dtype.itemsize:
            self.state = self.state.astype(dtype)
        # a new click that brings a new object thresholds plainly; so does any update before a click
        plain = self._clicks == 0 or (n > self._clicks and objects != self._objects) or not objects
        if n > self._clicks:
            self._undo.append((self._clicks, self._objects, []))
        changes = self._undo[-1][2] if n and self._undo else None
        changed: list[Box] = []
        for box in boxes:
            before = self.state[box]
            if plain:
                new = threshold(mean, objects, box, self.state.dtype) if objects else np.zeros_like(before)
                where = np.nonzero(new != before)
                changed += self._set(box, where, new[where], changes)
                continue
            where, values = (self._held_one if len(objects) == 1 else self._held)(mean, variance_at, objects, box)
            changed += self._set(box, where, values, changes)
            for c in clicks:  # a clicked location keeps the threshold's label (the click's)
                v = c.voxel()
                if all(s.start <= x < s.stop for s, x in zip(box, v)):
                    at = tuple(slice(x, x + 1) for x in v)
                    label = threshold(mean, objects, at, self.state.dtype)
                    changed += self._set(at, np.nonzero(label != self.state[at]), label.reshape(-1)[:1], changes)
        self._clicks, self._objects = n, objects
        return changed

    def _set(self, box: Box, where: tuple, values: np.ndarray, changes: list | None) -> list[Box]:
        """Write ``values`` at the box's local indices ``where``, keeping what they replace for undo;
        returns the box around them ([] if none)."""
        if not where[0].size:
            return []
        part = self.state[box]
        at = tuple(w + s.start for w, s in zip(where, box))
        if changes is not None:  # as flat indices: 8 bytes a voxel changed
            changes.append((np.ravel_multi_index(at, self.shape), part[where]))
        part[where] = values
        return [_box_around(at)]

    def _held_one(self, mean, variance_at, objects: tuple, box: Box) -> tuple[tuple, np.ndarray]:
        """One object: where in ``box`` its held label changes, and to what.  It stays or goes as its latent
        over sqrt(1 + variance) passes -+band; with no variance (the largest ratio) fewest stay, so that
        decides all but the switches the largest variance would undo, and only those ask for it."""
        band = ndtri(0.5 + self.margin)
        m = _numpy(mean[0][box])
        inside = self.state[box] > 0
        where = np.nonzero((m > np.where(inside, np.float32(-band), np.float32(band))) != inside)
        size = np.abs(m[where])
        unsure = size <= band * np.sqrt(1.0 + self.max_variance)
        if unsure.any():
            voxels = np.stack([w[unsure] + s.start for w, s in zip(where, box)], 1)
            stays = size[unsure] <= band * np.sqrt(1.0 + variance_at(voxels))
            keep = np.ones(size.shape, bool)
            keep[np.flatnonzero(unsure)[stays]] = False
            where = tuple(w[keep] for w in where)
        values = np.where(inside[where], 0, objects[0]).astype(self.state.dtype)  # every change is a switch
        return where, values

    def _held(self, mean, variance_at, objects: tuple, box: Box) -> tuple[tuple, np.ndarray]:
        """Several objects: where in ``box`` the held labels change, and to what.  Each label's probability
        is compared, the held one's worth the margin more; only where the threshold differs from the held
        label can it change."""
        before = self.state[box]
        where = np.nonzero(threshold(mean, objects, box, self.state.dtype) != before)
        if not where[0].size:
            return where, before[where]
        voxels = tuple(w + s.start for w, s in zip(where, box))
        m = _numpy(mean)[(slice(None),) + voxels].astype(np.float64)  # (K, n)
        p = ndtr(m / np.sqrt(1.0 + variance_at(np.stack(voxels, 1)))[None])
        ids = np.asarray(objects, self.state.dtype)[:, None]
        p += self.margin * (before[where][None] == ids)
        best = p.argmax(0)
        score = p[best, np.arange(p.shape[1])]
        values = np.where(score > 0.5 + self.margin * (before[where] == 0), ids[best, 0], 0).astype(before.dtype)
        changed = values != before[where]
        return tuple(w[changed] for w in where), values[changed]

    def undo(self, made: int) -> list[Box]:
        """Restore the state before the last of ``made`` clicks; returns the box around what changed ([] if
        nothing).  Where that click was one of several added as one step, the state goes back to before
        them all, and the next update brings the rest in as one step over the whole image."""
        if not self._undo:
            return []
        self._clicks, self._objects, changes = self._undo.pop()
        self._redo_all = self._clicks < made - 1
        if not changes:
            return []
        state = self.state.reshape(-1)  # a view: the state is contiguous
        for flat, values in reversed(changes):  # boxes may overlap: the oldest value last
            state[flat] = values
        return [_box_around(np.unravel_index(np.concatenate([flat for flat, _ in changes]), self.shape))]


def _box_around(indices: tuple) -> Box:
    """The smallest box holding these locations (a tuple of index arrays, one per axis, not empty)."""
    return tuple(slice(int(a.min()), int(a.max()) + 1) for a in indices)


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
               fill_holes: bool = True, snap: Snap | None = None,
               raw: Callable[[Box], np.ndarray] | None = None) -> np.ndarray:
        """The label map for the latent ``mean`` (K, *spatial), objects ``objects`` (their ids, in
        channel order), training ``clicks``; ``topology``: apply :func:`clean_topology`; ``snap``:
        an image-wide step from the best latent to the foreground (every update is then full); ``raw``:
        a box's labels before the topology step, if not the threshold of ``mean``."""
        dtype = label_dtype(objects)
        raw = raw or (lambda box: threshold(mean, objects, box, dtype))
        settings = (tuple(objects), dtype, topology, connected, fill_holes, snap is None)
        click_set = {(c.voxel(), c.positive, c.object) for c in clicks}
        if self._labels is None or self._dirty is None or snap is not None or settings != self._applied[0]:
            self._full(mean, objects, dtype, clicks, topology, connected, fill_holes, snap, raw)
        else:
            changed = click_set ^ self._applied[1]
            boxes = self._dirty + [tuple(slice(v, v + 1) for v in voxel) for voxel, _, _ in changed]
            if boxes:
                self._local(raw, clicks, boxes, topology, connected, fill_holes)
        self._dirty, self._applied = [], (settings, click_set)
        return self._labels

    # -- the two updates ---------------------------------------------------------------------------
    def _full(self, mean, objects, dtype, clicks, topology, connected, fill_holes, snap, raw) -> None:
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
        self._raw = raw(whole)
        # counted from the foreground's coordinates: the foreground is mostly a small part of a volume
        where = np.unravel_index(np.flatnonzero(self._raw), self.shape)
        self._plane_counts = [np.bincount(w, minlength=n).astype(np.int64) for w, n in zip(where, self.shape)]
        if not topology:
            self._labels = self._raw.copy()
            return
        self._labels = np.zeros(self.shape, dtype=dtype)
        self._clean(clicks, [], connected, fill_holes)

    def _local(self, raw, clicks, boxes, topology, connected, fill_holes) -> None:
        for box in boxes:
            new = raw(box)
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

"""The memory bank: a fixed budget of GP training points gathered from the frames seen so far.

Two parts, after MA-Net's memory aggregation:

* **global**: points from the user-annotated frames that bound the stretch being propagated --
  every click, plus samples of the annotated frame's mask.  Set once per propagation pass.
* **local**: samples of the last ``window`` propagated frames that joined it (every
  ``memory_every``-th, as XMem adds a frame every ``mem_every``), the oldest frame dropped as a new
  one arrives.  Their positions move with the scene (optical flow), so the spatial kernel matches
  a location against what was near it in the previous frames.

The bound: ``global <= global_fraction * budget`` points (clicks first, then mask samples) and
``local <= budget - global`` points in all, ``local_budget // window`` per frame.  Every array
is sized by these numbers, never by the video's length, so the bank uses at most
``budget * (D + 2 + 2K + 3) * 4`` bytes (about 100 KB for 1,000 points of 19 features).

Which points a frame contributes is decided by informativeness (:func:`sample_informative`):
each label (background and every object) gets a quota, and within it points are drawn with
probability growing with the prediction's uncertainty and closeness to a label boundary, so the
budget is spent where the classes meet rather than deep inside large regions.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import cv2
import numpy as np

# memory point kinds
CLICK, ANNOTATED, PROPAGATED = 0, 1, 2


@dataclass
class Points:
    """A set of training points: features (n, D), positions (n, 2) on the working grid, labels
    (n, K) of +-1 per object, the prior mean m0 (n, K) the point had in its frame, noise (n,),
    frame (n,), kind (n,)."""

    feat: np.ndarray
    pos: np.ndarray
    y: np.ndarray
    m0: np.ndarray
    noise: np.ndarray
    frame: np.ndarray
    kind: np.ndarray

    FIELDS = ("feat", "pos", "y", "m0", "noise", "frame", "kind")

    @classmethod
    def empty(cls, n_features: int, n_objects: int) -> "Points":
        return cls(np.zeros((0, n_features), np.float32), np.zeros((0, 2), np.float32),
                   np.zeros((0, n_objects), np.float32), np.zeros((0, n_objects), np.float32),
                   np.zeros(0, np.float32), np.zeros(0, np.int32), np.zeros(0, np.int8))

    def __len__(self) -> int:
        return int(self.feat.shape[0])

    @property
    def keep(self) -> np.ndarray:
        """Points that must keep their label: the user's clicks."""
        return self.kind == CLICK

    def take(self, idx) -> "Points":
        return Points(*(getattr(self, f)[idx] for f in self.FIELDS))

    @staticmethod
    def concat(parts: list["Points"]) -> "Points":
        return Points(*(np.concatenate([getattr(p, f) for p in parts]) for f in Points.FIELDS))


@dataclass
class MemoryBank:
    budget: int = 800
    global_fraction: float = 0.5
    window: int = 2
    n_features: int = 0
    n_objects: int = 1
    _global: Points | None = field(default=None, repr=False)
    _local: list[Points] = field(default_factory=list, repr=False)
    peak: int = 0
    version: int = 0  # counts the changes of the set of points (not their moves): a fit stays valid while it holds

    def __post_init__(self) -> None:
        if self.budget < 4 or self.window < 1 or not 0.0 < self.global_fraction < 1.0:
            raise ValueError("memory needs budget >= 4, window >= 1 and 0 < global_fraction < 1")
        self._global = Points.empty(self.n_features, self.n_objects)

    @property
    def global_budget(self) -> int:
        return int(self.budget * self.global_fraction)

    @property
    def local_budget(self) -> int:
        return self.budget - len(self._global)

    @property
    def per_frame(self) -> int:
        """Points each propagated frame may add."""
        return max(1, self.local_budget // self.window)

    def __len__(self) -> int:
        return len(self._global) + sum(len(p) for p in self._local)

    def set_global(self, clicks: Points, samples: Points) -> None:
        """Clicks first (the most recent ones if there are more than the global budget), then as many
        mask samples as fit."""
        room = self.global_budget
        if len(clicks) > room:
            clicks = clicks.take(np.arange(len(clicks) - room, len(clicks)))
        samples = samples.take(_spread(len(samples), room - len(clicks)))
        self._global = Points.concat([clicks, samples])
        self._local = []
        self.version += 1
        self._track()

    def add_frame(self, points: Points) -> None:
        """Local memory: the newest frame's points in, the oldest frame out (beyond ``window``)."""
        if len(points) > self.per_frame:
            points = points.take(_spread(len(points), self.per_frame))
        self._local.append(points)
        while len(self._local) > self.window or len(self) > self.budget:
            self._local.pop(0)
        self.version += 1
        self._track()

    def clear_local(self) -> None:
        """Forget the propagated frames (an object went missing: their labels would keep it missing)."""
        if self._local:
            self._local = []
            self.version += 1

    def move(self, flow: np.ndarray) -> None:
        """Carry local points along a forward flow field (h, w, 2) given as (drow, dcol) per cell."""
        h, w = flow.shape[:2]
        for p in self._local:
            r = np.clip(np.rint(p.pos[:, 0]).astype(int), 0, h - 1)
            c = np.clip(np.rint(p.pos[:, 1]).astype(int), 0, w - 1)
            p.pos = p.pos + flow[r, c]

    def training(self) -> Points:
        return Points.concat([self._global, *self._local])

    def _track(self) -> None:
        n = len(self)
        if n > self.budget:  # a bug, not a user error: the bank promises this never happens
            raise AssertionError(f"memory bank holds {n} points, over its budget of {self.budget}")
        self.peak = max(self.peak, n)

    @property
    def nbytes(self) -> int:
        return sum(getattr(p, f).nbytes for p in [self._global, *self._local] for f in Points.FIELDS)


def sample_informative(prob: np.ndarray, n: int, rng: np.random.Generator, *, min_share: float, band: float = 3.0,
                       floor: float = 0.05,
                       candidates: np.ndarray | None = None) -> np.ndarray:
    """Flat indices of ``n`` locations of a (K, h, w) object-probability map, chosen by informativeness.

    Labels are the argmax over [background, objects].  Each label present gets a quota proportional
    to the square root of its area but at least ``min_share`` (before the shares are normalised to
    sum to 1) of ``n``: small objects stay represented (the video's ``label_share`` setting).  Inside
    a quota, locations are drawn without replacement with weight
    ``floor + uncertainty + near-boundary``, where uncertainty is 1 - the margin between the two most
    likely labels and near-boundary is exp(-d / band) of the distance d to another label.
    ``candidates`` (flat bool mask) restricts where points may come from.
    """
    K, h, w = prob.shape
    full = np.concatenate([np.clip(1.0 - prob.max(0, keepdims=True), 0, 1), prob]) if K > 1 else \
        np.concatenate([1.0 - prob, prob])
    if full.shape[0] == 2:  # one object: the margin is the two rows' difference (a sort along 2 rows is slow)
        labels = (full[1] > full[0]).astype(np.int8)  # argmax of two rows, ties to the first, without its cost
        uncertainty = 1.0 - np.abs(full[1] - full[0])
    else:
        labels = full.argmax(0)
        top2 = np.sort(full, axis=0)[-2:]
        uncertainty = 1.0 - (top2[1] - top2[0])
    edge = np.zeros((h, w), bool)
    edge[:, 1:] |= labels[:, 1:] != labels[:, :-1]
    edge[:, :-1] |= labels[:, 1:] != labels[:, :-1]
    edge[1:, :] |= labels[1:, :] != labels[:-1, :]
    edge[:-1, :] |= labels[1:, :] != labels[:-1, :]
    near = np.exp(-distance_to(edge) / band) if edge.any() else np.zeros((h, w))
    weight = (floor + uncertainty + near).ravel()
    flat = labels.ravel()
    ok = np.ones(h * w, bool) if candidates is None else np.asarray(candidates, bool).ravel()
    present = [k for k in range(K + 1) if np.any((flat == k) & ok)]
    if not present:
        return np.zeros(0, np.int64)
    area = np.array([np.count_nonzero((flat == k) & ok) for k in present], float)
    share = np.sqrt(area) / np.sqrt(area).sum()
    share = np.maximum(share, min(min_share, 1.0 / len(present)))
    quota = np.floor(share / share.sum() * n).astype(int)
    quota[np.argmax(area)] += n - quota.sum()
    out = []
    for k, q in zip(present, quota):
        idx = np.flatnonzero((flat == k) & ok)
        q = min(int(q), idx.size)
        if q <= 0:
            continue
        p = weight[idx] / weight[idx].sum()
        out.append(rng.choice(idx, size=q, replace=False, p=p))
    return rng.permutation(np.concatenate(out)) if out else np.zeros(0, np.int64)


def distance_to(mask: np.ndarray) -> np.ndarray:
    """Euclidean distance (float64) of each cell of a 2D grid to the nearest cell of ``mask``, the values of
    scipy's ``distance_transform_edt(~mask)`` at a fraction of its cost: OpenCV's precise transform is exact
    but for float32 rounding, and a squared distance on the grid is an integer, so rounding it restores
    the exact value."""
    d = cv2.distanceTransform((~mask).astype(np.uint8), cv2.DIST_L2, cv2.DIST_MASK_PRECISE).astype(np.float64)
    return np.sqrt(np.rint(d * d, out=d), out=d)


def _spread(n: int, k: int) -> np.ndarray:
    """k of n indices, evenly spread (all of them if k >= n)."""
    return np.arange(n) if k >= n else np.linspace(0, n - 1, max(k, 0)).round().astype(int)

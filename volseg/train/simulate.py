"""Random initial clicks for training, after RITM (the clicks on the model's errors that follow
are the benchmark robot's, :func:`volseg.robot.ritm_click`).

:func:`initial_clicks` places one positive click inside the object (its deepest point, or with
probability ``1 - deepest`` a random point well inside), plus a few random positives and
negatives (negatives preferably in a band around the object, where they carry information).

Positions are index tuples, labels +1 / -1; works for 2D and 3D masks.
"""
from __future__ import annotations

import numpy as np
from scipy import ndimage as ndi

from ..robot import border_distance, deepest_point


def _sample(candidates: np.ndarray, rng: np.random.Generator,
            weights: np.ndarray | None = None) -> tuple[int, ...] | None:
    idx = np.flatnonzero(candidates)
    if idx.size == 0:
        return None
    p = None
    if weights is not None:
        w = weights.reshape(-1)[idx].astype(np.float64)
        p = w / w.sum() if w.sum() > 0 else None
    flat = int(rng.choice(idx, p=p))
    return tuple(int(i) for i in np.unravel_index(flat, candidates.shape))


def initial_clicks(obj: np.ndarray, rng: np.random.Generator, *, max_positive: int = 2, max_negative: int = 2,
                   deepest: float = 0.5, band: int = 20) -> tuple[list[tuple[int, ...]], list[float]]:
    """First click positive inside the object, then 0..max_positive-1 more positives and 0..max_negative negatives."""
    obj = np.asarray(obj, bool)
    d_in = border_distance(obj)
    if d_in.max() <= 0:
        return [], []
    inner = d_in >= 0.5 * d_in.max()  # "well inside": at least half the maximal depth
    first = deepest_point(obj) if rng.random() < deepest else _sample(inner, rng)
    points, labels = [first], [1.0]
    for _ in range(int(rng.integers(0, max(max_positive, 1)))):
        p = _sample(d_in >= max(2.0, 0.2 * d_in.max()), rng)
        if p is not None and p not in points:
            points.append(p), labels.append(1.0)
    bg = ~obj
    near = bg & (ndi.distance_transform_edt(bg) <= band) & (border_distance(bg) >= 3)
    for _ in range(int(rng.integers(0, max_negative + 1))):
        p = _sample(near if near.any() else bg, rng)
        if p is not None and p not in points:
            points.append(p), labels.append(-1.0)
    return points, labels


__all__ = ["initial_clicks"]

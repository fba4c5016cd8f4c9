"""A positive click as a short scribble: the training points it lends its homogeneous neighbourhood.

One click is one noisy sample of its object, and the GP's spatial factor lets its label fade a few
lengthscales away.  An annotator who drags a short scribble across the object does better, and
classical seeded tools (Slicer's Grow from seeds, ITK-SNAP's snakes) spread a seed through what
looks like it.  Here a positive click lends its label to a few more points of the region around it
that looks like it under the GP's own feature kernel, ``exp(-|f(x) - f(click)|^2 / 2)`` on the
scaled features, and is connected to it through such voxels: the region a click would fill if the
image were all there was.  The points are spread by farthest-point sampling, and enter the GP with
extra noise, as weak labels: they carry the label across the object, and yield wherever a click
says otherwise (only clicks are kept at their label, :class:`volseg.gp.posterior.ExactPosterior`).

n-D: the same code for 2D and 3D; everything is measured in the image's units (mm).
"""
from __future__ import annotations

from typing import Sequence

import numpy as np
import torch
from scipy import ndimage as ndi

from .robot import border_distance


def homogeneous_points(features: torch.Tensor, voxel: Sequence[int], spacing: Sequence[float], *,
                       radius: float, n_points: int, similarity: float, min_distance: float,
                       avoid: Sequence[Sequence[int]] = ()) -> np.ndarray:
    """Up to ``n_points`` voxels (m, ndim), not the click's own, spread over the click's homogeneous region.

    ``features``: (*spatial, D) scaled so that the feature kernel is ``exp(-|df|^2 / 2)``;  the region:
    voxels within ``radius`` (mm) of the click whose feature kernel to the click's (averaged over its
    3^ndim neighbourhood, one voxel's noise is not the object's look) is at least ``similarity`` and
    higher than to any ``avoid`` voxel (negative clicks: what the user said is not the object),
    connected to the click through faces;  points no closer than ``min_distance`` (mm) to each other
    or the click."""
    shape = tuple(features.shape[:-1])
    sp = np.asarray(spacing, np.float64)
    v = np.asarray(voxel, np.int64)
    half = np.ceil(radius / sp).astype(np.int64)
    lo, hi = np.maximum(v - half, 0), np.minimum(v + half + 1, shape)
    box = tuple(slice(a, b) for a, b in zip(lo.tolist(), hi.tolist()))
    f = features[box].to("cpu", torch.float32).numpy()
    local = tuple((v - lo).tolist())
    near = tuple(slice(max(c - 1, 0), c + 2) for c in local)
    ref = f[near].reshape(-1, f.shape[-1]).mean(0)
    d2 = np.square(f - ref).sum(-1)
    region = d2 <= -2.0 * np.log(similarity)
    for a in avoid:
        a = np.asarray(a, np.int64)
        if np.all(a >= lo) and np.all(a < hi):  # a negative click in reach: stay on the click's side in feature space
            region &= d2 < np.square(f - f[tuple((a - lo).tolist())]).sum(-1)
    grid = np.ogrid[tuple(slice(0, b - a) for a, b in zip(lo.tolist(), hi.tolist()))]
    dist2 = sum(((g - c) * s) ** 2 for g, c, s in zip(grid, local, sp))
    region &= dist2 <= radius * radius
    if not region[local]:
        return np.zeros((0, len(shape)), np.int64)
    parts, _ = ndi.label(region)
    region = parts == parts[local]
    # away from the region's edges, where a weak boundary lets it leak in thin tongues; as far in as the
    # region allows where it is thin itself
    depth = border_distance(region, sp)
    cand = np.argwhere(depth >= min(1.5 * sp.max(), 0.5 * depth.max()))
    mm = cand * sp
    # farthest-point sampling from the click: each new point the farthest from all chosen so far
    nearest = np.sqrt(((mm - np.asarray(local) * sp) ** 2).sum(1))
    chosen = []
    for _ in range(n_points):
        k = int(np.argmax(nearest))
        if nearest[k] < min_distance:
            break
        chosen.append(k)
        nearest = np.minimum(nearest, np.sqrt(((mm - mm[k]) ** 2).sum(1)))
    return cand[chosen] + lo if chosen else np.zeros((0, len(shape)), np.int64)

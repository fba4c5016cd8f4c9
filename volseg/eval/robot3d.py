"""Simulated user for interactive volume segmentation (works on 2D arrays as well).

Protocol of the interactive 3D foundation-model challenges (SAM-Med3D, CVPR 2025 "interactive 3D"):

* every click goes to the largest connected error component -- with an empty prediction that is
  the (largest component of the) object itself, so the first click is its deepest interior point;
* inside that component, at the voxel farthest from the component's boundary: Euclidean distance
  transform in mm (``sampling=spacing``) on the component padded by one empty voxel, so the array
  border counts as boundary as in the 2D protocol (RITM);
* positive for a missed region (false negative), negative for a false one (false positive).

Choices, stated because they change which voxel is picked:

* missed and false regions are separate components (``cc3d`` multi-label, full connectivity:
  26 in 3D, 8 in 2D); a component mixing both would put its deepest point on the line between them;
* "largest" is by voxel count -- within one volume the voxel volume is constant, so this is the same
  as the largest volume in mm³; ties go to the lowest component label (scan order);
* ties for the deepest voxel (plateaus in slabs) go to the one nearest the plateau's centroid in mm,
  which keeps clicks central and deterministic where the challenge code picks at random.
"""
from __future__ import annotations

from typing import Sequence

import numpy as np
from scipy import ndimage

from ..clicks import Click


def _components(kinds: np.ndarray) -> np.ndarray:
    """Connected components of a small-integer label image, each value on its own, full connectivity."""
    if kinds.ndim in (2, 3):
        import cc3d

        return cc3d.connected_components(kinds, connectivity=8 if kinds.ndim == 2 else 26)
    # cc3d handles 2D/3D only; scipy for other dimensions, one value at a time.
    out = np.zeros(kinds.shape, dtype=np.int64)
    structure = ndimage.generate_binary_structure(kinds.ndim, kinds.ndim)
    for value in np.unique(kinds[kinds > 0]):
        lab, n = ndimage.label(kinds == value, structure=structure)
        out[lab > 0] = lab[lab > 0] + out.max()
    return out


def deepest_point(mask: np.ndarray, spacing: Sequence[float] | None = None) -> tuple[int, ...]:
    """Voxel of ``mask`` farthest (in mm) from its boundary; the array border counts as boundary."""
    m = np.asarray(mask, dtype=bool)
    if not m.any():
        raise ValueError("deepest_point of an empty mask")
    sp = (1.0,) * m.ndim if spacing is None else tuple(float(s) for s in spacing)
    idx = np.nonzero(m)
    lo = np.array([int(i.min()) for i in idx])
    box = tuple(slice(a, int(i.max()) + 1) for a, i in zip(lo, idx))
    edt = ndimage.distance_transform_edt(np.pad(m[box], 1), sampling=sp)[(slice(1, -1),) * m.ndim]
    best = np.argwhere(edt >= edt.max() * (1 - 1e-9))
    if len(best) > 1:
        mm = best * np.asarray(sp)
        best = best[[np.argmin(((mm - mm.mean(axis=0)) ** 2).sum(axis=1))]]
    return tuple(int(v) for v in best[0] + lo)


def error_regions(gt: np.ndarray, pred: np.ndarray, ignore: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Missed (gt and not pred) and false (pred and not gt) voxels, outside ``ignore``."""
    g, p = np.asarray(gt, dtype=bool), np.asarray(pred, dtype=bool)
    if g.shape != p.shape:
        raise ValueError(f"gt {g.shape} and prediction {p.shape} differ in shape")
    missed, false = g & ~p, p & ~g
    if ignore is not None:
        keep = ~np.asarray(ignore, dtype=bool)
        missed &= keep
        false &= keep
    return missed, false


def next_click(
    gt: np.ndarray,
    pred: np.ndarray,
    spacing: Sequence[float] | None = None,
    ignore: np.ndarray | None = None,
    *,
    object: int = 1,
) -> Click | None:
    """The robot's next click for ``object``, or None when the prediction has no error left."""
    missed, false = error_regions(gt, pred, ignore)
    kinds = missed.astype(np.uint8) + 2 * false.astype(np.uint8)
    if not kinds.any():
        return None
    labels = _components(kinds)
    sizes = np.bincount(labels.ravel())
    sizes[0] = 0
    component = labels == int(np.argmax(sizes))
    point = deepest_point(component, spacing)
    return Click(tuple(float(v) for v in point), positive=bool(missed[point]), object=object)

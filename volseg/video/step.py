"""The pieces of one propagation step (see :mod:`volseg.video.propagate`): the prior mean from the warped
previous frame, the region the GP is evaluated in, the GP's latent over it (coarse to fine), and the
clean-up of the resulting probability (detached look-alikes, a lost object found again)."""
from __future__ import annotations

import cv2
import numpy as np
from scipy.special import ndtri

from .config import VideoConfig
from .gp import LocalExperts


def prior_mean(prior: np.ndarray, config: VideoConfig) -> np.ndarray:
    """m0 (h*w, K) from the warped previous probability (K, h, w): linear, s (2p - 1), or probit, s Phi^-1(p)."""
    K = prior.shape[0]
    p = prior.reshape(K, -1).T
    if config.prior_mode == "probit":
        return (config.prior_strength * ndtri(np.clip(p, 0.02, 0.98))).astype(np.float32)
    return (config.prior_strength * (2.0 * p - 1.0)).astype(np.float32)


def region_of_interest(prior: np.ndarray, lost: np.ndarray, margin: float, unit: float, level: float) -> np.ndarray:
    """Where the objects can be in this frame: the prior's support (probability above ``level``) grown by
    ``margin`` (cells of the ``scale`` grid, ``unit`` working cells each); the whole grid if the margin is
    negative, nothing is left of the prior, or an object is lost."""
    m = int(round(margin * unit))
    support = (prior > level).any(0)
    if margin < 0 or not support.any() or lost.any():
        return np.ones(support.shape, bool)
    return grown(support, m)


def grown(mask: np.ndarray, cells: float) -> np.ndarray:
    """The cells within ``cells`` of a (h, w) bool ``mask``: a disc grown by a distance transform, whose cost
    does not grow with the radius as a dilation's does (a small object's full-resolution grid has margins of
    40 cells).  The transform runs on the mask's bounding box grown by ``cells`` alone: no cell outside it
    is that near, so the result is the whole grid's, at the box's cost."""
    out = np.zeros(mask.shape, bool)
    rows, cols = np.flatnonzero(mask.any(1)), np.flatnonzero(mask.any(0))
    if not rows.size:
        return out
    m = int(np.ceil(cells)) + 1 if np.isfinite(cells) else max(mask.shape)
    box = (slice(max(0, rows[0] - m), rows[-1] + m + 1), slice(max(0, cols[0] - m), cols[-1] + m + 1))
    outside = np.where(mask[box], 0, 1).astype(np.uint8)
    out[box] = cv2.distanceTransform(outside, cv2.DIST_L2, cv2.DIST_MASK_PRECISE) <= cells
    return out


def latent(gp: LocalExperts, feats: np.ndarray, origin: tuple[int, int], rows: np.ndarray, cols: np.ndarray,
           row_coords: np.ndarray, col_coords: np.ndarray, m0: np.ndarray, *, feature_lengthscale: float,
           unit: float, fine_band: float) -> np.ndarray:
    """m0 + the GP's posterior mean (n, K) at grid cells (rows, cols); ``feats`` starts at ``origin``.

    On a grid finer than ``scale`` (``unit`` working cells per ``scale`` cell: a small object), the GP is
    evaluated on a lattice as coarse as the ``scale`` grid and interpolated, then evaluated exactly where
    the result is unsure (|latent| < ``fine_band``): the fine resolution is spent near the object's
    boundary, not on the whole region."""
    r0, c0 = origin

    def exact(rr, cc):
        return gp.latent(feats[rr - r0, cc - c0] / feature_lengthscale, rr, cc, row_coords, col_coords,
                         np.zeros((rr.size, m0.shape[1]), np.float32))

    stride = int(unit)
    if stride < 2 or fine_band <= 0 or rows.size < 64:
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
    unsure = np.flatnonzero((np.abs(lat) < fine_band).any(1))
    if unsure.size:
        lat[unsure] = exact(rows[unsure], cols[unsure]) + m0[unsure]
    return lat


def redetected(p: np.ndarray, min_area: float) -> np.ndarray:
    """A lost object found again: of the pieces the appearance match found anywhere in the frame, only the
    one with the most probability mass, and only if it is at least ``min_area`` cells; else nothing."""
    n, comp = cv2.connectedComponents((p > 0.5).astype(np.uint8), connectivity=8)
    if n <= 1:
        return np.zeros_like(p)
    mass = np.bincount(comp.ravel(), weights=p.ravel(), minlength=n)[1:]
    best = int(np.argmax(mass)) + 1
    keep = comp == best
    return np.where(keep, p, 0.0).astype(p.dtype) if keep.sum() >= min_area else np.zeros_like(p)


def drop_detached(p: np.ndarray, prior: np.ndarray, which: np.ndarray, gap: np.ndarray | None = None,
                  flow: np.ndarray | None = None) -> np.ndarray:
    """Zero each object's connected pieces (p > 1/2) that do not overlap its warped previous mask:
    a new blob away from the object is a look-alike in the background, not the object.

    With ``gap`` (cells, per object) and ``flow`` (h, w, 2: this frame -> the previous one), a piece within
    ``gap[k]`` of the warped mask stays if it moves with the object: its median flow is nearer the attached
    pieces' than the background's around them.  A part coming out from behind a thin occluder (a pole, a
    trunk) is cut off from the rest by the occluder alone, and the per-pixel flow cannot carry the mask
    across the occluder to it; a look-alike in the background moves with the background."""
    out = p.copy()
    for k in np.flatnonzero(which):
        n, comp = cv2.connectedComponents((p[k] > 0.5).astype(np.uint8), connectivity=8)
        if n <= 2:
            continue
        held = prior[k] > 0.5
        touching = np.unique(comp[held & (comp > 0)])
        if gap is not None and flow is not None and gap[k] > 0 and touching.size:
            touching = np.concatenate([touching, _moving_with(comp, touching, held, gap[k], flow)])
        detached = np.isin(comp, touching, invert=True) & (comp > 0)
        out[k][detached] = 0.0
    return out


def _moving_with(comp: np.ndarray, attached: np.ndarray, held: np.ndarray, gap: float, flow: np.ndarray) -> np.ndarray:
    """The labels of ``comp``'s pieces within ``gap`` cells of ``held`` whose median flow is nearer the
    ``attached`` pieces' than that of the background within the same reach."""
    near = grown(held, gap)
    candidates = np.setdiff1d(np.unique(comp[near & (comp > 0)]), attached)
    background = near & (comp == 0)
    if not candidates.size or not background.any():
        return candidates[:0]
    body = np.median(flow[np.isin(comp, attached)], 0)
    around = np.median(flow[background], 0)
    own = [np.median(flow[comp == j], 0) for j in candidates]
    return np.asarray([j for j, f in zip(candidates, own)
                       if np.linalg.norm(f - body) < np.linalg.norm(f - around)], candidates.dtype)

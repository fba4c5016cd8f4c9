"""Posterior -> mask at image edges: an edge-aware minimum cut on the GP's probabilities, n-D.

The GP posterior says how much each location looks like the clicked object; its features are
smoothed over several pixels, so its 0.5 level set wanders a pixel or two off the true edge.  A
minimum cut (Boykov & Jolly, 2001) moves it onto the image edges: the unary cost of a label is
``-log p`` from the posterior, the pairwise cost of cutting between neighbours is
``weight * exp(-|dI|^2 / 2 beta) / spacing`` (cheap across strong edges, dear in flat regions).

Only the *uncertain band* is cut: locations whose latent mean lies within ``band`` of 0 and that lie
within ``reach`` (mm; pixels for rasters) of the posterior's current boundary.  The rest
keep the posterior's label and enter the graph as terminal costs of their band neighbours, so the
graph is a thin shell around the boundary and the cut costs a fraction of a full-image one.
Clicked locations are hard constraints: they keep the label that was clicked, and the part of
the GP's mask around a positive click is never cut to almost nothing (:func:`restore_collapsed`).

An optional appearance term adds a colour model's log-likelihood ratio to the unaries, the model
refitted to the GP's own labelling at every click (GrabCut's idea, with the GP in place of its
iterations): where the posterior is unsure, colours seen inside the object pull toward it.
"""
from __future__ import annotations

import itertools
from typing import Callable, Sequence

import maxflow
import numpy as np
from scipy import ndimage as ndi
from scipy.special import log_ndtr

from .colour import looks_rgb, rgb_to_lab

CAPACITY_SCALE = 1000.0  # costs are kept to 1e-3 as integers, so that the cut is exact and reproducible


def _capacity(cost: np.ndarray) -> np.ndarray:
    return np.rint(cost * CAPACITY_SCALE).astype(np.int32)


def neighbour_offsets(ndim: int, connectivity: int = 1) -> list[tuple[int, ...]]:
    """One offset per undirected neighbour pair: those with at most ``connectivity`` non-zero steps
    (1: faces, the 4/6-neighbourhood; ndim: the full 8/26-neighbourhood), first non-zero step +1."""
    steps = itertools.product((-1, 0, 1), repeat=ndim)
    return [o for o in steps if 0 < sum(map(abs, o)) <= connectivity and o[next(i for i, v in enumerate(o) if v)] == 1]


def pair_slices(offset: Sequence[int]) -> tuple[tuple[slice, ...], tuple[slice, ...]]:
    """(p, q) slices: ``a[p]`` and ``a[q]`` are the two ends of every pair along ``offset``."""
    p = tuple(slice(0, -1) if o > 0 else slice(1, None) if o < 0 else slice(None) for o in offset)
    q = tuple(slice(1, None) if o > 0 else slice(0, -1) if o < 0 else slice(None) for o in offset)
    return p, q


def edge_weights(channels: np.ndarray, spacing: Sequence[float],
                 connectivity: int = 1) -> list[tuple[tuple[int, ...], np.ndarray]]:
    """Per neighbour offset o, ``(o, w)`` with ``w[p]`` the similarity of p and p + o (on the pairs'
    grid, see :func:`pair_slices`): ``exp(-|I_p - I_q|^2 / 2 beta) * g(o)``, beta the mean squared
    difference over the face pairs.

    The geometric factor g makes a cut's cost approximate its boundary's length (area): on the face
    neighbourhood it is 1 / spacing, and a cut pays the L1 length of its boundary, so where the image
    has no edge to follow the cheapest boundary runs along the grid axes (metrication: blocky, axis-
    aligned edges through flat regions).  With diagonal neighbours g(o) = c / |o|^(ndim-1) (the Cauchy-
    Crofton weights of Boykov & Kolmogorov 2003 in 2D, their usual approximation in 3D), c chosen so an
    axis-aligned boundary costs what it costs with faces alone."""
    ndim = channels.ndim - 1
    faces = [np.square(np.diff(channels, axis=a)).sum(-1, dtype=np.float32) for a in range(ndim)]
    beta = max(float(np.mean([d.mean(dtype=np.float64) for d in faces])), 1e-12)
    out = []
    for o, g in pair_geometry(ndim, spacing, connectivity):
        if sum(map(abs, o)) == 1:
            d = faces[o.index(1)]
        else:
            p, q = pair_slices(o)
            d = np.square(channels[p] - channels[q]).sum(-1, dtype=np.float32)
        out.append((o, np.exp(d * np.float32(-0.5 / beta)) * np.float32(g)))
    return out


def pair_geometry(ndim: int, spacing: Sequence[float], connectivity: int = 1) -> list[tuple[tuple[int, ...], float]]:
    """``(offset, g)`` per neighbour offset: the geometric factor of :func:`edge_weights`."""
    spacing = np.asarray(spacing, dtype=np.float64)
    offsets = neighbour_offsets(ndim, connectivity)
    # per unit of an axis-aligned boundary, every offset with a +1 step across it is cut once
    crossing = sum(np.linalg.norm(o) ** (1 - ndim) for o in offsets if o[0] == 1)
    out = []
    for o in offsets:
        g = 1.0 / float(np.linalg.norm(np.asarray(o) * spacing))  # 1 / spacing along the axis for a face
        if connectivity > 1:
            g *= float(np.linalg.norm(o)) ** (2 - ndim) / crossing
        out.append((o, g))
    return out


def sparse_edge_weights(channels: np.ndarray, known: np.ndarray, spacing: Sequence[float],
                        connectivity: int = 1) -> list[tuple[tuple[int, ...], Callable]]:
    """:func:`edge_weights` as functions of the pairs' first ends, for a cut whose band is a small part of
    the array: ``channels`` need only be filled where ``known`` is true (the band and its neighbours), and
    beta is the mean squared face difference over the pairs of known locations."""
    ndim = channels.ndim - 1
    # one flat plane per channel: a pair's difference is then two 1-D gathers per channel, several times
    # faster than gathering (n, C) rows by index tuples
    planes = [np.ascontiguousarray(channels[..., c]).ravel() for c in range(channels.shape[-1])]
    strides = np.cumprod((1,) + channels.shape[ndim - 1:0:-1])[::-1]  # elements per step along each axis

    def squared_differences(one: np.ndarray, other: np.ndarray) -> np.ndarray:
        d = np.zeros(len(one), np.float32)
        for plane in planes:
            t = plane[one] - plane[other]
            t *= t
            d += t
        return d

    known_flat = known.ravel()
    where = np.flatnonzero(known_flat)
    coords = np.unravel_index(where, known.shape)
    means = []
    for a in range(ndim):  # per axis, as edge_weights averages them: with every location known, the same weights
        one = where[coords[a] < known.shape[a] - 1]
        one = one[known_flat[one + strides[a]]]
        if one.size:
            means.append(squared_differences(one, one + strides[a]).mean(dtype=np.float64))
    beta = max(float(np.mean(means)) if means else 0.0, 1e-12)

    def weight(offset, g):
        step = int(np.dot(offset, strides))
        scale = np.float32(-0.5 / beta)

        def at(first):
            one = np.ravel_multi_index(first, known.shape)
            d = squared_differences(one, one + step)
            d *= scale
            np.exp(d, out=d)
            d *= np.float32(g)
            return d
        return at

    return [(o, weight(o, g)) for o, g in pair_geometry(ndim, spacing, connectivity)]


def contrast_channels(array: np.ndarray) -> np.ndarray:
    """(*spatial, C) channels whose Euclidean differences are perceptual: CIE Lab for RGB, else as is."""
    return rgb_to_lab(array) if looks_rgb(array) else array.astype(np.float32, copy=False)


def cut(latent: np.ndarray, weights: list[tuple[tuple[int, ...], np.ndarray]], *, strength: float, band: float = 1.5,
        reach: float = 20.0, spacing: Sequence[float] | None = None, positives: Sequence[tuple[int, ...]] = (),
        negatives: Sequence[tuple[int, ...]] = (), appearance: np.ndarray | None = None) -> np.ndarray:
    """Foreground (bool, latent's shape) of the minimum cut.

    ``latent``: GP latent mean (foreground where > 0; probability Phi(latent));  ``weights``: the
    ``(offset, w)`` pairs of :func:`edge_weights`, or of :func:`sparse_edge_weights` (``w`` a function of
    the pairs' first ends: only the band's pairs are ever read);  ``strength``: pairwise weight against the unaries;
    ``band``, ``reach``: the locations that may change (see the module's doc);  ``positives`` /
    ``negatives``: index tuples that must come out foreground / background."""
    gp_fg = latent > 0
    fg = gp_fg.copy()
    free = np.abs(latent) < band
    if np.isfinite(reach):
        free &= near_boundary(fg, reach, spacing)
    for v in positives:
        free[v], fg[v] = False, True
    for v in negatives:
        free[v], fg[v] = False, False
    n = int(free.sum())
    if n == 0 or strength <= 0:
        return fg
    node = np.full(latent.shape, -1, dtype=np.int64)
    node[free] = np.arange(n)
    lat = latent[free].astype(np.float64)
    # terminal costs: source side = foreground, so a source edge carries the cost of background
    cost_bg, cost_fg = -log_ndtr(-lat), -log_ndtr(lat)  # -log P(background), -log P(foreground)
    if appearance is not None:  # log P(colour | fg) / P(colour | bg): a positive ratio makes background dearer
        r = appearance[free].astype(np.float64)
        cost_bg += np.maximum(r, 0)
        cost_fg += np.maximum(-r, 0)
    # Boykov-Kolmogorov max-flow (PyMaxflow) on integer capacities.  The terminals are swapped --
    # PyMaxflow's source is background -- because it puts nodes left in neither search tree on the
    # source side: so the foreground is the sink tree, the locations that reach the foreground
    # terminal in the residual graph.  That is the unique smallest minimum-cut foreground, the same
    # set whichever max-flow algorithm found the flow.
    # at most one edge per free location and offset: reserving them up front saves the graph's reallocations,
    # which otherwise cost more than adding the edges
    graph = maxflow.GraphInt(n, n * len(weights))
    graph.add_nodes(n)
    # the graph is built from the free locations alone (the band), not from every pair of the image
    ids = np.arange(n)
    at = np.nonzero(free)
    coords, shape = np.stack(at), np.asarray(latent.shape)[:, None]
    lowest, highest = coords.min(1, keepdims=True), coords.max(1, keepdims=True)
    for offset, w in weights:
        origin = [s.start or 0 for s in pair_slices(offset)[0]]  # w[i] is the pair (i + origin, i + origin + offset)
        # each free location as the pair's first end, then as its second
        for sign in (1, -1):
            step = sign * np.asarray(offset)[:, None]
            other = coords + step
            if (lowest + step >= 0).all() and (highest + step < shape).all():  # no neighbour off the array
                mine, theirs = ids, other
            else:
                inside = ((other >= 0) & (other < shape)).all(0)
                mine, theirs = ids[inside], other[:, inside]
            partner = node[tuple(theirs)]
            if sign == -1:  # a pair of two free ends was added from its first end already
                keep = partner < 0
                mine, theirs, partner = mine[keep], theirs[:, keep], partner[keep]
            theirs = tuple(theirs)
            first = (at if mine is ids else tuple(a[mine] for a in at)) if sign == 1 else theirs
            pairs = w(first) if callable(w) else w[tuple(c - o for c, o in zip(first, origin))]
            wa = strength * pairs.astype(np.float64)
            if sign == 1:  # two free ends: one edge, added from its first end
                both = partner >= 0
                cap = _capacity(wa[both])
                graph.add_edges(mine[both], partner[both], cap, cap)
            # a free location next to a fixed one pays the edge if it takes the other label (each free
            # location meets a given offset's partner once per sign: plain indexing adds without repeats)
            fixed = partner < 0
            fixed_fg = fg[theirs][fixed]
            cost_bg[mine[fixed][fixed_fg]] += wa[fixed][fixed_fg]
            cost_fg[mine[fixed][~fixed_fg]] += wa[fixed][~fixed_fg]
    graph.add_grid_tedges(ids, _capacity(cost_fg), _capacity(cost_bg))
    graph.maxflow()
    fg[free] = graph.get_grid_segments(ids)
    return restore_collapsed(fg, gp_fg, positives)


def restore_collapsed(fg: np.ndarray, gp_fg: np.ndarray, positives: Sequence[tuple[int, ...]],
                      min_fraction: float = 0.1) -> np.ndarray:
    """The cut may move a boundary, not erase an object: where the part around a positive click is
    left with less than ``min_fraction`` of the GP's own part there, the GP's part comes back.
    (Graph cuts shrink what they are unsure of: in a flat, noise-free region every cut edge costs
    the full pairwise weight, and a weakly supported object can collapse onto its click.)"""
    if not positives:
        return fg
    gp_parts, _ = ndi.label(gp_fg)
    cut_parts, _ = ndi.label(fg)
    for v in positives:
        if gp_parts[v] and (cut_parts == cut_parts[v]).sum() < min_fraction * (gp_parts == gp_parts[v]).sum():
            fg |= gp_parts == gp_parts[v]
    return fg


def near_boundary(fg: np.ndarray, reach: float, spacing: Sequence[float] | None = None) -> np.ndarray:
    """Locations within ``reach`` (in the units of ``spacing``) of the boundary of ``fg``."""
    edge = fg ^ ndi.binary_erosion(fg, border_value=1)
    edge |= ~fg & ndi.binary_dilation(fg)
    if not edge.any():
        return np.zeros_like(fg)
    return ndi.distance_transform_edt(~edge, sampling=spacing) <= reach


class ColourModel:
    """The colour model GrabCut fits, as joint histograms so a refit costs two bincounts:
    ``log_ratio(fg)`` = log P(c | fg) - log P(c | bg) per location, from the histograms of the
    channels inside and outside ``fg``, smoothed by one bin and clipped to +-``clip``.  The
    quantisation (``bins`` bins over the widest channel's range, fewer when there are many channels,
    so the table stays below 2^20 cells) is done once per image."""

    def __init__(self, channels: np.ndarray, *, bins: int = 40, clip: float = 4.0) -> None:
        flat = channels.reshape(-1, channels.shape[-1])
        bins = max(2, min(bins, int(2 ** (20 / flat.shape[1]))))
        # one bin width for all channels (the widest range over bins): Lab distances stay perceptual
        # and a channel that barely varies is not blown up into noise
        self.lo = flat.min(0)
        self.step = max(float((flat.max(0) - self.lo).max()) / bins, 1e-6)
        self.shape = (bins,) * flat.shape[1]
        self.code = self.codes(channels)
        self.clip = clip

    def codes(self, channels: np.ndarray) -> np.ndarray:
        """The histogram cell of each colour (``channels`` (..., C), any of them), (...)."""
        flat = channels.reshape(-1, channels.shape[-1])
        q = np.clip(((flat - self.lo) / self.step).astype(np.int64), 0, self.shape[0] - 1)
        return np.ravel_multi_index(tuple(q.T), self.shape).reshape(channels.shape[:-1])

    def table(self, fg: np.ndarray) -> np.ndarray:
        """log P(c | fg) - log P(c | bg) per histogram cell, from this model's colours split by ``fg``."""
        code, cells = self.code.ravel(), int(np.prod(self.shape))
        dens = []
        for inside in (fg.ravel(), ~fg.ravel()):
            h = np.bincount(code[inside], minlength=cells).reshape(self.shape).astype(np.float64)
            h = ndi.gaussian_filter(h, 1.0, mode="constant") + 1e-3  # unseen colours: no opinion
            dens.append(h / h.sum())
        return np.clip(np.log(dens[0] / dens[1]), -self.clip, self.clip).astype(np.float32).ravel()

    def log_ratio(self, fg: np.ndarray) -> np.ndarray:
        return self.table(fg)[self.code]

"""A Gaussian Markov random field on a supervoxel graph: a GP whose precision is sparse.

The image is cut into supervoxels (SLIC); each is a node of a graph, and the field is the SPDE
(Lindgren-Rue) discretisation of ``(1 / range^2 - div(w grad)) f = white noise`` on it:

    K = B^T diag(w) B + V / range^2,    precision Q = K V^-1 K,    covariance Q^-1 = K^-1 V K^-1
    w_ab = exp(-|g_a - g_b|^2 / (contrast m)) area_ab / dist_ab

with B the signed incidence matrix of adjacent supervoxels, V their volumes (mm^3), g their mean
intensities (channels standardised), m the median of the nonzero |g_a - g_b|^2 over the edges (the
typical step inside tissue; at least ``NOISE_STEPS`` times the median noise of the two means, from the
image's noise and each one's voxel count (:func:`image_noise`), so that flat tissue's noise is not read as
edges), area their contact (mm^2) and dist the distance of their centroids (mm).
The covariance spreads through neighbours that look alike, up to the image's edges, and decays over
``range`` mm where nothing stops it.  K alone as the precision (a first-order field, the random
walker's) has a covariance that in 3D falls like 1/r from a spike at the node itself: a click would
label its own supervoxel and little else; the squared operator has a finite, smooth covariance.
The covariance is scaled so the median prior variance is the outputscale, as the stationary kernels have it.

A click on node x brings the kernel's column ``K^-1 V K^-1 e_x`` (two solves with the factor of K made
once per image, cached per node).  The field is used summed with the stationary GP, as one GP on the sum of
the two kernels (the Session's ``latent: sum``; :mod:`volseg.gp.field_share`), where the kernel is the correlation
``k(a, b) / sqrt(k(a, a) k(b, b))``: the prior variance of the SPDE field varies by orders of magnitude
from node to node, and a node whose variance dwarfs the GP's would take every click for itself.  It is
multiplied by an RBF on the nodes' mean intensities (``GPConfig.gmrf_appearance``): the SPDE field correlates
whatever conducting contacts join, and a region that only touches the clicked one softly takes less of its
label when it also looks different.

Works for any number of spatial axes; the image's channels are the intensities compared.
"""
from __future__ import annotations

from typing import NamedTuple

import numpy as np
import scipy.sparse as sp
from scipy import ndimage as ndi
from scipy.optimize import brentq
from scipy.sparse.linalg import splu
from skimage.segmentation import slic

SAMPLES = 32            # prior samples for the covariance's scale (its median prior variance)
PRIOR_SAMPLES = 256     # prior samples for each node's prior variance (relative error about sqrt(2 / this))
SLIC_VOXELS = 4_000_000  # SLIC runs on a strided copy of larger images (its labels are then repeated back)
SLIC_ITERATIONS = 5
SLIC_COMPACTNESS = 0.1  # on standardised intensities: supervoxels follow the image more than a grid
SLIC_SIGMA = 0.0
# the fewest voxels per requested supervoxel: asked for more, SLIC's grid step rounds to one voxel and every
# voxel becomes a node, whose "mean" intensity is the noise itself, which the contrast then reads as edges
# everywhere (a 24x28x20 volume under the default 15000 nodes: a click filled nothing; from about 3 voxels a
# node down it degenerates, so 6 keeps a margin)
MIN_NODE_VOXELS = 6
# the typical step is at least this many times the median noise of a contact's two means (image_noise).  In
# flat tissue the steps are that noise alone, and their median would make every other contact inside an
# object an edge; real volumes' steps are mostly larger (texture, anatomy), so there it rarely binds
# (benchmarks/README.md, 3D: chosen on the tune part from 10 and 30)
NOISE_STEPS = 10.0
# median |d|^2 of neighbouring voxels' difference d, per unit of white noise variance: (0.6745 sqrt(2))^2
WHITE_SQUARE_MEDIAN = 2 * 0.6745 ** 2
# image_noise: the widest noise correlation told apart from anatomy, rho(1) of a Gaussian correlation 1 voxel wide
WIDEST_NOISE_Q = float(np.exp(-0.25))


class SupervoxelGraph:
    """Supervoxels of an image, their adjacency and the GMRF's sparse operator K (before scaling).

    ``labels`` (*spatial) int32: each voxel's node; ``incidence`` (edges, nodes) signed; ``weights``
    (edges,) the conductances; ``volume`` (nodes,) mm^3; ``mass`` volume / range^2, the diagonal that
    sets the range."""

    def __init__(self, image: np.ndarray, spacing, *, n_nodes: int, range_mm: float, contrast: float,
                 channel_axis: int | None = -1) -> None:
        spacing = np.asarray(spacing, np.float64)
        a = np.asarray(image, np.float32)
        if channel_axis is None:
            a = a[..., None]
        spatial = a.shape[:-1]
        if len(spatial) != len(spacing):
            raise ValueError(f"image has {len(spatial)} spatial axes, spacing {len(spacing)}")
        if n_nodes < 2 or range_mm <= 0 or contrast <= 0:
            raise ValueError("a GMRF needs at least 2 nodes, a positive range and a positive contrast")
        # the whole image's statistics standardise the strided copy SLIC runs on (only that copy is kept)
        flat = a.reshape(-1, a.shape[-1])
        mean, std = flat.mean(0), flat.std(0) + 1e-12
        step = max(1, int(np.ceil((np.prod(spatial) / SLIC_VOXELS) ** (1.0 / len(spatial)))))
        coarse = (a[tuple(slice(None, None, step) for _ in spatial)] - mean) / std
        n_nodes = max(2, min(int(n_nodes), int(np.prod(spatial)) // MIN_NODE_VOXELS))
        lab = slic(coarse, n_segments=n_nodes, compactness=SLIC_COMPACTNESS, spacing=spacing,
                   channel_axis=-1, start_label=0, max_num_iter=SLIC_ITERATIONS, enforce_connectivity=True,
                   sigma=SLIC_SIGMA)
        lab = _relabel(lab)
        n = int(lab.max()) + 1
        voxel = spacing * step
        # node means of each channel, and centroids (mm), on the strided grid
        counts = np.bincount(lab.ravel(), minlength=n).astype(np.float64)
        means = np.stack([np.bincount(lab.ravel(), coarse[..., c].ravel(), n) for c in range(coarse.shape[-1])], 1)
        means /= counts[:, None]
        centroids = np.stack([np.bincount(lab.ravel(), np.broadcast_to(
            (np.arange(size) * v).reshape([-1 if j == i else 1 for j in range(lab.ndim)]), lab.shape).ravel(), n)
            for i, (size, v) in enumerate(zip(lab.shape, voxel))], 1) / counts[:, None]
        # each node mean's variance under the image's noise (not its voxels' spread: SLIC groups voxels of
        # like intensity, so that spread understates the noise)
        mean_noise = image_noise(coarse).of_means(counts)
        pairs, areas = _contacts(lab, voxel)
        d2 = ((means[pairs[:, 0]] - means[pairs[:, 1]]) ** 2).sum(1)
        # the typical step inside tissue; flat padding (a skull-stripped MR's zeros) has steps of exactly 0
        # and would make every real step look like an edge
        kept = d2 > 1e-6 * max(float(d2.max(initial=0.0)), 1e-12)  # no edges: a volume of one node
        typical = max(float(np.median(d2[kept])) if kept.any() else 1.0, 1e-12)
        # ... but not below the noise of the means: where tissue is flat, its steps are that noise alone,
        # and their median would make half of the contacts inside an object edges
        if kept.any():
            noise = (mean_noise[pairs[:, 0]] + mean_noise[pairs[:, 1]])[kept]
            typical = max(typical, NOISE_STEPS * float(np.median(noise)))
        dist = np.linalg.norm(centroids[pairs[:, 0]] - centroids[pairs[:, 1]], axis=1).clip(min=voxel.min())
        # adjacent node pairs and each contact's conductance factor (1 where the two look alike, 0 at an edge)
        self.pairs, self.openness = pairs, np.exp(-d2 / (contrast * typical))
        self.weights = self.openness * areas / dist
        self.means, self.typical = means, typical  # for the appearance factor of the sum's kernel
        m = len(pairs)
        self.incidence = sp.csr_matrix((np.r_[np.ones(m), -np.ones(m)],
                                        (np.r_[np.arange(m), np.arange(m)], np.r_[pairs[:, 0], pairs[:, 1]])),
                                       shape=(m, n))
        self.volume = counts * float(np.prod(voxel))
        self.mass = self.volume / range_mm ** 2
        self.labels = _repeat_back(lab, step, spatial)
        self.n = n
        self._bounds: tuple[np.ndarray, np.ndarray] | None = None

    @property
    def bounds(self) -> tuple[np.ndarray, np.ndarray]:
        """Each node's bounding box in voxels, ``[lo, hi)`` as two (nodes, ndim) arrays, made on first use:
        where a change of the field on some nodes shows on the voxels."""
        if self._bounds is None:
            lo = np.zeros((self.n, self.labels.ndim), np.int64)
            hi = np.zeros((self.n, self.labels.ndim), np.int64)
            for i, box in enumerate(ndi.find_objects(self.labels + 1, max_label=self.n)):
                if box is not None:
                    lo[i], hi[i] = [s.start for s in box], [s.stop for s in box]
            self._bounds = lo, hi
        return self._bounds

    def similarity(self, node: int, steps: float) -> np.ndarray:
        """``exp(-|g - g_node|^2 / (2 steps m))`` for every node, (nodes,): an RBF on the nodes' mean intensities
        whose squared lengthscale is ``steps`` typical steps m (1 at the node itself)."""
        d2 = ((self.means - self.means[node]) ** 2).sum(1)
        return np.exp(-d2 / (2.0 * steps * self.typical))

    def operator(self) -> sp.csc_matrix:
        """The sparse operator K = B^T diag(w) B + diag(volume) / range^2; the precision is K V^-1 K."""
        B = self.incidence
        return (B.T @ sp.diags(self.weights) @ B + sp.diags(self.mass)).tocsc()

    def white_noise(self, rng: np.random.Generator, k: int) -> np.ndarray:
        """k right-hand sides b with Cov(b) = V, so K^-1 b is an exact prior sample, (nodes, k)."""
        return rng.standard_normal((self.n, k)) * np.sqrt(self.volume)[:, None]


class GMRF:
    """The prior: K factorised once, the covariance scaled so the median prior variance is ``outputscale``;
    the kernel columns of clicked nodes (cached), and their correlations."""

    def __init__(self, graph: SupervoxelGraph, outputscale: float = 1.0, seed: int = 0, *,
                 correlation: bool = False, appearance: float = 0.0) -> None:
        """``correlation``: estimate the prior variances :meth:`correlation` divides by now, with the factor,
        rather than at its first use (an interactive session's first click).  ``appearance`` > 0: the
        correlation is multiplied by :meth:`SupervoxelGraph.similarity` with that many typical steps."""
        self.graph = graph
        self.appearance = float(appearance)
        self._lu = splu(graph.operator(), permc_spec="MMD_AT_PLUS_A", diag_pivot_thresh=0.0,
                        options={"SymmetricMode": True})
        samples = self._lu.solve(graph.white_noise(np.random.default_rng(seed), SAMPLES))
        self.scale = outputscale / float(np.median((samples * samples).mean(1)))  # of the covariance
        self._seed = seed
        self._prior_variance: np.ndarray | None = None
        self._columns: dict[int, np.ndarray] = {}
        if correlation:
            self._prior_variance = self._sample_prior_variance()

    @property
    def n(self) -> int:
        return self.graph.n

    def column(self, node: int) -> np.ndarray:
        """The kernel between node and every node, (nodes,)."""
        if node not in self._columns:
            e = np.zeros(self.n)
            e[node] = 1.0
            self._columns[node] = self._lu.solve(self._lu.solve(e) * self.graph.volume) * self.scale
        return self._columns[node]

    @property
    def prior_variance(self) -> np.ndarray:
        """Each node's prior variance, (nodes,), estimated from PRIOR_SAMPLES exact samples (made on first
        use): it varies by orders of magnitude (a supervoxel walled in by edges keeps its variance to
        itself), and every correlation is divided by it, so it takes more samples than the posterior's
        variance estimate."""
        if self._prior_variance is None:
            self._prior_variance = self._sample_prior_variance()
        return self._prior_variance

    def _sample_prior_variance(self) -> np.ndarray:
        samples = self._lu.solve(self.graph.white_noise(np.random.default_rng(self._seed + 1), PRIOR_SAMPLES))
        return (samples * samples).mean(1) * self.scale

    def correlation(self, node: int) -> np.ndarray:
        """The kernel between node and every node over their prior standard deviations, (nodes,): a
        kernel whose prior variance is 1 everywhere, so that summed with a stationary one each node
        has the same share of it.  With ``appearance`` it is multiplied by an RBF on the nodes' mean
        intensities (a product of two kernels, still one): a region joined to the click's by conducting
        contacts but looking unlike it takes less of the click's label."""
        sd = np.sqrt(self.prior_variance)
        out = self.column(node) / (sd[node] * sd)
        return out * self.graph.similarity(node, self.appearance) if self.appearance > 0 else out


class ImageNoise(NamedTuple):
    """An image's noise: its variance (summed over channels) and the sum of its correlation over the voxel
    lattice (1 for white noise).  The mean of n voxels has a noise variance ``variance * min(correlation_sum,
    n) / n``: correlated noise averages out over fewer independent voxels."""
    variance: float
    correlation_sum: float

    def of_means(self, counts: np.ndarray) -> np.ndarray:
        """The noise variance of the means of ``counts`` voxels each."""
        counts = np.asarray(counts, np.float64)
        return self.variance * np.minimum(self.correlation_sum, counts) / counts


def image_noise(image: np.ndarray) -> ImageNoise:
    """The noise of an n-D image (``(*spatial, channels)``), from its robust variogram at lags 1 and 2 along
    each axis.

    Along an axis, ``median |x[i + h] - x[i]|^2 = 0.6745^2 2 sigma^2 (1 - rho(h))``: medians, so that edges and
    shading, a minority of the differences, do not count; windows that touch flat padding (a skull-stripped
    MR's zeros, the air outside a CT's field of view) are left out.  The noise's correlation is taken as
    Gaussian, ``rho(k) = q^(k^2)``, so the ratio of the two lags, ``1 + q + q^2 + q^3``, gives q (0: white
    noise; a reconstruction kernel or a resampling makes it larger), then sigma^2, and the axis's correlation
    sum ``sum_k q^(k^2)``.  An axis whose ratio exceeds that of a correlation 1 voxel wide is dominated by
    smooth anatomy, not noise, and is left out; with every axis left out the noise is taken as white."""
    variances, correlation_sum, lag1s = [], 1.0, []
    for axis in range(image.ndim - 1):
        lag1, lag2 = _variogram(image, axis)
        lag1s.append(lag1)
        if lag1 is None or lag2 is None or lag1 <= 0:
            continue
        ratio = max(lag2 / lag1, 1.0)
        if ratio > _lag_ratio(WIDEST_NOISE_Q):
            continue
        q = brentq(lambda x: _lag_ratio(x) - ratio, 0.0, WIDEST_NOISE_Q) if ratio > 1.0 else 0.0
        variances.append(lag1 / (WHITE_SQUARE_MEDIAN * (1.0 - q)))
        correlation_sum *= 1.0 + 2.0 * sum(q ** (k * k) for k in range(1, 16))
    if variances:
        return ImageNoise(float(np.mean(variances)), correlation_sum)
    white = [v for v in lag1s if v is not None]
    return ImageNoise(float(np.mean(white)) / WHITE_SQUARE_MEDIAN if white else 0.0, 1.0)


def _lag_ratio(q: float) -> float:
    """``(1 - rho(2)) / (1 - rho(1))`` for ``rho(k) = q^(k^2)``."""
    return 1.0 + q + q * q + q ** 3


def _variogram(image: np.ndarray, axis: int) -> tuple[float | None, float | None]:
    """``median |x[i + lag] - x[i]|^2`` along ``axis`` at lags 1 and 2, summed over channels, over the windows
    that touch no flat padding (None: no window left).  A voxel equal to a neighbour along the axis in every
    channel is padding: its own differences hold no noise, and those across padding's edge are an edge's,
    which a longer lag would count more often than a shorter one."""
    n = image.shape[axis]

    def along(a: np.ndarray, start: int, stop: int | None) -> np.ndarray:  # a view, sliced along the axis
        return a[tuple(slice(start, stop) if k == axis else slice(None) for k in range(a.ndim))]

    if n < 2:
        return None, None
    same = (along(image, 1, None) == along(image, 0, -1)).all(-1)
    flat = np.zeros(image.shape[:-1], bool)
    along(flat, 1, None)[...] |= same
    along(flat, 0, -1)[...] |= same
    lags: list[float | None] = []
    for lag in (1, 2):
        if n <= lag:
            lags.append(None)
            continue
        clear = ~along(flat, 0, n - lag)
        for k in range(1, lag + 1):
            clear &= ~along(flat, k, n - lag + k)
        d = np.abs(along(image, lag, None)[clear] - along(image, 0, n - lag)[clear])
        lags.append(float((np.median(d, 0) ** 2).sum()) if len(d) else None)
    return lags[0], lags[1]


def _relabel(lab: np.ndarray) -> np.ndarray:
    """Consecutive labels 0..n-1 (SLIC may skip some)."""
    _, inverse = np.unique(lab, return_inverse=True)
    return inverse.reshape(lab.shape).astype(np.int32)


def _contacts(lab: np.ndarray, voxel: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Adjacent node pairs (a < b) across voxel faces, (E, 2), and their contact areas in mm^2, (E,)."""
    n = int(lab.max()) + 1
    keys, areas = [], []
    for axis in range(lab.ndim):
        a = lab[tuple(slice(0, -1) if i == axis else slice(None) for i in range(lab.ndim))].ravel()
        b = lab[tuple(slice(1, None) if i == axis else slice(None) for i in range(lab.ndim))].ravel()
        cut = a != b
        lo, hi = np.minimum(a[cut], b[cut]).astype(np.int64), np.maximum(a[cut], b[cut]).astype(np.int64)
        keys.append(lo * n + hi)
        areas.append(np.full(len(lo), float(np.prod(np.delete(voxel, axis)))))
    keys, areas = np.concatenate(keys), np.concatenate(areas)
    unique, inverse = np.unique(keys, return_inverse=True)
    total = np.bincount(inverse, areas, len(unique))
    return np.stack([unique // n, unique % n], 1), total


def _repeat_back(lab: np.ndarray, step: int, shape: tuple[int, ...]) -> np.ndarray:
    """Labels of a strided grid brought back to the full one (each voxel takes its stride's label)."""
    if step == 1:
        return lab
    out = lab
    for axis, size in enumerate(shape):
        out = np.repeat(out, step, axis=axis)[tuple(slice(0, size) if i == axis else slice(None)
                                                    for i in range(len(shape)))]
    return np.ascontiguousarray(out)


__all__ = ["GMRF", "SAMPLES", "ImageNoise", "SupervoxelGraph", "image_noise"]

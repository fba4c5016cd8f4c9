"""The per-frame GP of video propagation: exact posterior mean with a noise level per training point.

Training points come from the memory bank (:mod:`volseg.video.memory`); each has a feature
vector ``f`` and a position ``p`` (both already divided by their lengthscales), a residual target
``r = y - m0`` (label minus the prior mean it had when it was stored) and its own noise ``s2_i``,
which grows with the point's distance in time from user input.  The kernel is

    k(x, x') = k_f(f, f') * (w_g + (1 - w_g) * k_s(p, p'))

with ``k_f``, ``k_s`` the RBF of :mod:`volseg.gp.kernels` (``exp(-|d|^2 / 2)`` on pre-scaled
inputs).  The ``w_g`` term matches a location against the memory by appearance alone, wherever
it is (MA-Net's *global* matching); the product term matches only within the spatial lengthscale
(*local* matching, a soft window).  Both are PSD, so their sum is a valid kernel.  With
``A = K + diag(s2)``, ``alpha = A^-1 R``:

    mean(x) = m0(x) + k(x, X) alpha,       p(object) = Phi(mean)

Only the mean is evaluated (the variance would cost an N x N solve per location, ~N times more
than the mean); ``Phi(mean)`` has the same 0.5 level set as the probit of the full posterior.
At a training point the mean is ``m0 + r_i - s2_i alpha_i = y_i - s2_i alpha_i``, so a point that
must keep its label (a user click) keeps it while ``|s2_i alpha_i| < 1``; :meth:`fit` lowers the
noise of such points until that holds, through the loop :class:`volseg.gp.posterior.ExactPosterior`
uses for all clicks (:mod:`volseg.gp.linalg`, which takes numpy arrays as well as torch tensors).

A memory larger than ``VideoConfig.expert_points`` is split by appearance into groups, one exact GP
each (:class:`LocalExperts`): a larger memory matches more of the object's looks, and the groups keep
its cost near one small GP's.

Numpy/scipy rather than torch: on a CPU, numpy's ``exp`` and the BLAS matmul over a (locations x
points) block cost less per call than torch's for these small shapes, where torch's per-call
overhead dominates.
"""
from __future__ import annotations

import numpy as np
from scipy.special import ndtr

from ..gp.fused import video_kernel
from ..gp.kernels import EXP_FLOOR, squared_distance
from ..gp.linalg import MIN_NOISE, solve_keeping_labels

MAX_NOISE_ROUNDS = 8  # factorisations spent lowering the clicks' noise before the fit settles for what it has


def rbf(d2: np.ndarray) -> np.ndarray:
    """RBF of squared distances, in place (unit lengthscale and outputscale)."""
    d2 *= -0.5
    np.maximum(d2, EXP_FLOOR, out=d2)  # no subnormal values or products: they are much slower
    return np.exp(d2, out=d2)


def _rows(f: np.ndarray) -> np.ndarray:
    """(n, D + 2) float32 ``[f, 1, |f|^2]``: times :func:`_columns` of x, the RBF exponent
    ``f.x - |x|^2/2 - |f|^2/2 = -|f - x|^2 / 2``, norms folded into the one matmul."""
    out = np.empty((f.shape[0], f.shape[1] + 2), np.float32)
    out[:, :-2], out[:, -2], out[:, -1] = f, 1.0, np.einsum("ij,ij->i", f, f)
    return out


def _columns(x: np.ndarray) -> np.ndarray:
    """(D + 2, N) float32 ``[x; -|x|^2/2; -1/2]``, the other factor of :func:`_rows`."""
    out = np.empty((x.shape[1] + 2, x.shape[0]), np.float32)
    out[:-2], out[-2], out[-1] = x.T, -0.5 * np.einsum("ij,ij->i", x, x), -0.5
    return out


class MemoryPosterior:
    def __init__(self, global_weight: float = 0.3, chunk: int = 512) -> None:
        if not 0.0 <= global_weight <= 1.0:
            raise ValueError(f"global_weight must be in [0, 1], got {global_weight}")
        self.wg = float(global_weight)
        self.chunk = int(chunk)
        self.n = 0

    def gram(self, P: np.ndarray) -> np.ndarray:
        """K (N, N) of the points being fitted, in float64, from their centred features :attr:`F` and the
        augmented columns :attr:`X` the posterior mean reads too; exponents in float32 (the noise on the
        diagonal, >= 1e-3 for all but clicks, dwarfs their rounding)."""
        K = _rows(self.F) @ self.X  # -|f_i - f_j|^2 / 2 in one matmul
        video_kernel(K, None, None, None, None, 1.0)
        K = K.astype(np.float64)
        if self.wg < 1.0:
            P = np.asarray(P, np.float64)
            K *= self.wg + (1.0 - self.wg) * rbf(squared_distance(P, P))
        np.fill_diagonal(K, 1.0)
        return K

    def fit(self, F: np.ndarray, P: np.ndarray, R: np.ndarray, noise: np.ndarray,
            keep: np.ndarray | None = None) -> "MemoryPosterior":
        """F (N, Df), P (N, 2) scaled inputs; R (N, K) residual targets; noise (N,); keep (N,) bool:
        points whose label must survive (user clicks)."""
        self.n = int(F.shape[0])
        if self.n == 0:
            return self
        noise = np.asarray(noise, np.float64).copy()
        keep = np.zeros(self.n, bool) if keep is None else np.asarray(keep, bool)

        def lower(noise: np.ndarray, lost: np.ndarray) -> np.ndarray | None:
            # conflicting points: interpolate the clicks that lost their label harder
            if noise[keep].max(initial=0.0) <= MIN_NOISE:
                return None
            noise = noise.copy()
            noise[lost] = np.maximum(noise[lost] * 0.01, MIN_NOISE)
            return noise

        F = np.asarray(F, np.float32)
        self.center = F.mean(0)  # keeps |f|^2 small in the matmul trick
        self.F = np.ascontiguousarray(F - self.center)
        self.P = np.ascontiguousarray(P, np.float32)
        self.X = _columns(self.F)
        # Double precision: a float32 Cholesky's backward error grows as N eps |A|, and |A| reaches N where many
        # memory points look alike, which puts the error near the memory's noise of 0.05.
        _, alpha, self.noise = solve_keeping_labels(self.gram(P), np.asarray(R, np.float64), noise, keep, lower,
                                                    max_rounds=MAX_NOISE_ROUNDS)
        self.alpha = alpha.astype(np.float32)
        return self

    def latent(self, F: np.ndarray, rows: np.ndarray, cols: np.ndarray, row_coords: np.ndarray,
               col_coords: np.ndarray, M0: np.ndarray) -> np.ndarray:
        """Posterior mean (n, K) at grid locations: F (n, Df) scaled features, ``rows``/``cols`` (n,)
        integer grid indices whose scaled coordinates are ``row_coords``/``col_coords``; M0 (n, K).

        Cost per block: one matmul gives the feature exponent ``f.x - |x|^2/2 - |f|^2/2`` (norms folded
        into augmented columns), one exp, and the spatial factor is separable on the grid --
        ``k_s = e_row[r] * e_col[c]`` from two small tables -- so no exp over the block is spent on it."""
        out = np.array(M0, np.float32, copy=True)
        if self.n == 0:
            return out
        n = F.shape[0]
        grid_rows = np.asarray(row_coords, np.float32)[:, None]
        grid_cols = np.asarray(col_coords, np.float32)[:, None]
        e_row = e_col = None  # wg 1: no spatial factor
        if self.wg < 1.0:
            e_row = ((1.0 - self.wg) * np.exp(-0.5 * (grid_rows - self.P[None, :, 0]) ** 2)).astype(np.float32)
            e_col = np.exp(-0.5 * (grid_cols - self.P[None, :, 1]) ** 2).astype(np.float32)
        fa = _rows(np.asarray(F, np.float32) - self.center)
        k = np.empty((min(self.chunk, n), self.n), np.float32)  # one block, reused
        for a in range(0, n, self.chunk):
            block = k[:min(self.chunk, n - a)]
            np.matmul(fa[a:a + self.chunk], self.X, out=block)
            video_kernel(block, e_row, e_col, rows[a:a + self.chunk], cols[a:a + self.chunk], self.wg)
            out[a:a + self.chunk] += block @ self.alpha
        return out


class LocalExperts:
    """The memory's posterior as local experts: a memory of more than ``size`` points is split by
    appearance into groups of at most ``size``, each an exact :class:`MemoryPosterior`, and a location is
    matched against the group its features fall in (hard gating, as in local GP regression; Snelson and
    Ghahramani, AISTATS 2007).

    Why it holds: at the video kernel's short feature lengthscale a location's posterior mean comes almost
    only from the memory points that look like it, which sit in its own group.  What it saves: ``g`` groups
    of ``N/g`` points cost ``g (N/g)^3`` to factorise instead of ``N^3``, and a location is compared with
    ``N/g`` points instead of ``N``, so a larger memory fits a frame's time.  A click is in the group its
    own features fall in, and so is its location, so it keeps its label.  ``size`` 0, or a memory of at
    most ``size`` points, is the single exact GP.

    The groups are the leaves of a tree of splits in feature space (:func:`bisect`): each split is 2-means
    with its boundary kept between the 35% and 65% quantiles, so the groups stay of like sizes (the
    factorisation's cube would punish a large one) while boundaries still fall where the points are sparse."""

    def __init__(self, global_weight: float = 0.3, size: int = 0, chunk: int = 512) -> None:
        self.wg = float(global_weight)
        self.size = int(size)
        self.chunk = int(chunk)
        self.splits: list[tuple[np.ndarray, float, int, int]] = []  # (w, t, below, above); >= 0 a split, < 0 ~leaf
        self.experts: list[MemoryPosterior] = []
        self.n = 0

    @property
    def largest(self) -> int:
        """Points in the largest group (what one factorisation costs)."""
        return max((e.n for e in self.experts), default=0)

    def fit(self, F: np.ndarray, P: np.ndarray, R: np.ndarray, noise: np.ndarray,
            keep: np.ndarray | None = None) -> "LocalExperts":
        """As :meth:`MemoryPosterior.fit`, one exact GP per group."""
        self.n = n = int(F.shape[0])
        F, P, R, noise = np.asarray(F, np.float32), np.asarray(P), np.asarray(R), np.asarray(noise)
        keep = np.zeros(n, bool) if keep is None else np.asarray(keep, bool)
        self.splits, self.experts = [], []

        def grow(at: np.ndarray) -> int:
            """The node (>= 0: a split, < 0: ~expert) holding the points ``at``."""
            if self.size and at.size > self.size:
                w, t = bisect(F[at])
                below = F[at] @ w < t
                if below.any() and not below.all():  # points that all look the same stay together
                    node = len(self.splits)
                    self.splits.append((w, t, 0, 0))  # its place, before the children take theirs
                    self.splits[node] = (w, t, grow(at[below]), grow(at[~below]))
                    return node
            self.experts.append(MemoryPosterior(self.wg, self.chunk).fit(F[at], P[at], R[at], noise[at], keep[at]))
            return ~(len(self.experts) - 1)

        grow(np.arange(n))
        return self

    def group(self, F: np.ndarray) -> np.ndarray:
        """(n,) the group (expert index) each feature vector falls in: all splits' projections in one matmul,
        then every location steps down the tree together, one level a step."""
        if not self.splits:
            return np.zeros(F.shape[0], np.int64)
        w = np.stack([split[0] for split in self.splits], 1)
        t = np.array([split[1] for split in self.splits], np.float32)
        child = np.array([split[2:] for split in self.splits], np.int64)  # (below, above) per split
        projection = F @ w
        node = np.zeros(F.shape[0], np.int64)
        at = np.arange(F.shape[0])
        while at.size:
            split = node[at]
            node[at] = child[split, (projection[at, split] >= t[split]).astype(np.int64)]
            at = at[node[at] >= 0]
        return ~node

    def latent(self, F: np.ndarray, rows: np.ndarray, cols: np.ndarray, row_coords: np.ndarray,
               col_coords: np.ndarray, M0: np.ndarray) -> np.ndarray:
        """As :meth:`MemoryPosterior.latent`, each location through its group's expert (locations sorted by
        group once, so each expert reads one contiguous block)."""
        if len(self.experts) <= 1:
            if not self.experts:
                return np.array(M0, np.float32, copy=True)
            return self.experts[0].latent(F, rows, cols, row_coords, col_coords, M0)
        F = np.asarray(F, np.float32)
        group = self.group(F)
        order = np.argsort(group, kind="stable")
        bounds = np.searchsorted(group[order], np.arange(len(self.experts) + 1))
        F, rows, cols, M0 = F[order], np.asarray(rows)[order], np.asarray(cols)[order], np.asarray(M0)[order]
        out = np.empty(M0.shape, np.float32)
        for expert, a, b in zip(self.experts, bounds[:-1], bounds[1:]):
            if b > a:
                out[order[a:b]] = expert.latent(F[a:b], rows[a:b], cols[a:b], row_coords, col_coords, M0[a:b])
        return out


def bisect(F: np.ndarray, iterations: int = 5, balance: float = 0.35) -> tuple[np.ndarray, float]:
    """A split of points F (n, D) into two groups, ``F @ w < t`` and the rest: 2-means started across the
    principal axis, whose boundary (the hyperplane halfway between the two means) is moved, if need be,
    so that each side keeps at least ``balance`` of the points."""
    F = np.asarray(F, np.float32)
    mean = F.mean(0)
    centred = F - mean
    axis = np.linalg.eigh((centred.T @ centred).astype(np.float64))[1][:, -1].astype(np.float32)
    below = centred @ axis < 0
    total = F.sum(0, dtype=np.float64)
    for _ in range(iterations):
        count = int(below.sum())
        if count in (0, len(F)):
            break
        sum_below = below.astype(np.float32) @ F  # the two means without gathering either side
        a, b = sum_below / count, (total - sum_below) / (len(F) - count)
        w, t = (b - a).astype(np.float32), float((b @ b - a @ a) / 2)
        below = F @ w < t
    else:
        lo, hi = np.quantile(F @ w, [balance, 1.0 - balance])
        return w, float(np.clip(t, lo, hi))
    return axis, float(np.median(centred @ axis) + mean @ axis)


def probability(latent: np.ndarray) -> np.ndarray:
    """Phi(latent), the probit link of volseg.gp.likelihood without the variance term."""
    return ndtr(latent).astype(np.float32)


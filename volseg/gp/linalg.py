"""The GP core's linear algebra: Cholesky with jitter, and the noise loop that keeps clicked labels.

One owner for the session's posterior (:mod:`volseg.gp.posterior`, torch float64), training
(:mod:`volseg.gp.differentiable`, torch with autograd) and video propagation
(:mod:`volseg.video.gp`, numpy/scipy, faster than torch on its small shapes).  Every function
takes either array kind and factorises with that kind's library, so the formulas are written once.

With ``A = K + diag(s2)`` and ``alpha = A^-1 R`` (R the targets minus the prior mean), the
posterior mean at a training point is exactly ``y_n - s2_n alpha_n``: a point keeps its label
while ``|s2_n alpha_n| < 1``.  :func:`solve_keeping_labels` lowers the noise until every point
that must keep its label (a click) does, with a margin of :data:`LABEL_MARGIN`.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import numpy as np
import torch
from scipy import linalg as scipy_linalg

LABEL_MARGIN = 0.5  # a clicked location's posterior mean stays at least this far on its side of 0
MIN_NOISE = 1e-9
JITTER_TRIES = 8


@dataclass(frozen=True)
class _Backend:
    """How one array library factorises: ``factorise(A)`` is the lower Cholesky factor (scipy's
    (factor, lower) pair), or None where A is not positive definite; ``solve(factor, B) = A^-1 B``."""

    factorise: Callable
    solve: Callable
    error: type


def _torch_factorise(A: torch.Tensor) -> torch.Tensor | None:
    L, info = torch.linalg.cholesky_ex(A)
    return L if int(info) == 0 else None


def _numpy_factorise(A: np.ndarray):
    try:
        return scipy_linalg.cho_factor(A, lower=True, check_finite=False)
    except scipy_linalg.LinAlgError:
        return None


_TORCH = _Backend(_torch_factorise, lambda L, B: torch.cholesky_solve(B, L), torch.linalg.LinAlgError)
_NUMPY = _Backend(_numpy_factorise, scipy_linalg.cho_solve, scipy_linalg.LinAlgError)


def _backend(A) -> _Backend:
    return _TORCH if isinstance(A, torch.Tensor) else _NUMPY


def add_diagonal(A, d):
    """``A + diag(d)`` as a new matrix, for a vector or a scalar ``d`` (off the diagonal A is unchanged)."""
    if isinstance(A, torch.Tensor):
        d = torch.as_tensor(d, dtype=A.dtype, device=A.device).expand(A.shape[0])
        return A + torch.diag(d)
    out = A.copy()
    out.flat[::A.shape[0] + 1] += np.asarray(d, A.dtype)  # the diagonal's elements, without an N x N diag(d)
    return out


def cholesky_with_jitter(A):
    """The Cholesky factor of A (torch: L; numpy: scipy's ``(c, lower)`` for :func:`cho_solve`), adding
    escalating jitter to the diagonal where A is positive semi-definite only up to rounding."""
    backend = _backend(A)
    jitter = 0.0
    for _ in range(JITTER_TRIES):
        factor = backend.factorise(add_diagonal(A, jitter) if jitter else A)
        if factor is not None:
            return factor
        jitter = max(jitter * 10.0, 1e-10 * _mean_diagonal(A))
    raise backend.error("kernel matrix is not positive definite even with jitter")


def _mean_diagonal(A) -> float:
    """The scale jitter is measured against (a training graph's A is read, not differentiated)."""
    if not A.shape[0]:
        return 1.0
    return float((A.detach() if isinstance(A, torch.Tensor) else A).diagonal().mean())


def cholesky_solve(factor, B):
    """``A^-1 B`` from :func:`cholesky_with_jitter`'s factor of A."""
    return _backend(B).solve(factor, B)


def labels_lost(noise, alpha, keep):
    """(N,) bool: the points in ``keep`` whose posterior mean ``y - s2 alpha`` is not on their label's
    side of 0 with the margin; noise (N,), alpha (N, K)."""
    return keep & (abs(noise[:, None] * alpha) >= 1.0 - LABEL_MARGIN).any(1)


def solve_keeping_labels(K, R, noise, keep, lower: Callable, max_rounds: int | None = None):
    """Factor ``A = K + diag(noise)`` and solve ``alpha = A^-1 R``, lowering the noise until every point
    in ``keep`` keeps its label: conflicting nearby clicks then interpolate harder.

    ``lower(noise, lost)`` gives the lowered noise (N,) (how much, and where, is the caller's model),
    or None where it cannot go lower; at most ``max_rounds`` factorisations (None: until ``lower``
    stops).  Returns (factor, alpha, the noise they were made with)."""
    rounds = 0
    while True:
        factor = cholesky_with_jitter(add_diagonal(K, noise))
        alpha = cholesky_solve(factor, R)
        rounds += 1
        lost = labels_lost(noise, alpha, keep)
        if not bool(lost.any()) or rounds == max_rounds:
            return factor, alpha, noise
        lowered = lower(noise, lost)
        if lowered is None:
            return factor, alpha, noise
        noise = lowered


__all__ = ["LABEL_MARGIN", "MIN_NOISE", "add_diagonal", "cholesky_solve", "cholesky_with_jitter", "labels_lost",
           "solve_keeping_labels"]

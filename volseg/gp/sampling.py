"""Pathwise (decoupled) posterior samples, after Wilson et al., ICML 2020.

    f_post(x) = m0(x) + f_prior(x) + k(x, X) (K + s2 I)^-1 (y - m0(X) - f_prior(X) - eps)

``f_prior`` is a random-Fourier-feature draw whose frequencies come from the kernel's own
spectral density (so it is a draw from *this* kernel), eps ~ N(0, s2) (each point's own noise).
The update term uses the exact kernel, so samples interpolate the clicks like the exact posterior
does, and evaluating a sample costs O(basis + N) per location, streamed in chunks like the mean.
"""
from __future__ import annotations

import math

import torch

from .posterior import ExactPosterior


class PathwiseSampler:
    def __init__(self, posterior: ExactPosterior, input_dim: int, *, n_samples: int = 16, n_basis: int = 1024,
                 seed: int = 0) -> None:
        if posterior.n == 0:
            raise ValueError("pathwise samples need at least one click")
        g = torch.Generator().manual_seed(seed)
        dt, dev = posterior.compute_dtype, posterior.device
        K = posterior.R.shape[1]
        self.posterior = posterior
        self.n_samples, self.n_objects = n_samples, K
        self.omega = posterior.kernel.sample_frequencies(n_basis, input_dim, generator=g, dtype=torch.float64)
        self.phase = 2.0 * math.pi * torch.rand(n_basis, generator=g, dtype=torch.float64)
        self.weights = torch.randn(n_basis, n_samples * K, generator=g, dtype=torch.float64)
        self.scale = math.sqrt(2.0 * posterior.kernel.outputscale / n_basis)
        # the update weights, solved once in float64 against the exact factor
        f_train = self._prior(posterior.Z, self.omega, self.phase, self.weights)
        noise = torch.randn(posterior.n, n_samples * K, generator=g, dtype=torch.float64)
        eps = posterior.point_noise().sqrt()[:, None] * noise
        target = posterior.R.repeat_interleave(n_samples, dim=1) - f_train - eps
        v = torch.cholesky_solve(target, posterior.L)
        self._omega, self._phase = self.omega.to(dev, dt), self.phase.to(dev, dt)
        self._weights, self._v = self.weights.to(dev, dt), v.to(dev, dt)

    def _prior(self, z, omega, phase, weights) -> torch.Tensor:
        return self.scale * torch.cos(z @ omega.T + phase) @ weights

    def sample(self, z: torch.Tensor, m0: torch.Tensor) -> torch.Tensor:
        """Samples of f at a chunk of inputs: (n, K, S).  m0 is the prior mean (n, K)."""
        f = self._prior(z, self._omega, self._phase, self._weights)
        f = f + self.posterior.kernel_to_train(z) @ self._v
        f = f.reshape(z.shape[0], self.n_objects, self.n_samples)
        return f + m0[:, :, None]

    @property
    def flops_per_location(self) -> int:
        L, D = self.omega.shape
        cols = self.n_samples * self.n_objects
        return 2 * L * D + 2 * L * cols + 2 * self.posterior.n * (D + cols)

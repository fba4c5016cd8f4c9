"""Stationary kernels on pre-scaled inputs (unit lengthscale), one formula each.

Lengthscales live in the input map (:mod:`volseg.gp.inputs`), which divides every feature
group by its own lengthscale, so a kernel here sees ``z`` with all lengthscales 1.  Each kernel
also knows its spectral density, so random Fourier features drawn from it
(:meth:`sample_frequencies`) reproduce exactly this kernel -- the requirement of pathwise
posterior sampling.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch

# Kernel values of far-apart locations underflow into subnormal floats, and every product and
# square taken of them afterwards too; CPUs compute subnormals far more slowly than normal numbers.
# Flooring the exponent at -40 keeps the kernel, its products with the weights and their squares
# normal in float32, and moves a kernel value by at most exp(-40) = 4e-18.
EXP_FLOOR = -40.0


def _exp(x: torch.Tensor) -> torch.Tensor:
    return torch.exp(x.clamp_min(EXP_FLOOR))


def squared_distance(a, b):
    """|a_i - b_j|^2 through one matrix multiply (the hot path), clamped at 0 against rounding; torch
    tensors or numpy arrays (the video GP's), (n, D) and (m, D) -> (n, m)."""
    d2 = (a * a).sum(-1)[:, None] - 2.0 * (a @ b.T) + (b * b).sum(-1)[None, :]
    return d2.clamp_min_(0.0) if isinstance(d2, torch.Tensor) else np.maximum(d2, 0.0, out=d2)


@dataclass(frozen=True)
class RBF:
    """k(z, z') = s^2 exp(-|z - z'|^2 / 2); spectral density N(0, I)."""

    outputscale: float = 1.0

    def __call__(self, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        return self.outputscale * _exp(-0.5 * squared_distance(a, b))

    def of_distance2(self, d2: torch.Tensor) -> torch.Tensor:
        return self.outputscale * _exp(-0.5 * d2)

    def of_neg_half_distance2(self, h: torch.Tensor) -> torch.Tensor:
        """k from h = -|z - z'|^2 / 2, consuming h in place: the hot path's single elementwise pass."""
        # h <= 0 up to rounding, and exp of a rounding error is 1 to float precision
        out = h.clamp_min_(EXP_FLOOR).exp_()
        return out.mul_(self.outputscale) if self.outputscale != 1.0 else out

    def radius(self, tol: float) -> float:
        """Distance beyond which k < tol * outputscale."""
        return math.sqrt(2.0 * math.log(1.0 / tol))

    def sample_frequencies(self, n: int, dim: int, generator: torch.Generator | None = None,
                           dtype=torch.float32, device="cpu") -> torch.Tensor:
        return torch.randn(n, dim, generator=generator, dtype=dtype, device=device)


@dataclass(frozen=True)
class Matern:
    """Matern-nu (nu in 1/2, 3/2, 5/2): spectral density a multivariate Student-t with 2 nu dof."""

    nu: float = 2.5
    outputscale: float = 1.0

    def __post_init__(self) -> None:
        if self.nu not in (0.5, 1.5, 2.5):
            raise ValueError(f"Matern nu must be 0.5, 1.5 or 2.5, got {self.nu}")

    def __call__(self, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        return self.of_distance2(squared_distance(a, b))

    def of_neg_half_distance2(self, h: torch.Tensor) -> torch.Tensor:
        return self.of_distance2(h.mul_(-2.0).clamp_min_(0.0))

    def of_distance2(self, d2: torch.Tensor) -> torch.Tensor:
        # capped where exp(-r) reaches the floor, so the polynomial cannot lift a far value back up
        r = (torch.sqrt(d2 + 1e-12) * math.sqrt(2.0 * self.nu)).clamp_max(-EXP_FLOOR)
        if self.nu == 0.5:
            poly = torch.ones_like(r)
        elif self.nu == 1.5:
            poly = 1.0 + r
        else:
            poly = 1.0 + r + r * r / 3.0
        return self.outputscale * poly * _exp(-r)

    def radius(self, tol: float) -> float:
        # the polynomial factor is at most e^(r/2) for r >= 0, so exp(-r/2) < tol bounds it
        return 2.0 * math.log(1.0 / tol) / math.sqrt(2.0 * self.nu)

    def sample_frequencies(self, n: int, dim: int, generator: torch.Generator | None = None,
                           dtype=torch.float32, device="cpu") -> torch.Tensor:
        # omega = g / sqrt(u / (2 nu)), g ~ N(0, I), u ~ chi2(2 nu): Student-t with 2 nu dof
        g = torch.randn(n, dim, generator=generator, dtype=torch.float64)
        u = torch.distributions.Chi2(torch.tensor(2.0 * self.nu, dtype=torch.float64)).sample((n, 1))
        return (g / torch.sqrt(u / (2.0 * self.nu))).to(dtype=dtype, device=device)


@dataclass(frozen=True)
class MultiScaleRBF:
    """k(z, z') = s^2 exp(-|df|^2 / 2) [(1 - w) exp(-|dp|^2 / 2) + w exp(-r^2 |dp|^2 / 2)], with df the
    feature part and dp the position part (the last ``spatial_dims`` inputs) of z - z'.

    The sum of two GPs that share the feature kernel: one with the spatial lengthscale, one ``ratio``
    times shorter with a ``share`` of the variance.  Early clicks spread through the long one; where
    clicks crowd, the long one is pinned down and a new click's correction goes mostly into the short
    one, so a late click fixes its own error without lifting look-alike regions further away.
    Spectral density: the mixture of the two Gaussians, positions' frequencies r times wider in the
    second."""

    spatial_dims: int
    ratio: float = 4.0
    share: float = 0.3
    outputscale: float = 1.0

    def __call__(self, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        p = self.spatial_dims
        return self.of_neg_half_distance2(-0.5 * squared_distance(a[:, :-p], b[:, :-p]),
                                          -0.5 * squared_distance(a[:, -p:], b[:, -p:]))

    def of_neg_half_distance2(self, h_features: torch.Tensor, h_positions: torch.Tensor) -> torch.Tensor:
        """k from the two parts' -|d|^2 / 2, consuming both in place."""
        short = torch.add(h_features, h_positions, alpha=self.ratio ** 2).clamp_min_(EXP_FLOOR).exp_()
        out = h_features.add_(h_positions).clamp_min_(EXP_FLOOR).exp_()
        return out.mul_(1.0 - self.share).add_(short, alpha=self.share).mul_(self.outputscale)

    def radius(self, tol: float) -> float:
        # both terms are at most the long one's exp(-|dp|^2 / 2)
        return math.sqrt(2.0 * math.log(1.0 / tol))

    def sample_frequencies(self, n: int, dim: int, generator: torch.Generator | None = None,
                           dtype=torch.float32, device="cpu") -> torch.Tensor:
        omega = torch.randn(n, dim, generator=generator, dtype=torch.float64)
        short = torch.rand(n, generator=generator, dtype=torch.float64) < self.share
        omega[short, dim - self.spatial_dims:] *= self.ratio
        return omega.to(dtype=dtype, device=device)


KERNELS = ("rbf", "multiscale", "matern12", "matern32", "matern52")


def make_kernel(name: str = "rbf", outputscale: float = 1.0, *, spatial_dims: int = 0, ratio: float = 4.0,
                share: float = 0.3) -> RBF | Matern | MultiScaleRBF:
    name = name.lower()
    if name == "rbf":
        return RBF(outputscale)
    if name == "multiscale":
        if spatial_dims < 1:
            raise ValueError("the multiscale kernel needs the number of spatial dimensions")
        return MultiScaleRBF(spatial_dims, ratio, share, outputscale)
    if name.startswith("matern"):
        nu = {"matern12": 0.5, "matern32": 1.5, "matern52": 2.5, "matern": 2.5}.get(name)
        if nu is None:
            raise ValueError(f"unknown kernel {name!r}: {', '.join(KERNELS)}")
        return Matern(nu, outputscale)
    raise ValueError(f"unknown kernel {name!r}: {', '.join(KERNELS)}")

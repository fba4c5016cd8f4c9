"""Probit link: the probability that the latent f is positive, integrating over its posterior.

p(y=+1 | x) = Phi(mu / sqrt(1 + var)).  The sign of p - 1/2 is the sign of mu, so a clicked
location whose posterior mean interpolates its +-1 label is classified as clicked.
"""
from __future__ import annotations

import math

import torch


def probit(mean: torch.Tensor, var: torch.Tensor) -> torch.Tensor:
    return 0.5 * (1.0 + torch.erf(mean / torch.sqrt(2.0 * (1.0 + var))))


def probit_inverse(p: torch.Tensor, eps: float = 1e-4) -> torch.Tensor:
    """Latent value whose probit (with zero variance) is p; used to turn a prior probability into a prior mean."""
    p = p.clamp(eps, 1.0 - eps)
    return math.sqrt(2.0) * torch.erfinv(2.0 * p - 1.0)

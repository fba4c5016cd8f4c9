"""The GP posterior as a differentiable function, for training a backbone through it.

Same model as :class:`volseg.gp.posterior.ExactPosterior` and :class:`volseg.session.Session`:

    z(x)    = [ phi(x) / (l_f sqrt(D)) ,  pos_mm(x) / l_s ],   l_s = spatial_fraction * diagonal_mm
    k       = RBF(outputscale) on z
    mean(x) = m0(x) + k(x, X) (K + s2 I)^-1 (y - m0(X)),   var(x) = k(x, x) - k(x, X) (K + s2 I)^-1 k(X, x)

but every step keeps its autograd graph: gradients flow into the embeddings phi, the prior mean
m0 and the log hyper-parameters.  The solve is in float64 with the engine's Cholesky
(:mod:`.linalg`), the kernel rows in the embeddings' dtype.  The learned values are exported as
GPConfig fields (:meth:`GPHyper.gp_config`) so a Session built from the checkpoint uses exactly the
kernel the backbone was trained with.
"""
from __future__ import annotations

import math

import torch
from torch import nn

from .kernels import RBF
from .likelihood import probit
from .linalg import cholesky_solve, cholesky_with_jitter


class GPHyper(nn.Module):
    """Learned kernel hyper-parameters, stored as logs so they stay positive."""

    def __init__(self, feature_lengthscale: float = 0.5, spatial_fraction: float = 0.25, outputscale: float = 1.0,
                 noise: float = 1e-3, learn: bool = True) -> None:
        super().__init__()
        make = nn.Parameter if learn else (lambda t: t)
        self.log_feature_lengthscale = make(torch.tensor(math.log(feature_lengthscale)))
        self.log_spatial_fraction = make(torch.tensor(math.log(spatial_fraction)))
        self.log_outputscale = make(torch.tensor(math.log(outputscale)))
        # the noise stays fixed: small noise is what makes a clicked location keep its label
        self.register_buffer("noise", torch.tensor(float(noise)))

    @property
    def feature_lengthscale(self) -> torch.Tensor:
        return self.log_feature_lengthscale.exp()

    @property
    def spatial_fraction(self) -> torch.Tensor:
        return self.log_spatial_fraction.exp()

    @property
    def outputscale(self) -> torch.Tensor:
        return self.log_outputscale.exp()

    def gp_config(self) -> dict:
        """The GPConfig fields a Session needs to reproduce this kernel."""
        return {"kernel": "rbf", "feature_lengthscale": self.feature_lengthscale.item(),
                "spatial_fraction": self.spatial_fraction.item(), "spatial_lengthscale": None,
                "outputscale": self.outputscale.item(), "noise": self.noise.item()}


def standardise(emb: torch.Tensor, eps: float = 1e-5) -> torch.Tensor:
    """Per-image, per-channel zero mean and unit variance over the spatial axes of (C, *spatial):
    the same normalisation the filter bank applies, so the feature lengthscale means the same."""
    axes = tuple(range(1, emb.ndim))
    mean = emb.mean(axes, keepdim=True)
    std = emb.std(axes, keepdim=True, unbiased=False)
    return (emb - mean) / (std + eps)


def grid_positions(shape: tuple[int, ...], spacing=None, device=None, dtype=torch.float32) -> torch.Tensor:
    """Centred positions in mm of every location of ``shape`` in C order: (prod(shape), ndim)."""
    spacing = spacing or (1.0,) * len(shape)
    axes = [(torch.arange(n, device=device, dtype=dtype) - (n - 1) / 2.0) * float(s) for n, s in zip(shape, spacing)]
    return torch.stack(torch.meshgrid(*axes, indexing="ij"), dim=-1).reshape(-1, len(shape))


def gp_inputs(emb: torch.Tensor, hyper: GPHyper, spacing=None) -> torch.Tensor:
    """z for every location of one embedding map (D, *spatial): (prod(spatial), D + ndim)."""
    D, shape = emb.shape[0], tuple(emb.shape[1:])
    spacing = spacing or (1.0,) * len(shape)
    diag = math.sqrt(sum((n * s) ** 2 for n, s in zip(shape, spacing)))
    feats = emb.reshape(D, -1).T / (hyper.feature_lengthscale * math.sqrt(D))
    pos = grid_positions(shape, spacing, emb.device, emb.dtype) / (hyper.spatial_fraction * diag)
    return torch.cat([feats, pos], dim=1)


def posterior(z_train: torch.Tensor, y: torch.Tensor, m_train: torch.Tensor, z_query: torch.Tensor,
              m_query: torch.Tensor, outputscale: torch.Tensor | float, noise: torch.Tensor | float
              ) -> tuple[torch.Tensor, torch.Tensor]:
    """Posterior mean and variance at z_query (n,) given clicks z_train (N, Dz) with +-1 labels y (N,).

    Differentiable in every tensor argument; the (N, N) solve is in float64."""
    kernel = RBF(outputscale)
    K = kernel(z_train.double(), z_train.double())
    A = K + (noise + 1e-8) * torch.eye(K.shape[0], dtype=torch.float64, device=K.device)
    L = cholesky_with_jitter(A)
    alpha = cholesky_solve(L, (y.double() - m_train.double())[:, None])  # (N, 1)
    kx = kernel(z_query, z_train)  # (n, N), the bulk of the work, in the embeddings' dtype
    mean = m_query + (kx.double() @ alpha)[:, 0].to(kx.dtype)
    v = torch.linalg.solve_triangular(L, kx.double().T, upper=False)  # (N, n)
    var = (outputscale - (v * v).sum(0)).clamp_min(0.0).to(kx.dtype)
    return mean, var


def posterior_probability(z: torch.Tensor, m0: torch.Tensor, clicks: torch.Tensor, labels: torch.Tensor,
                          hyper: GPHyper) -> torch.Tensor:
    """P(object) at every location given flat click indices into z (N,) and their +-1 labels."""
    if clicks.numel() == 0:
        return probit(m0, torch.full_like(m0, float(hyper.outputscale)))
    mean, var = posterior(z[clicks], labels, m0[clicks], z, m0, hyper.outputscale, hyper.noise)
    return probit(mean, var)


__all__ = ["GPHyper", "gp_inputs", "grid_positions", "posterior", "posterior_probability", "standardise"]

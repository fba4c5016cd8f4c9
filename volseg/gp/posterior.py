"""Exact GP posterior over latent f given the clicks, in float64, with O(N^2) per added click.

Training targets are the click labels (+1 object, -1 background) minus the prior mean there.
With ``A = K + s2 I = L L^T`` and ``alpha = A^-1 (y - m0(X))``:

    mean(x) = m0(x) + k(x, X) alpha
    var(x)  = k(x, x) - |L^-1 k(X, x)|^2

At a training point the mean is exactly ``y_n - s2 alpha_n``, so ``|s2 alpha| < 1`` is the
condition under which every click keeps its label; :meth:`ExactPosterior.fit` lowers the noise
until it holds with a margin (:func:`volseg.gp.linalg.solve_keeping_labels`).  A point may carry
extra noise of its own (``extra``): a weak label that a click's neighbourhood lends it
(:mod:`volseg.seeds`), which need not be kept and yields to the clicks; its noise is ``s2 + extra``.
With ``per_point`` the noise is lowered only at the clicks that would lose their label, by halves:
lowering it everywhere makes the interpolant ring (weights of tens, bumps of foreground far from the
clicks), which a volume's long spatial kernel shows as a correcting click that adds false foreground
elsewhere.  Adding a click borders the Cholesky factor (no new solve from scratch) and undoing one
drops the last row, which leaves the leading factor unchanged.
"""
from __future__ import annotations

import torch

from .kernels import RBF, Matern, MultiScaleRBF
from .linalg import MIN_NOISE, cholesky_solve, labels_lost, solve_keeping_labels


class ExactPosterior:
    def __init__(self, kernel: RBF | Matern, noise: float = 1e-3, device: str | torch.device = "cpu",
                 compute_dtype: torch.dtype = torch.float32, *, per_point: bool = False) -> None:
        self.kernel = kernel
        self.noise = float(noise)
        self.requested_noise = float(noise)
        self.device = torch.device(device)
        self.compute_dtype = compute_dtype
        self.Z = torch.zeros(0, 0, dtype=torch.float64)
        self.R = torch.zeros(0, 0, dtype=torch.float64)  # residual targets y - m0(X), (N, K)
        self.L = torch.zeros(0, 0, dtype=torch.float64)
        self.alpha = torch.zeros(0, 0, dtype=torch.float64)
        self.extra = torch.zeros(0, dtype=torch.float64)  # per point noise on top of s2 (0: a click)
        self.per_point = per_point
        self.scale = torch.ones(0, dtype=torch.float64)  # per point factor on s2 (per_point: < 1 where lowered)

    @property
    def n(self) -> int:
        return int(self.Z.shape[0])

    # -- solve ---------------------------------------------------------------------------------
    def fit(self, Z: torch.Tensor, Y: torch.Tensor, M0: torch.Tensor,
            extra: torch.Tensor | None = None, gram: torch.Tensor | None = None) -> "ExactPosterior":
        """Solve from scratch: Z (N, Dz) inputs, Y (N, K) +-1 labels, M0 (N, K) prior means, ``extra`` (N,)
        each point's noise on top of s2 (default 0: all clicks).  ``gram`` (N, N): the covariance of a second
        latent summed with this one at the points (a sum kernel, whose other part the caller evaluates:
        the mean is then ``m0 + k(x, X) alpha`` plus that part's ``k2(x, X) alpha``); such a fit is
        refitted whole on every change, as :meth:`append` knows only this kernel."""
        self.Z = Z.detach().to("cpu", torch.float64)
        self.R = Y.detach().to("cpu", torch.float64) - M0.detach().to("cpu", torch.float64)
        self.extra = torch.zeros(self.n, dtype=torch.float64) if extra is None else \
            torch.as_tensor(extra, dtype=torch.float64).reshape(self.n).clone()
        self.noise = self.requested_noise
        self.scale = torch.ones(self.n, dtype=torch.float64)
        K = self.kernel(self.Z, self.Z)
        if gram is not None:
            K = K + torch.as_tensor(gram, dtype=torch.float64)
        self.L, self.alpha, _ = solve_keeping_labels(K, self.R, self.point_noise(), self.extra == 0, self._lower_noise)
        self._refresh()
        return self

    def _lower_noise(self, noise: torch.Tensor, lost: torch.Tensor) -> torch.Tensor | None:
        """The noise after one more round at the clicks that lost their label: halved there (per_point)
        or a hundredth everywhere; None once those clicks are at the floor."""
        if float(noise[lost].min()) <= MIN_NOISE:
            return None
        if self.per_point:
            self.scale[lost] *= 0.5
        else:
            self.noise *= 0.01
        return self.point_noise()

    def append(self, z: torch.Tensor, y: torch.Tensor, m0: torch.Tensor, extra: float = 0.0) -> "ExactPosterior":
        """Add one training point by bordering the Cholesky factor: O(N^2)."""
        z = z.detach().to("cpu", torch.float64).reshape(1, -1)
        r = (y.detach().to("cpu", torch.float64) - m0.detach().to("cpu", torch.float64)).reshape(1, -1)
        e = torch.tensor([float(extra)], dtype=torch.float64)
        if self.n == 0:
            return self.fit(z, r, torch.zeros_like(r), e)
        k = self.kernel(self.Z, z)  # (N, 1)
        c = torch.linalg.solve_triangular(self.L, k, upper=False)
        d2 = float(self.kernel(z, z)) + self.noise + float(extra) - float((c * c).sum())
        if d2 <= 1e-12 * (1.0 + self.noise):
            # numerically a duplicate of existing points: refit, which raises the jitter as needed
            return self.fit(torch.cat([self.Z, z]), torch.cat([self.R, r]),
                            torch.zeros(self.n + 1, r.shape[1], dtype=torch.float64), torch.cat([self.extra, e]))
        n = self.n
        L = torch.zeros(n + 1, n + 1, dtype=torch.float64)
        L[:n, :n] = self.L
        L[n, :n] = c[:, 0]
        L[n, n] = d2 ** 0.5
        self.Z, self.R, self.L = torch.cat([self.Z, z]), torch.cat([self.R, r]), L
        self.extra = torch.cat([self.extra, e])
        self.scale = torch.cat([self.scale, torch.ones(1, dtype=torch.float64)])
        self.alpha = cholesky_solve(self.L, self.R)
        if bool(self._labels_lost().any()):
            return self.fit(self.Z, self.R, torch.zeros_like(self.R), self.extra)
        self._refresh()
        return self

    def truncate(self, n: int) -> "ExactPosterior":
        """Keep the first n training points (undo): the leading block of L is their factor."""
        self.Z, self.R, self.L, self.extra = self.Z[:n], self.R[:n], self.L[:n, :n], self.extra[:n]
        self.scale = self.scale[:n]
        self.alpha = cholesky_solve(self.L, self.R) if n else self.R.clone()
        self._refresh()
        return self

    def train_mean_residual(self) -> torch.Tensor:
        """mean(X) - m0(X) at the training points, exactly R - s2_n alpha."""
        return self.R - self.point_noise()[:, None] * self.alpha

    def point_noise(self) -> torch.Tensor:
        """Each training point's noise variance, (N,)."""
        return self.noise * self.scale + self.extra

    def _labels_lost(self) -> torch.Tensor:
        """Which points are clicks whose label is not kept with the margin, (N,) bool; points with extra
        noise are weak labels that may yield."""
        return labels_lost(self.point_noise(), self.alpha, self.extra == 0)

    def schur_complement(self, z: torch.Tensor, extra: float, n: int) -> tuple[torch.Tensor, float]:
        """What a training point at ``z`` (1, Dz) with ``extra`` noise adds to the first ``n`` points:
        the weights ``w = A_n^-1 k(X_n, z)`` (n,) that project it onto them, and the Schur complement
        ``d2 = k(z, z) + s2 + extra - k(z, X_n) w``, its variance left unexplained plus its noise.  How
        far a point's addition or removal moves the maps scales with ``|w| / sqrt(d2)`` (:mod:`.reach`)."""
        z = z.detach().to("cpu", torch.float64)  # the solve lives on the CPU in float64
        k = self.kernel(self.Z[:n], z)
        w = cholesky_solve(self.L[:n, :n], k)[:, 0] if n else torch.zeros(0, dtype=torch.float64)
        d2 = float(self.kernel(z, z)) + self.noise + extra - (float(k[:, 0] @ w) if n else 0.0)
        return w, d2

    def _refresh(self) -> None:
        # float32 copies on the evaluation device (inputs are standardised features and positions
        # centred on the image, so |z|^2 stays small enough for the expanded-square trick in float32)
        dt, dev = self.compute_dtype, self.device
        self._alpha = self.alpha.to(dev, dt)
        eye = torch.eye(self.n, dtype=torch.float64)
        Linv = torch.linalg.solve_triangular(self.L, eye, upper=False) if self.n else eye
        self._Linv = Linv.to(dev, dt)
        # the hot path as two matrix multiplies: [z, |z|^2, 1] @ B = -|z - Z_n|^2 / 2 in one product,
        # then k @ [alpha | L^-T] gives the mean and the whitened row for the variance at once
        if self.n and isinstance(self.kernel, MultiScaleRBF):  # features and positions apart: two products
            p = self.kernel.spatial_dims
            self._B_parts = (_distance_factor(self.Z[:, :-p]).to(dev, dt), _distance_factor(self.Z[:, -p:]).to(dev, dt))
        elif self.n:
            self._B = _distance_factor(self.Z).to(dev, dt)
        self._W = torch.cat([self.alpha, Linv.T], dim=1).to(dev, dt)
        self._fused = None  # made on first use by fused_terms()

    def fused_terms(self) -> dict[str, torch.Tensor]:
        """The training terms as the fused CPU evaluation (:mod:`volseg.gp.fused`) reads them, float32
        and contiguous: Z (N, Dz), |Z|^2 / 2 (N,), alpha (N, K) and L^-1 (N, N)."""
        if self._fused is None:
            f32 = lambda t: t.to("cpu", torch.float32).contiguous()  # noqa: E731
            self._fused = {"Z": f32(self.Z), "half_sq": f32(0.5 * (self.Z * self.Z).sum(1)),
                           "alpha": f32(self.alpha), "Linv": f32(self._Linv)}
        return self._fused

    # -- evaluation ----------------------------------------------------------------------------
    def kernel_to_train(self, z: torch.Tensor, work: "Workspace | None" = None) -> torch.Tensor:
        """k(z, X) for a chunk of inputs (n, Dz) in the compute dtype.  ``work`` holds buffers reused
        from chunk to chunk (fresh large allocations are page-faulted in on every chunk)."""
        n, d = z.shape
        if isinstance(self.kernel, MultiScaleRBF):
            p = self.kernel.spatial_dims
            return self.kernel.of_neg_half_distance2(*(_augmented(part) @ B for part, B in
                                                       zip((z[:, :-p], z[:, -p:]), self._B_parts)))
        work = work or Workspace(n, d, self.n, self._W.shape[1], z.dtype, z.device)
        za = work.augmented[:n]
        if za.data_ptr() != z.data_ptr():  # the input map may have written z into the buffer already
            za[:, :d] = z
        torch.linalg.vector_norm(z, dim=1, out=za[:, d]).square_()
        za[:, d + 1] = 1.0
        return self.kernel.of_neg_half_distance2(torch.mm(za, self._B, out=work.kernel[:n]))

    def mean_var(self, z: torch.Tensor, m0: torch.Tensor, *, with_mean: bool = True, with_var: bool = True,
                 work: "Workspace | None" = None) -> tuple[torch.Tensor | None, torch.Tensor | None]:
        """Posterior mean (n, K) and variance (n,) for a chunk; m0 (n, K) or (1, K) is the prior mean there.
        Either can be skipped: the mask needs only the mean, so the session defers the variance.
        With ``work`` the results are views of its buffers, valid until the next chunk."""
        kdiag = self.kernel.outputscale
        if self.n == 0:
            return m0.expand(z.shape[0], -1), torch.full((z.shape[0],), kdiag, dtype=z.dtype, device=z.device)
        n, K = z.shape[0], self._alpha.shape[1]
        work = work or Workspace(n, z.shape[1], self.n, self._W.shape[1], z.dtype, z.device)
        kx = self.kernel_to_train(z, work)
        if not with_var:
            return torch.mm(kx, self._alpha, out=work.products_view(n, K)).add_(m0), None  # m0 may be one row
        W = self._W if with_mean else self._W[:, K:]
        mv = torch.mm(kx, W, out=work.products_view(n, W.shape[1]))
        v = mv[:, K:] if with_mean else mv
        var = (kdiag - (v * v).sum(1)).clamp_min_(0.0)
        return (mv[:, :K].add_(m0) if with_mean else None), var

    def flops_per_location(self, input_dim: int, *, with_var: bool = True) -> int:
        """Multiply-adds x2 of the matrix products plus the elementwise kernel (and variance) work."""
        n, K = self.n, self._alpha.shape[1]
        return (2 * n * input_dim + 2 * n * (K + (n if with_var else 0)) + 4 * n + 2 * input_dim
                + (3 * n if with_var else 0))


class Workspace:
    """Buffers for evaluating chunks of up to ``n`` locations: the augmented inputs [z, |z|^2, 1],
    the kernel row and the products with [alpha | L^-T].  Sized once per update and reused, so a
    chunk costs no allocation."""

    def __init__(self, n: int, input_dim: int, n_train: int, n_columns: int, dtype=torch.float32, device="cpu"):
        self.augmented = torch.empty(n, input_dim + 2, dtype=dtype, device=device)
        self.kernel = torch.empty(n, max(n_train, 1), dtype=dtype, device=device)
        self.products = torch.empty(n, max(n_columns, 1), dtype=dtype, device=device)

    def products_view(self, n: int, columns: int) -> torch.Tensor:
        """A contiguous (n, columns) output: BLAS writes a strided one several times slower."""
        return self.products.view(-1)[: n * columns].view(n, columns)

    def inputs(self, n: int, input_dim: int) -> torch.Tensor:
        """Where an input map may write z for n locations, so the posterior reads it without a copy."""
        return self.augmented[:n, :input_dim]


def _distance_factor(Z: torch.Tensor) -> torch.Tensor:
    """B with ``[z, |z|^2, 1] @ B = -|z - Z_n|^2 / 2``: the squared distances as one matrix product."""
    n = Z.shape[0]
    return torch.cat([Z.T, torch.full((1, n), -0.5, dtype=Z.dtype), -0.5 * (Z * Z).sum(1)[None, :]])


def _augmented(z: torch.Tensor) -> torch.Tensor:
    return torch.cat([z, (z * z).sum(1, keepdim=True), torch.ones_like(z[:, :1])], dim=1)

"""The GP engine against dense float64 references written out from the formulas."""
import math

import numpy as np
import pytest
import torch

from volseg.gp.evaluate import evaluate_boxes, slabs
from volseg.gp.inputs import InputMap
from volseg.gp.kernels import RBF, Matern, MultiScaleRBF, make_kernel, squared_distance
from volseg.gp.likelihood import probit
from volseg.gp.linalg import LABEL_MARGIN, MIN_NOISE, cholesky_solve, cholesky_with_jitter, solve_keeping_labels
from volseg.gp.posterior import ExactPosterior
from volseg.gp.sampling import PathwiseSampler


def dense_kernel(name, a, b, s2=1.0):
    r = np.sqrt(((a[:, None, :] - b[None, :, :]) ** 2).sum(-1))
    if name == "multiscale":  # 2 spatial dims, ratio 4, share 0.3 (make_kernel's defaults)
        df = ((a[:, None, :-2] - b[None, :, :-2]) ** 2).sum(-1)
        dp = ((a[:, None, -2:] - b[None, :, -2:]) ** 2).sum(-1)
        return s2 * np.exp(-0.5 * df) * (0.7 * np.exp(-0.5 * dp) + 0.3 * np.exp(-0.5 * 16.0 * dp))
    if name == "rbf":
        return s2 * np.exp(-0.5 * r * r)
    nu = {"matern12": 0.5, "matern32": 1.5, "matern52": 2.5}[name]
    x = math.sqrt(2 * nu) * r
    poly = {0.5: 1.0, 1.5: 1 + x, 2.5: 1 + x + x * x / 3}[nu]
    return s2 * poly * np.exp(-x)


def dense_posterior(kern, Z, Y, M0, Q, m0q, noise):
    A = dense_kernel(kern, Z, Z) + noise * np.eye(len(Z))
    kq = dense_kernel(kern, Q, Z)
    mean = m0q + kq @ np.linalg.solve(A, Y - M0)
    var = 1.0 - np.einsum("ij,ji->i", kq, np.linalg.solve(A, kq.T))
    return mean, var


@pytest.mark.parametrize("name", ["rbf", "multiscale", "matern12", "matern32", "matern52"])
def test_kernels_match_dense_formula(name):
    rng = np.random.default_rng(0)
    a, b = rng.normal(size=(7, 4)), rng.normal(size=(5, 4))
    k = make_kernel(name, spatial_dims=2)(torch.tensor(a), torch.tensor(b)).numpy()
    np.testing.assert_allclose(k, dense_kernel(name, a, b), rtol=1e-6, atol=1e-9)


@pytest.mark.parametrize("kernel", [RBF(), Matern(0.5), Matern(1.5), Matern(2.5), MultiScaleRBF(2)])
def test_random_features_match_kernel(kernel):
    """E[cos(w . d)] over the spectral density is k(d): the prior draws are draws of this kernel."""
    g = torch.Generator().manual_seed(1)
    w = kernel.sample_frequencies(400_000, 3, generator=g, dtype=torch.float64)
    # along a feature axis, along a position axis, and across both (the multiscale kernel's parts differ)
    directions = [[r, 0, 0] for r in (0.3, 1.0, 2.0)] + [[0, 0, r] for r in (0.3, 1.0, 2.0)]
    directions += [[r, r / 2, r / 3] for r in (0.3, 1.0, 2.0)]
    for d in [torch.tensor(v, dtype=torch.float64) for v in directions]:
        mc = torch.cos(w @ d).mean().item()
        exact = kernel(d[None], torch.zeros(1, 3, dtype=torch.float64)).item()
        assert abs(mc - exact) < 0.01, (d, mc, exact)


def test_kernel_radius_bounds_value():
    for k in (RBF(), Matern(0.5), Matern(1.5), Matern(2.5)):
        r = k.radius(1e-7)
        assert k.of_distance2(torch.tensor([r * r], dtype=torch.float64)).item() < 1e-7


def problem(n=9, m=40, dim=5, K=2, seed=0):
    rng = np.random.default_rng(seed)
    Z, Q = rng.normal(size=(n, dim)), rng.normal(size=(m, dim))
    Y = np.where(rng.random((n, K)) > 0.5, 1.0, -1.0)
    M0, m0q = rng.normal(scale=0.3, size=(n, K)), rng.normal(scale=0.3, size=(m, K))
    return Z, Y, M0, Q, m0q


@pytest.mark.parametrize("kernel", [RBF(), Matern(2.5)])
def test_far_kernel_values_are_never_subnormal(kernel):
    """Subnormal floats cost CPUs 20-30x; far-apart kernel values (and their products) must stay normal."""
    a, b = torch.zeros(1, 3), torch.tensor([[0.5, 0, 0], [9.0, 0, 0], [40.0, 0, 0], [400.0, 0, 0]])
    tiny = torch.finfo(torch.float32).tiny
    second = kernel.of_neg_half_distance2(-0.5 * (b * b).sum(1)[None].clone()) if isinstance(kernel, RBF) \
        else kernel(b, a).T
    for k in (kernel(a, b), second):
        assert (k >= 1e-6 * tiny ** 0.5).all() and (k * k >= tiny).all()
        assert k[0, 0] > 0.8 and k[0, -1] < 1e-14


@pytest.mark.parametrize("name", ["rbf", "multiscale", "matern52"])
def test_exact_posterior_matches_dense(name):
    """Including the hot path's matrix-product form of the kernel (two products for the multiscale kernel)."""
    Z, Y, M0, Q, m0q = problem()
    post = ExactPosterior(make_kernel(name, spatial_dims=2), noise=1e-3, compute_dtype=torch.float64)
    post.fit(torch.tensor(Z), torch.tensor(Y), torch.tensor(M0))
    mean, var = post.mean_var(torch.tensor(Q), torch.tensor(m0q))
    ref_mean, ref_var = dense_posterior(name, Z, Y, M0, Q, m0q, post.noise)
    np.testing.assert_allclose(mean.numpy(), ref_mean, atol=1e-8)
    np.testing.assert_allclose(var.numpy(), np.maximum(ref_var, 0), atol=1e-8)


def test_append_and_truncate_equal_fresh_solves():
    Z, Y, M0, Q, m0q = problem(n=8)
    def t(x):
        return torch.tensor(x)
    inc = ExactPosterior(RBF(), noise=1e-2, compute_dtype=torch.float64)
    for i in range(len(Z)):
        inc.append(t(Z[i]), t(Y[i]), t(M0[i]))
    fresh = ExactPosterior(RBF(), noise=1e-2, compute_dtype=torch.float64).fit(t(Z), t(Y), t(M0))
    np.testing.assert_allclose(inc.L.numpy(), fresh.L.numpy(), atol=1e-10)
    np.testing.assert_allclose(inc.alpha.numpy(), fresh.alpha.numpy(), atol=1e-8)
    inc.truncate(5)
    prefix = ExactPosterior(RBF(), noise=1e-2, compute_dtype=torch.float64).fit(t(Z[:5]), t(Y[:5]), t(M0[:5]))
    np.testing.assert_allclose(inc.mean_var(t(Q), t(m0q))[0].numpy(), prefix.mean_var(t(Q), t(m0q))[0].numpy(),
                               atol=1e-8)


def test_conflicting_close_clicks_keep_their_labels():
    """Adjacent-pixel inputs with opposite labels: the noise is lowered until each keeps its sign."""
    z = torch.tensor([[0.0, 0.0], [1e-2, 0.0], [5e-2, 0.0], [1.0, 0.0]], dtype=torch.float64)
    y = torch.tensor([[1.0], [-1.0], [1.0], [-1.0]], dtype=torch.float64)
    post = ExactPosterior(RBF(), noise=1e-2, compute_dtype=torch.float64).fit(z, y, torch.zeros_like(y))
    mean, _ = post.mean_var(z, torch.zeros_like(y))
    assert post.noise < 1e-2
    assert torch.all(torch.sign(mean) == y)
    assert torch.all(mean.abs() >= 0.5 - 1e-9)


def test_per_point_noise_is_lowered_only_where_a_label_would_be_lost():
    """per_point: the conflicting pair is interpolated harder, a far click keeps the noise it asked for,
    and a weak point (extra noise) may yield to a click on top of it."""
    z = torch.tensor([[0.0, 0.0], [1e-2, 0.0], [3.0, 0.0], [3.0, 0.0]], dtype=torch.float64)
    y = torch.tensor([[1.0], [-1.0], [1.0], [-1.0]], dtype=torch.float64)
    extra = torch.tensor([0.0, 0.0, 0.0, 2.0])
    post = ExactPosterior(RBF(), noise=1e-1, compute_dtype=torch.float64, per_point=True)
    post.fit(z, y, torch.zeros_like(y), extra)
    mean, _ = post.mean_var(z, torch.zeros_like(y))
    assert post.noise == 1e-1 and post.scale[0] < 1 and post.scale[1] < 1 and post.scale[2] == 1
    assert torch.all(torch.sign(mean[:3]) == y[:3]) and torch.all(mean[:3].abs() >= 0.5 - 1e-9)
    assert post.point_noise()[3] == pytest.approx(2.1)


def test_slabs_cover_box_once():
    box = (slice(2, 9), slice(0, 5), slice(1, 4))
    seen = np.zeros((9, 5, 4), int)
    for sub in slabs(box, 7):
        assert np.prod([s.stop - s.start for s in sub]) <= 7
        seen[sub] += 1
    assert (seen[box] == 1).all() and seen.sum() == 7 * 5 * 3


def test_chunked_equals_unchunked():
    rng = np.random.default_rng(3)
    feats = torch.tensor(rng.normal(size=(11, 13, 6, 4)), dtype=torch.float32)
    inputs = InputMap(feats, (1.0, 0.7, 2.5), feature_lengthscale=2.0, spatial_lengthscale=6.0)
    vox = np.array([[1, 2, 3], [8, 10, 1], [5, 5, 5]])
    post = ExactPosterior(RBF(), 1e-3).fit(inputs.at(vox).double(), torch.tensor([[1.0], [-1.0], [1.0]]),
                                           torch.full((3, 1), -0.5))
    box = tuple(slice(0, n) for n in feats.shape[:-1])
    def prior(b):
        return torch.full((int(np.prod([s.stop - s.start for s in b])), 1), -0.5)
    outs, threads = [], torch.get_num_threads()
    # one chunk; many chunks on one thread; many chunks shared by worker threads, over disjoint boxes
    for max_bytes, workers in ((10**9, 1), (500, 1), (2000, 3)):
        mean, var = torch.empty((1,) + feats.shape[:-1]), torch.empty(feats.shape[:-1])
        torch.set_num_threads(workers)
        try:
            evaluate_boxes(post, inputs, prior, [(slice(0, 4),) + box[1:], (slice(4, 11),) + box[1:]], mean, var,
                           max_bytes=max_bytes)
            assert torch.get_num_threads() == workers  # the workers' single-threaded ops leave it as it was
        finally:
            torch.set_num_threads(threads)
        outs.append((mean, var))
    for mean, var in outs[1:]:
        torch.testing.assert_close(outs[0][0], mean)
        torch.testing.assert_close(outs[0][1], var)
    # and both agree with the dense float64 formula
    Q = inputs.box(box).double().numpy()
    ref_mean, ref_var = dense_posterior("rbf", inputs.at(vox).double().numpy(), np.array([[1.0], [-1.0], [1.0]]),
                                        np.full((3, 1), -0.5), Q, np.full((len(Q), 1), -0.5), post.noise)
    np.testing.assert_allclose(outs[0][0].reshape(-1).numpy(), ref_mean[:, 0], atol=2e-4)
    np.testing.assert_allclose(outs[0][1].reshape(-1).numpy(), np.maximum(ref_var, 0), atol=2e-4)


@pytest.mark.parametrize("kernel", [RBF(), MultiScaleRBF(1, ratio=2.0)])
def test_pathwise_samples_match_exact_posterior(kernel):
    Z, Y, M0, Q, m0q = problem(n=6, m=25, dim=3, K=1, seed=5)
    Z, Q = Z * 0.7, Q * 0.7
    post = ExactPosterior(kernel, noise=1e-2, compute_dtype=torch.float64)
    post.fit(torch.tensor(Z), torch.tensor(Y), torch.tensor(M0))
    S = 4000
    sampler = PathwiseSampler(post, 3, n_samples=S, n_basis=4096, seed=0)
    f = sampler.sample(torch.tensor(Q), torch.tensor(m0q))[:, 0, :].numpy()
    mean, var = post.mean_var(torch.tensor(Q), torch.tensor(m0q))
    se = np.sqrt(var.numpy() / S) + 1e-3
    assert np.all(np.abs(f.mean(1) - mean[:, 0].numpy()) < 5 * se + 0.02)
    # variance: Monte Carlo error plus the random-feature approximation of the prior
    np.testing.assert_allclose(f.var(1), var.numpy(), atol=0.06)


def test_probit_link_sign_matches_mean():
    m = torch.linspace(-3, 3, 13)
    p = probit(m, torch.full_like(m, 0.7))
    assert torch.all((p > 0.5) == (m > 0)) and torch.all((p < 0.5) == (m < 0))


def test_one_gp_core_serves_torch_and_numpy():
    """Cholesky with jitter, the label-keeping noise loop and the squared distance give the same
    numbers for a torch tensor and a numpy array."""
    rng = np.random.default_rng(0)
    a, b = rng.standard_normal((7, 3)), rng.standard_normal((5, 3))
    d2 = squared_distance(a, b)
    np.testing.assert_allclose(d2, ((a[:, None] - b[None]) ** 2).sum(-1), atol=1e-12)
    np.testing.assert_allclose(squared_distance(torch.from_numpy(a), torch.from_numpy(b)).numpy(), d2, rtol=1e-12)
    singular = np.ones((4, 4))  # PSD only: needs the jitter
    for A in (singular, torch.from_numpy(singular)):
        factor = cholesky_with_jitter(A)
        x = cholesky_solve(factor, A[:, :1] * 0 + 1)
        assert np.isfinite(np.asarray(x)).all()
    # two clicks at one place with opposite labels: the noise is lowered until the loop gives up
    K = np.ones((3, 3)) + np.eye(3) * 1e-12
    R = np.array([[1.0], [-1.0], [1.0]])
    keep = np.array([True, True, False])

    def halve(noise, lost):
        where = torch.where if isinstance(noise, torch.Tensor) else np.where
        return None if noise[lost].min() <= MIN_NOISE else where(lost, noise / 2, noise)

    _, alpha, noise = solve_keeping_labels(K, R, np.full(3, 0.1), keep, halve)
    _, t_alpha, t_noise = solve_keeping_labels(torch.from_numpy(K), torch.from_numpy(R),
                                               torch.full((3,), 0.1, dtype=torch.float64), torch.from_numpy(keep),
                                               halve)
    np.testing.assert_allclose(t_alpha.numpy(), alpha, rtol=1e-9)
    assert np.array_equal(t_noise.numpy(), noise) and noise[2] == 0.1 and noise[0] < 0.1
    # a click alone keeps its label at the requested noise: one round
    rounds = []
    _, alpha, noise = solve_keeping_labels(np.eye(2), np.array([[1.0], [-1.0]]), np.full(2, 0.1), np.ones(2, bool),
                                           lambda n, lost: rounds.append(1))
    assert not rounds and (np.abs(0.1 * alpha) < 1 - LABEL_MARGIN).all()

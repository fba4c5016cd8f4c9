"""Pyramid Gaussian scale space against scipy's direct filters; closed-form eigenvalues against LAPACK."""
import numpy as np
import pytest
from scipy import ndimage as ndi

from volseg.features.filterbank import symmetric_eigenvalues
from volseg.features.scale_space import (
    BINOMIAL,
    DIFFERENCES,
    correlate1d,
    gaussian_derivatives,
    gaussian_kernels_1d,
    pyramid_factors,
    pyramid_level,
)


def smooth_field(shape, seed=0):
    rng = np.random.default_rng(seed)
    return ndi.gaussian_filter(rng.standard_normal(shape), 1.0).astype(np.float32)


def test_factors_leave_enough_smoothing_on_the_coarse_grid():
    assert pyramid_factors((1.0, 2.0)) == (1, 1)
    assert pyramid_factors((3.0, 4.0, 8.0)) == (2, 2, 4)
    assert pyramid_factors((100.0,)) == (8,)  # capped: slabs align to the coarsest block


def test_pyramid_levels_keep_samples_on_multiples_of_the_factor():
    x = np.tile(np.arange(33, dtype=np.float32), (3, 1))  # a linear ramp stays a ramp under the binomial filter
    coarse, variance = pyramid_level(x, (1, 4))
    np.testing.assert_allclose(coarse[0, 3:6], [12.0, 16.0, 20.0], atol=1e-4)  # away from the mirrored border
    assert coarse.shape == (3, 9) and variance == [0.0, 5.0]


def natural(shape):
    """scikit-image's camera (2D), or a smooth random field (3D): images with natural spectra."""
    from skimage import data

    if len(shape) == 2:
        return data.camera()[: shape[0], : shape[1]].astype(np.float32) / 255
    return ndi.gaussian_filter(np.random.default_rng(0).standard_normal(shape), 2.0).astype(np.float32)


@pytest.mark.parametrize("shape, sigma", [((200, 180), (4.0, 4.0)), ((200, 180), (8.0, 3.0)),
                                          ((48, 40, 36), (4.0, 4.0, 2.0))])
def test_pyramid_smoothing_matches_direct_gaussian(shape, sigma):
    x = natural(shape)
    got = gaussian_derivatives(x, sigma, [(0,) * len(shape)])[0]
    want = ndi.gaussian_filter(x, sigma)
    inner = tuple(slice(int(3 * s), n - int(3 * s)) for s, n in zip(sigma, shape))
    err = (got - want)[inner]
    assert np.sqrt((err ** 2).mean()) < 0.03 * want[inner].std()
    assert np.abs(err).max() < 0.1 * np.abs(want[inner] - want[inner].mean()).max()


@pytest.mark.parametrize("sigma", [2.0, 4.0])
def test_derivatives_match_derivative_of_gaussian(sigma):
    x = natural((200, 180))
    orders = [(1, 0), (0, 1), (2, 0), (1, 1), (0, 2)]
    got = gaussian_derivatives(x, (sigma, sigma), orders)
    inner = (slice(20, -20), slice(20, -20))
    for o, g in zip(orders, got):
        want = ndi.gaussian_filter(x, sigma, order=o)
        assert np.corrcoef(g[inner].ravel(), want[inner].ravel())[0, 1] > 0.98, o
        assert g[inner].std() == pytest.approx(want[inner].std(), rel=0.15), o


@pytest.mark.parametrize("d", [2, 3])
def test_symmetric_eigenvalues_match_eigvalsh(d):
    rng = np.random.default_rng(d)
    m = rng.standard_normal((500, d, d))
    m = m + m.transpose(0, 2, 1)
    m[:5] = np.eye(d) * 2.0  # repeated eigenvalues: the closed form's degenerate case
    upper = [m[:, a, b].astype(np.float32) for a in range(d) for b in range(a, d)]
    got = np.asarray(symmetric_eigenvalues(upper, d)).T
    want = np.linalg.eigvalsh(m)[:, ::-1]
    np.testing.assert_allclose(got, want, atol=2e-4 * np.abs(want).max())


def test_level_from_half_level_equals_the_direct_reduction():
    """Tiles reduce a pyramid level from the one at half its factors (volseg.features.tiles): the
    binomial steps act on one axis at a time, so that equals reducing the image directly."""
    x = np.random.default_rng(3).standard_normal((41, 36, 30)).astype(np.float32)
    direct, variance = pyramid_level(x, (4, 4, 2))
    half, v_half = pyramid_level(x, (2, 2, 1))
    chained, v_more = pyramid_level(half, (2, 2, 2))
    np.testing.assert_allclose(chained, direct, atol=1e-6)
    assert [v + m * h * h for v, m, h in zip(v_half, v_more, (2, 2, 1))] == variance


@pytest.mark.parametrize("shape", [(7,), (40,), (3, 9), (33, 20), (5, 6, 7), (30, 25, 20), (2, 40, 3)])
def test_opencv_correlate1d_equals_scipy(shape):
    """The bank filters through OpenCV (float32, vectorised); it must give scipy's values, borders included."""
    x = np.random.default_rng(len(shape)).standard_normal(shape).astype(np.float32) * 100
    for kernel in [DIFFERENCES[1], DIFFERENCES[2], BINOMIAL, gaussian_kernels_1d(1.3)[0], gaussian_kernels_1d(2.5)[0]]:
        for mode in ["reflect", "nearest", "mirror"]:
            for axis in range(len(shape)):
                expect = ndi.correlate1d(x, kernel, axis=axis, mode=mode)
                got = correlate1d(x, kernel, axis, mode)
                assert got.dtype == np.float32 and got.shape == x.shape
                np.testing.assert_allclose(got, expect, rtol=0, atol=1e-5 * np.abs(expect).max())

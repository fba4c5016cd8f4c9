"""The filter bank: one n-D code path, slab streaming equal to one shot, budgets respected."""
import numpy as np
import pytest
from scipy import ndimage as ndi

from volseg import Image
from volseg.errors import InputError, MemoryBudgetError
from volseg.features import FeatureExtractor, FilterBank, StackedFeatures, compute_features, get_extractor
from volseg.features.filterbank import LOOKUP_MIN_SIZE, _increasing, _interp
from volseg.features.scale_space import exact_derivatives_2d
from volseg.features.stream import storage_dtype


def sample_image(shape, channels):
    """Real texture for 2D (scikit-image's camera and coffee), a noisy box for 3D."""
    from skimage import data

    if len(shape) == 2:
        src = data.coffee() if channels == 3 else data.camera()[..., None]
        return src[100:100 + shape[0], 100:100 + shape[1]]
    return noisy_volume(shape + (channels,))


def noisy_volume(shape, seed=0):
    rng = np.random.default_rng(seed)
    v = rng.standard_normal(shape).astype(np.float32)
    v[tuple(slice(n // 4, n // 2) for n in shape)] += 3
    return v


@pytest.mark.parametrize("shape, channels", [((80, 100), 1), ((80, 100), 3), ((20, 24, 16), 1)])
def test_same_bank_for_2d_and_3d(shape, channels):
    img = Image(sample_image(shape, channels))
    bank = FilterBank()
    f = compute_features(bank, img, budget=1 << 30)
    assert f.shape == shape + (bank.n_features(len(shape), channels, int(np.prod(shape))),)
    assert np.isfinite(f).all()
    # stored channel-first (each channel's rows contiguous), the layout the fused evaluation loads whole
    assert f.strides[-2] == f.itemsize and f.strides[-1] == f.itemsize * int(np.prod(shape))
    # standardised, then weighted per group
    w = bank.weights(len(shape), channels, int(np.prod(shape)))
    std = f.reshape(-1, f.shape[-1]).std(0)
    np.testing.assert_allclose(std[std > 0], w[std > 0], rtol=1e-3)
    assert (std > 0).sum() >= len(w) - 1  # at most one degenerate (constant) superpixel level


def test_slab_streaming_equals_one_shot():
    img = Image.from_array(noisy_volume((48, 20, 18)), spacing=(1.0, 0.8, 2.0))
    bank = FilterBank(superpixel_sizes=())  # superpixels are global, the filters local
    whole = compute_features(bank, img, budget=1 << 30)
    slabs = compute_features(bank, img, budget=1 << 30, slab_bytes=20 * 18 * whole.shape[-1] * 4 * 3 * 30)
    np.testing.assert_allclose(slabs, whole, atol=1e-4)


def test_scales_are_in_millimetres():
    """The same object sampled twice as coarsely along one axis gives nearly the same smoothed intensity."""
    fine = noisy_volume((32, 32, 32), seed=1)
    from scipy.ndimage import gaussian_filter

    fine = gaussian_filter(fine, 1.0)
    coarse = fine[:, :, ::2]
    bank = FilterBank(smoothing_scales=(4.0,), gradient_scales=(), hessian_scales=(), superpixel_sizes=())
    a = bank.raw(fine[..., None], (1.0, 1.0, 1.0), bank.prepare(fine[..., None]))[:, :, ::2, 0]
    b = bank.raw(coarse[..., None], (1.0, 1.0, 2.0), bank.prepare(fine[..., None]))[..., 0]
    inner = (slice(8, -8), slice(8, -8), slice(4, -4))
    assert np.corrcoef(a[inner].ravel(), b[inner].ravel())[0, 1] > 0.98


def test_budget_is_respected_and_large_maps_go_half_precision():
    img = Image.from_array(noisy_volume((48, 48, 48)))
    with pytest.raises(MemoryBudgetError, match="memory budget"):
        compute_features(FilterBank(), img, budget=1 << 20)
    f = compute_features(FilterBank(superpixel_sizes=()), img, budget=16 << 20)
    assert f.dtype == np.float16
    assert compute_features(FilterBank(superpixel_sizes=()), img, budget=1 << 30).dtype == np.float32
    # a map far larger than any cache is streamed by every click: half precision whatever the budget
    assert storage_dtype(128 ** 3, 10, 64 << 30) == np.float16
    assert storage_dtype(64 ** 3, 10, 64 << 30) == np.float32


def test_every_extractor_states_the_protocol():
    bank = FilterBank()
    assert isinstance(bank, FeatureExtractor) and bank.gp_config == {} and bank.prescaled is False
    img = Image(np.random.default_rng(0).integers(0, 255, (24, 30, 3)).astype(np.uint8))
    assert bank.prior_mean(img) is None
    assert bank.features(img).shape == bank.features(img, budget=2 ** 30).shape  # None: the default budget
    stack = StackedFeatures([FilterBank(), FilterBank(name="other")])
    assert isinstance(stack, FeatureExtractor) and stack.prescaled and stack.prior_mean(img) is None
    assert stack.name == "filterbank+other" and stack.gp_config == {"feature_lengthscale": 1.0}
    with pytest.raises(InputError, match="not a FeatureExtractor"):
        get_extractor(object())


def test_exact_derivative_backend_matches_scipy():
    x = np.random.default_rng(0).random((40, 52)).astype(np.float32)
    orders = [(0, 0), (1, 0), (0, 1), (2, 0), (1, 1), (0, 2)]
    for sigma in ((2.0, 2.0), (1.0, 3.0)):
        got = exact_derivatives_2d(x, sigma, orders)
        for o, g in zip(orders, got):
            want = ndi.gaussian_filter(x.astype(np.float64), sigma, order=o, mode="reflect")
            np.testing.assert_allclose(g, want, atol=1e-5)
    with pytest.raises(ValueError, match="2D"):
        exact_derivatives_2d(np.zeros((4, 4, 4), np.float32), (1.0, 1.0, 1.0), [(0, 0, 0)])


def test_equalisation_lookup_table_equals_np_interp():
    """A large integer-valued volume (as a scanner stores a CT) maps its intensities through a lookup
    table; the values are np.interp's, bit for bit, and non-integer volumes keep np.interp."""
    rng = np.random.default_rng(0)
    hu = np.round(rng.normal(0.0, 400.0, LOOKUP_MIN_SIZE + 7)).clip(-1024, 3071).astype(np.float32)
    knots = _increasing(np.percentile(hu[::5], np.linspace(0, 100, 257)).astype(np.float32))
    levels = np.linspace(0.0, 1.0, knots.shape[0])
    for x in (hu, hu + np.float32(0.25), hu[:1000]):
        expect = np.interp(x, knots, levels).astype(np.float32)
        got = _interp(x, knots, levels)
        assert got.dtype == np.float32 and np.array_equal(got, expect)


def test_lab_is_scikit_image_value_for_value():
    """The lookup-table Lab equals skimage's rgb2lab on the float32 image bit for bit: every value each
    channel can take, random colours, a float image in 0..1, and a uint8 image of zeros and ones (read
    as 0..1, as before)."""
    from skimage.color import rgb2lab

    from volseg.colour import rgb_to_lab

    rng = np.random.default_rng(0)
    ramp = np.arange(256, dtype=np.uint8)
    ramps = np.stack([np.stack([ramp if c == k else np.full(256, g, np.uint8) for c in range(3)], -1)
                      for k in range(3) for g in (0, 97, 255)])
    images = [ramps, rng.integers(0, 256, (512, 512, 3), dtype=np.uint8),
              rng.random((64, 64, 3), dtype=np.float32), rng.integers(0, 2, (16, 16, 3), dtype=np.uint8)]
    for image in images:
        a = image.astype(np.float32)
        expected = rgb2lab(np.clip(a / 255.0 if a.max() > 1.5 else a, 0.0, 1.0)).astype(np.float32)
        lab = rgb_to_lab(image)
        assert lab.shape == image.shape and lab.dtype == np.float32
        np.testing.assert_array_equal(lab, expected)
        assert lab.strides[-1] == lab.itemsize * int(np.prod(image.shape[:-1]))  # one plane per channel


def test_raw_features_are_stored_channel_first():
    """Each feature of a slab is one contiguous plane behind the (*spatial, D) view: written and read
    plane by plane (an interleaved store strides across every feature on each write)."""
    img = Image(sample_image((80, 100), 3))
    bank = FilterBank()
    f = bank.raw(img.array, img.spacing, bank.prepare(img.array))
    assert f.shape == (80, 100, bank.n_features(2, 3, 8000))
    assert f.strides == (100 * 4, 4, 80 * 100 * 4)

"""The compiled one-pass posterior (volseg/gp/_fused.c) against the torch path it replaces on the CPU."""
import os
import platform
import shutil
import subprocess
import sys

import numpy as np
import pytest
import torch

from volseg.gp import fused
from volseg.gp.evaluate import evaluate_boxes
from volseg.gp.inputs import InputMap
from volseg.gp.kernels import EXP_FLOOR, make_kernel
from volseg.gp.posterior import ExactPosterior

needs_fused = pytest.mark.skipif(not fused.available(), reason="fused extension not built (no C compiler at install)")


def test_extension_is_built_where_a_compiler_is():
    if os.environ.get("VOLSEG_NO_FUSED") or not (shutil.which("cc") or shutil.which("gcc")):
        pytest.skip("fused path disabled or no compiler")
    assert fused.available(), "the package was installed with a C compiler but volseg.gp._fused did not build"


def _problem(shape, D, n, K, kernel, dtype, seed):
    rng = np.random.default_rng(seed)
    feats = torch.tensor(rng.normal(size=shape + (D,)), dtype=torch.float32)
    spacing = tuple(rng.uniform(0.5, 2.0, len(shape)))
    inputs = InputMap(feats.to(dtype), spacing, feature_lengthscale=1.7, spatial_lengthscale=5.0)
    vox = np.stack([rng.integers(0, s, n) for s in shape], 1)
    labels = torch.tensor(rng.choice([-1.0, 1.0], size=(n, K)))
    # the posterior is fitted on the inputs as the map of the given dtype gives them
    post = ExactPosterior(make_kernel(kernel, 1.3), noise=1e-2).fit(inputs.at(vox).double(), labels,
                                                                   torch.full((n, K), -0.5, dtype=torch.float64))
    return inputs, post


def _torch_reference(post, inputs, box, m0):
    z = inputs.box(box)
    mean, var = post.mean_var(z, m0)
    shape = tuple(s.stop - s.start for s in box)
    return mean.T.reshape(-1, *shape), var.reshape(shape)


def _exact(post, inputs, box, m0):
    """The posterior in float64 from the kernel's own formula: the yardstick for both float32 paths."""
    k = post.kernel(inputs.box(box).double(), post.Z)
    v = torch.linalg.solve_triangular(post.L, k.T, upper=False)
    shape = tuple(s.stop - s.start for s in box)
    mean = (m0.double() + k @ post.alpha).T.reshape(-1, *shape)
    return mean, (post.kernel.outputscale - (v * v).sum(0)).clamp_min(0.0).reshape(shape)


@needs_fused
@pytest.mark.parametrize("kernel", ["rbf", "matern12", "matern32", "matern52"])
@pytest.mark.parametrize("shape,box", [((23, 37), (slice(3, 21), slice(5, 36))),            # rows not a multiple of 16
                                       ((9, 11, 19), (slice(1, 8), slice(0, 11), slice(2, 19)))])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16])
def test_fused_box_matches_the_exact_posterior(kernel, shape, box, dtype):
    K = 3
    inputs, post = _problem(shape, D=5, n=9, K=K, kernel=kernel, dtype=dtype, seed=len(shape) + len(kernel))
    n = int(np.prod([s.stop - s.start for s in box]))
    m0 = torch.linspace(-1, 1, n * K).reshape(n, K)  # a prior mean that differs at every location
    mean = torch.full((K,) + shape, float("nan"))
    var = torch.full(shape, float("nan"))
    assert fused.applies(post, inputs, mean, var)
    fused.evaluate_region(post, inputs, [box], m0, mean, var)
    exact_mean, exact_var = _exact(post, inputs, box, m0)
    torch_mean, torch_var = _torch_reference(post, inputs, box, m0)
    for got, ref, exact in [(mean[(slice(None),) + box], torch_mean, exact_mean), (var[box], torch_var, exact_var)]:
        # float32 rounding only.  The torch path's expanded square |z|^2 - 2 z.Z + |Z|^2 loses ~1e-6
        # of d^2 near a click, which Matern-1/2's kink at d = 0 turns into ~1e-3; the fused path
        # sums differences there, so it is held to 2e-5 everywhere and never worse than torch
        err = float((got.double() - exact).abs().max())
        assert err <= 2e-5 and err <= max(2e-5, float((ref - exact).abs().max()))
    # nothing outside the box is written
    outside = torch.ones(shape, dtype=torch.bool)
    outside[box] = False
    assert torch.isnan(var[outside]).all() and torch.isnan(mean[:, outside]).all()


@needs_fused
def test_fused_one_row_prior_mean_and_mean_or_variance_alone():
    inputs, post = _problem((16, 40), D=4, n=6, K=1, kernel="rbf", dtype=torch.float32, seed=7)
    box = (slice(0, 16), slice(0, 40))
    m0 = torch.full((1, 1), -0.5)
    want_mean, want_var = _torch_reference(post, inputs, box, m0.expand(16 * 40, 1))
    mean, var = torch.empty(1, 16, 40), torch.empty(16, 40)
    fused.evaluate_region(post, inputs, [box], m0, mean, None)
    fused.evaluate_region(post, inputs, [box], None, None, var)
    torch.testing.assert_close(mean, want_mean, atol=2e-5, rtol=1e-5)
    torch.testing.assert_close(var, want_var, atol=2e-5, rtol=1e-5)
    with pytest.raises(ValueError, match="prior mean"):
        fused.evaluate_region(post, inputs, [box], torch.zeros(5, 1), mean, None)


@needs_fused
@pytest.mark.parametrize("threads", [1, 3])
def test_a_region_of_many_boxes_in_one_call_on_several_threads(threads):
    # a click's region: disjoint boxes, each with its own prior mean rows, shared among threads
    shape, K = (20, 13, 35), 2
    inputs, post = _problem(shape, D=6, n=7, K=K, kernel="rbf", dtype=torch.float32, seed=11)
    boxes = [(slice(0, 5), slice(0, 13), slice(0, 35)), (slice(5, 6), slice(2, 9), slice(3, 30)),
             (slice(9, 20), slice(0, 4), slice(17, 35)), (slice(12, 12), slice(0, 13), slice(0, 35))]  # last: empty
    sizes = [int(np.prod([s.stop - s.start for s in b])) for b in boxes]
    m0 = torch.linspace(-1, 1, sum(sizes) * K).reshape(-1, K)
    mean = torch.full((K,) + shape, float("nan"))
    var = torch.full(shape, float("nan"))
    fused.evaluate_region(post, inputs, boxes, m0, mean, var, threads=threads)
    written = torch.zeros(shape, dtype=torch.bool)
    for b, rows in zip(boxes[:3], torch.split(m0, sizes)):
        exact_mean, exact_var = _exact(post, inputs, b, rows)
        assert float((mean[(slice(None),) + b].double() - exact_mean).abs().max()) <= 2e-5
        assert float((var[b].double() - exact_var).abs().max()) <= 2e-5
        written[b] = True
    assert torch.isnan(var[~written]).all() and torch.isnan(mean[:, ~written]).all()
    with pytest.raises(ValueError, match="not boxes"):
        fused.evaluate_region(post, inputs, [(slice(0, 21), slice(0, 13), slice(0, 35))], m0[:1], mean, None)
    with pytest.raises(ValueError, match="output maps"):
        fused.evaluate_region(post, inputs, boxes[:1], m0[:1], torch.empty(K, 20, 13, 34), None)


@needs_fused
def test_evaluate_boxes_batches_per_location_prior_means_within_the_byte_budget():
    # a prior mask makes the prior mean differ per location: a tight budget splits the region
    # into several calls, and the result is the same as in one
    shape = (24, 40)
    inputs, post = _problem(shape, D=4, n=5, K=1, kernel="rbf", dtype=torch.float32, seed=5)
    prior_map = torch.linspace(-1, 1, 24 * 40).reshape(shape)
    boxes = [(slice(0, 10), slice(0, 40)), (slice(10, 24), slice(5, 30))]
    results = []
    for max_bytes in (1 << 20, 4 * 300):
        mean = torch.full((1,) + shape, float("nan"))
        evaluate_boxes(post, inputs, lambda b: prior_map[b].reshape(-1, 1), boxes, mean, None, max_bytes=max_bytes)
        results.append(mean)
    torch.testing.assert_close(results[0], results[1], atol=0, rtol=0, equal_nan=True)
    for b in boxes:
        exact_mean, _ = _exact(post, inputs, b, prior_map[b].reshape(-1, 1))
        assert float((results[0][(slice(None),) + b].double() - exact_mean).abs().max()) <= 2e-5


@needs_fused
def test_clicked_locations_keep_their_label_through_the_fused_path():
    inputs, post = _problem((30, 30), D=3, n=12, K=1, kernel="matern52", dtype=torch.float32, seed=3)
    mean = torch.empty(1, 30, 30)
    evaluate_boxes(post, inputs, lambda b: torch.full((1, 1), -0.5), [(slice(0, 30), slice(0, 30))], mean, None,
                   max_bytes=1 << 20)
    vox = [tuple(int(round(float(v))) for v in (z[3:] / inputs.position_scale + inputs.centre)) for z in post.Z.float()]
    labels = post.R[:, 0] + (-0.5)
    for v, y in zip(vox, labels):
        assert float(mean[(0,) + v]) * float(y) > 0


def test_no_fused_environment_variable_selects_the_torch_path():
    code = "from volseg.gp import fused; print(fused.available())"
    out = subprocess.run([sys.executable, "-c", code], env={**os.environ, "VOLSEG_NO_FUSED": "1"},
                         capture_output=True, text=True, check=True).stdout.strip()
    assert out == "False"


@needs_fused
def test_layouts_the_extension_does_not_take_go_to_the_torch_path():
    # more inputs than the extension's registers hold: applies() says no, and evaluate_boxes still
    # gives the torch path's answer rather than an error
    inputs, post = _problem((6, 7), D=300, n=4, K=1, kernel="rbf", dtype=torch.float32, seed=5)
    mean = torch.empty(1, 6, 7)
    assert not fused.applies(post, inputs, mean, None)
    box = (slice(0, 6), slice(0, 7))
    evaluate_boxes(post, inputs, lambda b: torch.full((1, 1), -0.5), [box], mean, None, max_bytes=1 << 20)
    want, _ = _torch_reference(post, inputs, box, torch.full((42, 1), -0.5))
    torch.testing.assert_close(mean, want)


@needs_fused
@pytest.mark.parametrize("layout", ["channels_last", "channel_first"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16])
@pytest.mark.parametrize("D,K", [(5, 1), (3, 2), (19, 1)])  # compile-time D for one and several objects, run-time D
def test_simd_passes_and_layouts_match_the_exact_posterior(layout, dtype, D, K):
    # rows of 37 (whole tiles of 16 or 8 and a remainder), a box not aligned to a tile, odd channel counts
    # (float16 channels-last gathers channel pairs); 1, 6 and 7 clicks end in a block of 1, 2 and 3
    shape, box = (6, 9, 37), (slice(1, 5), slice(2, 9), slice(3, 36))
    for clicks in (1, 6, 7):
        _check_passes(shape, box, layout, dtype, D, K, clicks)


def _check_passes(shape, box, layout, dtype, D, K, clicks):
    inputs, post = _problem(shape, D=D, n=clicks, K=K, kernel="rbf", dtype=dtype, seed=D + K + clicks)
    if layout == "channel_first":
        f = inputs.features
        inputs.features = f.movedim(-1, 0).contiguous().movedim(0, -1)
    n = int(np.prod([s.stop - s.start for s in box]))
    m0 = torch.linspace(-1, 1, n * K).reshape(n, K)
    exact_mean, exact_var = _exact(post, inputs, box, m0)
    before = fused.simd()
    try:
        for width in (0, 256, 512):  # the portable pass, AVX2 and AVX-512, where the CPU has them
            if fused.simd(width) != width:
                continue
            mean, var = torch.full((K,) + shape, float("nan")), torch.full(shape, float("nan"))
            assert fused.applies(post, inputs, mean, var)
            fused.evaluate_region(post, inputs, [box], m0, mean, var)
            assert float((mean[(slice(None),) + box].double() - exact_mean).abs().max()) <= 2e-5
            assert float((var[box].double() - exact_var).abs().max()) <= 2e-5
            outside = torch.ones(shape, dtype=torch.bool)
            outside[box] = False
            assert torch.isnan(var[outside]).all() and torch.isnan(mean[:, outside]).all()
    finally:
        fused.simd(before)


@needs_fused
def test_the_widest_pass_the_cpu_has_is_the_one_that_runs():
    # an AVX2-only CPU once fell back to the portable pass, 7x slower per click, with every test green
    flags = set()
    if os.path.exists("/proc/cpuinfo"):
        for line in open("/proc/cpuinfo"):
            if line.startswith("flags"):
                flags = set(line.split(":", 1)[1].split())
                break
    if not flags or platform.machine() != "x86_64":
        pytest.skip("needs an x86-64 Linux CPU's flags")
    want = 512 if {"avx512f", "avx512dq", "avx512bw", "avx512vl"} <= flags else \
        256 if {"avx2", "fma", "f16c"} <= flags else 0
    assert fused.simd() == want


@needs_fused
@pytest.mark.parametrize("shape,box", [((23, 37), (slice(3, 21), slice(5, 36))),
                                       ((9, 11, 19), (slice(1, 8), slice(0, 11), slice(2, 19)))])
def test_multiscale_mean_in_two_fused_passes_matches_the_kernel(shape, box):
    """The multiscale kernel's mean (what the mask reads) as two fused RBF passes, against float64 exact;
    with a prior mean per location and one row."""
    rng = np.random.default_rng(5)
    feats = torch.tensor(rng.normal(size=shape + (4,)), dtype=torch.float32)
    inputs = InputMap(feats, tuple(rng.uniform(0.5, 2.0, len(shape))), feature_lengthscale=1.7, spatial_lengthscale=5.0)
    vox = np.stack([rng.integers(0, s, 12) for s in shape], 1)
    labels = torch.tensor(rng.choice([-1.0, 1.0], size=(12, 2)))
    post = ExactPosterior(make_kernel("multiscale", 1.3, spatial_dims=len(shape)), noise=1e-2).fit(
        inputs.at(vox).double(), labels, torch.full((12, 2), -0.5, dtype=torch.float64))
    n = int(np.prod([s.stop - s.start for s in box]))
    for m0 in (torch.full((1, 2), -0.5), torch.tensor(rng.normal(size=(n, 2)), dtype=torch.float32)):
        mean = torch.full((2,) + shape, 7.0)
        evaluate_boxes(post, inputs, lambda b: m0, [box], mean, None, max_bytes=1 << 20)
        ref, _ = _exact(post, inputs, box, m0)
        np.testing.assert_allclose(mean[(slice(None),) + box].numpy(), ref.numpy(), atol=2e-5)
        assert (mean == 7.0).sum() == 2 * (np.prod(shape) - n)  # nothing outside the box is written


@needs_fused
@pytest.mark.parametrize("spatial", [True, False])
def test_video_kernel_is_the_numpy_formula(spatial):
    """The video GP's kernel values in one compiled pass (clip, exp and the separable spatial factor) equal
    the numpy passes they replace (taken where the compiled pass does not apply), on rows whose length is not
    a multiple of the vector width, exponents beyond the floor and rounding above 0 included."""
    rng = np.random.default_rng(3)
    n, N, H, W = 300, 37, 20, 30
    h = -rng.random((n, N), dtype=np.float32) * 50.0
    h[0, :3] = (1e-6, 0.0, EXP_FLOOR - 5.0)
    e_row, e_col = rng.random((H, N), dtype=np.float32), rng.random((W, N), dtype=np.float32)
    rows, cols = rng.integers(0, H, n), rng.integers(0, W, n)
    expected = np.exp(np.clip(h, EXP_FLOOR, 0.0))
    if spatial:
        expected *= 0.3 + e_row[rows] * e_col[cols]
    tables = (e_row, e_col) if spatial else (None, None)
    k = h.copy()
    fused.video_kernel(k, *tables, rows, cols, 0.3)
    np.testing.assert_allclose(k, expected, rtol=1e-6, atol=0)
    k = np.asfortranarray(h)  # not C-contiguous: the numpy passes
    fused.video_kernel(k, *tables, rows, cols, 0.3)
    np.testing.assert_allclose(k, expected, rtol=1e-6, atol=0)
    if spatial:
        with pytest.raises(ValueError, match="do not match"):
            fused.video_kernel(h.copy(), e_row, e_col, rows[:-1], cols, 0.3)
        with pytest.raises(ValueError, match="outside its table"):
            fused.video_kernel(h.copy(), e_row, e_col, rows + H, cols, 0.3)

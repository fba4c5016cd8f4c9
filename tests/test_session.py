"""The interactive session: same calls in 2D and 3D, clicked labels kept, local updates exact."""
import numpy as np
import pytest
import torch

from volseg import Image, Session
from volseg.errors import ClickError, InputError, MemoryBudgetError, VolsegError
from volseg.robot import ritm_click


def blob_image(shape, seed=0):
    """A bright box and a darker ellipsoid on a noisy background; returns (image, labels 1/2)."""
    rng = np.random.default_rng(seed)
    grid = np.indices(shape).astype(float)
    c = np.array(shape)[(slice(None),) + (None,) * len(shape)]
    box = np.all((grid > 0.2 * c) & (grid < 0.45 * c), axis=0)
    ell = (((grid - 0.7 * c) / (0.15 * c)) ** 2).sum(0) < 1
    img = 1.0 * box + 0.5 * ell + 0.08 * rng.standard_normal(shape)
    labels = np.where(box, 1, np.where(ell, 2, 0))
    return img.astype(np.float32), labels


@pytest.mark.parametrize("shape", [(48, 64), (24, 28, 20)])
def test_scripted_run_keeps_every_clicked_label_and_improves(shape):
    img, labels = blob_image(shape)
    truth = labels == 1
    s = Session().set_image(img)
    ious = []
    for _ in range(8):
        if ((s.mask() == 1) == truth).all():
            break
        c = ritm_click(truth, s.mask() == 1)
        s.add_click(c.voxel(), c.positive)
        m = s.mask()
        for c in s.clicks:  # every click so far, after every click
            assert m[c.voxel()] == (1 if c.positive else 0)
            p = s.probability()[c.voxel()]
            assert (p > 0.5) == c.positive
        ious.append(((m == 1) & truth).sum() / ((m == 1) | truth).sum())
    # a late correcting click may still cost a few points on the 24x28x20 toy (issue 27's Dice drops,
    # measured in the README); the run must get there and stay near it
    assert max(ious) > 0.85 and ious[-1] > 0.8, ious
    assert len(s.timings) == len(ious) and all(t > 0 for t in s.timings)


def test_same_api_for_arrays_images_and_rgb():
    rgb = np.zeros((30, 40, 3), np.uint8)
    rgb[5:20, 10:30] = (200, 30, 30)
    s = Session(spatial_fraction=0.3).set_image(rgb)  # a tiny image: let one click reach across the box
    assert s.image.ndim == 2 and s.image.channels == 3
    s.add_click((12, 20))
    s.add_click((27, 3), positive=False)
    assert s.mask()[12, 20] == 1 and s.mask()[27, 3] == 0
    assert s.mask()[7:18, 12:28].mean() > 0.9 and s.mask()[22:, :].mean() < 0.1
    vol = Image.from_array(np.random.default_rng(0).random((10, 12, 8)).astype(np.float32), spacing=(1, 1, 3))
    s.set_image(vol)
    assert s.mask().shape == (10, 12, 8) and len(s.clicks) == 0


@pytest.mark.parametrize("latent, seed_points", [("gp", 0), ("gp", 16), ("sum", 0)])
def test_local_update_equals_full_recomputation(latent, seed_points):
    img, labels = blob_image((40, 44, 30), seed=2)
    s = Session(spatial_lengthscale=3.0, seed_points=seed_points, latent=latent)
    s.set_image(Image.from_array(img, spacing=(1.0, 1.0, 1.5)))
    clicks = [((12, 14, 10), True), ((30, 31, 21), True), ((3, 3, 3), False), ((14, 12, 9), False),
              ((28, 30, 20), False)]
    for n, (pos, positive) in enumerate(clicks):
        s.add_click(pos, positive)
        # every click, the first included, evaluates only its reach (with a positive click's weak points, a
        # negative click on one of them may lower the noise, which moves every weight)
        if not seed_points or n < 3:
            assert isinstance(s.last_region, list)
            assert s.last_update["locations"] < img.size
        local_p, local_var = s.probability(), s._variance().clone()
        s._evaluate_all()
        np.testing.assert_allclose(local_p, s.probability(), atol=1e-4)
        torch.testing.assert_close(local_var, s._variance(), atol=1e-4, rtol=0)
    s.undo()
    local_p = s.probability()
    s._evaluate_all()
    np.testing.assert_allclose(local_p, s.probability(), atol=1e-4)


def test_local_updates_do_not_drift_over_many_clicks():
    """Twelve local updates in a row (no full pass between them), a lowered noise on the way, then
    one full recomputation: the maps a user saw differ by less than 1e-4 anywhere."""
    img, labels = blob_image((36, 40, 28), seed=3)
    # one RBF: the multiscale kernel's short part separates the conflicting pair without a lowered noise
    s = Session(spatial_lengthscale=4.0, kernel="rbf", latent="gp").set_image(
        Image.from_array(img, spacing=(1.0, 1.0, 1.5)))
    rng = np.random.default_rng(0)
    s.add_click((11, 12, 9), True)
    s.add_click((12, 12, 9), False)  # a conflicting neighbour: the fit lowers the noise
    assert float(s.posterior.point_noise().min()) < s.posterior.requested_noise
    local = 0
    for _ in range(12):
        pos = tuple(int(v) for v in rng.integers(0, labels.shape))
        s.add_click(pos, bool(labels[pos] == 1))
        local += isinstance(s.last_region, list)
    assert local >= 10  # a lowered noise does not force every later click to a full pass
    p, var = s.probability(), s._variance().clone()
    s._evaluate_all()
    np.testing.assert_allclose(p, s.probability(), atol=1e-4)
    torch.testing.assert_close(var, s._variance(), atol=1e-4, rtol=0)


def test_undo_and_reset():
    img, _ = blob_image((40, 40))
    s = Session().set_image(img)
    s.add_click((12, 12))
    first = s.mask().copy()
    s.add_click((30, 30), positive=False)
    s.undo()
    np.testing.assert_array_equal(s.mask(), first)
    s.reset()
    assert s.clicks == [] and s.mask().sum() == 0
    with pytest.raises(ClickError, match="nothing to undo"):
        s.undo()


def test_objects_compete_and_never_overlap():
    img, labels = blob_image((50, 50))
    s = Session().set_image(img)
    s.add_click((16, 16), object=1)
    s.add_click((35, 35), object=2)
    s.add_click((3, 46), positive=False)
    m = s.mask()
    assert m[16, 16] == 1 and m[35, 35] == 2 and m[3, 46] == 0
    assert set(np.unique(m)) <= {0, 1, 2}
    p1, p2 = s.probability(1), s.probability(2)
    assert p1[16, 16] > 0.5 > p2[16, 16] and p2[35, 35] > 0.5 > p1[35, 35]


def test_prior_mask_is_refined_by_clicks():
    img, labels = blob_image((48, 48))
    prior = (labels == 1).astype(np.uint8)
    prior[12:16, :] = 0  # a wrong strip the user fixes
    s = Session().set_image(img, prior=prior)
    assert ((s.mask() == 1) == (prior == 1)).mean() > 0.95  # no clicks: the prior itself
    s.add_click((13, 15), positive=True)
    assert s.mask()[13, 15] == 1
    far = s.mask()[35:, 35:] == 0
    assert far.mean() > 0.95  # far-away regions change little


def test_uncertainty_and_suggestion():
    img, labels = blob_image((48, 48))
    s = Session().set_image(img)
    s.add_click((16, 16))
    s.add_click((40, 5), positive=False)
    std = s.uncertainty()
    assert std[16, 16] ** 2 <= s.posterior.noise + 1e-6 and std.max() > 0.8  # var at a click <= s2
    sug = s.suggest_click()
    assert sug.position not in {(16, 16), (40, 5)} and 0 <= sug.score
    assert sug.predicted_label == s.mask()[sug.position]


def test_posterior_samples_interpolate_clicks():
    img, _ = blob_image((30, 30))
    s = Session().set_image(img)
    s.add_click((10, 10))
    s.add_click((25, 25), positive=False)
    f = s.samples(8, n_basis=256)
    assert f.shape == (8, 30, 30)
    assert np.all(f[:, 10, 10] > 0) and np.all(f[:, 25, 25] < 0)


def test_bad_inputs_are_named():
    s = Session()
    with pytest.raises(VolsegError, match="set_image"):
        s.add_click((1, 1))
    bad = np.zeros((20, 20), np.float32)
    bad[3, 4] = np.nan
    with pytest.raises(InputError, match="NaN"):
        s.set_image(bad)
    s.set_image(np.zeros((20, 20), np.float32))
    with pytest.raises(ClickError, match="outside"):
        s.add_click((25, 3))
    with pytest.raises(ClickError, match="coordinates"):
        s.add_click((2, 3, 4))
    with pytest.raises(ClickError, match="NaN"):
        s.add_click((np.nan, 3))
    with pytest.raises(ClickError, match="label"):
        s.add_click((2, 3), positive="maybe")
    with pytest.raises(InputError, match="shape"):
        s.set_image(np.zeros((20, 20), np.float32), prior=np.zeros((21, 20), np.uint8))
    with pytest.raises(MemoryBudgetError, match="budget"):
        Session(memory_budget="1MB").set_image(np.zeros((64, 64, 64), np.float32))
    with pytest.raises(VolsegError, match="CUDA"):
        if not torch.cuda.is_available():
            Session(device="cuda")
        else:
            raise VolsegError("CUDA available; nothing to check")


def test_default_config_file_mirrors_the_settings():
    """configs/default.yaml lists every GPConfig setting with its default, so it can be edited as is."""
    from dataclasses import asdict
    from pathlib import Path

    import yaml

    from volseg.config import GPConfig

    path = Path(__file__).resolve().parents[1] / "configs" / "default.yaml"
    assert GPConfig.from_yaml(path) == GPConfig()
    assert set(yaml.safe_load(path.read_text())["gp"]) == set(asdict(GPConfig()))


def test_default_kernel_is_multiscale_in_2d_and_in_volumes():
    from volseg.gp.kernels import RBF, MultiScaleRBF

    img2, labels2 = blob_image((40, 48))
    img3, _ = blob_image((16, 18, 14))
    s2 = Session().set_image(img2)
    assert isinstance(s2.kernel, MultiScaleRBF) and s2.kernel.spatial_dims == 2 and s2.kernel.share == 0.3
    assert s2.spatial_lengthscale == pytest.approx(0.14 * np.hypot(40, 48))
    s3 = Session().set_image(img3)
    # volumes: the GMRF + GP sum, whose stationary part leans to the short scale; the GP alone keeps 0.3
    assert isinstance(s3.kernel, MultiScaleRBF) and s3.kernel.spatial_dims == 3 and s3.kernel.share == 0.8
    assert s3.latent == "sum" and s2.latent == "gp"
    assert Session(latent="gp").set_image(img3).kernel.share == 0.3
    assert s3.spatial_lengthscale == pytest.approx(0.07 * np.linalg.norm((16, 18, 14)))
    rbf2 = Session(kernel="rbf").set_image(img2)
    assert isinstance(rbf2.kernel, RBF) and rbf2.spatial_lengthscale == pytest.approx(0.1 * np.hypot(40, 48))
    # clicks keep their labels under the multiscale kernel too
    s2.add_click((15, 15), True)
    s2.add_click((30, 36), False)
    assert s2.mask()[15, 15] == 1 and s2.mask()[30, 36] == 0
    with pytest.raises(InputError, match="unknown kernel"):
        Session(kernel="cubic")


def test_a_positive_click_lends_weak_points_to_its_homogeneous_region():
    """seed_points > 0 (opt-in): the click brings points of the region that looks like it, inside the
    object and spread out; they are weak labels, so a negative click on one of them keeps its own label."""
    img, labels = blob_image((40, 44, 30), seed=4)
    s = Session(spatial_lengthscale=4.0, seed_points=6).set_image(Image.from_array(img))
    s.add_click((13, 14, 9), True)
    seeds = [p for p in s._points if p.extra > 0]
    assert len(seeds) == 6 and s.posterior.n == 7
    assert all(labels[p.voxel] == 1 for p in seeds)
    assert max(np.abs(np.subtract(p.voxel, (13, 14, 9))).max() for p in seeds) >= 2  # spread, not a clump
    s.add_click(seeds[-1].voxel, False)
    m = s.mask()
    assert m[13, 14, 9] == 1 and m[seeds[-1].voxel] == 0
    assert s.posterior.n == 8  # appended: a click on a weak point is a second, stronger observation there
    s.undo()
    assert s.posterior.n == 7 and s.mask()[seeds[-1].voxel] == 1


def test_every_gp_setting_has_a_type_and_range_rule():
    from dataclasses import fields

    from volseg.config import _RULES, GPConfig

    assert set(_RULES) == {f.name for f in fields(GPConfig)}

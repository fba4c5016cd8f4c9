"""Learned backbones: checkpoints, the FeatureExtractor protocol, 2D/3D Session runs, the differentiable GP."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from volseg import Session
from volseg.errors import InputError
from volseg.features import get_extractor
from volseg.features.backbones import Backbone, load_backbone, save_checkpoint
from volseg.gp.differentiable import GPHyper, gp_inputs, posterior
from volseg.gp.inputs import InputMap
from volseg.gp.kernels import RBF
from volseg.gp.posterior import ExactPosterior
from volseg.image import Image

MODEL_2D = {"name": "BasicUNet", "spatial_dims": 2, "embed_dim": 4, "features": [4, 4, 8, 8, 16, 4], "long_side": 32}
MODEL_3D = {"name": "UNet", "spatial_dims": 3, "in_channels": 1, "embed_dim": 4, "channels": [4, 8], "strides": [2],
            "num_res_units": 0, "roi_size": [16, 16, 16]}
GP = {"kernel": "rbf", "feature_lengthscale": 0.5, "spatial_fraction": 0.25, "spatial_lengthscale": None,
      "outputscale": 1.0, "noise": 1e-3}


def make_ckpt(path, model):
    torch.manual_seed(0)
    return save_checkpoint(path, Backbone(model), {"model": model}, GP, manifest_sha256="test", metrics={"x": 1})


@pytest.fixture(scope="module")
def ckpt2d(tmp_path_factory):
    return make_ckpt(tmp_path_factory.mktemp("b2") / "tiny2d.ckpt", MODEL_2D)


@pytest.fixture(scope="module")
def ckpt3d(tmp_path_factory):
    return make_ckpt(tmp_path_factory.mktemp("b3") / "tiny3d.ckpt", MODEL_3D)


def rgb_image(h=40, w=56, seed=0):
    rng = np.random.default_rng(seed)
    a = np.full((h, w, 3), 60, np.uint8)
    a[10:30, 15:40] = (200, 80, 40)
    return Image(np.clip(a + rng.integers(0, 20, a.shape), 0, 255).astype(np.uint8))


def test_features_2d_shape_and_prior(ckpt2d):
    ex = load_backbone(ckpt2d)
    img = rgb_image()
    f = ex.features(img, budget=2 ** 30)
    assert f.shape == (40, 56, 4) and f.dtype == np.float32 and np.isfinite(f).all()
    assert np.allclose(f.reshape(-1, 4).mean(0), 0, atol=1e-3)  # standardised per image
    prior = ex.prior_mean(img)
    assert prior.shape == (40, 56) and prior.dtype == np.float32 and np.abs(prior).max() <= 1.5
    assert ex.gp_config["feature_lengthscale"] == 0.5
    grey = ex.features(Image.from_array(np.random.default_rng(1).random((33, 20)).astype(np.float32)), budget=2 ** 30)
    assert grey.shape == (33, 20, 4)


def test_features_3d_sliding_window(ckpt3d):
    ex = get_extractor(str(ckpt3d))  # the path route Session uses
    vol = np.random.default_rng(0).normal(100, 20, (20, 27, 18)).astype(np.float32)  # larger than the roi
    img = Image.from_array(vol)
    f = ex.features(img, budget=2 ** 30)
    assert f.shape == (20, 27, 18, 4) and np.isfinite(f).all()
    assert ex.prior_mean(img).shape == (20, 27, 18)
    with pytest.raises(InputError, match="3D model"):
        ex.features(rgb_image(), budget=2 ** 30)


def test_one_network_pass_serves_features_and_prior_mean(ckpt2d, monkeypatch):
    """prior_mean is its own call, and either order runs the backbone once per image."""
    from volseg.features import FeatureExtractor

    ex = load_backbone(ckpt2d)
    assert isinstance(ex, FeatureExtractor) and ex.prescaled is False
    runs = []
    run_2d = ex._run_2d
    monkeypatch.setattr(ex, "_run_2d", lambda image, side: runs.append((image, side)) or run_2d(image, side))
    a, b = rgb_image(), rgb_image(seed=1)
    prior = ex.prior_mean(a)
    f = ex.features(a, budget=2 ** 30)
    assert len(runs) == 1 and np.array_equal(ex.prior_mean(a), prior)
    ex.features(b)  # no budget: the default memory budget
    assert len(runs) == 2 and not np.array_equal(ex.prior_mean(b), prior) and len(runs) == 2
    assert np.array_equal(ex.features(a, budget=2 ** 30), f) and len(runs) == 3
    # another input size is another pass (a video's small object runs the network on the frame enlarged)
    big = ex.features(a, budget=2 ** 30, long_side=64)
    assert runs[-1][1] == 64 and len(runs) == 4 and big.shape == f.shape and not np.array_equal(big, f)
    assert {side for _, side in runs[:3]} == {ex.infer_long_side} == {32}


def test_bad_checkpoints(tmp_path):
    with pytest.raises(InputError, match="missing.ckpt"):
        load_backbone(tmp_path / "missing.ckpt")
    bad = tmp_path / "garbage.ckpt"
    bad.write_bytes(b"not a checkpoint")
    with pytest.raises(InputError, match="garbage.ckpt"):
        load_backbone(bad)
    other = tmp_path / "other.ckpt"
    torch.save({"format": "something/1"}, other)
    with pytest.raises(InputError, match="other.ckpt"):
        load_backbone(other)
    with pytest.raises(InputError, match="other.ckpt"):
        Session(features=str(other))
    # a misspelt name is told what the names are; a missing checkpoint path, that the file is missing
    with pytest.raises(InputError, match="unknown features 'Learned2d': filterbank, learned2d, a checkpoint"):
        Session(features="filterbank+Learned2d")
    with pytest.raises(InputError, match="checkpoint .*missing.ckpt does not exist"):
        Session(features=str(tmp_path / "missing.ckpt"))


def test_session_2d_keeps_clicked_labels(ckpt2d):
    s = Session(features=str(ckpt2d))
    s.set_image(rgb_image())
    clicks = [((20, 27), True), ((5, 5), False), ((21, 27), False), ((12, 38), True), ((35, 50), False),
              ((22, 28), True)]
    for pos, positive in clicks:
        s.add_click(pos, positive)
        mask = s.mask()
        # every click so far keeps its label (later clicks on the same pixel replace earlier ones)
        last = {}
        for p, v in clicks[: len(s.clicks)]:
            last[p] = v
        for p, v in last.items():
            assert mask[p] == (1 if v else 0), (p, v)
    assert s.probability().shape == (40, 56) and s.uncertainty().min() >= 0


def test_session_3d_with_checkpoint(ckpt3d):
    rng = np.random.default_rng(0)
    vol = rng.normal(0, 1, (18, 20, 17)).astype(np.float32)
    vol[5:12, 6:14, 4:12] += 3
    s = Session(features=str(ckpt3d))
    s.set_image(vol)
    s.add_click((8, 10, 8), True)
    s.add_click((1, 1, 1), False)
    s.add_click((9, 10, 8), False)
    m = s.mask()
    assert m.shape == vol.shape and m[8, 10, 8] == 1 and m[1, 1, 1] == 0 and m[9, 10, 8] == 0


def test_a_2d_model_runs_on_a_volume_slice_by_slice(ckpt2d, monkeypatch):
    """2.5D: a 2D network on a volume runs on the slices across the coarsest axis, every slice as grey in the
    volume's window, in batches; the embedding is standardised over the volume and there is no prior head."""
    vol = np.random.default_rng(0).normal(100, 20, (21, 24, 11)).astype(np.float32)
    vol[5:15, 6:18, 3:8] += 150
    img = Image.from_array(vol, spacing=(0.8, 0.8, 3.0))
    ex = load_backbone(ckpt2d)
    seen = []
    embed = ex.backbone.embed
    monkeypatch.setattr(ex.backbone, "embed", lambda x: seen.append(tuple(x.shape)) or embed(x))
    f = ex.features(img, budget=2 ** 30)
    assert f.shape == (21, 24, 11, 4) and np.isfinite(f).all()
    assert np.allclose(f.reshape(-1, 4).mean(0), 0, atol=1e-3)
    assert [s[0] for s in seen] == [8, 3] and all(s[1] == 3 for s in seen)  # 11 slices across the last axis
    assert ex.prior_mean(img) is None and ex.trained_ndim == 2
    one = Image.from_array(vol[..., 4:5], spacing=(0.8, 0.8, 3.0))  # a slab of one slice
    assert ex.features(one, budget=2 ** 30).shape == (21, 24, 1, 4)
    other = Image.from_array(vol, spacing=(3.0, 0.8, 0.8))
    seen.clear()
    ex.features(other, budget=2 ** 30)
    assert [s[0] for s in seen] == [8, 8, 5]  # 21 slices across the first axis


def test_a_2d_models_gp_settings_stay_with_2d_images(ckpt2d):
    """The GP settings a 2D network was trained with (its kernel, spatial lengthscale, noise) apply to 2D
    images; on a volume (2.5D) the volume defaults hold, and explicit settings win either way."""
    vol = np.random.default_rng(0).normal(100, 20, (16, 18, 9)).astype(np.float32)
    vol[4:12, 5:13, 2:7] += 150
    for features in (str(ckpt2d), f"{ckpt2d}+filterbank"):
        s = Session(features=features, spatial_fraction=0.2)
        assert s.config.noise == GP["noise"]
        s.set_image(rgb_image())
        assert (s.config.noise, s.config.kernel, s.config.spatial_fraction) == (GP["noise"], "rbf", 0.2)
        s.set_image(Image.from_array(vol, spacing=(1.0, 1.0, 2.5)))
        assert (s.config.noise, s.config.kernel, s.config.spatial_fraction) == (0.1, None, 0.2)
        s.add_click((8, 9, 4), True)
        s.add_click((0, 0, 0), False)
        m = s.mask()
        assert m[8, 9, 4] == 1 and m[0, 0, 0] == 0


def test_settings_a_config_chooses_win_over_the_learned_ones(ckpt2d):
    """A learned model brings its GP settings; a config's settings that differ from the defaults (a YAML file's
    ``noise: 0.05``), a config dict's keys and keyword settings win over them; defaults do not."""
    from volseg.config import GPConfig

    learned = Session(features=str(ckpt2d), config=GPConfig())
    assert (learned.config.noise, learned.config.kernel) == (GP["noise"], "rbf")
    chosen = Session(features=str(ckpt2d), config=GPConfig(noise=0.05, kernel="matern32"))
    assert (chosen.config.noise, chosen.config.kernel, chosen.config.spatial_fraction) == (0.05, "matern32", 0.25)
    named = Session(features=str(ckpt2d), config={"noise": 0.1})  # a dict names its keys, even a default value
    assert named.config.noise == 0.1 and named.config.feature_lengthscale == GP["feature_lengthscale"]
    for s in (chosen, named):
        s.set_image(rgb_image())
    assert (chosen.config.noise, named.config.noise, chosen.config.spatial_fraction) == (0.05, 0.1, 0.25)


def test_a_config_file_names_its_settings_even_at_their_defaults(ckpt2d, tmp_path):
    """``noise: 0.1`` in a YAML file is the noise a learned model's session uses, though 0.1 is the default;
    --memory-budget (GPConfig.replace) keeps what the file named and adds itself."""
    from volseg.config import GPConfig

    path = tmp_path / "gp.yaml"
    path.write_text("gp:\n  noise: 0.1\n")
    config = GPConfig.from_yaml(path).replace(memory_budget="2GB")
    assert config.named == {"noise", "memory_budget"} and GPConfig().named == frozenset()
    s = Session(features=str(ckpt2d), config=config)
    s.set_image(rgb_image())
    assert (s.config.noise, s.config.memory_budget, s.config.outputscale) == (0.1, "2GB", GP["outputscale"])
    # a batch's expected parameters tell the two apart, though the configs are equal in value
    from volseg.batch import BatchOptions, expected_parameters

    assert GPConfig.from_dict({"noise": 0.1}) == GPConfig()
    learned = expected_parameters(BatchOptions(features=str(ckpt2d), config=GPConfig()))
    named = expected_parameters(BatchOptions(features=str(ckpt2d), config=GPConfig.from_dict({"noise": 0.1})))
    assert (learned["noise"], named["noise"]) == (GP["noise"], 0.1)


def test_differentiable_posterior_matches_engine():
    torch.manual_seed(0)
    emb = torch.randn(5, 12, 9, dtype=torch.float32, requires_grad=True)
    hyper = GPHyper(0.7, 0.3, 1.3, 1e-3)
    z = gp_inputs(emb, hyper)
    # the engine's input map on the same features and lengthscales (Session's convention)
    diag = float(np.hypot(12, 9))
    im = InputMap(emb.detach().permute(1, 2, 0), (1.0, 1.0), feature_lengthscale=0.7 * 5 ** 0.5,
                  spatial_lengthscale=0.3 * diag)
    full = tuple(slice(0, n) for n in (12, 9))
    assert torch.allclose(z, im.box(full), atol=1e-5)
    idx = torch.tensor([3, 50, 77])
    y = torch.tensor([1.0, -1.0, 1.0], dtype=torch.float64)
    m0 = torch.full((108,), -0.5)
    mean, var = posterior(z[idx], y, m0[idx], z, m0, hyper.outputscale, hyper.noise)
    post = ExactPosterior(RBF(1.3), 1e-3 + 1e-8).fit(z[idx].detach(), y[:, None], m0[idx, None].double())
    em, ev = post.mean_var(z.detach(), m0[:, None])
    assert torch.allclose(mean.detach(), em[:, 0], atol=1e-4) and torch.allclose(var.detach(), ev, atol=1e-4)
    (mean.sum() + var.sum()).backward()
    assert emb.grad is not None and torch.isfinite(emb.grad).all()
    assert hyper.log_feature_lengthscale.grad is not None and hyper.log_spatial_fraction.grad is not None


def test_packaged_2d_model_loads_by_name_and_keeps_clicked_labels():
    """The shipped checkpoint (volseg/models/learned2d.ckpt): found by name, small, with its card,
    and a click on a photo-like image keeps its label under it."""
    from volseg.features import PACKAGED_MODELS

    path = PACKAGED_MODELS["learned2d"]
    assert path.stat().st_size < 20 * 2**20 and (path.parent / "README.md").is_file()
    ex = get_extractor("learned2d")
    assert ex.backbone.spatial_dims == 2 and ex.gp_config["outputscale"] > 0
    s = Session(features="learned2d")
    s.set_image(rgb_image())
    s.add_click((20, 27), True)
    s.add_click((5, 5), False)
    mask = s.mask()
    assert mask[20, 27] == 1 and mask[5, 5] == 0 and s.uncertainty().min() >= 0


def test_stacked_features_are_a_product_kernel_of_their_parts():
    """'learned2d+filterbank': each part over its own lengthscale, the learned part's GP settings and
    prior head, and clicks keep their labels."""
    from volseg.features.stack import StackedFeatures

    ex = get_extractor("learned2d+filterbank")
    assert isinstance(ex, StackedFeatures) and ex.name == "backbone:learned2d.ckpt+filterbank"
    learned, bank = ex.parts
    img = rgb_image()
    f = ex.features(img, budget=2**30)
    e = learned.features(img, budget=2**30)
    D_e = e.shape[-1]
    assert f.shape[-1] == D_e + bank.features(img, budget=2**30).shape[-1]
    l_e = learned.gp_config["feature_lengthscale"]
    np.testing.assert_allclose(f[..., :D_e], e / (l_e * D_e ** 0.5), rtol=1e-5, atol=1e-6)
    assert ex.gp_config["feature_lengthscale"] == 1.0 and ex.gp_config["noise"] == learned.gp_config["noise"]
    assert ex.prior_mean(img) is not None and bank.prior_mean(img) is None
    s = Session(features="learned2d+filterbank").set_image(img)
    # the stack arrives scaled: the session divides by the lengthscale only, not by sqrt(D) again
    np.testing.assert_allclose(s.inputs.features.numpy(), f, rtol=1e-5, atol=1e-6)
    s.add_click((20, 27), True)
    s.add_click((5, 5), False)
    assert s.mask()[20, 27] == 1 and s.mask()[5, 5] == 0
    s.set_image(rgb_image(30, 44, seed=1))  # the prior head's map follows the new image
    assert s.extractor.prior_mean(s.image).shape == (30, 44)
    s.add_click((15, 22), True)

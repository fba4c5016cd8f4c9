"""Features on demand: tiles equal whole-volume features, and a session computes only where clicks reach."""
import numpy as np
import pytest

from volseg import Image, Session
from volseg.errors import MemoryBudgetError
from volseg.features import FilterBank
from volseg.features.tiles import TILE, TiledFeatures

# superpixels are not local: off, so that small test volumes take the tiled path as a CT would
LOCAL_BANK = FilterBank(superpixel_max_voxels=0)


def ct_like(shape, seed=0):
    rng = np.random.default_rng(seed)
    grid = np.indices(shape).astype(np.float32)
    c = np.array(shape, np.float32)[:, None, None, None]
    organ = (((grid - 0.4 * c) / (0.2 * c)) ** 2).sum(0) < 1
    vol = np.where(organ, 90.0, 40.0) + 15.0 * rng.standard_normal(shape)
    vol[:, :, : shape[2] // 6] = -1000.0  # air, a strong edge
    return vol.astype(np.float32), organ


@pytest.mark.parametrize("spacing", [(1.0, 1.0, 1.0), (0.7, 0.8, 2.5)])
def test_tiles_equal_whole_volume_features(spacing):
    vol, _ = ct_like((90, 76, 60))
    img = Image.from_array(vol, spacing=spacing)
    tiles = TiledFeatures(LOCAL_BANK, img, budget=1 << 30)
    whole = LOCAL_BANK.raw(img.array, img.spacing, tiles.params)
    assert any(max(f) > 1 for f in [np.ceil(np.asarray(8.0) / np.asarray(spacing) / 1.5)])  # coarse scales in play
    for box in [(slice(3, 20), slice(40, 60), slice(5, 25)), (slice(70, 90), slice(35, 45), slice(40, 60))]:
        np.testing.assert_allclose(tiles.raw(box), whole[box], rtol=1e-5, atol=1e-5 * np.abs(whole).max())
        before = tiles.done.sum()
        tiles.ensure([box])
        assert tiles.done.sum() > before and not tiles.done.all()
        expect = (whole[box] - tiles._mean) * tiles._scale
        # the filters accumulate in float32 (OpenCV), in an order that depends on where a voxel sits in
        # the array, so a tile and the whole volume round differently (Hessian eigenvalues amplify it)
        np.testing.assert_allclose(tiles.array[box].astype(np.float32), expect, rtol=1e-5, atol=3e-4)
    computed = tiles.done.sum()
    tiles.ensure([(slice(3, 20), slice(40, 60), slice(5, 25))])  # a tile is computed once
    assert tiles.done.sum() == computed
    voxels = np.array([[85, 2, 1], [86, 3, 2], [5, 70, 55]])  # points: at least the tiles that hold them
    holding = tuple((voxels // TILE).T)
    assert not tiles.done[holding].any()
    tiles.ensure([], voxels)
    assert tiles.done[holding].all()
    full = tiles.ensure_all()
    assert tiles.done.all() and np.isfinite(full).all()
    # the standardisation comes from a sample: close to the whole volume's for the smoothed
    # intensities, a few times off at worst for the heavy-tailed edge features (why only a whole CT
    # takes it)
    ratio = full.reshape(-1, full.shape[-1]).std(0) / LOCAL_BANK.weights(3, 1, vol.size)
    assert np.all(np.abs(ratio[:5] - 1) < 0.25) and np.all((ratio > 1 / 4) & (ratio < 4)), ratio


def test_session_computes_features_only_where_clicks_reach():
    vol, organ = ct_like((128, 128, 64))
    img = Image.from_array(vol, spacing=(1.0, 1.0, 1.5))
    # on demand even for a small volume (by default only a whole CT is)
    s = Session(features=LOCAL_BANK, spatial_lengthscale=3.0, on_demand_features_above=0).set_image(img)
    assert s.feature_tiles is not None
    eager = Session(features=LOCAL_BANK, spatial_lengthscale=3.0, on_demand_features_above=0).set_image(img)
    eager.feature_tiles.ensure_all()
    clicks = [((51, 51, 26), True), ((51, 51, 8), False), ((60, 52, 26), True)]
    for pos, positive in clicks:
        s.add_click(pos, positive)
        eager.add_click(pos, positive)
    assert 0 < s.feature_tiles.done.mean() < 0.7  # much of the volume never computed
    np.testing.assert_array_equal(s.mask(), eager.mask())
    np.testing.assert_array_equal(s.probability(), eager.probability())
    assert s.mask()[51, 51, 26] == 1 and s.mask()[51, 51, 8] == 0
    # whole-volume outputs still work (unreached tiles keep the prior)
    assert s.uncertainty().shape == vol.shape and np.isfinite(s.uncertainty()).all()
    assert s.suggest_click().position == eager.suggest_click().position
    s.undo()
    eager.undo()
    np.testing.assert_array_equal(s.mask(), eager.mask())


def test_all_at_once_equals_the_whole_volume_bank():
    """Below the on-demand size a session computes every tile at set_image, standardised by the whole
    volume's statistics: the features FilterBank.features gives (to float16 storage)."""
    from volseg.features import compute_features

    vol, _ = ct_like((64, 60, 48))
    img = Image.from_array(vol, spacing=(0.8, 0.8, 2.0))
    s = Session(features=LOCAL_BANK).set_image(img)
    assert s.feature_tiles is not None and s.feature_tiles.done.all()
    tiles = TiledFeatures(LOCAL_BANK, img, budget=1 << 30, on_demand=False)
    whole = compute_features(LOCAL_BANK, img, budget=1 << 30).astype(np.float32)
    np.testing.assert_allclose(tiles.array.astype(np.float32), whole, atol=2e-2, rtol=1e-2)


def test_tiled_features_respect_the_budget_and_tile_grid():
    vol, _ = ct_like((40, 40, 40))
    img = Image.from_array(vol)
    with pytest.raises(MemoryBudgetError, match="budget"):
        TiledFeatures(LOCAL_BANK, img, budget=1 << 20)
    with pytest.raises(ValueError, match="superpixel"):
        TiledFeatures(FilterBank(), img, budget=1 << 30)
    tiles = TiledFeatures(LOCAL_BANK, img, budget=1 << 30)
    assert tiles.done.shape == tuple(-(-n // TILE) for n in vol.shape)


@pytest.mark.skipif(not __import__("torch").cuda.is_available(), reason="needs a CUDA GPU")
def test_cuda_session_takes_every_tile_and_matches_the_cpu():
    vol, _ = ct_like((64, 64, 48))
    img = Image.from_array(vol)
    cpu = Session(features=LOCAL_BANK, spatial_lengthscale=3.0).set_image(img)
    gpu = Session(features=LOCAL_BANK, spatial_lengthscale=3.0, device="cuda").set_image(img)
    assert gpu.feature_tiles.done.all()
    for s in (cpu, gpu):
        s.add_click((25, 25, 19), True)
        s.add_click((25, 25, 4), False)
    np.testing.assert_allclose(gpu._mean.cpu().numpy(), cpu._mean.cpu().numpy(), atol=1e-3)

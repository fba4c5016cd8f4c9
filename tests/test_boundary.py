"""The edge-aware minimum cut that turns the GP posterior into a mask (volseg.boundary)."""
import itertools

import numpy as np
import pytest
from scipy.special import log_ndtr

from volseg import Session
from volseg.boundary import (
    ColourModel,
    contrast_channels,
    cut,
    edge_weights,
    pair_slices,
    restore_collapsed,
    sparse_edge_weights,
)


def energy(fg, latent, weights, strength):
    unary = np.where(fg, -log_ndtr(latent), -log_ndtr(-latent)).sum()
    pair = sum((strength * w * (fg[p] != fg[q])).sum() for o, w in weights for p, q in [pair_slices(o)])
    return unary + pair


def clicked_mask(image, inside, outside, **settings):
    """Object mask after one positive and one negative click; both clicks keep their label."""
    s = Session(**settings)
    s.set_image(image)
    s.add_click(inside, positive=True)
    s.add_click(outside, positive=False)
    m = s.mask() == 1
    assert m[inside] and not m[outside]
    return m


@pytest.mark.parametrize("connectivity", [1, 2])
def test_cut_is_the_minimum_energy_labelling(connectivity):
    rng = np.random.default_rng(0)
    latent = rng.normal(0, 1, (3, 4))
    weights = edge_weights(rng.normal(0, 1, (3, 4, 1)), (1.0, 1.0), connectivity)
    got = cut(latent, weights, strength=0.8, band=np.inf, reach=np.inf)
    best = min((np.array(bits, bool).reshape(3, 4) for bits in itertools.product([0, 1], repeat=12)),
               key=lambda fg: energy(fg, latent, weights, 0.8))
    assert energy(got, latent, weights, 0.8) == pytest.approx(energy(best, latent, weights, 0.8), abs=1e-2)


@pytest.mark.parametrize("shape, connectivity", [((3, 4), 2), ((2, 3, 2), 3)])
def test_only_the_band_is_cut_and_its_fixed_neighbours_are_priced(shape, connectivity):
    """The graph holds the uncertain band alone: the cut is the minimum-energy labelling among those that
    keep the GP's label outside the band, pairs with a fixed neighbour included (every offset's sign)."""
    for seed in range(8):
        rng = np.random.default_rng(seed)
        latent = rng.normal(0, 1.2, shape)
        weights = edge_weights(rng.normal(0, 1, shape + (1,)), (1.0,) * len(shape), connectivity)
        free = np.abs(latent) < 0.9
        got = cut(latent, weights, strength=2.0, band=0.9, reach=np.inf)
        assert (got[~free] == (latent[~free] > 0)).all()

        def labelling(bits, free=free, latent=latent):
            fg = latent > 0
            fg[free] = np.array(bits, bool)
            return fg

        best = min((labelling(bits) for bits in itertools.product([0, 1], repeat=int(free.sum()))),
                   key=lambda fg, latent=latent, weights=weights: energy(fg, latent, weights, 2.0))
        assert energy(got, latent, weights, 2.0) == pytest.approx(energy(best, latent, weights, 2.0), abs=1e-2)


def test_ties_go_to_the_smallest_minimum_cut_foreground():
    # a flat image and a posterior of exact ties: many labellings share the minimum energy; the cut
    # returns their intersection, the same set whichever max-flow algorithm solved it
    latent = np.tile([2.0, 0.0, 0.0, -2.0], (3, 1))  # the boundary may sit at any of three columns
    weights = edge_weights(np.zeros((3, 4, 1)), (1.0, 1.0))
    got = cut(latent, weights, strength=0.3, band=np.inf, reach=np.inf)
    labellings = [np.array(bits, bool).reshape(3, 4) for bits in itertools.product([0, 1], repeat=12)]
    energies = np.array([energy(fg, latent, weights, 0.3) for fg in labellings])
    minimisers = [fg for fg, e in zip(labellings, energies) if e < energies.min() + 1e-6]
    assert len(minimisers) == 3
    np.testing.assert_array_equal(got, np.logical_and.reduce(minimisers))


@pytest.mark.parametrize("ndim", [2, 3])
def test_boundary_moves_onto_the_image_edge(ndim):
    shape = (24,) * (ndim - 1) + (40,)
    image = np.zeros(shape + (1,), np.float32)
    image[..., 20:, 0] = 1.0                     # the object's edge is at column 20
    cols = np.arange(40, dtype=np.float64)
    latent = np.broadcast_to((cols - 16.5) / 6.0, shape).copy()  # the posterior's edge is at 16.5
    fg = cut(latent, edge_weights(image, (1.0,) * ndim), strength=15.0)
    assert (fg[..., 20:].all() and not fg[..., :20].any())


def test_clicked_locations_keep_their_label():
    latent = np.full((10, 10), 1.0)
    fg = cut(latent, edge_weights(np.zeros((10, 10, 1)), (1.0, 1.0)), strength=50.0, band=5.0,
             negatives=[(5, 5)], positives=[(0, 0)])
    assert not fg[5, 5] and fg[0, 0]


def test_contrast_channels_are_lab_for_rgb():
    rgb = np.zeros((2, 2, 3), np.uint8)
    rgb[0, 0] = 255
    lab = contrast_channels(rgb)
    assert lab[0, 0, 0] == pytest.approx(100.0, abs=0.5) and lab[1, 1, 0] == pytest.approx(0.0, abs=0.5)


def test_session_mask_follows_the_edge_and_can_be_switched_off():
    """A bright square on a dark ground: one click inside; the cut puts the mask on the square's edge."""
    img = np.zeros((64, 64), np.float32)
    img[16:48, 16:48] = 1.0
    img += np.random.default_rng(1).normal(0, 0.05, img.shape).astype(np.float32)
    truth = np.zeros(img.shape, bool)
    truth[16:48, 16:48] = True

    def iou(mask):
        return (mask & truth).sum() / (mask | truth).sum()

    masks = {strength: clicked_mask(img, (32, 32), (5, 5), edge_strength=strength) for strength in (0.0, 15.0)}
    assert iou(masks[15.0]) >= iou(masks[0.0]) and iou(masks[15.0]) > 0.95


def test_cut_is_on_for_images_and_off_for_volumes_unless_asked():
    from volseg.config import GPConfig

    assert GPConfig().edge_strength_for(2) == 15.0 and GPConfig().edge_strength_for(3) == 0.0
    assert GPConfig(edge_strength=5.0).edge_strength_for(3) == 5.0
    assert GPConfig(edge_strength=0.0).edge_strength_for(2) == 0.0


def test_colour_model_prefers_the_colours_seen_inside():
    rng = np.random.default_rng(2)
    image = rng.normal(0, 0.02, (40, 40, 3)).astype(np.float32)
    image[:20, :, 0] += 1.0                           # the object (top half) is red, the ground grey
    labelled = np.zeros((40, 40), bool)
    labelled[:20, :20] = True                         # the labelling found only half of the object
    ratio = ColourModel(image).log_ratio(labelled)
    assert ratio[:20, 20:].min() > 0.5                # the rest of the object looks like the object
    assert ratio[20:].max() < -1.0                    # the ground does not
    assert np.abs(ratio).max() <= 4.0                 # clipped: never outweighs a confident posterior


def test_appearance_term_moves_an_unsure_region_to_the_object_it_looks_like():
    image = np.zeros((10, 20, 1), np.float32)
    image[:, 8:12] = 1.0                              # the object spans columns 0-11 in colour ...
    image[:, :8] = 1.0
    latent = np.where(np.arange(20) < 8, 1.0, -0.3) * np.ones((10, 1))  # ... the GP is sure of 0-7 only
    weights = edge_weights(image, (1.0, 1.0))
    without = cut(latent, weights, strength=0.1)
    ratio = ColourModel(image).log_ratio(latent > 0)
    with_colour = cut(latent, weights, strength=0.1, appearance=0.5 * ratio)
    assert not without[:, 8:12].any() and with_colour[:, :12].all() and not with_colour[:, 12:].any()


def test_session_appearance_term_recovers_a_part_the_gp_is_unsure_of():
    """A red disc on grey, clicked once inside near its left edge and once outside: far from the
    click the GP leans to background, the colour model (fitted to the GP's own mask) pulls the
    rest of the disc in; without it the mask stays smaller."""
    yy, xx = np.mgrid[:64, :96]
    disc = (yy - 32) ** 2 + (xx - 48) ** 2 < 26 ** 2
    img = np.full((64, 96, 3), 128, np.uint8)
    img[disc] = (200, 30, 30)
    img += np.random.default_rng(0).integers(0, 10, img.shape, dtype=np.uint8)  # a camera's noise
    sizes = {}
    for weight in (0.0, 0.5):
        m = clicked_mask(img, (32, 26), (5, 5), appearance_weight=weight)
        assert not (m & ~disc).any()
        sizes[weight] = int(m.sum())
    assert sizes[0.5] > sizes[0.0]


def test_an_object_the_gp_found_is_not_cut_down_to_its_click():
    """A flat, noise-free disc clicked near its edge: every cut edge costs the full pairwise weight,
    so the plain cut would keep the clicked pixel alone; the mask keeps at least the GP's own part."""
    yy, xx = np.mgrid[:64, :96]
    disc = (yy - 32) ** 2 + (xx - 48) ** 2 < 26 ** 2
    img = np.full((64, 96, 3), 128, np.uint8)
    img[disc] = (200, 30, 30)
    m = clicked_mask(img, (32, 26), (5, 5), appearance_weight=0.0)
    assert m.sum() > 100 and not (m & ~disc).any()


def test_restore_collapsed_only_where_the_cut_left_almost_nothing():
    gp = np.zeros((10, 20), bool)
    gp[2:8, 2:8] = gp[2:8, 12:18] = True
    cut_fg = gp.copy()
    cut_fg[2:8, 2:8] = False
    cut_fg[4, 4] = True                      # the first part collapsed onto its click
    cut_fg[2, 12:18] = False                 # the second lost a row: a moved boundary, kept
    out = restore_collapsed(cut_fg.copy(), gp, [(4, 4), (5, 15)])
    assert out[2:8, 2:8].all() and not out[2, 12:18].any() and out[3:8, 12:18].all()


@pytest.mark.parametrize("connectivity, ratio", [(1, np.sqrt(2)), (2, 1.0)])
def test_diagonal_neighbours_price_a_boundary_by_its_euclidean_length(connectivity, ratio):
    """On a flat image, a 45-degree boundary costs sqrt(2) times an axis-aligned one of the same
    Euclidean length with face neighbours (so cuts run along the grid), about the same with diagonals."""
    n = 64
    weights = edge_weights(np.zeros((n, n, 1), np.float32), (1.0, 1.0), connectivity)
    r, c = np.mgrid[:n, :n]

    def cost(fg):
        return sum((w * (fg[p] != fg[q])).sum() for o, w in weights for p, q in [pair_slices(o)])

    axis = cost(c < n // 2) / n                 # a boundary n long
    diagonal = cost(r + c < n) / (n * np.sqrt(2))  # a boundary n * sqrt(2) long
    assert diagonal / axis == pytest.approx(ratio, rel=0.05)


@pytest.mark.parametrize("ndim, connectivity", [(2, 2), (3, 1)])
def test_sparse_edge_weights_cut_as_the_dense_ones(ndim, connectivity):
    """Known everywhere, the weights a cut reads from the sparse functions are the dense arrays'."""
    rng = np.random.default_rng(2)
    shape = (12, 14) if ndim == 2 else (6, 7, 5)
    channels = rng.normal(0, 1, shape + (3,)).astype(np.float32)
    latent = rng.normal(0, 1, shape)
    dense = cut(latent, edge_weights(channels, (1.0,) * ndim, connectivity), strength=3.0, band=1.0, reach=np.inf)
    sparse = sparse_edge_weights(channels, np.ones(shape, bool), (1.0,) * ndim, connectivity)
    assert all(callable(w) for _, w in sparse)
    np.testing.assert_array_equal(cut(latent, sparse, strength=3.0, band=1.0, reach=np.inf), dense)

"""The label map kept up to date box by box equals the one recomputed over the whole image."""
from pathlib import Path

import numpy as np
import pytest
import torch
from scipy import ndimage as ndi
from scipy.special import ndtr

from volseg import Image, Session
from volseg.clicks import Click
from volseg.mask import LabelMap, clean_topology

CONFIGS = Path(__file__).resolve().parents[1] / "configs"


def reference_topology(labels, clicks):
    """The topology step as the session wrote it before volseg.mask (whole image, binary_fill_holes)."""
    negatives = [c.voxel() for c in clicks if not c.positive]
    for obj in {c.object for c in clicks if c.positive}:
        region = labels == obj
        comp, n = ndi.label(region)
        if n > 1:
            keep = [comp[c.voxel()] for c in clicks if c.positive and c.object == obj]
            labels[region & ~np.isin(comp, keep)] = 0
            region = labels == obj
        holes = ndi.binary_fill_holes(region) & ~region & (labels == 0)
        if negatives and holes.any():
            comp, _ = ndi.label(holes)
            holes &= ~np.isin(comp, [comp[v] for v in negatives if comp[v] > 0])
        labels[holes] = obj
    return labels


def whole_image_mask(s: Session, raw: np.ndarray | None = None) -> np.ndarray:
    """The label map as mask() computed it over the whole image on every call (no local state); ``raw``:
    the labels before the topology step, if not the threshold of the latent."""
    objects = s.objects
    dtype = np.uint8
    if not objects:
        return np.zeros(s.image.shape, dtype)
    if raw is None:
        best, arg = s._mean.max(0)
        raw = np.asarray(objects, dtype)[arg.numpy()] * (best.numpy() > 0)
    return reference_topology(raw.astype(dtype), s._train_clicks)


def held_reference(s: Session, before: np.ndarray, objects_before: list, clicks_before: int) -> np.ndarray:
    """Hysteresis over the whole image, written out plainly: the raw labels after the session's last click,
    from the labels before it (``before``, made by ``clicks_before`` clicks for ``objects_before``)."""
    ids = np.asarray(s.objects)
    mean, var = s._mean.numpy(), s._variance().numpy()
    best, arg = mean.max(0), mean.argmax(0)
    plain = np.where(best > 0, ids[arg], 0)
    if clicks_before == 0 or s.objects != objects_before:  # a new object's click: the plain threshold
        return plain
    h = s.config.hysteresis
    p = ndtr(mean / np.sqrt(1 + var))
    options = np.concatenate([np.full((1,) + best.shape, 0.5), p])  # background, then each object
    options += h * (before[None] == np.concatenate([[0], ids]).reshape((-1,) + (1,) * best.ndim))
    held = np.concatenate([[0], ids])[options.argmax(0)]
    for c in s._train_clicks:
        held[c.voxel()] = plain[c.voxel()]
    return held


def rings_image(shape, period=16, seed=0):
    """A grid of small bright rings (shells in 3D: parts with holes) and dimmer blobs on noise: many
    components and holes to get wrong, each far smaller than the image."""
    rng = np.random.default_rng(seed)
    grid = np.indices(shape).astype(np.float32)
    cell = np.floor(grid / period)
    r = np.sqrt(((grid - (cell + 0.5) * period) ** 2).sum(0))
    ring = (cell.sum(0) % 2 == 0) & (r > 0.15 * period) & (r < 0.35 * period)
    blob = (cell.sum(0) % 2 == 1) & (r < 0.3 * period)
    img = 1.0 * ring + 0.6 * blob + 0.1 * rng.standard_normal(shape)
    return img.astype(np.float32)


@pytest.mark.parametrize("shape, spacing, period, lengthscale, seed, hysteresis, n_objects",
                         [((120, 128), (1.0, 1.0), 16, 8.0, 1, 0.0, 2),
                          ((44, 48, 36), (1.0, 1.0, 1.5), 14, 4.0, 8, 0.0, 2),
                          ((44, 48, 36), (1.0, 1.0, 1.5), 14, 4.0, 8, 0.1, 2),
                          ((44, 48, 36), (1.0, 1.0, 1.5), 14, 4.0, 8, 0.1, 1)])
def test_local_mask_equals_whole_image_mask_over_random_clicks(shape, spacing, period, lengthscale, seed, hysteresis,
                                                              n_objects):
    image = rings_image(shape, period)
    # a reach short next to the image, so that clicks update part of it; no edge cut (an image-wide step);
    # the plain RBF, whose one lengthscale leaves the holes and stray parts this test must see
    s = Session(spatial_lengthscale=lengthscale, edge_strength=0, kernel="rbf", latent="gp",
                hysteresis=hysteresis).set_image(Image.from_array(image, spacing=spacing))
    rng = np.random.default_rng(seed)  # a click sequence that drops parts and fills holes
    bright = np.argwhere(image > 0.45)
    local_updates = dropped = filled = held = 0
    history = [(np.zeros(shape, np.int64), [], 0)]  # held labels: the whole-image reference after each click
    for step in range(24):
        if step % 7 == 6:
            s.undo()
            if hysteresis:
                history.pop()
        else:
            positive = not s.clicks or bool(rng.random() < 0.6)  # (a session's first click names an object)
            pos = bright[rng.integers(len(bright))] if positive else rng.integers(0, shape)
            s.add_click(tuple(int(v) for v in pos), positive=positive, object=int(rng.integers(1, n_objects + 1)))
            if hysteresis:
                history.append((held_reference(s, *history[-1]), list(s.objects), len(s.clicks)))
        local_updates += isinstance(s.last_region, list) and s.last_update["locations"] < image.size / 2
        m = s.mask()
        raw = history[-1][0] if hysteresis else None
        if hysteresis:  # labels the plain threshold would change
            best, arg = s._mean.max(0)
            held += bool((np.asarray(s.objects)[arg.numpy()] * (best.numpy() > 0) != raw).any())
        np.testing.assert_array_equal(m, whole_image_mask(s, raw), err_msg=f"after step {step}")
        for c in s._train_clicks:  # clicked voxels keep their labels
            assert m[c.voxel()] == (c.object if c.positive else 0)
        raw = s._mean.max(0).values.numpy() > 0
        dropped += bool((raw & (m == 0)).any())  # parts not connected to their clicks
        filled += bool((~raw & (m > 0)).any())  # holes
    # the run exercised what it is meant to: local updates, both objects, dropped parts and filled holes,
    # and held labels where the threshold alone would have changed them
    assert local_updates >= 12 and dropped >= 5 and (filled >= 5 or n_objects == 1), (local_updates, dropped, filled)
    assert held >= 5 or not hysteresis, held
    assert set(np.unique(s.mask())) == set(range(n_objects + 1))


def test_local_mask_sees_holes_open_and_close():
    """A negative click inside a filled hole, far from the ring that encloses it, reopens the hole;
    its undo fills it again (the ring itself never changes)."""
    shape = (40, 40, 40)
    grid = np.indices(shape)
    r = np.sqrt(((grid - 20.0) ** 2).sum(0))
    img = Image.from_array(((r > 12) & (r < 15)).astype(np.float32))
    s = Session(spatial_lengthscale=60.0, edge_strength=0).set_image(img)
    s.add_click((20, 20, 6), True)  # on the shell
    filled = s.mask()
    assert filled[20, 20, 20] == 1  # the inside is a hole of the shell, filled
    s.add_click((20, 20, 20), False)
    np.testing.assert_array_equal(s.mask(), whole_image_mask(s))
    assert s.mask()[20, 20, 20] == 0
    s.undo()
    np.testing.assert_array_equal(s.mask(), whole_image_mask(s))
    assert s.mask()[20, 20, 20] == 1


def test_label_map_crop_matches_whole_image():
    """clean_topology on a crop holding all foreground plus a voxel equals it on the whole image."""
    rng = np.random.default_rng(0)
    raw = (ndi.gaussian_filter(rng.random((30, 34, 26)), 2) > 0.52).astype(np.uint8)
    raw[raw > 0] = rng.integers(1, 3, int(raw.sum()))
    raw = ndi.median_filter(raw, 3)
    fg = np.argwhere(raw)
    picks = fg[:: max(1, len(fg) // 5)]
    clicks = [Click(tuple(map(float, v)), True, int(raw[tuple(v)])) for v in picks]
    clicks.append(Click((0.0, 0.0, 0.0), False, 1))
    m = LabelMap(raw.shape)
    mean = torch.as_tensor(np.stack([(raw == k) * 2.0 - 1.0 for k in (1, 2)]).astype(np.float32))
    got = m.labels(mean, [1, 2], clicks, topology=True)
    np.testing.assert_array_equal(got, reference_topology(raw.copy(), clicks))


def test_edge_cut_path_is_the_whole_image_computation():
    """With the 2D edge cut (an image-wide step) the map is computed as before, whole, every time."""
    img = rings_image((60, 64))
    s = Session().set_image(img)
    s.add_click((19, 10), True)
    s.add_click((42, 45), True, object=2)
    s.add_click((2, 2), False)
    best, arg = s._mean.max(0)
    fg = s._masks.edge_cut(best.numpy(), s._train_clicks)
    labels = np.asarray(s.objects, np.uint8)[arg.numpy()] * fg
    np.testing.assert_array_equal(s.mask(), reference_topology(labels.astype(np.uint8), s._train_clicks))


@pytest.mark.parametrize("shape", [(40, 50), (20, 24, 18)])
def test_enclosed_is_what_fill_holes_adds(shape):
    from volseg.mask import enclosed

    rng = np.random.default_rng(0)
    for threshold in (0.45, 0.5, 0.55):
        region = ndi.gaussian_filter(rng.random(shape), 1.5) > threshold
        np.testing.assert_array_equal(enclosed(~region), ndi.binary_fill_holes(region) & ~region)


@pytest.mark.parametrize("shape", [(60, 70), (26, 30, 22)])
def test_clean_topology_equals_the_whole_image_reference(shape):
    """Per-object boxes (and the labelling hole fill) change nothing: random label maps with parts,
    holes, touching objects and clicks of every kind."""
    rng = np.random.default_rng(3)
    for trial in range(6):
        field = ndi.gaussian_filter(rng.random(shape), 1.5)
        raw = np.where(field > 0.52, 1, np.where(field < 0.47, 0, 2)).astype(np.uint8)
        raw[ndi.gaussian_filter(rng.random(shape), 1.0) > 0.56] = 3
        clicks = [Click(tuple(float(x) for x in rng.integers(0, shape)), bool(rng.random() < 0.6),
                        int(rng.integers(1, 4))) for _ in range(12)]
        # a ring (shell) of object 1 around a hole, clicked; sometimes a negative click in its hole
        centre = rng.integers(8, np.array(shape) - 8)
        r = np.sqrt(((np.indices(shape) - centre.reshape((-1,) + (1,) * len(shape))) ** 2).sum(0))
        raw[(r >= 4) & (r < 6)] = 1
        clicks.append(Click(tuple(float(x) for x in centre + 5 * np.eye(len(shape), dtype=int)[0]), True, 1))
        if trial % 2:
            clicks.append(Click(tuple(float(x) for x in centre), False, 1))
        np.testing.assert_array_equal(clean_topology(raw.copy(), clicks), reference_topology(raw.copy(), clicks),
                                      err_msg=f"trial {trial}")


def test_mask_stage_cuts_edges_only_where_the_settings_ask():
    from volseg.config import GPConfig
    from volseg.image import Image
    from volseg.mask import MaskStage

    flat, volume = Image.from_array(np.zeros((30, 40), np.float32)), Image.from_array(np.zeros((8, 30, 40), np.float32))
    assert MaskStage(flat, GPConfig()).edge_cut is not None          # 2D: cut by default
    assert MaskStage(volume, GPConfig()).edge_cut is None            # volumes: the GP's own mask
    assert MaskStage(flat, GPConfig(edge_strength=0)).edge_cut is None
    assert MaskStage(flat, GPConfig(edge_max_locations=100)).edge_cut is None


def test_held_labels_change_only_where_the_posterior_decides():
    """One object, margin 0.1: after the first click a location joins above 1/2 + 0.1 and leaves below
    1/2 - 0.1 (the probability with the variance); the first click and clicked locations take the plain
    threshold; undo restores the labels from before the click."""
    from scipy.special import ndtri

    from volseg.mask import HeldLabels

    def mean(p, var=0.0):  # the latent whose probability under this variance is p
        return torch.as_tensor((ndtri(np.asarray(p)) * np.sqrt(1 + var))[None].astype(np.float32))

    no_var = lambda voxels: np.zeros(len(voxels))  # noqa: E731
    held = HeldLabels((4, 5), 0.1, max_variance=3.0)
    first = [Click((0.0, 0.0), True, 1)]
    p0 = np.full((4, 5), 0.3)
    p0[:2] = 0.55  # barely in: the first click's labels are the plain threshold's
    held.update(mean(p0), no_var, [1], None, first, 1)
    np.testing.assert_array_equal(held.state, p0 > 0.5)
    after_first = held.state.copy()

    p1 = np.array([0.45, 0.35, 0.58, 0.65])[:, None].repeat(5, 1)  # stays in, leaves, stays out, joins
    p1[0, 0] = 0.6  # the positive click
    second = first + [Click((0.0, 4.0), False, 1)]  # a negative click where the held label would be 1
    held.update(mean(p1), no_var, [1], None, second, 2)
    expected = np.array([1, 0, 0, 1])[:, None].repeat(5, 1)
    expected[0, 4] = 0
    np.testing.assert_array_equal(held.state, expected)

    # the variance widens what the margin asks of the latent: 0.35 is p 0.64 alone, 0.57 with variance 3
    latent = torch.full((1, 4, 5), 0.35)
    latent[0, 0, 4] = -0.5  # the negative click
    asked = []

    def variance_3(voxels):
        asked.append(len(voxels))
        return np.full(len(voxels), 3.0)

    held.update(latent, variance_3, [1], None, second, 2)
    np.testing.assert_array_equal(held.state, expected)
    assert asked == [10]  # the variance only where the threshold disagrees with a held label (rows 1 and 2)
    held.update(latent * 0.5, variance_3, [1], None, second, 2)  # p <= 0.57 for any variance: none asked
    assert asked == [10]
    held.update(latent, no_var, [1], None, second, 2)
    expected[:] = 1
    expected[0, 4] = 0
    np.testing.assert_array_equal(held.state, expected)

    held.undo(2)
    np.testing.assert_array_equal(held.state, after_first)


def test_undo_gives_back_the_mask_before_the_click():
    """With held labels undo restores the mask exactly, not the threshold's."""
    image = rings_image((30, 32, 28), 14)
    s = Session(spatial_lengthscale=4.0, kernel="rbf", latent="gp", hysteresis=0.1).set_image(Image.from_array(image))
    bright = np.argwhere(image > 0.45)
    masks = []
    for i in range(6):
        s.add_click(tuple(int(v) for v in bright[(i * 997) % len(bright)]), positive=i % 3 != 2)
        masks.append(s.mask())
    for i in range(5, 0, -1):
        s.undo()
        np.testing.assert_array_equal(s.mask(), masks[i - 1], err_msg=f"undo to {i} clicks")


def test_clicks_added_together_are_one_step():
    """add_clicks (a clicks file) moves held labels once: the mask is the threshold's from scratch, in any
    order; undoing one of them leaves the others as one step too."""
    image = rings_image((30, 32, 28), 14)
    bright = np.argwhere(image > 0.45)
    clicks = [Click(tuple(float(v) for v in bright[(i * 997) % len(bright)]), i % 3 != 2, 1) for i in range(6)]

    def session(hysteresis=0.1):
        s = Session(spatial_lengthscale=4.0, kernel="rbf", latent="gp", hysteresis=hysteresis)
        return s.set_image(Image.from_array(image))

    plain = session(hysteresis=0)
    plain.add_clicks(clicks)
    for order in (clicks, clicks[::-1][1:] + clicks[-1:]):  # the same set, the last click the same
        s = session()
        s.add_clicks(order)
        np.testing.assert_array_equal(s.mask(), plain.mask())
    s.undo()
    fewer = session(hysteresis=0)
    fewer.add_clicks(clicks[:-1])
    np.testing.assert_array_equal(s.mask(), fewer.mask())
    one_by_one = session()
    for c in clicks:
        one_by_one.add_click(c.position, c.positive, c.object)
    assert (one_by_one.mask() != plain.mask()).any()  # clicked one at a time, labels are held


def test_a_clicks_file_made_one_at_a_time_gives_the_mask_that_was_seen(tmp_path):
    """`volseg serve` saves its clicks with ``one_at_a_time``: `volseg segment` then applies them in order,
    labels held, and writes the mask the page showed; a file without it is one step."""
    import nibabel as nib

    from volseg.clicks import save_clicks
    from volseg.config import GPConfig
    from volseg.io import read_image
    from volseg.segment import segment_file

    path = tmp_path / "rings.nii.gz"
    nib.save(nib.Nifti1Image(rings_image((30, 32, 28), 14), np.eye(4)), path)
    img = read_image(path)
    bright = np.argwhere(img.array[..., 0] > 0.45)
    clicks = [Click(tuple(float(v) for v in bright[(i * 997) % len(bright)]), i % 3 != 2, 1) for i in range(6)]
    config = GPConfig(spatial_lengthscale=4.0, kernel="rbf", latent="gp", hysteresis=0.1)
    seen, together = Session(config=config).set_image(img), Session(config=config).set_image(img)
    for c in clicks:
        seen.add_click(c.position, c.positive, c.object)
    together.add_clicks(clicks)
    assert (seen.mask() != together.mask()).any()
    for one_at_a_time, session in ((True, seen), (False, together)):
        clicks_path, out = tmp_path / f"clicks_{one_at_a_time}.json", tmp_path / f"mask_{one_at_a_time}.nii.gz"
        save_clicks(clicks, clicks_path, one_at_a_time=one_at_a_time)
        segment_file(path, clicks_path, out, config=config)
        np.testing.assert_array_equal(np.asarray(nib.load(out).dataobj) > 0, session.mask() > 0)


def test_held_labels_are_opt_in():
    from volseg.config import GPConfig
    from volseg.mask import MaskStage

    volume = Image.from_array(np.zeros((8, 30, 40), np.float32))
    assert MaskStage(volume, GPConfig()).held is None
    assert MaskStage(volume, GPConfig.from_yaml(CONFIGS / "held_labels.yaml")).held.margin == 0.1
    flat = Image.from_array(np.zeros((30, 40), np.float32))  # the 2D cut redoes the labels: nothing to hold
    assert MaskStage(flat, GPConfig(hysteresis=0.1)).held is None

"""The label map kept up to date box by box equals the one recomputed over the whole image."""
import numpy as np
import pytest
import torch
from scipy import ndimage as ndi

from volseg import Image, Session
from volseg.clicks import Click
from volseg.mask import LabelMap, clean_topology


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


def whole_image_mask(s: Session) -> np.ndarray:
    """The label map as mask() computed it over the whole image on every call (no local state)."""
    objects = s.objects
    dtype = np.uint8
    if not objects:
        return np.zeros(s.image.shape, dtype)
    best, arg = s._mean.max(0)
    labels = np.asarray(objects, dtype)[arg.numpy()] * (best.numpy() > 0)
    return reference_topology(labels.astype(dtype), s._train_clicks)


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


@pytest.mark.parametrize("shape, spacing, period, lengthscale, seed",
                         [((120, 128), (1.0, 1.0), 16, 8.0, 1), ((44, 48, 36), (1.0, 1.0, 1.5), 14, 4.0, 8)])
def test_local_mask_equals_whole_image_mask_over_random_clicks(shape, spacing, period, lengthscale, seed):
    image = rings_image(shape, period)
    # a reach short next to the image, so that clicks update part of it; no edge cut (an image-wide step);
    # the plain RBF, whose one lengthscale leaves the holes and stray parts this test must see
    s = Session(spatial_lengthscale=lengthscale, edge_strength=0, kernel="rbf", latent="gp").set_image(
        Image.from_array(image, spacing=spacing))
    rng = np.random.default_rng(seed)  # a click sequence that drops parts and fills holes
    bright = np.argwhere(image > 0.45)
    local_updates = dropped = filled = 0
    for step in range(24):
        if step % 7 == 6:
            s.undo()
        else:
            positive = not s.clicks or bool(rng.random() < 0.6)  # (a session's first click names an object)
            pos = bright[rng.integers(len(bright))] if positive else rng.integers(0, shape)
            s.add_click(tuple(int(v) for v in pos), positive=positive, object=int(rng.integers(1, 3)))
        local_updates += isinstance(s.last_region, list) and s.last_update["locations"] < image.size / 2
        m = s.mask()
        np.testing.assert_array_equal(m, whole_image_mask(s), err_msg=f"after step {step}")
        for c in s._train_clicks:  # clicked voxels keep their labels
            assert m[c.voxel()] == (c.object if c.positive else 0)
        raw = s._mean.max(0).values.numpy() > 0
        dropped += bool((raw & (m == 0)).any())  # parts not connected to their clicks
        filled += bool((~raw & (m > 0)).any())  # holes
    # the run exercised what it is meant to: local updates, both objects, dropped parts and filled holes
    assert local_updates >= 12 and dropped >= 5 and filled >= 5, (local_updates, dropped, filled)
    assert set(np.unique(s.mask())) == {0, 1, 2}


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

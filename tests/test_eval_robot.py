"""The RITM click robot on hand-made masks whose next click is known."""
import numpy as np
import pytest
from scipy.ndimage import distance_transform_edt

from volseg.eval.datasets import IGNORE
from volseg.eval.robot import Robot, border_distance, error_masks, next_click, split_gt


def square(shape, top, left, size):
    m = np.zeros(shape, bool)
    m[top:top + size, left:left + size] = True
    return m


def test_empty_prediction_clicks_square_centre_positive():
    gt = square((40, 40), 10, 20, 5)  # rows 10..14, cols 20..24 -> centre (12, 22)
    c = next_click(gt, np.zeros_like(gt))
    assert c.positive and c.voxel() == (12, 22)


def test_plateau_goes_to_first_pixel_in_row_major_order():
    gt = square((30, 30), 6, 8, 4)  # 4x4: the 2x2 centre block ties; first is (7, 9)
    c = next_click(gt, np.zeros_like(gt))
    assert c.positive and c.voxel() == (7, 9)


def test_larger_false_positive_blob_gives_negative_click_at_its_deepest_point():
    gt = square((50, 50), 2, 2, 3)  # missed object, depth 2
    pred = square((50, 50), 20, 30, 7)  # false blob rows 20..26, cols 30..36, depth 4
    c = next_click(gt, pred)
    assert not c.positive and c.voxel() == (23, 33)


def test_equal_depths_give_a_negative_click():
    gt = square((40, 40), 2, 2, 5)
    pred = square((40, 40), 20, 20, 5)  # same depth: RITM's test is fn > fp, so a tie is negative
    c = next_click(gt, pred)
    assert not c.positive and c.voxel() == (22, 22)


def test_border_counts_as_boundary():
    gt = np.ones((11, 11), bool)  # no background pixel at all: the padding makes the border the edge
    c = next_click(gt, np.zeros_like(gt))
    assert c.voxel() == (5, 5) and c.positive
    d = border_distance(gt)
    assert d[0, 0] == 1 and d[5, 5] == 6


def test_object_touching_the_border_is_not_deepest_at_the_edge():
    gt = np.zeros((20, 30), bool)
    gt[:, :9] = True  # strip on the left edge, 9 wide -> deepest column 4
    c = next_click(gt, np.zeros_like(gt))
    assert c.voxel()[1] == 4


def test_ignored_pixels_are_no_error():
    obj = square((40, 40), 10, 10, 10)
    band = square((40, 40), 7, 7, 16) & ~obj  # ignored ring of width 3 around the object
    gt = obj.astype(np.int8)
    gt[band] = IGNORE
    robot = Robot(gt)
    assert robot.click(obj | band) is None  # the only "errors" are ignored
    fn, fp = error_masks(obj, obj | band, band)
    assert not fn.any() and not fp.any()


def test_ignored_band_does_not_attract_clicks():
    obj = square((60, 60), 20, 20, 6)
    gt = obj.astype(np.int8)
    gt[:, 40:] = IGNORE  # a wide ignored slab, predicted as object
    pred = np.zeros(gt.shape, bool)
    pred[:, 40:] = True
    c = Robot(gt).click(pred)
    assert c.positive and c.voxel() == (22, 22)


def test_no_click_when_prediction_is_perfect():
    gt = square((20, 20), 5, 5, 6)
    assert next_click(gt, gt.copy()) is None


def test_clicked_pixels_are_not_clicked_again():
    gt = square((30, 30), 10, 10, 5)
    robot = Robot(gt)
    empty = np.zeros_like(gt)
    first, second = robot.click(empty), robot.click(empty)
    assert first.voxel() == (12, 12)
    assert second.voxel() != first.voxel() and second.positive
    assert len(robot.clicks) == 2 and robot.clicked.sum() == 2


def test_split_gt():
    gt = np.array([[0, 1, IGNORE]], np.int8)
    obj, ign = split_gt(gt)
    assert obj.tolist() == [[False, True, False]] and ign.tolist() == [[False, False, True]]
    obj, ign = split_gt(np.array([[True, False]]))
    assert obj.tolist() == [[True, False]] and not ign.any()


def test_opencv_and_scipy_distances_agree():
    rng = np.random.default_rng(0)
    m = rng.random((37, 41)) > 0.35
    ref = distance_transform_edt(np.pad(m, 1))[1:-1, 1:-1]
    np.testing.assert_allclose(border_distance(m), ref, atol=1e-4)


def test_three_dimensional_cube():
    gt = np.zeros((9, 10, 11), bool)
    gt[2:7, 3:8, 4:9] = True
    c = next_click(gt, np.zeros_like(gt))
    assert c.positive and c.voxel() == (4, 5, 6)


def test_shape_mismatch_is_an_error():
    with pytest.raises(ValueError, match="does not match"):
        next_click(np.zeros((4, 4), bool), np.zeros((4, 5), bool))

"""The click robot (volseg.robot) on hand-made masks whose next click is known: the RITM rule,
the 3D largest-component rule and the multi-object video rule, side by side where they differ."""
import numpy as np
import pytest
from scipy.ndimage import distance_transform_edt

from volseg.eval.datasets import IGNORE, split_gt
from volseg.robot import (
    Robot,
    border_distance,
    deepest_point,
    error_masks,
    largest_component_click,
    multi_object_click,
    ritm_click,
)


def square(shape, top, left, size):
    m = np.zeros(shape, bool)
    m[top:top + size, left:left + size] = True
    return m


def test_empty_prediction_clicks_square_centre_positive():
    gt = square((40, 40), 10, 20, 5)  # rows 10..14, cols 20..24 -> centre (12, 22)
    c = ritm_click(gt, np.zeros_like(gt))
    assert c.positive and c.voxel() == (12, 22)


def test_plateau_goes_to_first_pixel_in_row_major_order():
    gt = square((30, 30), 6, 8, 4)  # 4x4: the 2x2 centre block ties; first is (7, 9)
    c = ritm_click(gt, np.zeros_like(gt))
    assert c.positive and c.voxel() == (7, 9)


def test_larger_false_positive_blob_gives_negative_click_at_its_deepest_point():
    gt = square((50, 50), 2, 2, 3)  # missed object, depth 2
    pred = square((50, 50), 20, 30, 7)  # false blob rows 20..26, cols 30..36, depth 4
    c = ritm_click(gt, pred)
    assert not c.positive and c.voxel() == (23, 33)


def test_equal_depths_give_a_negative_click():
    gt = square((40, 40), 2, 2, 5)
    pred = square((40, 40), 20, 20, 5)  # same depth: RITM's test is fn > fp, so a tie is negative
    c = ritm_click(gt, pred)
    assert not c.positive and c.voxel() == (22, 22)


def test_border_counts_as_boundary():
    gt = np.ones((11, 11), bool)  # no background pixel at all: the padding makes the border the edge
    c = ritm_click(gt, np.zeros_like(gt))
    assert c.voxel() == (5, 5) and c.positive
    d = border_distance(gt)
    assert d[0, 0] == 1 and d[5, 5] == 6


def test_object_touching_the_border_is_not_deepest_at_the_edge():
    gt = np.zeros((20, 30), bool)
    gt[:, :9] = True  # strip on the left edge, 9 wide -> deepest column 4
    c = ritm_click(gt, np.zeros_like(gt))
    assert c.voxel()[1] == 4


def test_ignored_pixels_are_no_error():
    obj = square((40, 40), 10, 10, 10)
    band = square((40, 40), 7, 7, 16) & ~obj  # ignored ring of width 3 around the object
    gt = obj.astype(np.int8)
    gt[band] = IGNORE
    robot = Robot(*split_gt(gt))
    assert robot.click(obj | band) is None  # the only "errors" are ignored
    fn, fp = error_masks(obj, obj | band, band)
    assert not fn.any() and not fp.any()


def test_ignored_band_does_not_attract_clicks():
    obj = square((60, 60), 20, 20, 6)
    gt = obj.astype(np.int8)
    gt[:, 40:] = IGNORE  # a wide ignored slab, predicted as object
    pred = np.zeros(gt.shape, bool)
    pred[:, 40:] = True
    c = Robot(*split_gt(gt)).click(pred)
    assert c.positive and c.voxel() == (22, 22)


def test_no_click_when_prediction_is_perfect():
    gt = square((20, 20), 5, 5, 6)
    assert ritm_click(gt, gt.copy()) is None


def test_clicked_pixels_are_not_clicked_again():
    gt = square((30, 30), 10, 10, 5)
    robot = Robot(*split_gt(gt))
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
    c = ritm_click(gt, np.zeros_like(gt))
    assert c.positive and c.voxel() == (4, 5, 6)


def test_shape_mismatch_is_an_error():
    with pytest.raises(ValueError, match="does not match"):
        ritm_click(np.zeros((4, 4), bool), np.zeros((4, 5), bool))


# -- the three protocols on the same arrays ----------------------------------------------------------
def slab_and_square():
    """A missed 2x10 slab (20 pixels, depth 1, a plateau) and a missed 3x3 square (9 pixels, depth 2)."""
    gt = np.zeros((16, 20), bool)
    gt[2:4, 2:12] = True
    gt[8:11, 14:17] = True
    return gt


def test_ritm_goes_deepest_and_largest_component_goes_biggest():
    gt = slab_and_square()
    empty = np.zeros_like(gt)
    # RITM: the deepest error pixel wherever it is -> the square's centre
    assert ritm_click(gt, empty).voxel() == (9, 15)
    # 3D rule: the largest component by pixel count (the slab), its plateau's pixel nearest the centroid
    # (2.5, 6.5); four pixels tie for that, the first in scan order wins
    c = largest_component_click(gt, empty)
    assert c.positive and c.voxel() == (2, 6) and c.object == 1
    # the same plateau under the RITM tie rule: its first pixel
    slab = gt.copy()
    slab[8:11] = False
    assert deepest_point(slab) == (2, 2) and deepest_point(slab, central=True) == (2, 6)


def test_largest_component_sign_and_border():
    gt = slab_and_square()
    pred = gt.copy()
    pred[12:16, 0:10] = True  # a false 4x10 block (40 pixels): the largest error now
    c = largest_component_click(gt, pred, object=4)
    assert not c.positive and c.object == 4
    # the block touches the array border, which counts as boundary: depth 2 on rows 13..14, columns 1..8;
    # of the four pixels nearest the plateau's centroid (13.5, 4.5) the first in scan order
    assert c.voxel() == (13, 4)
    with pytest.raises(ValueError, match="central"):
        deepest_point(gt, (1.0, 3.0))


def test_multi_object_ties_go_to_the_missed_region_and_the_first_object():
    gt = np.zeros((30, 30), np.uint8)
    gt[2:5, 2:5] = 1  # object 1: missed entirely (depth 2)
    pred = np.zeros_like(gt)
    pred[20:23, 20:23] = 1  # a false 3x3 region of object 1, equally deep
    clicked = np.zeros(gt.shape, bool)
    c = multi_object_click(gt, pred, [1], clicked=clicked, frame=5)
    assert c.positive and c.voxel() == (3, 3) and c.object == 1 and c.frame == 5
    # the single-object RITM rule breaks the same tie the other way
    assert not ritm_click(gt == 1, pred == 1).positive
    # a second object with a deeper error wins; with equal depth the earlier object in the list wins
    gt[10:17, 10:17] = 2  # depth 4
    c = multi_object_click(gt, pred, [1, 2], clicked=clicked)
    assert c.object == 2 and c.voxel() == (13, 13)
    gt2 = np.zeros_like(gt)
    gt2[2:5, 2:5], gt2[10:13, 10:13] = 1, 2
    assert multi_object_click(gt2, np.zeros_like(gt2), [2, 1], clicked=clicked).object == 2
    assert multi_object_click(gt2, np.zeros_like(gt2), [1, 2], clicked=clicked).object == 1


def test_multi_object_leaves_ignored_and_clicked_pixels_alone():
    gt = np.zeros((20, 20), np.uint8)
    gt[2:9, 2:9] = 1
    ignore = np.zeros(gt.shape, bool)
    ignore[2:9, 2:9] = True
    assert multi_object_click(gt, np.zeros_like(gt), [1], ignore=ignore) is None
    clicked = np.zeros(gt.shape, bool)
    clicked[5, 5] = True  # the deepest pixel was clicked before: the next deepest, first in scan order
    c = multi_object_click(gt, np.zeros_like(gt), [1], clicked=clicked)
    assert c.positive and c.voxel() != (5, 5) and border_distance(gt == 1)[c.voxel()] == 3

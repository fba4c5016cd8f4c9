"""Benchmark metrics on IoU sequences and masks whose values are known."""
import numpy as np
import pytest

from volseg.clicks import Click
from volseg.eval.report import summarize, table, time_stats
from volseg.metrics import iou, iou_drops, miou_curve, noc, nof, noic, pad_ious


def test_iou_with_ignored_pixels():
    gt = np.array([[1, 1, 0, 0]], bool)
    pred = np.array([[1, 0, 1, 0]], bool)
    assert iou(gt, pred) == pytest.approx(1 / 3)
    ignore = np.array([[0, 0, 1, 0]], bool)  # the false positive is in the ignored band
    assert iou(gt, pred, ignore) == pytest.approx(1 / 2)
    assert iou(np.zeros((2, 2)), np.zeros((2, 2))) == 1.0


def test_noc_first_click_reaching_the_threshold():
    ious = [0.5, 0.86, 0.88, 0.91, 0.8]
    assert noc(ious, 0.85) == 2
    assert noc(ious, 0.90) == 4
    assert noc([0.9], 0.90) == 1  # >=, not >
    assert noc([0.1] * 20, 0.85) == 20  # never reached
    assert noc([0.5, 0.95], 0.90, max_clicks=20) == 2  # stopped early (no error left)


def test_nof_strict_and_ritm_variants():
    never = [0.5] * 20
    at_last = [0.5] * 19 + [0.92]
    early = [0.95]
    assert nof([never, at_last, early], 0.90) == 1
    assert nof([never, at_last, early], 0.90, ritm=True) == 2  # RITM counts NoC == 20


def test_miou_curve_pads_with_last_value():
    a = [0.2, 0.4, 0.6]
    b = [1.0]
    curve = miou_curve([a, b], max_clicks=4)
    np.testing.assert_allclose(curve, [0.6, 0.7, 0.8, 0.8])
    np.testing.assert_allclose(pad_ious(a, 5), [0.2, 0.4, 0.6, 0.6, 0.6])


def test_iou_drops():
    assert iou_drops([0.5, 0.4, 0.6, 0.6, 0.59]) == 2
    assert iou_drops([0.3]) == 0


def test_noic_counts_clicks_the_prediction_contradicts():
    clicks = [Click((1, 1), True), Click((2, 2), False), Click((3, 3), True)]
    # after click 2 the negative pixel is still predicted object; after click 3 the positive one is background
    res = noic(clicks, [True, True, False], [0.5, 0.4, 0.7])
    assert res == {"label": 2, "drop": 1}


def test_time_stats():
    s = time_stats([1.0, 2.0, 3.0, 4.0])
    assert s["mean"] == 2.5 and s["p50"] == 2.5 and s["n"] == 4
    assert s["p95"] == pytest.approx(3.85)
    assert np.isnan(time_stats([])["mean"])


def test_summarize():
    recs = [
        {"ious": [0.5, 0.86, 0.91], "noic": {"label": 1, "drop": 0}, "seconds": [0.1, 0.2, 0.3],
         "set_image_seconds": 1.0},
        {"ious": [0.2] * 20, "noic": {"label": 0, "drop": 2}, "seconds": [0.5] * 20, "set_image_seconds": 2.0},
    ]
    s = summarize(recs)
    assert s["instances"] == 2
    assert s["noc85"] == pytest.approx((2 + 20) / 2)
    assert s["noc90"] == pytest.approx((3 + 20) / 2)
    assert s["noc90_se"] == pytest.approx(np.std([3, 20], ddof=1) / np.sqrt(2))
    assert "| SE@90 |" in table([{**s, "method": "gp"}]) and np.isnan(summarize(recs[:1])["noc90_se"])
    assert s["nof85"] == 1 and s["nof90"] == 1
    assert s["miou"][0] == pytest.approx(0.35) and s["miou"][4] == pytest.approx((0.91 + 0.2) / 2)
    assert len(s["miou"]) == 20
    assert s["noic_label"] == 0.5 and s["noic_drop"] == 1.0
    assert s["spc"]["n"] == 23


def test_dice_and_iou_leave_ignored_pixels_out():
    from volseg.metrics import dice

    a = np.zeros((6, 6), bool)
    a[1:4, 1:4] = True
    b = np.zeros_like(a)
    b[1:4, 1:5] = True  # 3 extra pixels in column 4
    ignore = np.zeros_like(a)
    ignore[:, 4] = True
    assert dice(a, b) == pytest.approx(18 / 21) and iou(a, b) == pytest.approx(9 / 12)
    assert dice(a, b, ignore) == 1.0 and iou(a, b, ignore) == 1.0
    with pytest.raises(ValueError, match="does not match"):
        dice(a, b[:, :5])


def test_boundary_measures_work_in_3d():
    from volseg.metrics import boundary_f, boundary_map, boundary_tolerance

    m = np.zeros((6, 7, 8), bool)
    m[1:4, 2:5, 3:6] = True
    b = boundary_map(m)
    # one slice of the 3D rule is the 2D rule on that slice, for slices whose next slice is identical
    np.testing.assert_array_equal(b[2], boundary_map(m[2]))
    # every voxel of the block's last slice differs from the one after it
    assert b[3, 2:5, 3:6].all() and not b[5].any()
    assert boundary_tolerance((6, 7, 8), 0.2) == 3  # ceil(0.2 * sqrt(149))
    assert boundary_f(m, m) == 1.0
    shifted = np.roll(m, 2, axis=2)  # every boundary voxel moves 2 along the last axis
    assert boundary_f(m, shifted, bound_th=2) == 1.0 and boundary_f(m, shifted, bound_th=1) < 1.0

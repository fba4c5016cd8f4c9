"""The clicked frame's session, zoomed in on the objects (volseg.video.frame_session)."""
from __future__ import annotations

import numpy as np
import pytest

from volseg.clicks import Click
from volseg.errors import InputError
from volseg.metrics import iou
from volseg.session import Session
from volseg.video import VideoConfig, VideoSegmenter
from volseg.video.frame_session import ZOOM_LONG_SIDE, ZOOM_MAX, ZOOM_MIN_SIDE, FrameSession, zoom_box
from volseg.video.synthetic import ArrayFrames, moving_shapes


def small_object_frame(seed: int = 0):
    """A 240 x 320 textured frame with a small two-tone object (1% of the frame) and a look-alike elsewhere."""
    rng = np.random.default_rng(seed)
    frame = (110 + 25 * rng.standard_normal((240, 320, 3))).clip(0, 255)
    rr, cc = np.mgrid[:240, :320]
    obj = ((rr - 120) / 6.0) ** 2 + ((cc - 150) / 14.0) ** 2 <= 1
    frame[obj] = (200, 60, 50)
    frame[obj & (rr > 121)] = (150, 40, 40)
    frame[((rr - 40) / 6.0) ** 2 + ((cc - 270) / 14.0) ** 2 <= 1] = (200, 60, 50)  # the look-alike
    return frame.astype(np.uint8), obj


def make_session(motion=None):
    return Session(config={"kernel": "rbf"})


def test_zoom_box_holds_the_mask_and_the_clicks_with_a_margin():
    mask = np.zeros((200, 300), bool)
    mask[90:110, 140:160] = True
    r0, r1, c0, c1 = zoom_box(mask, [(100.0, 150.0)])
    assert r0 <= 90 and r1 >= 110 and c0 <= 140 and c1 >= 160
    assert r1 - r0 >= ZOOM_MIN_SIDE and c1 - c0 >= ZOOM_MIN_SIDE  # a 20-pixel object gets the least box
    r0, r1, c0, c1 = zoom_box(mask, [(100.0, 150.0), (10.0, 290.0)])  # a far click: the box reaches it
    assert r0 <= 10 and c1 >= 290 and (r0, c0) >= (0, 0) and (r1, c1) <= (200, 300)


def test_without_zoom_the_frame_session_is_the_2d_session():
    frame, obj = small_object_frame()
    clicks = [((120.0, 150.0), True), ((125.0, 175.0), False), ((40.0, 270.0), False)]
    plain = make_session()
    plain.set_image(frame)
    whole = FrameSession(frame, None, make_session, zoom=False)
    for position, positive in clicks:
        plain.add_click(position, positive)
        whole.add_click(position, positive)
        np.testing.assert_array_equal(whole.mask(), plain.mask())
    assert whole.box == (0, 240, 0, 320)


def test_zoomed_clicks_keep_their_labels_and_the_mask_stays_in_the_box():
    frame, obj = small_object_frame()
    fs = FrameSession(frame, None, make_session)
    clicks = [((120.0, 150.0), True), ((40.0, 270.0), False), ((120.0, 140.0), True), ((110.0, 150.0), False)]
    for position, positive in clicks:
        fs.add_click(position, positive)
    mask = fs.mask()
    for position, positive in clicks:
        assert (mask[tuple(int(v) for v in position)] == 1) == positive
    r0, r1, c0, c1 = fs.box
    assert (r1 - r0) * (c1 - c0) < frame.shape[0] * frame.shape[1]  # the far negative click widens, not fills
    outside = np.ones(mask.shape, bool)
    outside[r0:r1, c0:c1] = False
    assert not mask[outside].any()
    assert iou(mask == 1, obj) > 0.5
    std = fs.uncertainty()
    assert std.shape == mask.shape and not std[outside].any() and std[r0:r1, c0:c1].max() > 0
    g = fs.suggest_click()
    assert 0 <= g.position[0] < 240 and 0 <= g.position[1] < 320


def test_the_first_click_sees_the_frame_and_later_ones_the_enlarged_box():
    frame, obj = small_object_frame()
    fs = FrameSession(frame, None, make_session)
    fs.add_click((120.0, 150.0), True)
    assert fs.box == (0, 240, 0, 320) and fs.session.image.shape == (240, 320)  # no mask yet to zoom on
    first = fs.mask()
    fs.add_click((126.0, 150.0), True)
    assert fs.box == zoom_box(first, [(120.0, 150.0), (126.0, 150.0)])
    h, w = fs.box[1] - fs.box[0], fs.box[3] - fs.box[2]
    assert max(fs.session.image.shape) == min(ZOOM_LONG_SIDE, round(ZOOM_MAX * max(h, w)))


def test_a_prior_mask_sets_the_first_box_and_is_the_mask_before_any_click():
    frame, obj = small_object_frame()
    prior = obj.astype(np.uint8) * 3
    fs = FrameSession(frame, prior, make_session)
    np.testing.assert_array_equal(fs.mask(), prior)
    assert fs.objects == [3]
    fs.add_click((121.0, 160.0), True, 3)
    assert fs.box != (0, 240, 0, 320) and fs.mask()[121, 160] == 3


@pytest.mark.parametrize("zoom", [False, True])
def test_video_clicks_go_through_the_frame_session(zoom):
    frames, labels = moving_shapes(8, 64, 96, seed=0)
    disk = tuple(float(v) for v in np.argwhere(labels[5] == 1).mean(0))
    with VideoSegmenter(ArrayFrames(frames), VideoConfig(session_zoom=zoom)) as seg:
        assert isinstance(seg.session_for(5), FrameSession) and seg.session_for(5).zoom is zoom
        seg.add_clicks([Click(disk, True, 1, 5)])
        assert seg.labels(5)[Click(disk, True, 1, 5).voxel()] == 1
        assert iou(seg.labels(6) == 1, labels[6] == 1) > 0.5


def test_session_zoom_is_a_setting_that_must_be_true_or_false():
    from volseg.video.config import read_video_config

    assert read_video_config(None, ["session_zoom=on"]).session_zoom is True
    assert VideoConfig().session_zoom is False
    with pytest.raises(InputError, match="session_zoom must be true or false"):
        VideoConfig(session_zoom="sometimes")


def test_a_soft_prior_gives_way_to_a_click_where_the_propagation_was_unsure():
    """A propagated mask's flood that the propagation was unsure of (probability 0.6) leaves under one negative
    click more than the same flood given as hard labels, and the object (0.95) stays."""
    frame, obj = small_object_frame()
    flood = np.zeros(obj.shape, bool)
    flood[150:230, 40:200] = True
    labels = (obj | flood).astype(np.uint8)
    belief = np.where(obj, 0.95, np.where(flood, 0.6, 0.05)).astype(np.float32)
    masks = {}
    for name, given in (("hard", None), ("soft", belief)):
        fs = FrameSession(frame, labels, make_session, zoom=False, belief=given)
        assert fs.objects == [1]
        fs.add_click((190.0, 120.0), False)
        masks[name] = fs.mask() == 1
    assert masks["hard"][flood].mean() > 0.5  # held by the labels' full strength beyond the click's reach
    assert masks["soft"][flood].mean() < 0.1 and iou(masks["soft"], obj) > 0.8


def test_propagated_frames_give_their_session_the_propagation_probability():
    frames = ArrayFrames(moving_shapes(6, 64, 96)[0])
    first = (moving_shapes(6, 64, 96)[1][0] > 0).astype(np.uint8)
    with VideoSegmenter(frames, VideoConfig(label_threads=0)) as seg:
        seg.set_mask(0, first)
        assert seg.session_for(0).belief is None  # an annotated frame keeps its labels
        s = seg.session_for(3)
        assert s.belief is not None and s.belief.shape == (64, 96) and 0.0 <= s.belief.min() < s.belief.max() <= 1.0
        np.testing.assert_array_equal(s.mask(), s.session.mask())  # before a click: the session's mask of it
    with VideoSegmenter(frames, VideoConfig(session_soft_prior=False, label_threads=0)) as seg:
        seg.set_mask(0, first)
        assert seg.session_for(3).belief is None

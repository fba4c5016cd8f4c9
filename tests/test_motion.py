"""A clicked frame's motion as features of its session (volseg.video.motion)."""
from __future__ import annotations

import numpy as np
import pytest
from scipy import ndimage as ndi

from volseg.features.stack import StackedFeatures
from volseg.image import Image
from volseg.metrics import iou
from volseg.robot import multi_object_click
from volseg.video import VideoConfig, VideoSegmenter
from volseg.video.motion import MOTION_FLOOR, MotionFeatures, frame_velocity, relative_motion, with_motion
from volseg.video.synthetic import ArrayFrames


def texture(shape, seed, sigma=2.0):
    rng = np.random.default_rng(seed)
    t = ndi.gaussian_filter(rng.standard_normal((*shape, 3)), (sigma, sigma, 0))
    return (128 + 60 * t / t.std()).clip(0, 255)


def camouflaged_video(n=5, shape=(96, 128), step=3, radius=14, sigma=0.7):
    """A still textured background and a disk of the same fine texture (another realisation) moving ``step``
    pixels a frame to the right: colour and edges hardly tell them apart, motion does."""
    background, inside = texture(shape, 0, sigma), texture(shape, 1, sigma)
    rr, cc = np.mgrid[: shape[0], : shape[1]]
    frames, masks = [], []
    for t in range(n):
        disk = (rr - 48) ** 2 + (cc - 40 - step * t) ** 2 <= radius ** 2
        shifted = np.roll(inside, step * t, axis=1)  # the disk's texture moves with it
        frames.append(np.where(disk[..., None], shifted, background).astype(np.uint8))
        masks.append(disk)
    return np.stack(frames), np.stack(masks)


def test_frame_velocity_follows_a_shift_and_takes_one_neighbour_at_the_ends():
    base = texture((80, 100), 3)
    frames = np.stack([np.roll(base, 2 * t, axis=1) for t in range(4)]).astype(np.uint8)  # 2 px a frame rightwards
    for t in (0, 2, 3):
        v = frame_velocity(frames, t)
        assert v.shape == (80, 100, 2) and v.dtype == np.float32
        inner = v[20:60, 20:80]
        assert abs(np.median(inner[..., 0])) < 0.3 and abs(np.median(inner[..., 1]) - 2.0) < 0.3
    np.testing.assert_array_equal(frame_velocity(frames[:1], 0), 0.0)  # a single frame has no motion
    with pytest.raises(IndexError):
        frame_velocity(frames, 4)


def test_relative_motion_is_against_the_median_and_a_still_frame_stays_near_zero():
    v = np.zeros((60, 80, 2), np.float32)
    v[...] = (0.0, 5.0)  # the camera pans
    v[20:30, 30:40] = (0.0, 1.0)  # the object moves 4 px a frame against it
    m = relative_motion(v)
    assert m.shape == (60, 80, 3)
    assert np.abs(m[0, 0]).max() < 1e-6  # the dominant motion is zero motion
    assert m[25, 35, 1] < -3 and m[25, 35, 2] > 3  # far from it in units of the spread
    noise = np.random.default_rng(0).normal(0, 0.05, (60, 80, 2)).astype(np.float32)
    # flow noise (0.05 px) is measured in units of the floor, not of its own spread: it stays well under 1
    assert np.abs(relative_motion(noise)).max() < 0.5 and 0.05 < MOTION_FLOOR


def test_motion_features_are_a_stack_part_for_the_frame_size_only():
    motion = np.zeros((40, 50, 3), np.float32)
    stack = with_motion("filterbank", motion)
    assert isinstance(stack, StackedFeatures) and [p.name for p in stack.parts] == ["filterbank", "motion"]
    assert with_motion("filterbank", None).name == "filterbank"
    feats = stack.features(Image(np.zeros((40, 50, 3), np.uint8)))
    assert feats.shape[:2] == (40, 50)
    with pytest.raises(ValueError, match="frame"):
        MotionFeatures(motion).features(Image(np.zeros((20, 50, 3), np.uint8)))


def robot_ious(frames, masks, t, motion, clicks=5):
    gt = masks[t].astype(np.uint8)
    pred, clicked, out = np.zeros_like(gt), np.zeros(gt.shape, bool), []
    with VideoSegmenter(ArrayFrames(frames), VideoConfig(session_motion=motion, label_threads=0)) as seg:
        s = seg.session_for(t)
        assert (s.motion is not None) is motion
        for _ in range(clicks):
            c = multi_object_click(gt, pred, [1], clicked=clicked, frame=t)
            clicked[c.voxel()] = True
            s.add_click(c.position, c.positive, c.object)
            pred = s.mask()
            out.append(iou(pred == 1, gt == 1))
    return out


def test_clicks_spread_over_what_moves_with_them():
    """The robot's clicks on a disk whose fine texture matches the still background's: with the frame's motion
    the session finds the disk within three clicks and keeps it; on colour alone it floods the surroundings."""
    frames, masks = camouflaged_video()
    with_motion_ious, without = robot_ious(frames, masks, 2, True), robot_ious(frames, masks, 2, False)
    assert min(with_motion_ious[2:]) > 0.9
    assert max(without) < 0.8

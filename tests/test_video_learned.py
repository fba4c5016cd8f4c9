"""Learned per-frame features for video matching: ``VideoConfig.features`` / ``--features``."""
from __future__ import annotations

import json

import numpy as np
import pytest

from volseg.errors import InputError
from volseg.features import BackboneExtractor, FeatureExtractor, FilterBank
from volseg.io.video import write_video
from volseg.metrics import iou
from volseg.video import VideoConfig, VideoSegmenter
from volseg.video.features import FrameFeatures, Grid, make_bank
from volseg.video.synthetic import ArrayFrames, moving_shapes


@pytest.fixture(scope="module")
def shapes():
    return moving_shapes(12, 64, 96, seed=0)


class ColourFeatures(FeatureExtractor):
    """A stand-in learned extractor: the frame's colour, scaled, recording the images it was given."""

    name = "colour"
    gp_config = {"feature_lengthscale": 0.5}
    prescaled = False

    def __init__(self) -> None:
        self.shapes: list[tuple[int, ...]] = []

    def features(self, image, budget=None) -> np.ndarray:
        self.shapes.append(image.shape)
        return image.array.astype(np.float32) / 255.0

    def prior_mean(self, image):
        return None


def test_features_setting_reaches_the_extractor(monkeypatch, shapes):
    import volseg.video.features as video_features

    frames, labels = shapes
    made, fake = [], ColourFeatures()

    def feature_parts(spec, device="cpu"):
        made.append(spec)
        return [fake, FilterBank()]

    monkeypatch.setattr(video_features, "feature_parts", feature_parts)
    with VideoSegmenter(ArrayFrames(frames), VideoConfig(features="learned2d+filterbank")) as seg:
        seg.set_mask(0, labels[0])
        assert made == ["learned2d+filterbank"] and seg.features.learned == [fake] and seg.features.bank is not None
        assert seg.D == make_bank().n_features(2, 3) + 3 and seg.lf == pytest.approx(0.35)
    # the network sees every frame at full resolution, once per propagated frame (plus the reference frame)
    assert set(fake.shapes) == {(64, 96)} and len(fake.shapes) >= len(frames)


def test_packaged_model_by_name_and_default_unchanged(shapes):
    frames, _ = shapes
    with VideoSegmenter(ArrayFrames(frames), {"features": "learned2d"}) as seg:
        assert seg.features.bank is None and isinstance(seg.features.learned[0], BackboneExtractor)
        assert seg.D == 16 and seg.features.prescaled
    with VideoSegmenter(ArrayFrames(frames)) as seg:
        assert VideoConfig().features == "filterbank" and seg.features.learned == [] and not seg.features.prescaled
        assert seg.lf == pytest.approx(0.35 * seg.D ** 0.5)


def test_a_small_objects_finer_grid_runs_the_network_enlarged(shapes, monkeypatch):
    """A learned extractor runs at its inference size times the grid's zoom (a small object's grid is finer than
    the default scale's), capped at the frame's size; the frame it gets is no smaller than that."""
    frames, _ = shapes  # 64 x 96 frames
    with VideoSegmenter(ArrayFrames(frames), {"features": "learned2d"}) as seg:
        ex = seg.features.learned[0]
        seen = []
        features = ex.features
        monkeypatch.setattr(ex, "features", lambda image, **kw: seen.append((image.shape, kw)) or features(image, **kw))
        for zoom, want in ((1.0, 96), (0.25, 80)):  # 320 x zoom, at most the frame's long side
            ff = FrameFeatures(Grid(64, 96, 16, 24), None, [ex], learned_long_side=48, learned_zoom=zoom)
            ff.fit_standardisation(frames[0])
            assert seen[-1][1] == {"long_side": want} and max(seen[-1][0]) == want
    # VideoConfig.learned_zoom (off by default) hands the segmenter's grid zoom to its frame features
    for on in (False, True):
        with VideoSegmenter(ArrayFrames(frames), {"features": "learned2d", "learned_zoom": on}) as seg:
            assert seg.features.learned_zoom == (seg.unit if on else 1.0)
    assert VideoConfig().learned_zoom is False


def test_stacked_features_shape_and_one_standardisation(shapes):
    frames, _ = shapes
    bank, fake = make_bank(), ColourFeatures()
    ff = FrameFeatures(Grid(64, 96, 32, 48), bank, [fake])
    ff.fit_standardisation(frames[0])
    Db = bank.n_features(2, 3)
    f0, grey = ff(frames[0])
    assert f0.shape == (32, 48, Db + 3) and f0.dtype == np.float32 and grey.shape == (32, 48)
    # the reference frame: each part has zero mean and a spread of 1 / (its lengthscale * sqrt(its size))
    flat = f0.reshape(-1, Db + 3)
    assert np.abs(flat.mean(0)).max() < 1e-4
    std = flat.std(0)
    assert np.allclose(std[Db:], 1.0 / (0.5 * 3 ** 0.5), rtol=1e-3)
    assert np.allclose(std[:Db][std[:Db] > 1e-3] * Db ** 0.5, bank.weights(2, 3, 32 * 48)[std[:Db] > 1e-3]
                       if hasattr(bank, "weights") else 1.0, rtol=1e-3)
    # a later frame keeps the reference frame's statistics (one feature space for the video) ...
    f5, _ = ff(frames[5])
    small, _ = ff.shrink(frames[5])
    emb = ff.grid.shrink(frames[5].astype(np.float32) / 255.0)
    assert np.allclose(f5[..., Db:], (emb - ff._mean[Db:]) * ff._scale[Db:], atol=1e-5)
    # ... and a region's features are the whole frame's there
    box = (4, 20, 10, 40)
    assert np.allclose(ff.standardised(small, box), f5[4:20, 10:40], atol=1e-4)


def test_short_video_follows_the_objects_with_learned2d_and_filterbank(shapes):
    frames, labels = shapes
    # a working grid 1.5x smaller than the frame: the 16 embedding channels are shrunk too
    config = VideoConfig(features="learned2d+filterbank", scale=1.5, min_side=32, object_cells=0)
    with VideoSegmenter(ArrayFrames(frames), config) as seg:
        seg.set_mask(0, labels[0])
        assert seg.D == make_bank().n_features(2, 3) + 16 and (seg.grid.h, seg.grid.w) == (43, 64)
        for k in (1, 2):
            j = [iou(labels[t] == k, seg.labels(t) == k) for t in range(len(frames))]
            assert min(j) > 0.8, f"object {k}: IoU per frame {np.round(j, 2)}"


def test_unknown_feature_names_are_refused():
    for bad in ("bogus", "learned2d+nope", "filterbank+filterbank", ""):
        with pytest.raises(InputError, match="features"):
            VideoConfig(features=bad)


def test_cli_features_option_and_bad_name(tmp_path, shapes, capsys):
    from PIL import Image as PILImage

    from volseg.cli import main

    frames, labels = shapes
    video = write_video(tmp_path / "clip.mp4", frames[:6])
    first = tmp_path / "first.png"
    PILImage.fromarray(labels[0]).save(first)
    out = tmp_path / "masks"
    assert main(["propagate", str(video), "--mask", f"0={first}", "--out", str(out), "--quiet",
                 "--features", "learned2d+filterbank"]) == 0
    assert json.loads((out / "propagate.json").read_text())["config"]["features"] == "learned2d+filterbank"
    capsys.readouterr()
    # an unknown name: one line, exit code 2, before any work (nothing written)
    assert main(["propagate", str(video), "--mask", f"0={first}", "--out", str(tmp_path / "bad"),
                 "--features", "learned3d"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "learned3d" in err and not (tmp_path / "bad").exists()
    assert main(["eval-video", "--root", str(tmp_path / "davis"), "--out", str(tmp_path / "ev"),
                 "--features", "filterbank+bogus"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "bogus" in err and not (tmp_path / "ev").exists()

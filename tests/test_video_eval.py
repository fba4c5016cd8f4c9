"""DAVIS measures (J, F, statistics), the click robot and ``eval-video`` on a generated DAVIS folder."""
from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pytest

from volseg.errors import InputError
from volseg.eval.davis import frame_scores
from volseg.metrics import boundary_f, boundary_map, boundary_tolerance, iou, statistics
from volseg.robot import multi_object_click
from volseg.video import VideoConfig
from volseg.video.synthetic import moving_shapes


def disk_mask(shape, centre, radius):
    r, c = np.mgrid[0:shape[0], 0:shape[1]]
    return (r - centre[0]) ** 2 + (c - centre[1]) ** 2 <= radius ** 2


# -- measures ----------------------------------------------------------------------------------
def test_iou_with_ignore_and_empty():
    a = np.zeros((10, 10), bool)
    b = a.copy()
    assert iou(a, b) == 1.0
    a[2:6, 2:6] = True
    b[2:6, 2:4] = True
    assert iou(a, b) == pytest.approx(0.5)
    ignore = np.zeros_like(a)
    ignore[2:6, 4:6] = True
    assert iou(a, b, ignore) == 1.0


def test_boundary_map_follows_the_seg2bmap_rule():
    m = np.zeros((5, 6), bool)
    m[1:3, 1:4] = True
    b = boundary_map(m)
    # pixels differing from their right, lower or lower-right neighbour, one pixel wide, towards the origin
    expected = np.zeros_like(m)
    expected[0, 0:3] = True     # above the block: the lower-right / lower neighbour is inside
    expected[1:3, 0] = True     # left of it
    expected[1, 3] = expected[2, 3] = True  # its last column differs from the right
    expected[2, 1:3] = True     # its last row differs from below
    expected[0, 3] = True       # lower neighbour (1, 3) is inside
    assert np.array_equal(b, expected), f"\n{b.astype(int)}"
    assert not boundary_map(np.ones((4, 4), bool)).any()  # the image border is not a boundary


def test_boundary_f_tolerance():
    shape = (480, 854)
    assert boundary_tolerance(shape) == 8  # ceil(0.008 * 979.8)
    assert boundary_tolerance((64, 96)) == 1
    gt = disk_mask(shape, (240, 400), 100)
    assert boundary_f(gt, gt) == 1.0
    assert boundary_f(gt, np.roll(gt, 6, axis=1)) > 0.9   # within the tolerance
    assert boundary_f(gt, np.roll(gt, 40, axis=1)) < 0.4  # far outside
    assert boundary_f(gt, np.zeros_like(gt)) == 0.0
    assert boundary_f(np.zeros_like(gt), np.zeros_like(gt)) == 1.0


def test_frame_scores_per_object_and_ignore():
    gt = np.zeros((20, 20), np.uint8)
    gt[2:8, 2:8] = 1
    gt[12:18, 12:18] = 2
    gt[0, :] = 255
    pred = gt.copy()
    pred[0, :] = 1  # ignored pixels do not count
    s = frame_scores(gt, pred, [1, 2])
    assert s[1] == (1.0, 1.0) and s[2] == (1.0, 1.0)


def test_statistics_mean_recall_decay():
    v = np.r_[np.ones(10), np.zeros(10)] * 0.9
    st = statistics(v)
    assert st["mean"] == pytest.approx(0.45)
    assert st["recall"] == pytest.approx(0.5)
    assert st["decay"] == pytest.approx(0.9)


# -- robot ----------------------------------------------------------------------------------------
def test_robot_clicks_deepest_error_of_any_object():
    gt = np.zeros((40, 40), np.uint8)
    gt[5:15, 5:15] = 1
    gt[20:36, 20:36] = 2
    pred = gt.copy()
    pred[20:36, 20:36] = 0  # object 2 missed entirely: its centre is the deepest error
    c = multi_object_click(gt, pred, [1, 2], clicked=np.zeros(gt.shape, bool), frame=3)
    assert c.positive and c.object == 2 and c.frame == 3
    assert 26 <= c.position[0] <= 29 and 26 <= c.position[1] <= 29
    assert multi_object_click(gt, gt, [1, 2], clicked=np.zeros(gt.shape, bool), frame=0) is None


# -- eval-video on a generated DAVIS folder ----------------------------------------------------------
def make_davis(root: Path, layout_480p: bool = True, n: int = 12) -> Path:
    import cv2

    sub = "480p" if layout_480p else ""
    for name, seed in (("shapes-a", 0), ("shapes-b", 3)):
        frames, labels = moving_shapes(n, 64, 96, seed=seed)
        img, ann = root / "JPEGImages" / sub / name, root / "Annotations" / sub / name
        img.mkdir(parents=True)
        ann.mkdir(parents=True)
        for t in range(n):
            cv2.imwrite(str(img / f"{t:05d}.jpg"), frames[t][..., ::-1], [cv2.IMWRITE_JPEG_QUALITY, 95])
            cv2.imwrite(str(ann / f"{t:05d}.png"), ((labels[t] == 1) * 255).astype(np.uint8))  # DAVIS-2016 style
    return root


def test_eval_video_semi_and_interactive(tmp_path):
    from volseg.eval.run_video import evaluate

    root = make_davis(tmp_path / "davis")
    out = tmp_path / "res"
    s = evaluate(root, out, mode="semi", progress=False)
    assert s["JF"] > 0.8
    per = json.loads((out / "shapes-a_semi.json").read_text())
    assert per["frames"] == 12 and len(per["per_frame"]["frames"]) == 10  # first and last frames left out
    assert per["fps"] > 0 and per["memory"]["memory_peak"] <= VideoConfig().budget
    assert (out / "summary_semi.md").read_text().count("|") > 10 and (out / "plot_semi.png").stat().st_size > 0
    s = evaluate(root, out, mode="interactive", names=["shapes-b"], rounds=2, clicks_per_round=3, progress=False)
    per = json.loads((out / "shapes-b_interactive.json").read_text())
    assert [r["round"] for r in per["rounds"]] == [1, 2]
    assert per["rounds"][0]["clicks"] >= 1
    assert per["rounds"][1]["JF"] >= per["rounds"][0]["JF"] - 0.05
    assert s["rounds"][1]["JF"] > 0.5


def test_eval_video_layout_without_480p_and_errors(tmp_path):
    from volseg.cli import main
    from volseg.eval.davis import davis_dirs, sequences

    root = make_davis(tmp_path / "d", layout_480p=False, n=5)
    assert davis_dirs(root)[0] == root / "JPEGImages"
    assert sequences(root) == ["shapes-a", "shapes-b"]
    with pytest.raises(InputError):
        sequences(root, ["nope"])
    with pytest.raises(InputError):
        davis_dirs(tmp_path)
    assert main(["eval-video", "--root", str(root), "--sequences", "shapes-a", "--mode", "semi",
                 "--out", str(tmp_path / "o")]) == 0
    assert main(["eval-video", "--root", str(tmp_path), "--out", str(tmp_path / "o2")]) == 2
    # a sequence whose frames and annotations do not pair up fails before any output folder is made
    (root / "Annotations" / "shapes-b" / "00004.png").unlink()
    assert main(["eval-video", "--root", str(root), "--out", str(tmp_path / "o3")]) == 2
    assert not (tmp_path / "o2").exists() and not (tmp_path / "o3").exists()


@pytest.mark.devdata
@pytest.mark.slow
def test_davis_dev_semi_blackswan():
    root = Path(os.environ.get("VOLSEG_DEV_DATA",
                               Path(__file__).resolve().parents[1] / ".." / "shared" / "data" / "dev"))
    root = root / "video" / "davis2016"
    if not root.is_dir():
        pytest.skip(f"no DAVIS dev data at {root}")
    from volseg.eval.davis import DavisSequence
    from volseg.eval.run_video import run_semi

    r = run_semi(DavisSequence(root, "blackswan"))
    assert r["JF"] > 0.8


def test_davis_dev_reports_each_seed_and_their_mean(tmp_path):
    """benchmarks/davis_dev.py with two seeds: each seed's group table, then the mean with its spread."""
    import importlib.util

    root = make_davis(tmp_path / "davis", layout_480p=False, n=6)  # the dev data's layout
    for old, new in (("shapes-a", "blackswan"), ("shapes-b", "cows")):  # two of the script's tune sequences
        for kind in ("JPEGImages", "Annotations"):
            (root / kind / old).rename(root / kind / new)
    path = Path(__file__).resolve().parents[1] / "benchmarks" / "davis_dev.py"
    spec = importlib.util.spec_from_file_location("davis_dev", path)
    davis_dev = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(davis_dev)
    out = tmp_path / "out"
    assert davis_dev.main(["--root", str(root), "--out", str(out), "--modes", "semi", "--group", "tune",
                           "--seeds", "0", "1", "--long"]) == 0
    md = (out / "benchmark.md").read_text()
    assert "## semi, seed 0" in md and "## semi, seed 1" in md and "## semi, mean over seeds 0, 1" in md
    mean_row = md.split("mean over seeds 0, 1")[1].splitlines()[4]
    assert mean_row.startswith("| tune | 2 |") and "(" in mean_row  # mean (lowest-highest seed)
    means = md.split("mean over seeds 0, 1")[1]
    assert "| sequence | J&F |" in means and "| blackswan | " in means and "| cows | " in means  # and each sequence's
    for seed in (0, 1):
        per = json.loads((out / "semi" / f"seed{seed}" / "cows_semi.json").read_text())
        assert per["frames"] == 6
    assert davis_dev.main(["--root", str(root), "--out", str(out), "--option", "seed=3", "--long"]) == 1
    # a config file reaches every sequence's run and the report's config line; --option wins over it
    small = tmp_path / "small.yaml"
    small.write_text("video:\n  budget: 40\n  expert_points: 30\n")
    assert davis_dev.main(["--root", str(root), "--out", str(tmp_path / "small"), "--modes", "semi", "--group",
                           "tune", "--config", str(small), "--option", "expert_points=25", "--long"]) == 0
    assert '"budget": 40, "expert_points": 25' in (tmp_path / "small" / "benchmark.md").read_text()
    per = json.loads((tmp_path / "small" / "semi" / "cows_semi.json").read_text())
    assert 0 < per["memory"]["memory_peak"] <= 40 and 0 < per["memory"]["gp_points_max"] <= 25
    assert davis_dev.main(["--root", str(root), "--out", str(out), "--config", str(tmp_path / "none.yaml")]) == 1

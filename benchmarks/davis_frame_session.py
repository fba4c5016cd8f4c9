"""The clicked frame's 2D session on DAVIS-2016 dev frames: mean IoU after each robot click.

    python benchmarks/davis_frame_session.py [--root ../shared/data/dev/video/davis2016] [--group tune|held-out]
                                             [--every 20] [--clicks 10] [--option KEY=VALUE ...]

What interactive mode's round 1 does on a frame that has no mask yet: ``VideoSegmenter.session_for(t)`` (the
session a user's clicks go to, in ``volseg serve`` and ``eval-video`` alike), the RITM robot clicking the largest
error each time, no prior.  Frames: every ``--every``-th frame of each sequence of the group (``davis_dev.py``'s
TUNE and HELD-OUT groups; settings are chosen on TUNE).  ``--option`` sets a video setting, e.g.
``--option session_motion=false``.  Prints each frame's IoU curve and the group's mean curve.
"""
from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "benchmarks"))


def frame_ious(seq, t: int, config, clicks: int) -> tuple[list[float], float, list[float]]:
    """(IoU after each click, seconds to make the session, seconds of each click)."""
    import time

    import numpy as np

    from volseg.eval.davis import IGNORE
    from volseg.metrics import iou
    from volseg.robot import multi_object_click
    from volseg.video import VideoSegmenter

    gt = seq.gt(t)
    scored = gt != IGNORE
    pred, clicked, out, seconds = np.zeros(gt.shape, np.uint8), np.zeros(gt.shape, bool), [], []
    with VideoSegmenter(seq.frames, config) as seg:
        t0 = time.perf_counter()
        session = seg.session_for(t)
        made = time.perf_counter() - t0
        for _ in range(clicks):
            c = multi_object_click(gt, pred, seq.objects, ignore=~scored, clicked=clicked, frame=t)
            if c is None:  # nothing left to correct: the last score holds
                break
            clicked[c.voxel()] = True
            seconds.append(session.add_click(c.position, c.positive, c.object))  # the first: the features too
            pred = session.mask()
            out.append(float(np.mean([iou((pred == k) & scored, (gt == k) & scored) for k in seq.objects])))
    return (out + [out[-1]] * (clicks - len(out)) if out else [1.0] * clicks), made, seconds


def main(argv=None) -> int:
    from davis_dev import GROUPS

    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--root", default=str(REPO / ".." / "shared" / "data" / "dev" / "video" / "davis2016"))
    p.add_argument("--group", choices=["tune", "held-out"], default="tune")
    p.add_argument("--every", type=int, default=20)
    p.add_argument("--clicks", type=int, default=10)
    p.add_argument("--option", action="append", default=[], metavar="KEY=VALUE")
    args = p.parse_args(argv)
    os.environ.setdefault("OMP_NUM_THREADS", "1")

    import numpy as np

    from volseg.eval.davis import DavisSequence
    from volseg.video.config import read_video_config

    config = read_video_config(None, args.option)
    curves, made, first, later = [], [], [], []
    for name in GROUPS[args.group]:
        seq = DavisSequence(args.root, name)
        for t in range(0, len(seq.frames), args.every):
            ious, seconds, clicks = frame_ious(seq, t, config, args.clicks)
            curves.append(ious)
            made.append(seconds)
            first += clicks[:1]
            later += clicks[1:]
            print(f"{name:14s} {t:4d}  " + " ".join(f"{x:.2f}" for x in ious), flush=True)
    mean = np.mean(curves, axis=0)
    print(f"mean of {len(curves)} frames, IoU after 1..{args.clicks} clicks: " + " ".join(f"{x:.3f}" for x in mean))
    print(f"seconds, median: session {np.median(made):.2f}, first click (its features) {np.median(first):.2f}, "
          f"later clicks {np.median(later):.3f} (p95 {np.percentile(later, 95):.3f})")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

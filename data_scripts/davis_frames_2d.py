"""Lay DAVIS-2016 video frames out as the 2D `DAVIS` benchmark (``img/``, ``gt/``) with symlinks.

    python data_scripts/davis_frames_2d.py ../shared/data/dev/video/davis2016 /tmp/davis2d --every 20
    volseg eval --dataset DAVIS --root /tmp/davis2d --method gp --out OUT

Every ``--every``-th annotated frame of every sequence (frame 0 included) becomes one instance,
named ``<sequence>_<frame>``.  The 2D defaults were chosen on Berkeley, never on these frames, so
this is the 2D benchmark they are *reported* on, not tuned on.  Nothing is copied: the folder holds
links into the data set, and frames whose object is absent are left out.
"""
from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
from PIL import Image


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("davis", type=Path, help="DAVIS-2016 root with JPEGImages/ and Annotations/")
    p.add_argument("out", type=Path, help="folder to create (img/ and gt/ of symlinks)")
    p.add_argument("--every", type=int, default=20, help="take every k-th frame (default 20)")
    a = p.parse_args()
    frames = sorted((a.davis / "JPEGImages").glob("*/*.jpg"))
    if not frames:
        p.error(f"no JPEGImages/<sequence>/<frame>.jpg under {a.davis}")
    if a.every < 1:
        p.error(f"--every must be 1 or more, got {a.every}")
    if a.out.exists() and not a.out.is_dir():
        p.error(f"{a.out} is a file; give a folder to create")
    (a.out / "img").mkdir(parents=True, exist_ok=True)
    (a.out / "gt").mkdir(parents=True, exist_ok=True)
    n = 0
    for jpg in frames:
        if int(jpg.stem) % a.every:
            continue
        png = a.davis / "Annotations" / jpg.parent.name / f"{jpg.stem}.png"
        with Image.open(png) as m:
            if not np.asarray(m).any():
                continue
        name = f"{jpg.parent.name}_{jpg.stem}"
        for src, dst in ((jpg, a.out / "img" / f"{name}.jpg"), (png, a.out / "gt" / f"{name}.png")):
            dst.unlink(missing_ok=True)
            dst.symlink_to(src.resolve())
        n += 1
    print(f"{n} instances -> {a.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

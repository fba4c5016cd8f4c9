"""`volseg segment` on a generated 256^3 volume with 10 clicks: total time, per-click time, peak RSS.

    python benchmarks/segment_256.py [--size 256] [--clicks 10]

The volume and clicks are written to a temporary folder, then the real command line runs in a
child process, so the numbers are what a user gets (imports, reading, features, clicks, writing).
A volume's features are computed where the clicks reach (volseg.features.tiles): ``features_s`` is
all feature time, at set_image and inside the clicks, which the click times include too.
"""
from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import nibabel as nib
import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from big_volume import synthetic  # noqa: E402


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--size", type=int, default=256)
    p.add_argument("--clicks", type=int, default=10)
    p.add_argument("--extra", nargs=argparse.REMAINDER, default=[], help="more `volseg segment` options")
    a = p.parse_args()
    shape = (a.size,) * 3
    vol, truth, spacing = synthetic(shape)
    rng = np.random.default_rng(1)
    inside, outside = np.argwhere(truth[::4, ::4, ::4]) * 4, np.argwhere(~truth[::4, ::4, ::4]) * 4
    n_pos = (a.clicks + 1) // 2
    clicks = [{"position": inside[i].tolist(), "label": "positive"}
              for i in rng.choice(len(inside), n_pos, replace=False)]
    clicks += [{"position": outside[i].tolist(), "label": "negative"}
               for i in rng.choice(len(outside), a.clicks - n_pos, replace=False)]
    clicks = [c for pair in zip(clicks[:n_pos], clicks[n_pos:] + [None]) for c in pair if c]
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        nib.save(nib.Nifti1Image(vol, np.diag([*spacing, 1.0])), tmp / "vol.nii.gz")
        (tmp / "clicks.json").write_text(json.dumps({"clicks": clicks}))
        t0 = time.perf_counter()
        subprocess.run([sys.executable, "-m", "volseg", "segment", str(tmp / "vol.nii.gz"), "--clicks",
                        str(tmp / "clicks.json"), "--out", str(tmp / "mask.nii.gz"), *a.extra], check=True)
        total = time.perf_counter() - t0
        rec = json.loads((tmp / "mask.json").read_text())
        mask = np.asarray(nib.load(tmp / "mask.nii.gz").dataobj) > 0
    rss = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024 ** 2
    after_first = rec["click_seconds"][1:]
    dice = 2 * (mask & truth).sum() / (mask.sum() + truth.sum())
    print(json.dumps({"size": shape, "clicks": len(rec["click_seconds"]), "total_s": round(total, 2),
                      "features_s": round(rec["feature_seconds"], 2),
                      "first_click_s": round(rec["click_seconds"][0], 3),
                      "clicks_total_s": round(float(np.sum(rec["click_seconds"])), 2),
                      "per_click_after_first_mean_s": round(float(np.mean(after_first)), 3),
                      "per_click_after_first_max_s": round(float(np.max(after_first)), 3),
                      "peak_rss_gb": round(rss, 2), "dice": round(float(dice), 3)}))


if __name__ == "__main__":
    main()

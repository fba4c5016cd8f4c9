"""Whole-volume interactivity (issues 4, 27): features, first mask, click (+mask) p50/p95, peak RSS, roofline.

    python benchmarks/big_volume.py                     # 128^3, 256^3, 512x512x300 (+ BraTS if present)
    python benchmarks/big_volume.py --size 256 256 256  # one size, in this process
    python benchmarks/big_volume.py --device cuda       # on a GPU machine
    python benchmarks/big_volume.py --features-ready    # every feature tile before the first click
    python benchmarks/big_volume.py --set latent=gp     # a GP setting (volseg.config.GPConfig) for every size

Volumes compute their features where the clicks reach (volseg.features.tiles): by default a
click's time includes the tiles it computes, and ``set_image_to_first_mask_s`` is what a user waits
from opening the volume to seeing the first click's mask.  ``--features-ready`` times the clicks
with the features ready (the posterior update and the mask alone).

Each size runs in its own process so its peak RSS is its own.  The roofline ratio is the
posterior evaluation's achieved FLOP/s (counted from the two matrix products and the elementwise
work per location of a click's mean update) over a float32 matrix-multiply FLOP/s measured in the
same process.
"""
from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import torch
import yaml

SIZES = [(128, 128, 128), (256, 256, 256), (512, 512, 300)]
DEV = Path(os.environ.get("VOLSEG_DEV_DATA", Path(__file__).resolve().parents[1].parent / "shared" / "data" / "dev"))


def synthetic(shape, spacing=(0.8, 0.8, 1.0), seed=0, integers=True):
    """A CT-like volume: body ellipse, organs of different density, noise; whole HU values as a scanner
    stores them (int16) unless ``integers`` is false."""
    rng = np.random.default_rng(seed)
    axes = [np.arange(n, dtype=np.float32) / n - 0.5 for n in shape]
    x, y, z = np.meshgrid(*axes, indexing="ij", sparse=True)
    vol = np.full(shape, -1000.0, np.float32)
    vol[np.broadcast_to((x / 0.45) ** 2 + (y / 0.35) ** 2 < 1, shape)] = 40.0
    organs = [((-0.12, 0.05, 0.0), (0.15, 0.12, 0.25), 90.0), ((0.15, -0.05, 0.05), (0.07, 0.07, 0.12), 250.0)]
    for (cx, cy, cz), (rx, ry, rz), hu in organs:
        vol[((x - cx) / rx) ** 2 + ((y - cy) / ry) ** 2 + ((z - cz) / rz) ** 2 < 1] = hu  # broadcasts to 3D
    vol += rng.standard_normal(shape, dtype=np.float32) * 15.0
    if integers:
        np.rint(vol, out=vol)
    truth = ((x + 0.12) / 0.15) ** 2 + ((y - 0.05) / 0.12) ** 2 + (z / 0.25) ** 2 < 1
    return vol, np.broadcast_to(truth, shape), spacing


def matmul_flops(device, n=2048, reps=5, trials=3) -> float:
    """The best of a few timed runs: a slow run would flatter the ratio."""
    a = torch.randn(n, n, device=device)
    b = torch.randn(n, n, device=device)
    a @ b
    best = float("inf")
    for _ in range(trials):
        if device.type == "cuda":
            torch.cuda.synchronize()
        t = time.perf_counter()
        for _ in range(reps):
            a @ b
        if device.type == "cuda":
            torch.cuda.synchronize()
        best = min(best, time.perf_counter() - t)
    return 2 * n ** 3 * reps / best


def robot_click(truth, mask, rng):
    """A click in the larger error set (missed or false), at a random voxel of it."""
    fn, fp = truth & (mask == 0), ~truth & (mask > 0)
    positive = fn.sum() >= fp.sum()
    idx = np.flatnonzero(fn if positive else fp)
    if idx.size == 0:
        return None, positive
    return np.unravel_index(idx[rng.integers(idx.size)], truth.shape), positive


def run_one(shape, device, spatial_lengthscale, clicks, name=None, budget="5GB", features_ready=False,
            integers=True, settings=None):
    from volseg import Image, Session

    if name == "brats":
        from volseg.io import read_image, read_mask

        img = read_image(DEV / "3d/brats/flair.nii.gz")
        truth = read_mask(DEV / "3d/brats/edema.nii.gz", like=img) > 0
    else:
        vol, truth, spacing = synthetic(shape, integers=integers)
        img = Image.from_array(vol, spacing=spacing)
        del vol
    s = Session(device=device, spatial_lengthscale=spatial_lengthscale, memory_budget=budget, **(settings or {}))
    t0 = time.perf_counter()
    s.set_image(img)
    if features_ready and s.feature_tiles is not None:  # the clicks then time the GP and the mask alone
        s.feature_tiles.ensure_all()
    t_feat = time.perf_counter() - t0
    rng = np.random.default_rng(0)
    centre = tuple(int(v) for v in np.argwhere(truth)[len(np.argwhere(truth)) // 2]) if truth.sum() < 5e6 else \
        tuple(int(v) for v in np.mean(np.nonzero(truth[::4, ::4, ::4]), axis=1) * 4)
    first = s.add_click(centre, True)
    mask = s.mask()
    first_mask = time.perf_counter() - t0  # what a user waits from opening the image to seeing a first mask
    per_click, click_mask, flops, eval_s = [], [], 0.0, 0.0
    for _ in range(clicks - 1):
        pos, positive = robot_click(truth, mask, rng)
        if pos is None:
            break
        t = time.perf_counter()
        per_click.append(s.add_click(pos, positive))
        mask = s.mask()
        click_mask.append(time.perf_counter() - t)
        # a click updates the mean only (the variance waits until asked for), so count that work
        flops += s.last_update["locations"] * s.posterior.flops_per_location(s.inputs.dim, with_var=False)
        eval_s += s.last_update["seconds"]
    mask = s.mask() > 0
    dice = 2 * (mask & truth).sum() / (mask.sum() + truth.sum())
    mm = matmul_flops(s.device)
    return {
        "volume": name or "x".join(map(str, shape)), "voxels": int(np.prod(img.shape)), "device": str(s.device),
        "latent": s.latent,
        "features_s": round(t_feat, 2), "first_click_s": round(first, 3),
        "set_image_to_first_mask_s": round(first_mask, 2),
        "click_mask_p50_s": round(float(np.percentile(click_mask, 50)), 3),
        "click_mask_p95_s": round(float(np.percentile(click_mask, 95)), 3),
        # features computed on demand (volseg.features.tiles): the share of the volume computed by the end
        "features_computed": round(float(s.feature_tiles.done.mean()), 3) if s.feature_tiles is not None else 1.0,
        "feature_total_s": round(s.feature_tiles.seconds, 2) if s.feature_tiles is not None else round(t_feat, 2),
        "click_p50_s": round(float(np.percentile(per_click, 50)), 3),
        "click_p95_s": round(float(np.percentile(per_click, 95)), 3), "clicks": 1 + len(per_click),
        "spatial_lengthscale_mm": s.spatial_lengthscale,
        "eval_gflops": round(flops / max(eval_s, 1e-9) / 1e9, 2), "matmul_gflops": round(mm / 1e9, 1),
        "roofline_ratio": round(flops / max(eval_s, 1e-9) / mm, 3),
        # the share of a click's time spent in the posterior evaluation (the rest: solve, reach, Python)
        "eval_share": round(eval_s / max(sum(per_click), 1e-9), 2),
        "peak_rss_gb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024 ** 2, 2),
        "dice": round(float(dice), 3),
    }


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--size", type=int, nargs=3)
    p.add_argument("--real", choices=["brats"])
    p.add_argument("--device", default="cpu")
    p.add_argument("--spatial-lengthscale", type=float, default=15.0, help="mm; bounds each click's reach")
    p.add_argument("--clicks", type=int, default=20)
    p.add_argument("--memory-budget", default="5GB", help="the session's budget (a plain Session() has 4GB)")
    p.add_argument("--features-ready", action="store_true",
                   help="compute every feature tile before the first click (default: tiles are computed where "
                        "clicks reach, and a click's time includes its new tiles)")
    p.add_argument("--float-intensities", action="store_true",
                   help="generated volumes keep fractional intensities (default: whole HU, as a CT is stored)")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="GP setting override")
    a = p.parse_args()
    if a.size or a.real:
        settings = {k: yaml.safe_load(v) for k, v in (s.split("=", 1) for s in a.set)}
        row = run_one(tuple(a.size or ()), a.device, a.spatial_lengthscale, a.clicks, a.real, a.memory_budget,
                      a.features_ready, not a.float_intensities, settings)
        print(json.dumps(row), flush=True)
        return
    jobs = [["--size", *map(str, s)] for s in SIZES]
    if (DEV / "3d/brats/flair.nii.gz").exists():
        jobs.append(["--real", "brats"])
    rows = []
    for job in jobs:
        out = subprocess.run([sys.executable, __file__, *job, "--device", a.device, "--clicks", str(a.clicks),
                              "--spatial-lengthscale", str(a.spatial_lengthscale),
                              "--memory-budget", a.memory_budget] + ["--features-ready"] * a.features_ready
                             + ["--float-intensities"] * a.float_intensities
                             + [arg for s in a.set for arg in ("--set", s)],
                             capture_output=True, text=True)
        if out.returncode:
            print(out.stderr[-2000:], file=sys.stderr)
            continue
        rows.append(json.loads(out.stdout.strip().splitlines()[-1]))
        print(json.dumps(rows[-1]), flush=True)
    keys = ["volume", "latent", "features_s", "first_click_s", "set_image_to_first_mask_s", "click_p50_s",
            "click_p95_s", "click_mask_p50_s", "click_mask_p95_s", "features_computed", "peak_rss_gb", "eval_gflops",
            "matmul_gflops", "roofline_ratio", "dice"]
    print("| " + " | ".join(keys) + " |\n|" + "---|" * len(keys))
    for r in rows:
        print("| " + " | ".join(str(r[k]) for k in keys) + " |")


if __name__ == "__main__":
    main()

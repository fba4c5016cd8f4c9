"""Interactive 3D evaluation on the dev volumes in ../shared/data/dev/3d (never copied into the repo).

    .venv/bin/python benchmarks/eval3d_dev.py [--part tune|held-out|all] [--out DIR] [--clicks 10]
                                              [--tolerance 2] [--set key=value ...] [--only NAMES]

Cases: BraTS FLAIR + edema; pyradiomics brain1, brain2, breast1 (image/label NRRD); the dcmqi 3-slice
CT (DICOM series) with liver, spine and heart label files (nonzero = the object); the TotalSegmentator
20-slice CT (DICOM series) with its 10 largest structures, its label map brought onto the series by
world geometry.  Prints Dice and NSD after 1, 3, 5 and 10 clicks, each object's largest Dice drop from
one click to the next, NoIC and the time per click; results (per-case JSON, summary, curves.png) go to
--out (default: a folder in the system temp dir).  ``--set`` overrides a GP setting
(``volseg.config.GPConfig``), e.g. ``--set spatial_fraction=0.1``, for experiments.

Protocol, fixed before any 3D setting was tuned: settings are chosen on the TUNE part only and the
HELD-OUT part is reported apart, never used to pick a setting.

* TUNE: BraTS edema, pyradiomics brain1 / brain2 / breast1 (all MR), TotalSeg structures 1-5 by size.
* HELD-OUT: the dcmqi CT's liver, spine and heart, TotalSeg structures 6-10 by size (all CT; the
  dcmqi CT is another scanner and patient, and structures 6-10 are smaller than any tuned on there).
"""
from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import yaml

from volseg.config import GPConfig
from volseg.eval.run3d import EvalCase, EvalOptions, format_table, run_eval

REPO = Path(__file__).resolve().parents[1]


def dev_root() -> Path:
    return Path(os.environ.get("VOLSEG_DEV_DATA", REPO / ".." / "shared" / "data" / "dev")).resolve()


PARTS = ("tune", "held-out")
TOTALSEG_STRUCTURES = 10  # the largest ones; 1-5 tune, 6-10 held out


def largest_labels(image: Path, label: Path, n: int) -> list[int]:
    """The ids of the n largest structures of a label map, on the image's grid, largest first."""
    from volseg.io import read_image, read_mask

    labels = read_mask(label, like=read_image(image), resample=True)
    counts = np.bincount(labels.ravel())
    counts[0] = 0
    return [int(i) for i in np.argsort(-counts, kind="stable")[:n] if counts[i] > 0]


def dev_cases(root: Path, part: str = "all") -> list[EvalCase]:
    d3 = root / "3d"
    tune = [EvalCase("brats-edema", d3 / "brats" / "flair.nii.gz", d3 / "brats" / "edema.nii.gz")]
    for name in ("brain1", "brain2", "breast1"):
        pr = d3 / "pyradiomics"
        tune.append(EvalCase(f"pyrad-{name}", pr / f"{name}_image.nrrd", pr / f"{name}_label.nrrd"))
    ct = d3 / "dcmqi_ct3slice"
    held = [EvalCase(f"ct-{organ}", ct / "ct-3slice", ct / f"{organ}_seg.nrrd", "nonzero")
            for organ in ("liver", "spine", "heart")]
    ts = d3 / "totalseg_ct_dicom"
    if ts.is_dir():
        ids = largest_labels(ts / "ct", ts / "seg.nii.gz", TOTALSEG_STRUCTURES)
        tune.append(EvalCase("totalseg", ts / "ct", ts / "seg.nii.gz", ids[:5]))
        held.append(EvalCase("totalseg", ts / "ct", ts / "seg.nii.gz", ids[5:]))
    return {"tune": tune, "held-out": held, "all": tune + held}[part]


def part_means(summary: dict, cases: dict[str, list[EvalCase]]) -> dict[str, dict]:
    """Mean Dice per checkpoint, objects with a drop over 0.05, NoIC, per part."""
    out = {}
    for part, members in cases.items():
        keys = {(c.name, i) for c in members for i in (c.label_ids if isinstance(c.label_ids, list) else [None])}
        objs = [o for o in summary["objects"] if (o["name"], o["label_id"]) in keys or (o["name"], None) in keys]
        if not objs:
            continue
        out[part] = {"objects": len(objs),
                     **{f"dice@{k}": float(np.mean([o[f"dice@{k}"] for o in objs])) for k in summary["checkpoints"]},
                     "drops>0.05": int(sum(o["max_dice_drop"] > 0.05 for o in objs)),
                     "noic": int(sum(o["noic"] for o in objs))}
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", default=str(Path(tempfile.gettempdir()) / "volseg_eval3d_dev"))
    ap.add_argument("--clicks", type=int, default=10)
    ap.add_argument("--tolerance", type=float, default=2.0, help="NSD tolerance in mm")
    ap.add_argument("--features", default="filterbank")
    ap.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="GP setting override")
    ap.add_argument("--part", choices=(*PARTS, "all"), default="all", help="tune, held-out or all (default)")
    ap.add_argument("--only", help="comma list of case names to run (e.g. ct-liver,pyrad-brain2)")
    args = ap.parse_args(argv)

    root = dev_root()
    if not (root / "3d").is_dir():
        print(f"dev data not found at {root} (set VOLSEG_DEV_DATA)", file=sys.stderr)
        return 1
    by_part = {p: dev_cases(root, p) for p in PARTS if args.part in (p, "all")}
    if args.only:
        keep = set(args.only.split(","))
        by_part = {p: [c for c in cs if c.name in keep] for p, cs in by_part.items()}
    cases = [c for cs in by_part.values() for c in cs]
    overrides = {k: yaml.safe_load(v) for k, v in (s.split("=", 1) for s in args.set)}
    config = GPConfig().replace(**overrides)
    options = EvalOptions(n_clicks=args.clicks, tolerance=args.tolerance, features=args.features, config=config)
    t0 = time.perf_counter()
    summary = run_eval(cases, args.out, options)
    print(format_table(summary))
    groups = {**by_part, "mr+dcmqi": [c for c in cases if c.name != "totalseg"]}  # the 7-object mean
    for part, m in part_means(summary, groups).items():
        dices = "  ".join(f"Dice@{k} {m[f'dice@{k}']:.3f}" for k in summary["checkpoints"])
        print(f"{part.upper():9s} {m['objects']:2d} objects  {dices}  drops>0.05: {m['drops>0.05']}  NoIC {m['noic']}")
    if overrides:
        print(f"GP overrides: {overrides}")
    print(f"total {time.perf_counter() - t0:.0f} s; results in {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""Interactive 3D evaluation on the dev volumes in ../shared/data/dev/3d (never copied into the repo).

    .venv/bin/python benchmarks/eval3d_dev.py [--out DIR] [--clicks 10] [--tolerance 2] [--set key=value ...]

Cases: BraTS FLAIR + edema; pyradiomics brain1, brain2, breast1 (image/label NRRD); the dcmqi 3-slice
CT (DICOM series) with liver, spine and heart label files (nonzero = the object).  Prints Dice and
NSD after 1, 3, 5 and 10 clicks with time per click; results (per-case JSON, summary, curves.png)
go to --out (default: a folder in the system temp dir).  ``--set`` overrides a GP setting
(``volseg.config.GPConfig``), e.g. ``--set spatial_fraction=0.1``, for experiments.
"""
from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

import yaml

from volseg.config import GPConfig
from volseg.eval.run3d import EvalCase, EvalOptions, format_table, run_eval

REPO = Path(__file__).resolve().parents[1]


def dev_root() -> Path:
    return Path(os.environ.get("VOLSEG_DEV_DATA", REPO / ".." / "shared" / "data" / "dev")).resolve()


def dev_cases(root: Path) -> list[EvalCase]:
    d3 = root / "3d"
    cases = [EvalCase("brats-edema", d3 / "brats" / "flair.nii.gz", d3 / "brats" / "edema.nii.gz")]
    for name in ("brain1", "brain2", "breast1"):
        pr = d3 / "pyradiomics"
        cases.append(EvalCase(f"pyrad-{name}", pr / f"{name}_image.nrrd", pr / f"{name}_label.nrrd"))
    ct = d3 / "dcmqi_ct3slice"
    for organ in ("liver", "spine", "heart"):
        cases.append(EvalCase(f"ct-{organ}", ct / "ct-3slice", ct / f"{organ}_seg.nrrd", "nonzero"))
    return cases


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", default=str(Path(tempfile.gettempdir()) / "volseg_eval3d_dev"))
    ap.add_argument("--clicks", type=int, default=10)
    ap.add_argument("--tolerance", type=float, default=2.0, help="NSD tolerance in mm")
    ap.add_argument("--features", default="filterbank")
    ap.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="GP setting override")
    ap.add_argument("--only", help="comma list of case names to run (e.g. ct-liver,pyrad-brain2)")
    args = ap.parse_args(argv)

    root = dev_root()
    if not (root / "3d").is_dir():
        print(f"dev data not found at {root} (set VOLSEG_DEV_DATA)", file=sys.stderr)
        return 1
    cases = dev_cases(root)
    if args.only:
        keep = set(args.only.split(","))
        cases = [c for c in cases if c.name in keep]
    overrides = {k: yaml.safe_load(v) for k, v in (s.split("=", 1) for s in args.set)}
    config = GPConfig().replace(**overrides)
    options = EvalOptions(n_clicks=args.clicks, tolerance=args.tolerance, features=args.features, config=config)
    t0 = time.perf_counter()
    summary = run_eval(cases, args.out, options)
    print(format_table(summary))
    if overrides:
        print(f"GP overrides: {overrides}")
    print(f"total {time.perf_counter() - t0:.0f} s; results in {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

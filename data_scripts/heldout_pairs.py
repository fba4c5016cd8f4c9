"""Write the validation cases a training config holds out as a `volseg eval3d --pairs-csv` file.

    python data_scripts/heldout_pairs.py configs/train_3d.yaml /tmp/hippocampus_heldout.csv
    volseg eval3d --pairs-csv /tmp/hippocampus_heldout.csv --clicks 5 --out OUT [--features model.ckpt]

The split is the one training uses (`volseg.train.data.split`: every k-th pair), so a learned model
and the filter bank are compared on cases the model never saw.  Paths in the CSV are absolute.
"""
from __future__ import annotations

import argparse
import csv
from pathlib import Path

import yaml

from volseg.train.data import find_pairs, resolve, split


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("config", help="training YAML, e.g. configs/train_3d.yaml")
    p.add_argument("out", help="CSV to write (image,label)")
    a = p.parse_args()
    path = Path(a.config)
    cfg = yaml.safe_load(path.read_text())
    dims = int(cfg.get("model", {}).get("spatial_dims", 2))
    data = cfg.get("data", {})
    pairs = [q for r in data.get("roots", []) for q in find_pairs(resolve(r, path.resolve().parent), dims)]
    _, held_out = split(pairs, float(data.get("val_fraction", 0.02)))
    with open(a.out, "w", newline="") as f:
        w = csv.writer(f, lineterminator="\n")
        w.writerow(["image", "label"])
        w.writerows([q.image.resolve(), q.mask.resolve()] for q in held_out)
    print(f"{len(held_out)} of {len(pairs)} pairs held out -> {a.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

"""Write the validation cases a training config holds out as a `volseg eval3d --pairs-csv` file.

    python data_scripts/heldout_pairs.py configs/train_3d.yaml /tmp/hippocampus_heldout.csv
    volseg eval3d --pairs-csv /tmp/hippocampus_heldout.csv --clicks 5 --out OUT [--features model.ckpt]

The cases are training's own validation set (`TrainingData(..., validation=True)`), so a learned
model and the filter bank are compared on cases the model never saw.  Paths in the CSV are absolute.
"""
from __future__ import annotations

import argparse
import csv

from volseg.train.config import load_config
from volseg.train.data import TrainingData


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("config", help="training YAML, e.g. configs/train_3d.yaml")
    p.add_argument("out", help="CSV to write (image,label)")
    a = p.parse_args()
    cfg, base = load_config(a.config)
    train = TrainingData(cfg["data"], cfg["model"], base)
    held_out = TrainingData(cfg["data"], cfg["model"], base, validation=True).items
    with open(a.out, "w", newline="") as f:
        w = csv.writer(f, lineterminator="\n")
        w.writerow(["image", "label"])
        w.writerows([q.image.resolve(), q.mask.resolve()] for q in held_out)
    print(f"{len(held_out)} of {len(held_out) + len(train)} pairs held out -> {a.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

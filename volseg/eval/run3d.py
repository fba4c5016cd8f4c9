"""Interactive 3D evaluation: a simulated user clicks, the Session answers, metrics after each click.

One object = one (volume, label id) pair with a fresh Session.  Per object: Dice and NSD after
each click, time per click (``add_click`` plus ``mask()``: what a user waits for) and the area
under both curves.  Results: ``cases/<name>_label<id>.json`` per object, ``summary.json``,
``summary.csv`` and ``curves.png`` in the output folder; :func:`format_table` prints the summary.
"""
from __future__ import annotations

import csv
import json
import time
import traceback
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterable, Sequence

import numpy as np
from tqdm import tqdm

from ..errors import InputError, VolsegError
from ..image import Image
from ..io import read_image, read_mask
from ..io.atomic import atomic_path
from ..metrics import DEFAULT_TOLERANCE_MM, auc, dice, nsd
from ..robot import largest_component_click
from ..session import Session

CHECKPOINTS = (1, 3, 5, 10)
LabelIds = Sequence[int] | str  # explicit ids, "all" (each nonzero value on its own) or "nonzero" (their union)


@dataclass
class EvalCase:
    """One image and its label map; ``label_ids`` picks the objects evaluated in it."""

    name: str
    image: Path
    label: Path
    label_ids: LabelIds = "all"


@dataclass
class EvalOptions:
    n_clicks: int = 10
    tolerance: float = DEFAULT_TOLERANCE_MM
    features: str = "filterbank"
    device: str = "cpu"
    config: object = None  # a volseg.config.GPConfig, a dict of GP settings or None (defaults)
    session_factory: Callable[[], object] | None = field(default=None, repr=False)

    def new_session(self):
        if self.session_factory is not None:
            return self.session_factory()
        return Session(features=self.features, device=self.device, config=self.config)


def parse_label_ids(text: str | None) -> LabelIds:
    """'all' (default), 'nonzero', or a comma list such as '1,2'."""
    if text is None or str(text).strip().lower() in ("", "all"):
        return "all"
    t = str(text).strip().lower()
    if t == "nonzero":
        return "nonzero"
    try:
        ids = [int(v) for v in t.replace(";", ",").split(",") if v.strip()]
    except ValueError:
        raise InputError(f"label ids {text!r}: use 'all', 'nonzero' or a comma list of integers such as 1,2") from None
    if not ids or any(i < 1 for i in ids):
        raise InputError(f"label ids {text!r}: ids must be integers of 1 or more")
    return ids


def objects_in(labels: np.ndarray, label_ids: LabelIds) -> list[tuple[int, np.ndarray]]:
    """(id, binary mask) per object to evaluate; id 0 stands for the union of all nonzero labels."""
    if label_ids == "nonzero":
        return [(0, labels != 0)]
    ids = [int(v) for v in np.unique(labels) if v != 0] if label_ids == "all" else list(label_ids)
    return [(i, labels == i) for i in ids]


def evaluate_object(image: Image, gt: np.ndarray, options: EvalOptions) -> dict:
    """Run the robot for ``options.n_clicks`` clicks on one object; metrics and timings per click."""
    gt = np.asarray(gt, dtype=bool)
    spacing = tuple(image.spacing)
    session = options.new_session()
    t0 = time.perf_counter()
    session.set_image(image)
    set_image_s = time.perf_counter() - t0
    pred = np.zeros_like(gt)
    clicks, dices, nsds, seconds, predicted, noic = [], [], [], [], [], 0
    for _ in range(options.n_clicks):
        c = largest_component_click(gt, pred, spacing)
        if c is None:  # nothing left to correct: the curve stays at its last value
            break
        t = time.perf_counter()
        session.add_click(c.position, positive=c.positive, object=1)
        pred = np.asarray(session.mask()) == 1
        seconds.append(time.perf_counter() - t)
        noic += int(pred[c.voxel()] != c.positive)  # the click's own voxel came out with the other label
        clicks.append({"position": [int(v) for v in c.voxel()], "positive": c.positive})
        dices.append(dice(gt, pred))
        nsds.append(nsd(gt, pred, spacing, options.tolerance))
        predicted.append(int(pred.sum()))  # with voxels: tells over- from under-segmentation
    pad = options.n_clicks - len(dices)
    dices += [dices[-1] if dices else 1.0] * pad
    nsds += [nsds[-1] if nsds else 1.0] * pad
    return {
        "voxels": int(gt.sum()),
        "volume_ml": float(gt.sum() * np.prod(spacing) / 1000.0),
        "spacing": list(spacing),
        "shape": list(gt.shape),
        "tolerance_mm": options.tolerance,
        "clicks": clicks,
        "dice": dices,
        "nsd": nsds,
        "predicted_voxels": predicted,
        "noic": noic,
        "max_dice_drop": max_drop(dices),
        "seconds_per_click": seconds,
        "mean_seconds_per_click": float(np.mean(seconds)) if seconds else 0.0,
        "set_image_seconds": set_image_s,
        "auc_dice": auc(dices),
        "auc_nsd": auc(nsds),
    }


def max_drop(curve: Sequence[float]) -> float:
    """The largest fall of a curve from one click to the next (0 when it never falls)."""
    return float(max([0.0, *(a - b for a, b in zip(curve[:-1], curve[1:]))]))


def _safe(name: str) -> str:
    return "".join(ch if ch.isalnum() or ch in "-_." else "_" for ch in name)


def _write_json(path: Path, data) -> None:
    with atomic_path(path) as tmp:
        Path(tmp).write_text(json.dumps(data, indent=1))


def run_eval(cases: Iterable[EvalCase], out_dir: str | Path, options: EvalOptions, *, progress: bool = True) -> dict:
    """Evaluate every object of every case; a case that cannot be read is recorded and skipped."""
    out = Path(out_dir)
    rows, failures = [], []
    cases = list(cases)
    bar = tqdm(cases, desc="eval3d", unit="case", disable=None if progress else True)
    for case in bar:
        bar.set_postfix_str(case.name)
        try:
            image = read_image(case.image)
            labels = read_mask(case.label, like=image, resample=True)  # a reference on its own grid
            objects = objects_in(labels, case.label_ids)
            if not objects:
                raise InputError(f"label {case.label} has no nonzero voxels")
        except VolsegError as e:
            failures.append({"name": case.name, "image": str(case.image), "label": str(case.label), "reason": str(e)})
            continue
        for label_id, gt in objects:
            record = {"name": case.name, "label_id": label_id, "image": str(case.image), "label": str(case.label)}
            if not gt.any():
                failures.append({**record, "reason": f"label id {label_id} does not occur in {case.label}"})
                continue
            try:
                record.update(evaluate_object(image, gt, options))
            except VolsegError as e:
                failures.append({**record, "reason": str(e)})
                continue
            except Exception as e:  # a bug in one case should not lose the night's other results
                failures.append({**record, "reason": f"{type(e).__name__}: {e}", "traceback": traceback.format_exc()})
                continue
            _write_json(out / "cases" / f"{_safe(case.name)}_label{label_id}.json", record)
            rows.append(record)
    summary = summarize(rows, options)
    summary["failures"] = failures
    _write_json(out / "summary.json", summary)
    write_csv(out / "summary.csv", summary)
    if rows:
        plot_curves(rows, out / "curves.png", options.tolerance)
    return summary


def _checkpoints(n_clicks: int) -> list[int]:
    return sorted({c for c in CHECKPOINTS if c <= n_clicks} | {n_clicks})


def summarize(rows: list[dict], options: EvalOptions) -> dict:
    at = _checkpoints(options.n_clicks)
    objects = []
    for r in rows:
        objects.append({
            "name": r["name"], "label_id": r["label_id"], "voxels": r["voxels"],
            **{f"dice@{k}": r["dice"][k - 1] for k in at},
            **{f"nsd@{k}": r["nsd"][k - 1] for k in at},
            "auc_dice": r["auc_dice"], "auc_nsd": r["auc_nsd"],
            "noic": r.get("noic", 0), "max_dice_drop": r.get("max_dice_drop", max_drop(r["dice"])),
            "seconds_per_click": r["mean_seconds_per_click"], "set_image_seconds": r["set_image_seconds"],
        })
    keys = [k for k in (objects[0] if objects else {}) if k not in ("name", "label_id", "voxels")]
    mean = {k: float(np.mean([o[k] for o in objects])) for k in keys}
    cfg = options.config.to_dict() if hasattr(options.config, "to_dict") else options.config
    return {"n_clicks": options.n_clicks, "tolerance_mm": options.tolerance, "features": str(options.features),
            "config": cfg, "checkpoints": at, "objects": objects, "mean": mean}


def write_csv(path: Path, summary: dict) -> None:
    objects = summary["objects"]
    if not objects:
        return
    cols = list(objects[0])
    with atomic_path(path) as tmp, open(tmp, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=cols)
        w.writeheader()
        w.writerows(objects)
        w.writerow({"name": "mean", "label_id": "", "voxels": "", **summary["mean"]})


def format_table(summary: dict) -> str:
    """Plain-text table: one row per object, then the mean; time per click in ms."""
    at = summary["checkpoints"]
    head = ["case", "id", "voxels", *[f"Dice@{k}" for k in at], *[f"NSD@{k}" for k in at], "AUC-D", "AUC-N",
            "drop", "NoIC", "ms/click"]
    lines = []

    def row(name, lid, vox, o):
        vals = [*(o[f"dice@{k}"] for k in at), *(o[f"nsd@{k}"] for k in at), o["auc_dice"], o["auc_nsd"],
                o.get("max_dice_drop", 0.0)]
        return [name, str(lid), str(vox), *(f"{v:.3f}" for v in vals), f"{o.get('noic', 0):g}",
                f"{1000 * o['seconds_per_click']:.0f}"]

    for o in summary["objects"]:
        lines.append(row(o["name"], o["label_id"], o["voxels"], o))
    if summary["objects"]:
        lines.append(row("mean", "", "", summary["mean"]))
    widths = [max(len(h), *(len(r[i]) for r in lines)) if lines else len(h) for i, h in enumerate(head)]

    def fmt(cells):
        return "  ".join(c.rjust(w) if i else c.ljust(w) for i, (c, w) in enumerate(zip(cells, widths)))

    text = [f"NSD tolerance {summary['tolerance_mm']:g} mm; {summary['n_clicks']} clicks", fmt(head),
            fmt(["-" * w for w in widths])]
    text += [fmt(r) for r in lines]
    for f in summary.get("failures", []):
        text.append(f"FAILED {f['name']}" + (f" label {f['label_id']}" if "label_id" in f else "") + f": {f['reason']}")
    return "\n".join(text)


def plot_curves(rows: list[dict], path: Path, tolerance: float) -> None:
    """Dice and NSD against clicks: one thin line per object, the mean in black."""
    import matplotlib  # noqa: PLC0415 -- slow to import; only plots need it

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt  # noqa: PLC0415 -- after choosing the Agg backend

    fig, axes = plt.subplots(1, 2, figsize=(10, 4), sharey=True)
    for ax, key, title in ((axes[0], "dice", "Dice"), (axes[1], "nsd", f"NSD @ {tolerance:g} mm")):
        curves = np.array([r[key] for r in rows])
        x = np.arange(1, curves.shape[1] + 1)
        for r, c in zip(rows, curves):
            ax.plot(x, c, lw=1, alpha=0.6, label=f"{r['name']}:{r['label_id']}")
        ax.plot(x, curves.mean(axis=0), color="k", lw=2.5, label="mean")
        ax.set(title=title, xlabel="clicks", ylim=(0, 1.02), xticks=x)
        ax.grid(alpha=0.3)
    axes[0].set_ylabel("score")
    axes[1].legend(fontsize=7, loc="lower right")
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=100)
    plt.close(fig)

"""Metrics of the click-based benchmarks, on per-instance IoU sequences (RITM conventions).

* IoU: ignored pixels count neither in the intersection nor the union.
* NoC@t: the first click count k (1-based) with IoU >= t; ``max_clicks`` when never reached.
* NoF@t: the number of instances that never reach t within ``max_clicks``.  (RITM's table counts
  instances whose NoC equals ``max_clicks``, which also counts those reaching t exactly at the
  last click; :func:`nof` has ``ritm=True`` for that variant.)
* mIoU@k: mean over instances of the IoU after k clicks; an instance that stopped early (no
  error left) keeps its last IoU.
* NoIC: per instance, clicks whose own pixel the next prediction gives the other label, and
  clicks after which the IoU drops.
* Seconds per click: mean, median and 95th percentile over all clicks of all instances.
"""
from __future__ import annotations

from typing import Iterable, Sequence

import numpy as np

from ..clicks import Click

THRESHOLDS = (0.85, 0.90)


def iou(obj: np.ndarray, pred: np.ndarray, ignore: np.ndarray | None = None) -> float:
    """Intersection over union of two binary masks, ``ignore`` pixels left out; 1.0 when both are empty."""
    obj, pred = np.asarray(obj, bool), np.asarray(pred, bool)
    if ignore is not None:
        valid = ~np.asarray(ignore, bool)
        obj, pred = obj & valid, pred & valid
    union = np.count_nonzero(obj | pred)
    return 1.0 if union == 0 else np.count_nonzero(obj & pred) / union


def pad_ious(ious: Sequence[float], max_clicks: int) -> np.ndarray:
    """IoU after 1..max_clicks clicks; a run that stopped early carries its last value forward."""
    a = np.asarray(list(ious)[:max_clicks], dtype=np.float64)
    if len(a) == 0:
        return np.zeros(max_clicks)
    return np.concatenate([a, np.full(max_clicks - len(a), a[-1])])


def noc(ious: Sequence[float], thr: float, max_clicks: int = 20) -> int:
    """Number of clicks to reach IoU ``thr`` (``max_clicks`` if never reached)."""
    hit = pad_ious(ious, max_clicks) >= thr
    return int(np.argmax(hit)) + 1 if hit.any() else max_clicks


def nof(all_ious: Iterable[Sequence[float]], thr: float, max_clicks: int = 20, *, ritm: bool = False) -> int:
    """Number of instances failing to reach ``thr`` within ``max_clicks`` (``ritm``: NoC == max_clicks)."""
    if ritm:
        return sum(noc(i, thr, max_clicks) == max_clicks for i in all_ious)
    return sum(not (pad_ious(i, max_clicks) >= thr).any() for i in all_ious)


def miou_curve(all_ious: Iterable[Sequence[float]], max_clicks: int = 20) -> np.ndarray:
    """mIoU after 1..max_clicks clicks (index k-1 holds mIoU@k)."""
    rows = [pad_ious(i, max_clicks) for i in all_ious]
    return np.mean(rows, axis=0) if rows else np.full(max_clicks, np.nan)


def iou_drops(ious: Sequence[float], tol: float = 1e-9) -> int:
    """Clicks after which the IoU is lower than before that click (the first click cannot drop)."""
    a = np.asarray(ious, dtype=np.float64)
    return int(np.count_nonzero(a[1:] < a[:-1] - tol))


def click_honoured(click: Click, pred: np.ndarray) -> bool:
    """Whether the prediction gives the clicked pixel its clicked label."""
    return bool(np.asarray(pred, bool)[click.voxel()]) == click.positive


def noic(clicks: Sequence[Click], preds_at_click: Sequence[bool], ious: Sequence[float]) -> dict:
    """Both NoIC counts of one instance; ``preds_at_click[k]`` is the prediction at click k's pixel
    right after click k (as recorded by the runner)."""
    ignored = sum(bool(p) != c.positive for c, p in zip(clicks, preds_at_click))
    return {"label": int(ignored), "drop": iou_drops(ious)}


def time_stats(seconds: Iterable[float]) -> dict:
    s = np.asarray(list(seconds), dtype=np.float64)
    if s.size == 0:
        return {"mean": float("nan"), "p50": float("nan"), "p95": float("nan"), "n": 0}
    return {"mean": float(s.mean()), "p50": float(np.percentile(s, 50)), "p95": float(np.percentile(s, 95)), "n": int(s.size)}


def summarize(records: Sequence[dict], max_clicks: int = 20, thresholds: Sequence[float] = THRESHOLDS) -> dict:
    """Benchmark summary of per-instance records (as written by :mod:`volseg.eval.run2d`)."""
    all_ious = [r["ious"] for r in records]
    out: dict = {"instances": len(records), "max_clicks": max_clicks}
    for t in thresholds:
        key = f"{round(t * 100):d}"
        nocs = [noc(i, t, max_clicks) for i in all_ious]
        out[f"noc{key}"] = float(np.mean(nocs)) if nocs else float("nan")
        out[f"nof{key}"] = nof(all_ious, t, max_clicks)
        out[f"nof{key}_ritm"] = nof(all_ious, t, max_clicks, ritm=True)
    curve = miou_curve(all_ious, max_clicks)
    out["miou"] = [float(v) for v in curve]
    out["noic_label"] = float(np.mean([r["noic"]["label"] for r in records])) if records else float("nan")
    out["noic_drop"] = float(np.mean([r["noic"]["drop"] for r in records])) if records else float("nan")
    out["spc"] = time_stats(s for r in records for s in r["seconds"])
    out["set_image_seconds"] = time_stats(r.get("set_image_seconds", np.nan) for r in records)
    return out

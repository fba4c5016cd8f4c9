"""The 2D benchmark loop: robot clicks, method predicts, metrics per instance, resumable.

Per instance, ``OUT/instances/<dataset>_<method>_<id>.json`` (written atomically) holds the IoU
after each click, NoC@85/90, the clicks, seconds per click and NoIC.  A rerun skips instances
whose record exists with the same settings, so an interrupted run continues where it stopped.
``python -m volseg.eval.run2d ...`` runs the ``volseg eval`` command without the main CLI.
"""
from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any, Sequence

import numpy as np
from tqdm import tqdm

from ..errors import InputError, OutputExistsError
from ..io.atomic import atomic_path
from ..metrics import THRESHOLDS, iou, noc, noic
from ..robot import Robot
from .datasets import Sample, check_same_size, dataset_name, load_samples, split_gt
from .methods import Method, make_method
from .report import summarize, write_summary

PRED_THRESHOLD = 0.49  # RITM's evaluation threshold on the probability map
MAX_CLICKS = 20
PROTOCOL = "ritm-2d-v1"


def evaluate_sample(method: Method, image: np.ndarray, gt: np.ndarray, *, max_clicks: int = MAX_CLICKS,
                    pred_thr: float = PRED_THRESHOLD) -> dict:
    """Run the robot for up to ``max_clicks`` clicks on one instance; return its record (no config)."""
    robot = Robot(*split_gt(gt))
    t0 = time.perf_counter()
    method.set_image(image)
    set_image_s = time.perf_counter() - t0
    pred = np.zeros(robot.obj.shape, bool)  # the robot's first click sees an empty prediction
    ious, seconds, at_click = [], [], []
    for _ in range(max_clicks):
        click = robot.click(pred)
        if click is None:  # nothing left to correct; metrics carry the last IoU forward
            break
        t0 = time.perf_counter()
        prob = np.asarray(method.predict(list(robot.clicks)))
        seconds.append(time.perf_counter() - t0)
        if prob.shape != robot.obj.shape:
            raise ValueError(f"method {method.name} returned shape {prob.shape} "
                             f"for an image of shape {robot.obj.shape}")
        pred = prob > pred_thr
        ious.append(float(iou(robot.obj, pred, robot.ignore)))
        at_click.append(bool(pred[click.voxel()]))
    rec = {
        "ious": ious,
        **{f"noc{round(t * 100)}": noc(ious, t, max_clicks) for t in THRESHOLDS},
        "clicks": [{"position": [int(v) for v in c.voxel()], "positive": bool(c.positive)} for c in robot.clicks],
        "seconds": seconds,
        "set_image_seconds": set_image_s,
        "pred_at_click": at_click,
        "noic": noic(robot.clicks, at_click, ious),
        "stopped_early": len(ious) < max_clicks,
        "shape": list(robot.obj.shape),
        "object_pixels": int(robot.obj.sum()),
        "ignored_pixels": int(robot.ignore.sum()),
    }
    return rec


def instance_path(out: Path, dataset: str, tag: str, sample_id: str) -> Path:
    return Path(out) / "instances" / f"{dataset}_{tag}_{sample_id}.json"


def write_json(path: Path, data: Any) -> None:
    with atomic_path(path) as tmp:
        Path(tmp).write_text(json.dumps(data, indent=1))


def _load_done(path: Path, config: dict, overwrite: bool) -> dict | None:
    if overwrite or not path.is_file():
        return None
    try:
        rec = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError):
        return None  # a torn file cannot come from atomic writes, but recompute rather than fail
    if rec.get("config") != config:
        raise OutputExistsError(
            f"{path} was computed with other settings ({rec.get('config')} vs {config}); "
            "use another --out, another --tag, or --overwrite"
        )
    return rec


def run_eval(
    dataset: str,
    root: str | Path,
    method: str | Method,
    out: str | Path,
    *,
    features: str = "filterbank",
    device: str = "cpu",
    options: dict | None = None,
    max_instances: int | None = None,
    max_clicks: int = MAX_CLICKS,
    split: str | None = None,
    tag: str | None = None,
    overwrite: bool = False,
    progress: bool = True,
    samples: Sequence[Sample] | None = None,
) -> dict:
    """Evaluate one method on one dataset; write per-instance records and the summary; return it."""
    ds = dataset_name(dataset)
    if samples is None:
        samples = load_samples(ds, root, split=split, max_instances=max_instances)
    m = method if isinstance(method, Method) else \
        make_method(method, features=features, device=device, **(options or {}))
    tag = tag or m.name
    if not tag.replace("-", "").replace("_", "").replace(".", "").isalnum():
        raise InputError(f"method tag {tag!r} may only contain letters, digits, '-', '_' and '.'")
    config = {"protocol": PROTOCOL, "dataset": ds, "max_clicks": max_clicks, "pred_thr": PRED_THRESHOLD, **m.config()}
    out = Path(out)

    records, computed = [], 0
    bar = tqdm(samples, desc=f"{ds} {tag}", unit="inst", disable=not progress, dynamic_ncols=True)
    for s in bar:
        path = instance_path(out, ds, tag, s.id)
        rec = _load_done(path, config, overwrite)
        if rec is None:
            image, gt = s.image, s.gt
            check_same_size(ds, s.image_path, image.shape[:2], s.mask_path, gt.shape)
            if not split_gt(gt)[0].any():
                raise InputError(f"{ds}: mask {s.mask_path} (instance {s.id}) has no object pixels; an instance "
                                 "needs an object to click on")
            rec = {"id": s.id, "dataset": ds, "method": tag, "image": str(s.image_path), "mask": str(s.mask_path),
                   **evaluate_sample(m, image, gt, max_clicks=max_clicks), "config": config}
            write_json(path, rec)
            computed += 1
        records.append(rec)
        bar.set_postfix(noc90=f"{np.mean([r['noc90'] for r in records]):.2f}", new=computed)
    summary = summarize(records, max_clicks)
    summary.update({"dataset": ds, "method": tag, "config": config, "computed_now": computed, "root": str(root)})
    write_summary(out, summary)
    return summary


"""``volseg eval-video``: the DAVIS benchmark for video object masking, semi-supervised or interactive.

The data is read by :mod:`volseg.eval.davis`, clicks come from :func:`volseg.robot.multi_object_click`,
measures from :mod:`volseg.metrics` and the tables and plot from :mod:`volseg.eval.report`.

* ``semi``: frame 0's mask is given (an annotated frame with dense labels), the rest is propagated.
  Scores leave out the first and the last frame, as the official DAVIS evaluation of the
  semi-supervised task does (davis2017-evaluation slices ``[1:-1]``).
* ``interactive``: no mask is given.  Each round, a robot picks the frame with the lowest J (mean over
  objects; ties: most wrong pixels) and clicks there, RITM-style (the deepest point of the largest
  error region, recomputing that frame after each click) up to ``clicks_per_round`` times; the frame
  becomes annotated and the video is re-propagated around it.  Scores are over all frames (as in
  the DAVIS interactive benchmark), after each of ``rounds`` rounds.

Speed: frames per second of the method (decoding, features, flow, GP, upsampling and refinement to
full-resolution labels), without the scoring, the robot or writing files.
"""
from __future__ import annotations

import json
import resource
import time
from pathlib import Path
from typing import Sequence

import numpy as np

from ..clicks import Click
from ..errors import InputError
from ..io.atomic import atomic_path, check_output
from ..metrics import statistics
from ..robot import multi_object_click
from ..video import VideoSegmenter
from .davis import IGNORE, DavisSequence, frame_scores, sequences
from .report import davis_overall, davis_plot, davis_table


# -- scoring -------------------------------------------------------------------------------------
def score_video(seq: DavisSequence, seg, frames: Sequence[int], *, propagate: Sequence[int] = (),
                unscored: Sequence[int] = ()) -> tuple[dict, float]:
    """Per-object per-frame J and F over ``frames``, their label maps made while propagating around the
    annotated frames ``propagate`` (:meth:`VideoSegmenter.label_maps`; ``unscored`` frames' maps are made
    too, as part of the work); returns (scores, seconds spent propagating and making label maps)."""
    J = {k: [] for k in seq.objects}
    F = {k: [] for k in seq.objects}
    scored = set(frames)
    spent = 0.0
    t0 = time.perf_counter()
    for t, pred in seg.label_maps([*frames, *unscored], propagate=propagate):
        spent += time.perf_counter() - t0
        if t in scored:
            for k, (j, f) in frame_scores(seq.gt(t), pred, seq.objects).items():
                J[k].append(j)
                F[k].append(f)
        t0 = time.perf_counter()
    return {"J": J, "F": F, "frames": list(frames)}, spent


def summarise(scores: dict) -> dict:
    objs = list(scores["J"])
    per = {str(k): {"J": statistics(scores["J"][k]), "F": statistics(scores["F"][k])} for k in objs}
    Jm = float(np.mean([per[str(k)]["J"]["mean"] for k in objs]))
    Fm = float(np.mean([per[str(k)]["F"]["mean"] for k in objs]))
    return {"J": Jm, "F": Fm, "JF": (Jm + Fm) / 2, "per_object": per}


def _worst_frame(seq: DavisSequence, seg, scores: dict) -> int:
    """Lowest mean J over objects; ties broken by the number of wrong pixels."""
    frames = scores["frames"]
    j = np.mean([scores["J"][k] for k in seq.objects], axis=0)
    worst = np.flatnonzero(j == j.min())
    if worst.size == 1:
        return frames[int(worst[0])]
    errors = []
    for i in worst:
        gt = seq.gt(frames[i])
        errors.append(np.count_nonzero((gt != seg.labels(frames[i])) & (gt != IGNORE)))
    return frames[int(worst[int(np.argmax(errors))])]


# -- runners -------------------------------------------------------------------------------------
def run_semi(seq: DavisSequence, config=None, *, workdir=None) -> dict:
    T = len(seq.frames)
    t0 = time.perf_counter()
    with VideoSegmenter(seq.frames, config, workdir=workdir) as seg:
        seg.set_mask(0, seq.gt(0), propagate=False)
        setup = time.perf_counter() - t0
        # the last frame is not scored but is still part of the work
        scores, spent = score_video(seq, seg, range(1, T - 1) if T > 2 else range(T), propagate=[0],
                                    unscored=[T - 1] if T > 2 else [])
        stats = dict(seg.stats)
    seconds = setup + spent
    out = {"sequence": seq.name, "mode": "semi", "frames": T, "objects": seq.objects,
           "seconds": seconds, "fps": (T - 1) / seconds, "propagation_seconds": stats["seconds"], "memory": stats,
           **summarise(scores), "per_frame": scores}
    return out


def run_interactive(seq: DavisSequence, config=None, *, rounds: int = 8, clicks_per_round: int = 5,
                    workdir=None) -> dict:
    T = len(seq.frames)
    history, method_s, n_clicks = [], 0.0, 0
    with VideoSegmenter(seq.frames, config, workdir=workdir, cache_features=True) as seg:
        scores, _ = score_video(seq, seg, range(T))
        for r in range(1, rounds + 1):
            t = _worst_frame(seq, seg, scores)
            gt = seq.gt(t)
            t0 = time.perf_counter()
            s = seg.session_for(t)
            pred = s.mask() if s.objects else np.zeros(gt.shape, np.uint8)
            clicked = np.zeros(gt.shape, bool)
            new: list[Click] = []
            for c in seg.annotations[t].clicks if t in seg.annotations else []:
                s.add_click(c.position, c.positive, c.object)
                clicked[c.voxel()] = True
            for _ in range(clicks_per_round):
                method_s += time.perf_counter() - t0
                c = multi_object_click(gt, pred, seq.objects, ignore=gt == IGNORE, clicked=clicked, frame=t)
                t0 = time.perf_counter()
                if c is None:
                    break
                clicked[c.voxel()] = True
                s.add_click(c.position, c.positive, c.object)
                pred = s.mask()
                new.append(c)
            seg.annotate(t, new, pred)
            method_s += time.perf_counter() - t0
            n_clicks += len(new)
            scores, spent = score_video(seq, seg, range(T), propagate=[t])
            method_s += spent
            summary = summarise(scores)
            history.append({"round": r, "frame": t, "clicks": len(new), "total_clicks": n_clicks,
                            "recomputed": len(seg.last_changed), "J": summary["J"], "F": summary["F"],
                            "JF": summary["JF"], "per_object": summary["per_object"]})
        stats = dict(seg.stats)
    frames_done = stats["frames_propagated"]
    last = history[-1]
    return {"sequence": seq.name, "mode": "interactive", "frames": T, "objects": seq.objects,
            "rounds": history, "J": last["J"], "F": last["F"], "JF": last["JF"], "seconds": method_s,
            "fps": stats["frames_propagated"] / max(stats["seconds"], 1e-9), "propagation_seconds": stats["seconds"],
            "frames_propagated": frames_done, "memory": stats, "per_frame": scores}


def peak_rss_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def evaluate(root: str | Path, out: str | Path, *, mode: str = "semi", names: Sequence[str] | None = None,
             config=None, rounds: int = 8, clicks_per_round: int = 5, overwrite: bool = False,
             progress: bool = True) -> dict:
    """Run every sequence, write ``OUT/<seq>_<mode>.json``, ``OUT/summary_<mode>.json|.md`` and a plot."""
    if mode not in ("semi", "interactive"):
        raise InputError(f"unknown mode {mode!r}: semi or interactive")
    out = Path(out)
    seqs = [DavisSequence(root, name) for name in sequences(root, names)]  # each checked before out is made
    out.mkdir(parents=True, exist_ok=True)
    results = []
    for seq in seqs:
        name = seq.name
        path = out / f"{name}_{mode}.json"
        if path.exists() and not overwrite:
            results.append(json.loads(path.read_text()))
            continue
        r = run_semi(seq, config) if mode == "semi" else \
            run_interactive(seq, config, rounds=rounds, clicks_per_round=clicks_per_round)
        r["peak_rss_mib"] = peak_rss_mib()
        with atomic_path(check_output(path, overwrite=True)) as tmp:
            Path(tmp).write_text(json.dumps(r, indent=1))
        if progress:
            print(f"{name}: J&F {100 * r['JF']:.1f}  J {100 * r['J']:.1f}  F {100 * r['F']:.1f}  {r['fps']:.1f} fps",
                  flush=True)
        results.append(r)
    J, F = davis_overall(results, rounds if mode == "interactive" else None)
    summary = {"mode": mode, "root": str(root), "sequences": [r["sequence"] for r in results], "J": J, "F": F,
               "JF": (J + F) / 2, "config": (config.to_dict() if hasattr(config, "to_dict") else config),
               "peak_rss_mib": peak_rss_mib()}
    if mode == "interactive":
        summary["rounds"] = [{"round": k, **dict(zip(("J", "F"), davis_overall(results, k)))}
                             for k in range(1, rounds + 1)]
        for row in summary["rounds"]:
            row["JF"] = (row["J"] + row["F"]) / 2
    md = davis_table(results, mode)
    with atomic_path(out / f"summary_{mode}.json") as tmp:
        Path(tmp).write_text(json.dumps(summary, indent=1))
    with atomic_path(out / f"summary_{mode}.md") as tmp:
        Path(tmp).write_text(f"# DAVIS {mode}\n\n{md}\n\n![plot](plot_{mode}.png)\n")
    davis_plot(results, mode, out / f"plot_{mode}.png")
    summary["table"] = md
    return summary

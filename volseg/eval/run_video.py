"""``volseg eval-video``: the DAVIS benchmark for video object masking, semi-supervised or interactive.

Layout: ``ROOT/JPEGImages/480p/<seq>/*.jpg`` and ``ROOT/Annotations/480p/<seq>/*.png``, or the
same without the ``480p`` level.  Annotations are DAVIS-2017 palette PNGs (index = object id,
255 void) or DAVIS-2016 grey masks (0 / 255 = one object).

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
from ..io.atomic import atomic_path
from .video_metrics import VOID, frame_scores, statistics


# -- data ----------------------------------------------------------------------------------------
def davis_dirs(root: str | Path) -> tuple[Path, Path]:
    """(JPEGImages dir, Annotations dir), with or without the ``480p`` level."""
    root = Path(root)
    for sub in ("480p", ""):
        img, ann = root / "JPEGImages" / sub, root / "Annotations" / sub
        if img.is_dir() and ann.is_dir() and any(p.is_dir() for p in img.iterdir()):
            return img, ann
    raise InputError(f"{root} is not a DAVIS folder: expected JPEGImages/[480p/]<seq> and Annotations/[480p/]<seq>")


def sequences(root: str | Path, names: Sequence[str] | None = None) -> list[str]:
    img, ann = davis_dirs(root)
    found = sorted(p.name for p in img.iterdir() if p.is_dir() and (ann / p.name).is_dir())
    if not names:
        return found
    missing = [n for n in names if n not in found]
    if missing:
        raise InputError(f"sequence(s) {missing} not in {root} (found {', '.join(found) or 'none'})")
    return list(names)


def read_davis_mask(path: Path) -> np.ndarray:
    """Label map of a DAVIS annotation: palette indices (2017) or 0/255 grey -> 0/1 (2016)."""
    from PIL import Image as PILImage

    with PILImage.open(path) as im:
        palette = im.mode == "P"
        a = np.asarray(im)
    if a.ndim == 3:
        a = a[..., 0]
    if not palette and set(np.unique(a).tolist()) <= {0, 255}:
        return (a > 0).astype(np.uint8)
    return a.astype(np.uint8)


class DavisSequence:
    def __init__(self, root: str | Path, name: str) -> None:
        from ..io.video import FolderFrames

        img, ann = davis_dirs(root)
        self.name = name
        self.frames = FolderFrames(img / name)
        self.masks = sorted((ann / name).glob("*.png"))
        if len(self.masks) != len(self.frames):
            raise InputError(f"sequence {name}: {len(self.frames)} frames but {len(self.masks)} annotations")
        first = self.gt(0)
        self.objects = sorted(int(v) for v in np.unique(first) if v not in (0, VOID))
        if not self.objects:
            raise InputError(f"sequence {name}: the first annotation has no object")

    def gt(self, t: int) -> np.ndarray:
        return read_davis_mask(self.masks[t])


# -- scoring -------------------------------------------------------------------------------------
def score_video(seq: DavisSequence, seg, frames: Sequence[int]) -> tuple[dict, float]:
    """Per-object per-frame J and F over ``frames``; returns (scores, seconds spent making labels)."""
    J = {k: [] for k in seq.objects}
    F = {k: [] for k in seq.objects}
    spent = 0.0
    for t in frames:
        t0 = time.perf_counter()
        pred = seg.labels(t)
        spent += time.perf_counter() - t0
        for k, (j, f) in frame_scores(seq.gt(t), pred, seq.objects).items():
            J[k].append(j)
            F[k].append(f)
    return {"J": J, "F": F, "frames": list(frames)}, spent


def summarise(scores: dict) -> dict:
    objs = list(scores["J"])
    per = {str(k): {"J": statistics(scores["J"][k]), "F": statistics(scores["F"][k])} for k in objs}
    Jm = float(np.mean([per[str(k)]["J"]["mean"] for k in objs]))
    Fm = float(np.mean([per[str(k)]["F"]["mean"] for k in objs]))
    return {"J": Jm, "F": Fm, "JF": (Jm + Fm) / 2, "per_object": per}


# -- the interactive robot -----------------------------------------------------------------------
def robot_click(gt: np.ndarray, pred: np.ndarray, objects: Sequence[int], clicked: np.ndarray,
                frame: int) -> Click | None:
    """The RITM robot over several objects: the deepest point of the largest error among all objects;
    a false negative of object k is a positive click for k, a false positive a negative one."""
    from .robot import border_distance

    void = gt == VOID
    best = None
    for k in objects:
        obj, prd = (gt == k) & ~void, (pred == k) & ~void
        for positive, err in ((True, obj & ~prd), (False, prd & ~obj)):
            d = border_distance(err)
            d[clicked] = 0
            m = float(d.max())
            if m > 0 and (best is None or m > best[0]):
                best = (m, positive, k, np.unravel_index(int(np.argmax(d)), d.shape))
    if best is None:
        return None
    _, positive, k, pos = best
    return Click(tuple(float(v) for v in pos), positive, int(k), frame)


def _worst_frame(seq: DavisSequence, seg, scores: dict) -> int:
    """Lowest mean J over objects; ties broken by the number of wrong pixels."""
    frames = scores["frames"]
    j = np.mean([scores["J"][k] for k in seq.objects], axis=0)
    worst = np.flatnonzero(j == j.min())
    if worst.size == 1:
        return frames[int(worst[0])]
    errors = [np.count_nonzero((seq.gt(frames[i]) != seg.labels(frames[i])) & (seq.gt(frames[i]) != VOID)) for i in worst]
    return frames[int(worst[int(np.argmax(errors))])]


# -- runners -------------------------------------------------------------------------------------
def run_semi(seq: DavisSequence, config=None, *, workdir=None) -> dict:
    from ..video.propagate import VideoSegmenter

    T = len(seq.frames)
    t0 = time.perf_counter()
    with VideoSegmenter(seq.frames, config, workdir=workdir) as seg:
        seg.set_mask(0, seq.gt(0))
        prop = time.perf_counter() - t0
        scores, label_s = score_video(seq, seg, range(1, T - 1) if T > 2 else range(T))
        # the last frame is not scored but is still part of the work: time its labels too
        t1 = time.perf_counter()
        seg.labels(T - 1)
        label_s += time.perf_counter() - t1
        stats = dict(seg.stats)
    seconds = prop + label_s
    out = {"sequence": seq.name, "mode": "semi", "frames": T, "objects": seq.objects,
           "seconds": seconds, "fps": (T - 1) / seconds, "propagation_seconds": prop, "memory": stats,
           **summarise(scores), "per_frame": scores}
    return out


def run_interactive(seq: DavisSequence, config=None, *, rounds: int = 8, clicks_per_round: int = 5,
                    workdir=None) -> dict:
    from ..video.propagate import VideoSegmenter

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
                c = robot_click(gt, pred, seq.objects, clicked, t)
                t0 = time.perf_counter()
                if c is None:
                    break
                clicked[c.voxel()] = True
                s.add_click(c.position, c.positive, c.object)
                pred = s.mask()
                new.append(c)
            seg.annotate(t, new, pred)
            seg.update([t])
            method_s += time.perf_counter() - t0
            n_clicks += len(new)
            scores, label_s = score_video(seq, seg, range(T))
            method_s += label_s
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


# -- report --------------------------------------------------------------------------------------
def table(results: Sequence[dict], mode: str, rounds_shown: Sequence[int] = (1, 3, 8)) -> str:
    if mode == "semi":
        head = ["sequence", "frames", "J", "F", "J&F", "fps", "memory pts"]
        rows = [[r["sequence"], str(r["frames"]), f"{100 * r['J']:.1f}", f"{100 * r['F']:.1f}", f"{100 * r['JF']:.1f}",
                 f"{r['fps']:.1f}", str(r["memory"]["memory_peak"])] for r in results]
        J, F = overall(results)
        frames = sum(r["frames"] - 1 for r in results)
        rows.append(["**mean**", str(sum(r["frames"] for r in results)), f"{100 * J:.1f}", f"{100 * F:.1f}",
                     f"{100 * (J + F) / 2:.1f}", f"{frames / sum(r['seconds'] for r in results):.1f}", ""])
    else:
        shown = [k for k in rounds_shown if k <= len(results[0]["rounds"])]
        head = ["sequence", "frames"] + [f"J&F@{k}" for k in shown] + [f"J@{shown[-1]}", f"F@{shown[-1]}", "clicks", "fps"]
        rows = []
        for r in results:
            rr = r["rounds"]
            rows.append([r["sequence"], str(r["frames"])] + [f"{100 * rr[k - 1]['JF']:.1f}" for k in shown]
                        + [f"{100 * rr[shown[-1] - 1]['J']:.1f}", f"{100 * rr[shown[-1] - 1]['F']:.1f}",
                           str(rr[-1]["total_clicks"]), f"{r['fps']:.1f}"])
        means = [overall(results, k) for k in shown]
        rows.append(["**mean**", str(sum(r["frames"] for r in results))] + [f"{50 * (J + F):.1f}" for J, F in means]
                    + [f"{100 * means[-1][0]:.1f}", f"{100 * means[-1][1]:.1f}",
                       str(sum(r["rounds"][-1]["total_clicks"] for r in results)),
                       f"{sum(r['frames_propagated'] for r in results) / sum(r['propagation_seconds'] for r in results):.1f}"])
    lines = ["| " + " | ".join(head) + " |", "|" + "|".join("---" for _ in head) + "|"]
    return "\n".join(lines + ["| " + " | ".join(r) + " |" for r in rows])


def overall(results: Sequence[dict], round_: int | None = None) -> tuple[float, float]:
    """Mean J and F over all (sequence, object) pairs, as the DAVIS tables do (after ``round_`` rounds)."""
    per = [(r["per_object"] if round_ is None else r["rounds"][round_ - 1]["per_object"]) for r in results]
    Js = [v["J"]["mean"] for p in per for v in p.values()]
    Fs = [v["F"]["mean"] for p in per for v in p.values()]
    return float(np.mean(Js)), float(np.mean(Fs))


def plot(results: Sequence[dict], mode: str, path: Path) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6.4, 4.2), dpi=120)
    if mode == "semi":
        names = [r["sequence"] for r in results]
        x = np.arange(len(names))
        ax.bar(x - 0.2, [100 * r["J"] for r in results], 0.4, label="J")
        ax.bar(x + 0.2, [100 * r["F"] for r in results], 0.4, label="F")
        ax.set_xticks(x, names, rotation=30, ha="right")
        ax.set_ylabel("score")
    else:
        for r in results:
            ax.plot([h["round"] for h in r["rounds"]], [100 * h["JF"] for h in r["rounds"]], marker="o", ms=3,
                    label=r["sequence"])
        ax.set_xlabel("round")
        ax.set_ylabel("J&F")
    ax.set_ylim(0, 100)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    ax.set_title(f"DAVIS {mode}")
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png")
    plt.close(fig)
    return path


def evaluate(root: str | Path, out: str | Path, *, mode: str = "semi", names: Sequence[str] | None = None,
             config=None, rounds: int = 8, clicks_per_round: int = 5, overwrite: bool = False,
             progress: bool = True) -> dict:
    """Run every sequence, write ``OUT/<seq>_<mode>.json``, ``OUT/summary_<mode>.json|.md`` and a plot."""
    from ..io.atomic import check_output

    if mode not in ("semi", "interactive"):
        raise InputError(f"unknown mode {mode!r}: semi or interactive")
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    results = []
    for name in sequences(root, names):
        path = out / f"{name}_{mode}.json"
        if path.exists() and not overwrite:
            results.append(json.loads(path.read_text()))
            continue
        seq = DavisSequence(root, name)
        r = run_semi(seq, config) if mode == "semi" else \
            run_interactive(seq, config, rounds=rounds, clicks_per_round=clicks_per_round)
        r["peak_rss_mib"] = peak_rss_mib()
        with atomic_path(check_output(path, overwrite=True)) as tmp:
            Path(tmp).write_text(json.dumps(r, indent=1))
        if progress:
            print(f"{name}: J&F {100 * r['JF']:.1f}  J {100 * r['J']:.1f}  F {100 * r['F']:.1f}  {r['fps']:.1f} fps", flush=True)
        results.append(r)
    J, F = overall(results, rounds if mode == "interactive" else None)
    summary = {"mode": mode, "root": str(root), "sequences": [r["sequence"] for r in results], "J": J, "F": F,
               "JF": (J + F) / 2, "config": (config.to_dict() if hasattr(config, "to_dict") else config),
               "peak_rss_mib": peak_rss_mib()}
    if mode == "interactive":
        summary["rounds"] = [{"round": k, **dict(zip(("J", "F"), overall(results, k)))} for k in range(1, rounds + 1)]
        for row in summary["rounds"]:
            row["JF"] = (row["J"] + row["F"]) / 2
    md = table(results, mode)
    with atomic_path(out / f"summary_{mode}.json") as tmp:
        Path(tmp).write_text(json.dumps(summary, indent=1))
    with atomic_path(out / f"summary_{mode}.md") as tmp:
        Path(tmp).write_text(f"# DAVIS {mode}\n\n{md}\n\n![plot](plot_{mode}.png)\n")
    plot(results, mode, out / f"plot_{mode}.png")
    summary["table"] = md
    return summary

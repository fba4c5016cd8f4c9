"""Benchmark summaries, markdown tables and plots.

2D: :func:`summarize` turns per-instance records into a summary;
``OUT/summary_<dataset>_<method>.json`` and ``.md`` are written by every run; :func:`report`
collects all summaries of a dataset found in ``OUT`` into ``OUT/report_<dataset>.md`` and
``OUT/miou_<dataset>.png``, methods side by side.

Video (DAVIS): :func:`davis_table`, :func:`davis_overall` and :func:`davis_plot` over the
per-sequence results of :mod:`volseg.eval.run_video`.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Iterable, Sequence

import numpy as np

from ..io.atomic import atomic_path
from ..metrics import THRESHOLDS, miou_curve, noc, nof


def time_stats(seconds: Iterable[float]) -> dict:
    s = np.asarray(list(seconds), dtype=np.float64)
    if s.size == 0:
        return {"mean": float("nan"), "p50": float("nan"), "p95": float("nan"), "n": 0}
    return {"mean": float(s.mean()), "p50": float(np.percentile(s, 50)), "p95": float(np.percentile(s, 95)),
            "n": int(s.size)}


def summarize(records: Sequence[dict], max_clicks: int = 20, thresholds: Sequence[float] = THRESHOLDS) -> dict:
    """Benchmark summary of per-instance records (as written by :mod:`volseg.eval.run2d`)."""
    all_ious = [r["ious"] for r in records]
    out: dict = {"instances": len(records), "max_clicks": max_clicks}
    for t in thresholds:
        key = f"{round(t * 100):d}"
        nocs = [noc(i, t, max_clicks) for i in all_ious]
        out[f"noc{key}"] = float(np.mean(nocs)) if nocs else float("nan")
        # the mean's standard error: how far another draw of as many instances could move it
        out[f"noc{key}_se"] = float(np.std(nocs, ddof=1) / np.sqrt(len(nocs))) if len(nocs) > 1 else float("nan")
        out[f"nof{key}"] = nof(all_ious, t, max_clicks)
        out[f"nof{key}_ritm"] = nof(all_ious, t, max_clicks, ritm=True)
    curve = miou_curve(all_ious, max_clicks)
    out["miou"] = [float(v) for v in curve]
    out["noic_label"] = float(np.mean([r["noic"]["label"] for r in records])) if records else float("nan")
    out["noic_drop"] = float(np.mean([r["noic"]["drop"] for r in records])) if records else float("nan")
    out["spc"] = time_stats(s for r in records for s in r["seconds"])
    out["set_image_seconds"] = time_stats(r.get("set_image_seconds", np.nan) for r in records)
    return out


def markdown_table(head: Sequence[str], rows: Iterable[Sequence[str]]) -> str:
    lines = ["| " + " | ".join(head) + " |", "|" + "|".join("---" for _ in head) + "|"]
    return "\n".join(lines + ["| " + " | ".join(r) + " |" for r in rows])


def _figure():
    import matplotlib  # noqa: PLC0415 -- slow to import; only plots need it

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt  # noqa: PLC0415 -- after choosing the Agg backend

    fig, ax = plt.subplots(figsize=(6.4, 4.2), dpi=120)
    return plt, fig, ax


def _save(plt, fig, ax, path: str | Path, title: str, legend_loc: str = "best") -> Path:
    ax.grid(alpha=0.3)
    ax.legend(loc=legend_loc, fontsize=8)
    ax.set_title(title)
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png")
    plt.close(fig)
    return Path(path)

COLUMNS = ("method", "inst", "NoC@85", "NoC@90", "SE@90", "NoF@85", "NoF@90", "mIoU@1", "mIoU@5", "mIoU@10", "mIoU@20",
           "NoIC lab", "NoIC drop", "SPC mean", "SPC p50", "SPC p95")


def _row(s: dict) -> list[str]:
    miou = s["miou"]

    def at(k: int) -> str:
        return f"{miou[k - 1]:.3f}" if len(miou) >= k else "-"

    spc = s["spc"]
    return [s.get("method", "?"), str(s["instances"]), f"{s['noc85']:.2f}", f"{s['noc90']:.2f}",
            f"{s.get('noc90_se', float('nan')):.2f}", str(s["nof85"]),
            str(s["nof90"]), at(1), at(5), at(10), at(20), f"{s['noic_label']:.2f}", f"{s['noic_drop']:.2f}",
            f"{spc['mean']:.3f}", f"{spc['p50']:.3f}", f"{spc['p95']:.3f}"]


def table(summaries: Sequence[dict]) -> str:
    """Markdown table, one row per method."""
    return markdown_table(COLUMNS, [_row(s) for s in summaries])


def _notes(summaries: Sequence[dict]) -> str:
    return "\n".join(
        [
            "NoC@t: mean clicks to IoU >= t (20 if never); SE@90: the standard error of NoC@90's mean (a paired",
            "difference of two methods on the same instances has a smaller one); NoF@t: instances never reaching t",
            "in 20 clicks;",
            "NoIC lab: clicks whose pixel the next prediction labels wrongly; "
            "NoIC drop: clicks lowering IoU (both per instance);",
            "SPC: seconds per click (method only, robot and IoU excluded).",
            "",
            *[f"- `{s.get('method')}`: {json.dumps(s.get('config', {}), sort_keys=True)}" for s in summaries],
        ]
    )


def write_summary(out: str | Path, summary: dict) -> tuple[Path, Path]:
    out = Path(out)
    base = out / f"summary_{summary['dataset']}_{summary['method']}"
    js, md = base.with_suffix(".json"), base.with_suffix(".md")
    with atomic_path(js) as tmp:
        Path(tmp).write_text(json.dumps(summary, indent=1))
    with atomic_path(md) as tmp:
        title = f"{summary['dataset']}: {summary['method']}"
        Path(tmp).write_text(f"# {title}\n\n{table([summary])}\n\n{_notes([summary])}\n")
    return js, md


def load_summaries(out: str | Path, dataset: str | None = None) -> dict[str, list[dict]]:
    """Summaries in ``out`` grouped by dataset (sorted by method name)."""
    groups: dict[str, list[dict]] = {}
    for p in sorted(Path(out).glob("summary_*.json")):
        try:
            s = json.loads(p.read_text())
        except (json.JSONDecodeError, UnicodeDecodeError):
            continue
        if "dataset" in s and (dataset is None or s["dataset"] == dataset):
            groups.setdefault(s["dataset"], []).append(s)
    return {k: sorted(v, key=lambda s: s["method"]) for k, v in groups.items()}


def plot_miou(summaries: Sequence[dict], path: str | Path, title: str = "") -> Path:
    """mIoU after 1..20 clicks, one line per method."""
    plt, fig, ax = _figure()
    for s in summaries:
        k = range(1, len(s["miou"]) + 1)
        ax.plot(k, s["miou"], marker="o", markersize=3, label=f"{s['method']} (NoC@90 {s['noc90']:.2f})")
    for t in (0.85, 0.90):
        ax.axhline(t, color="grey", lw=0.6, ls="--")
    ax.set_xlabel("clicks")
    ax.set_ylabel("mIoU")
    ax.set_xticks(range(0, 21, 2))
    ax.set_ylim(0, 1)
    return _save(plt, fig, ax, path, title, legend_loc="lower right")


def report(out: str | Path, dataset: str | None = None) -> dict[str, Path]:
    """Compare every method with a summary in ``out``: a markdown table and the mIoU plot per dataset."""
    out = Path(out)
    written = {}
    for ds, sums in load_summaries(out, dataset).items():
        png = plot_miou(sums, out / f"miou_{ds}.png", title=f"{ds}: mIoU vs clicks")
        md = out / f"report_{ds}.md"
        with atomic_path(md) as tmp:
            Path(tmp).write_text(f"# {ds}\n\n{table(sums)}\n\n![mIoU vs clicks]({png.name})\n\n{_notes(sums)}\n")
        written[ds] = md
    return written


# -- video (DAVIS) -----------------------------------------------------------------------------------
def davis_overall(results: Sequence[dict], round_: int | None = None) -> tuple[float, float]:
    """Mean J and F over all (sequence, object) pairs, as the DAVIS tables do (after ``round_`` rounds)."""
    per = [(r["per_object"] if round_ is None else r["rounds"][round_ - 1]["per_object"]) for r in results]
    Js = [v["J"]["mean"] for p in per for v in p.values()]
    Fs = [v["F"]["mean"] for p in per for v in p.values()]
    return float(np.mean(Js)), float(np.mean(Fs))


def davis_table(results: Sequence[dict], mode: str, rounds_shown: Sequence[int] = (1, 3, 8)) -> str:
    """Markdown table, one row per sequence and a mean row; interactive runs show J&F after ``rounds_shown``."""
    if mode == "semi":
        head = ["sequence", "frames", "J", "F", "J&F", "fps", "memory pts"]
        rows = [[r["sequence"], str(r["frames"]), f"{100 * r['J']:.1f}", f"{100 * r['F']:.1f}", f"{100 * r['JF']:.1f}",
                 f"{r['fps']:.1f}", str(r["memory"]["memory_peak"])] for r in results]
        J, F = davis_overall(results)
        frames = sum(r["frames"] - 1 for r in results)
        rows.append(["**mean**", str(sum(r["frames"] for r in results)), f"{100 * J:.1f}", f"{100 * F:.1f}",
                     f"{100 * (J + F) / 2:.1f}", f"{frames / sum(r['seconds'] for r in results):.1f}", ""])
        return markdown_table(head, rows)
    shown = [k for k in rounds_shown if k <= len(results[0]["rounds"])]
    head = ["sequence", "frames"] + [f"J&F@{k}" for k in shown] + [f"J@{shown[-1]}", f"F@{shown[-1]}", "clicks", "fps"]
    rows = []
    for r in results:
        rr = r["rounds"]
        rows.append([r["sequence"], str(r["frames"])] + [f"{100 * rr[k - 1]['JF']:.1f}" for k in shown]
                    + [f"{100 * rr[shown[-1] - 1]['J']:.1f}", f"{100 * rr[shown[-1] - 1]['F']:.1f}",
                       str(rr[-1]["total_clicks"]), f"{r['fps']:.1f}"])
    means = [davis_overall(results, k) for k in shown]
    fps = sum(r["frames_propagated"] for r in results) / sum(r["propagation_seconds"] for r in results)
    rows.append(["**mean**", str(sum(r["frames"] for r in results))] + [f"{50 * (J + F):.1f}" for J, F in means]
                + [f"{100 * means[-1][0]:.1f}", f"{100 * means[-1][1]:.1f}",
                   str(sum(r["rounds"][-1]["total_clicks"] for r in results)), f"{fps:.1f}"])
    return markdown_table(head, rows)


def davis_plot(results: Sequence[dict], mode: str, path: str | Path) -> Path:
    """J and F per sequence (semi), or J&F after each round per sequence (interactive)."""
    plt, fig, ax = _figure()
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
    return _save(plt, fig, ax, path, f"DAVIS {mode}")

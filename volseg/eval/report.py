"""Summary tables and the mIoU-vs-clicks plot, one dataset at a time, methods side by side.

``OUT/summary_<dataset>_<method>.json`` and ``.md`` are written by every run; :func:`report`
collects all summaries of a dataset found in ``OUT`` into ``OUT/report_<dataset>.md`` and
``OUT/miou_<dataset>.png``.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Sequence

from ..io.atomic import atomic_path

COLUMNS = ("method", "inst", "NoC@85", "NoC@90", "NoF@85", "NoF@90", "mIoU@1", "mIoU@5", "mIoU@10", "mIoU@20",
           "NoIC lab", "NoIC drop", "SPC mean", "SPC p50", "SPC p95")


def _row(s: dict) -> list[str]:
    miou = s["miou"]

    def at(k: int) -> str:
        return f"{miou[k - 1]:.3f}" if len(miou) >= k else "-"

    spc = s["spc"]
    return [s.get("method", "?"), str(s["instances"]), f"{s['noc85']:.2f}", f"{s['noc90']:.2f}", str(s["nof85"]),
            str(s["nof90"]), at(1), at(5), at(10), at(20), f"{s['noic_label']:.2f}", f"{s['noic_drop']:.2f}",
            f"{spc['mean']:.3f}", f"{spc['p50']:.3f}", f"{spc['p95']:.3f}"]


def table(summaries: Sequence[dict]) -> str:
    """Markdown table, one row per method."""
    lines = ["| " + " | ".join(COLUMNS) + " |", "|" + "|".join("---" for _ in COLUMNS) + "|"]
    lines += ["| " + " | ".join(_row(s)) + " |" for s in summaries]
    return "\n".join(lines)


def _notes(summaries: Sequence[dict]) -> str:
    return "\n".join(
        [
            "NoC@t: mean clicks to IoU >= t (20 if never); NoF@t: instances never reaching t in 20 clicks;",
            "NoIC lab: clicks whose pixel the next prediction labels wrongly; NoIC drop: clicks lowering IoU (both per instance);",
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
        Path(tmp).write_text(f"# {summary['dataset']}: {summary['method']}\n\n{table([summary])}\n\n{_notes([summary])}\n")
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
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6.4, 4.2), dpi=120)
    for s in summaries:
        k = range(1, len(s["miou"]) + 1)
        ax.plot(k, s["miou"], marker="o", markersize=3, label=f"{s['method']} (NoC@90 {s['noc90']:.2f})")
    for t in (0.85, 0.90):
        ax.axhline(t, color="grey", lw=0.6, ls="--")
    ax.set_xlabel("clicks")
    ax.set_ylabel("mIoU")
    ax.set_xticks(range(0, 21, 2))
    ax.set_ylim(0, 1)
    ax.grid(alpha=0.3)
    ax.legend(loc="lower right", fontsize=8)
    ax.set_title(title)
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png")
    plt.close(fig)
    return Path(path)


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

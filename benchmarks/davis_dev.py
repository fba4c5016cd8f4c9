"""DAVIS-2016 dev benchmark of video propagation: semi-supervised and interactive, speed and memory.

    python benchmarks/davis_dev.py [--root ../shared/data/dev/video/davis2016] [--out /tmp/davis_dev]
                                   [--threads 1] [--rounds 8] [--clicks-per-round 5] [--config FILE]
                                   [--option KEY=VALUE ...]

Each (mode, sequence) runs in its own process (``volseg eval-video``), so its peak RSS is its own
(``os.wait4``'s ``ru_maxrss``).  Then a long generated 480p video (100 and 400 frames) is propagated
to show that peak memory does not grow with the number of frames.  Writes ``OUT/benchmark.md``.

Protocol (fixed before any tuning; no per-sequence settings): settings are chosen on the TUNE group only;
the HELD_OUT group is never used to choose anything and is reported separately every time, next to the
whole set.  ``--group tune`` runs only the tune group (for choosing settings).

Threads: BLAS/OpenMP/OpenCV thread counts are set before numpy loads (``--threads``).  On a shared,
oversubscribed machine 1 thread per process is faster than 2 (OpenBLAS threads spin).  A fixed workload is
timed before and after the sequences (``machine reference`` in the header): compare two runs' frames/s only
where those agree.
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]

# the four sequences the earlier defaults were tuned on, plus one fast, deforming one
TUNE = ("blackswan", "car-shadow", "cows", "parkour", "dance-twirl")
HELD_OUT = ("breakdance", "camel", "drift-chicane", "goat", "libby")
GROUPS = {"tune": TUNE, "held-out": HELD_OUT, "all": TUNE + HELD_OUT}


def group_table(results: list[dict], mode: str, rss: dict, rounds=(1, 3, 8)) -> list[str]:
    """One row per group (tune, held-out, all): J&F (semi) or J&F after ``rounds`` (interactive), the
    lowest sequence, frames/s and the largest peak RSS of a sequence's process."""
    from volseg.eval.report import davis_overall, markdown_table

    by_name = {r["sequence"]: r for r in results}
    shown = [k for k in rounds if results and k <= len(results[0].get("rounds", []))]
    scores = ["J", "F", "J&F"] if mode == "semi" else [f"J&F@{k}" for k in shown]
    head = ["group", "sequences"] + scores + ["lowest J&F", "frames/s", "peak RSS MiB"]
    rows = []
    for group, names in GROUPS.items():
        rs = [by_name[n] for n in names if n in by_name]
        if not rs:
            continue
        if mode == "semi":
            J, F = davis_overall(rs)
            cells = [f"{100 * J:.1f}", f"{100 * F:.1f}", f"{50 * (J + F):.1f}"]
            fps = sum(r["frames"] - 1 for r in rs) / sum(r["seconds"] for r in rs)
        else:
            cells = [f"{50 * sum(davis_overall(rs, k)):.1f}" for k in shown]
            fps = sum(r["frames_propagated"] for r in rs) / sum(r["propagation_seconds"] for r in rs)
        low = min(rs, key=lambda r: r["JF"])
        peak = max((rss.get(r["sequence"], 0.0) for r in rs), default=0.0)
        rows.append([group, str(len(rs))] + cells
                    + [f"{low['sequence']} {100 * low['JF']:.1f}", f"{fps:.1f}", f"{peak:.0f}"])
    return markdown_table(head, rows).split("\n")


def seed_table(per_seed: list[list[dict]], mode: str, rounds=(1, 3, 8)) -> list[str]:
    """Per group, J&F (semi) or J&F after ``rounds`` (interactive) averaged over seeds, with the lowest and
    highest seed's value: the spread is what the memory's random sampling alone moves a number by."""
    from volseg.eval.report import davis_overall, markdown_table

    shown = [k for k in rounds if per_seed[0] and k <= len(per_seed[0][0].get("rounds", []))]
    keys = [None] if mode == "semi" else shown
    head = ["group", "sequences"] + ["J&F" if k is None else f"J&F@{k}" for k in keys]

    def over_seeds(names) -> list[str]:
        """Each key's J&F over the sequences ``names``: the mean of the seeds (lowest-highest)."""
        cells = []
        for k in keys:
            v = [50 * sum(davis_overall([r for r in results if r["sequence"] in names], k)) for results in per_seed]
            cells.append(f"{sum(v) / len(v):.1f} ({min(v):.1f}-{max(v):.1f})")
        return cells

    rows = []
    for group, names in GROUPS.items():
        count = sum(r["sequence"] in names for r in per_seed[0])  # every seed ran the same sequences
        if count:
            rows.append([group, str(count)] + over_seeds(names))
    table = markdown_table(head, rows).split("\n")
    # per sequence too: a mean over the groups hides which sequence the seed moves, and by how much
    per_seq = [[name] + over_seeds({name}) for name in [r["sequence"] for r in per_seed[0]]]
    return table + [""] + markdown_table(["sequence"] + head[2:], per_seq).split("\n")


def thread_env(threads: int, pythonpath: str) -> dict:
    """The environment of a benchmark's child process: ``threads`` for each BLAS, OpenMP and OpenCV, and
    ``pythonpath`` (the checkout it runs)."""
    n = str(threads)
    return dict(os.environ, OPENBLAS_NUM_THREADS=n, OMP_NUM_THREADS=n, MKL_NUM_THREADS=n, OPENCV_FOR_THREADS_NUM=n,
                PYTHONPATH=pythonpath)


def run_child(cmd: list[str], env: dict, log: Path) -> tuple[int, float, float]:
    """(exit code, seconds, peak RSS MiB) of a child process."""
    t0 = time.perf_counter()
    with log.open("a") as f:
        proc = subprocess.Popen(cmd, env=env, stdout=f, stderr=subprocess.STDOUT, cwd=REPO)
        _, status, usage = os.wait4(proc.pid, 0)
    return os.waitstatus_to_exitcode(status), time.perf_counter() - t0, usage.ru_maxrss / 1024.0


LONG_VIDEO = """
import sys, time, json
from volseg.video.synthetic import ShapesVideo
from volseg.video import VideoSegmenter, VideoConfig
n = int(sys.argv[1]); opts = json.loads(sys.argv[2])
src = ShapesVideo(n, 480, 854, seed=0, step=3.0)
t0 = time.perf_counter()
with VideoSegmenter(src, VideoConfig.from_dict(opts)) as seg:
    seg.set_mask(0, src.labels(0))
    for t in range(n):
        seg.labels(t)
    print(json.dumps({"frames": n, "seconds": time.perf_counter() - t0, "memory": seg.stats}))
"""


# A fixed single-thread workload of the kinds a propagation step does (a skinny matmul, an exp, Gaussian
# filtering), timed in a child before and after the sequences: frames/s of two runs compare only where these
# agree, since a shared machine's speed can move by 2x within an hour.
MACHINE_REFERENCE = """
import time, cv2, numpy as np
rng = np.random.default_rng(0)
a, b = rng.random((4096, 64), dtype=np.float32), rng.random((64, 1024), dtype=np.float32)
img = rng.random((480, 854), dtype=np.float32)
t0 = time.perf_counter()
for _ in range(60):
    np.exp(-(a @ b))
    cv2.GaussianBlur(img, (0, 0), 4.0)
print(time.perf_counter() - t0)
"""


def machine_reference(env: dict) -> float:
    """Seconds of :data:`MACHINE_REFERENCE` in a child process under ``env`` (lower: a faster moment)."""
    out = subprocess.run([sys.executable, "-c", MACHINE_REFERENCE], env=env, capture_output=True, text=True,
                         check=True, cwd=REPO)
    return float(out.stdout.strip().splitlines()[-1])


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--root", default=str(REPO / ".." / "shared" / "data" / "dev" / "video" / "davis2016"))
    ap.add_argument("--out", default="/tmp/volseg_davis_dev")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--rounds", type=int, default=8)
    ap.add_argument("--clicks-per-round", type=int, default=5)
    ap.add_argument("--modes", nargs="+", default=["semi", "interactive"])
    ap.add_argument("--option", action="append", default=[])
    ap.add_argument("--config", default=None, help="YAML video settings (configs/video_*.yaml); --option wins")
    ap.add_argument("--group", choices=sorted(GROUPS), default="all", help="which sequences to run (default all)")
    ap.add_argument("--long", nargs="*", type=int, default=[100, 400],
                    help="frame counts of the long 480p video (a bare --long: none)")
    ap.add_argument("--seeds", nargs="+", type=int, default=[0],
                    help="memory-sampling seeds (the `seed` option); several: each seed's tables, then their mean")
    args = ap.parse_args(argv)
    root, out = Path(args.root), Path(args.out)
    if not root.is_dir():
        print(f"no DAVIS data at {root}", file=sys.stderr)
        return 1
    out.mkdir(parents=True, exist_ok=True)
    env = thread_env(args.threads, str(REPO) + os.pathsep + os.environ.get("PYTHONPATH", ""))
    log = out / "benchmark.log"
    found = {p.name for p in (root / "JPEGImages").iterdir() if p.is_dir() and p.name != "480p"}
    seqs = [n for n in GROUPS[args.group] if n in found]
    if not seqs:
        print(f"none of the {args.group} sequences are in {root}", file=sys.stderr)
        return 1
    if any(o.split("=", 1)[0].strip() == "seed" for o in args.option):
        print("give seeds with --seeds, not --option seed=...", file=sys.stderr)
        return 1
    if args.config and not Path(args.config).is_file():
        print(f"no config file at {args.config}", file=sys.stderr)
        return 1
    opts = ["--config", str(Path(args.config).resolve())] if args.config else []
    opts += sum((["--option", o] for o in args.option), [])
    # one folder per mode, and per seed where there are several
    runs = [(mode, seed, out / mode if len(args.seeds) == 1 else out / mode / f"seed{seed}")
            for mode in args.modes for seed in args.seeds]
    reference = [machine_reference(env)]
    rows, load = [], []
    for mode, seed, folder in runs:
        for seq in seqs:
            cmd = [sys.executable, "-m", "volseg", "eval-video", "--root", str(root), "--sequences", seq,
                   "--mode", mode, "--out", str(folder), "--overwrite", "--rounds", str(args.rounds),
                   "--clicks-per-round", str(args.clicks_per_round), *opts, "--option", f"seed={seed}"]
            load.append(os.getloadavg()[0])
            rc, sec, rss = run_child(cmd, env, log)
            if rc == 0 and not (folder / f"{seq}_{mode}.json").is_file():
                rc = 1  # a child that wrote nothing did not run the evaluation (its RSS would be an import's)
            rows.append({"mode": mode, "seed": seed, "sequence": seq, "rc": rc, "seconds": sec, "peak_rss_mib": rss})
            print(f"{mode:12s} seed {seed} {seq:12s} rc={rc} {sec:6.1f}s peak RSS {rss:6.0f} MiB", flush=True)
    # tables over all sequences from the per-sequence JSON files just written
    sys.path.insert(0, str(REPO))
    from volseg.eval.run_video import evaluate
    from volseg.video.config import read_video_config as video_config

    reference.append(machine_reference(env))
    config = video_config(args.config, args.option + [f"seed={args.seeds[0]}"])
    md = [f"# DAVIS-2016 dev: tune {', '.join(TUNE)}; held out {', '.join(HELD_OUT)}", "",
          f"threads per process: {args.threads}; load average at the starts: {min(load):.1f}-{max(load):.1f} "
          f"on {os.cpu_count()} CPUs; machine reference before / after the sequences: {reference[0]:.2f} / "
          f"{reference[1]:.2f} s (a fixed workload; frames/s of two runs compare where these agree)", "",
          f"config: `{json.dumps(config.to_dict())}`", ""]
    for mode in args.modes:
        per_seed = []
        for _, seed, folder in [r for r in runs if r[0] == mode]:
            s = evaluate(root, folder, mode=mode, names=seqs, config=config.replace(seed=seed), rounds=args.rounds,
                         progress=False)
            results = [json.loads((folder / f"{n}_{mode}.json").read_text()) for n in seqs]
            per_seed.append(results)
            rss = {r["sequence"]: r["peak_rss_mib"] for r in rows if r["mode"] == mode and r["seed"] == seed}
            title = f"## {mode}" + (f", seed {seed}" if len(args.seeds) > 1 else "")
            md += [title, ""] + group_table(results, mode, rss) + ["", s["table"], ""]
            if mode == "interactive":
                md += ["| round | J | F | J&F |", "|---|---|---|---|"]
                md += [f"| {r['round']} | {100 * r['J']:.1f} | {100 * r['F']:.1f} | {100 * r['JF']:.1f} |"
                       for r in s["rounds"]]
                md += [""]
        if len(per_seed) > 1:
            md += [f"## {mode}, mean over seeds {', '.join(map(str, args.seeds))}", ""]
            md += seed_table(per_seed, mode) + [""]
    md += ["## peak RSS per process", "", "| mode | seed | sequence | seconds | peak RSS MiB |",
           "|---|---|---|---|---|"]
    md += [f"| {r['mode']} | {r['seed']} | {r['sequence']} | {r['seconds']:.1f} | {r['peak_rss_mib']:.0f} |"
           for r in rows]
    if args.long:
        md += ["", "## generated 480p video, memory against length", "",
               "| frames | seconds | fps (incl. labels) | memory bank peak | peak RSS MiB |", "|---|---|---|---|---|"]
        for n in args.long:
            res = out / f"long_{n}.json"
            cmd = [sys.executable, "-c", LONG_VIDEO, str(n), json.dumps(config.to_dict())]
            with res.open("w") as f:
                proc = subprocess.Popen(cmd, env=env, stdout=f, stderr=subprocess.DEVNULL, cwd=REPO)
                _, status, usage = os.wait4(proc.pid, 0)
            r = json.loads(res.read_text().strip().splitlines()[-1])
            rss = usage.ru_maxrss / 1024.0
            md.append(f"| {n} | {r['seconds']:.1f} | {n / r['seconds']:.1f} | {r['memory']['memory_peak']} "
                      f"| {rss:.0f} |")
            print(f"long video {n} frames: {r['seconds']:.1f}s, peak RSS {rss:.0f} MiB", flush=True)
    (out / "benchmark.md").write_text("\n".join(md) + "\n")
    print("\n".join(md))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

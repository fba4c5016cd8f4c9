"""Frames/s of two or more video settings or checkouts, run in turn sequence by sequence.

    python benchmarks/video_speed.py --root ../shared/data/dev/video/davis2016 --out /tmp/video_speed \
        --variant before=/path/to/older/checkout --variant now=. \
        [--variant "small=.:--config configs/video_small_memory.yaml"] [--group all|tune|held-out]

This machine's speed moves by up to 2x within an hour, more than most changes under test, so runs made one
after the other are not comparable.  Here every sequence is run by each variant in turn (``volseg
eval-video --mode semi``, one process each, one thread per library), so all variants see the same
moments of the machine; the table gives frames/s over the group (frames / seconds, summed) and J&F.

A variant is ``NAME=DIR[:ARGS]``: a checkout (run with ``PYTHONPATH=DIR``; its compiled extension built)
and extra ``eval-video`` arguments.
"""
from __future__ import annotations

import argparse
import json
import shlex
import subprocess
import sys
from pathlib import Path

from davis_dev import GROUPS, thread_env


def variant(text: str) -> tuple[str, Path, list[str]]:
    name, sep, rest = text.partition("=")
    if not sep or not name:
        raise argparse.ArgumentTypeError(f"a variant is NAME=DIR[:ARGS], got {text!r}")
    folder, _, args = rest.partition(":")
    path = Path(folder).resolve()
    if not (path / "volseg" / "__init__.py").is_file():
        raise argparse.ArgumentTypeError(f"{folder!r} is not a volseg checkout")
    return name, path, shlex.split(args)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--root", required=True, help="DAVIS folder")
    parser.add_argument("--out", required=True, help="one folder of eval-video results per variant")
    parser.add_argument("--variant", type=variant, action="append", required=True, help="NAME=DIR[:ARGS]")
    parser.add_argument("--group", choices=sorted(GROUPS), default="all")
    args = parser.parse_args()
    if len({name for name, _, _ in args.variant}) < len(args.variant):
        parser.error("variant names must differ")
    for sequence in GROUPS[args.group]:
        for name, folder, extra in args.variant:
            out = Path(args.out) / name
            subprocess.run([sys.executable, "-m", "volseg", "eval-video", "--root", str(Path(args.root).resolve()),
                            "--sequences", sequence, "--mode", "semi", "--out", str(out.resolve()), "--overwrite",
                            *extra], cwd=folder, env=thread_env(1, str(folder)), check=True,
                           stdout=subprocess.DEVNULL)
            record = json.loads((out / f"{sequence}_semi.json").read_text())
            print(f"{name:>12} {sequence:<14} {record['frames'] / record['seconds']:6.1f} frames/s  "
                  f"J&F {100 * record['JF']:.1f}", flush=True)
    print("\n| variant | group | frames/s | J&F |\n|---|---|---|---|")
    for name, _, _ in args.variant:
        for group in ("tune", "held-out", "all"):
            records = [json.loads((Path(args.out) / name / f"{s}_semi.json").read_text())
                       for s in GROUPS[group] if s in GROUPS[args.group]]
            if records:
                fps = sum(r["frames"] for r in records) / sum(r["seconds"] for r in records)
                jf = 100 * sum(r["JF"] for r in records) / len(records)
                print(f"| {name} | {group} ({len(records)}) | {fps:.1f} | {jf:.1f} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())

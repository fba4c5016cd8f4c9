"""``volseg propagate`` (masks for every frame of a video from clicks on a few) and ``volseg eval-video``
(the DAVIS benchmark, semi-supervised or interactive)."""
from __future__ import annotations

import argparse
from pathlib import Path

from ..errors import InputError
from ..eval.run_video import evaluate
from ..io import check_folder_path
from ..propagate import propagate_video
from .config import VideoConfig, read_video_config

PROPAGATE_HELP = "mask objects on every frame of a video from clicks (and/or masks) on some frames"
EVAL_HELP = "score video propagation on DAVIS (J, F, J&F, fps): semi-supervised or interactive"
FEATURES_HELP = ("per-frame features for matching: filterbank (default), learned2d (packaged 2D model), a checkpoint "
                 ".ckpt, or several joined by + (learned2d+filterbank); the same as --option features=...")


def register(subparsers) -> None:
    p = subparsers.add_parser("propagate", help=PROPAGATE_HELP, description=PROPAGATE_HELP)
    p.add_argument("video", help="video file (mp4 and what decord reads) or a folder of frames")
    p.add_argument("--clicks", help="clicks file (JSON/CSV, index (row, col) positions) with a frame per click")
    p.add_argument("--mask", action="append", default=[], metavar="FRAME=PATH",
                   help="a label-map PNG for frame FRAME (0-based), e.g. 0=first.png; repeatable")
    p.add_argument("--out", required=True, help="folder for one palette PNG per frame (pixel value = object id)")
    p.add_argument("--overlay", metavar="OUT.mp4", help="also write the frames with their masks as a video")
    p.add_argument("--config", help="YAML file with a 'video:' section of settings")
    p.add_argument("--option", action="append", default=[], metavar="KEY=VALUE",
                   help="a video setting, e.g. scale=4 or budget=1600 (repeatable; see VideoConfig)")
    p.add_argument("--features", help=FEATURES_HELP)
    p.add_argument("--overwrite", action="store_true", help="replace masks already in --out")
    p.add_argument("--quiet", action="store_true")
    p.set_defaults(func=propagate_handler)

    e = subparsers.add_parser("eval-video", help=EVAL_HELP, description=EVAL_HELP)
    e.add_argument("--root", required=True, help="DAVIS folder: JPEGImages/[480p/]<seq>, Annotations/[480p/]<seq>")
    e.add_argument("--sequences", nargs="+", help="sequence names (default: all)")
    e.add_argument("--mode", choices=("semi", "interactive"), default="semi")
    e.add_argument("--out", required=True, help="output folder: per-sequence JSON, summary table, plot")
    e.add_argument("--rounds", type=int, default=8, help="interactive rounds (default 8)")
    e.add_argument("--clicks-per-round", type=int, default=5,
                   help="robot clicks per round on the worst frame (default 5)")
    e.add_argument("--config", help="YAML file with a 'video:' section of settings")
    e.add_argument("--option", action="append", default=[], metavar="KEY=VALUE", help="a video setting (repeatable)")
    e.add_argument("--features", help=FEATURES_HELP)
    e.add_argument("--overwrite", action="store_true", help="recompute sequences already in --out")
    e.set_defaults(func=eval_handler)


def _parse_masks(items: list[str]) -> list[tuple[int, Path]]:
    out = []
    for item in items:
        frame, eq, path = item.partition("=")
        try:
            t = int(frame)
        except ValueError:
            t = None
        if not eq or t is None:
            raise InputError(f"--mask {item!r}: expected FRAME=PATH with an integer frame index")
        out.append((t, Path(path)))
    return out


def video_config(args: argparse.Namespace) -> VideoConfig:
    """The settings of --config and --option, with --features (if given) over both."""
    config = read_video_config(args.config, args.option)
    return config.replace(features=args.features) if args.features is not None else config


def propagate_handler(args: argparse.Namespace) -> int:
    config = video_config(args)
    done = propagate_video(args.video, args.out, clicks=args.clicks, masks=_parse_masks(args.mask),
                           overlay=args.overlay, config=config, overwrite=args.overwrite)
    if not args.quiet:
        rec = done.record
        T, seconds = rec["frames"], rec["seconds"]
        extra = f", overlay {rec['overlay']} ({done.overlay_kind})" if args.overlay else ""
        print(f"{T} masks in {args.out} for objects {rec['objects']} ({T / seconds:.1f} frames/s; memory peak "
              f"{rec['memory']['memory_peak']} of {config.budget} points){extra}")
    return 0


def eval_handler(args: argparse.Namespace) -> int:
    config = video_config(args)
    if args.rounds < 1 or args.clicks_per_round < 1:
        raise InputError("--rounds and --clicks-per-round must be 1 or more")
    check_folder_path(args.out, f"results into --out {args.out}")
    summary = evaluate(args.root, args.out, mode=args.mode, names=args.sequences, config=config,
                       rounds=args.rounds, clicks_per_round=args.clicks_per_round, overwrite=args.overwrite)
    print(summary["table"])
    print(f"J {100 * summary['J']:.1f}  F {100 * summary['F']:.1f}  J&F {100 * summary['JF']:.1f}  "
          f"(peak RSS {summary['peak_rss_mib']:.0f} MiB); results in {args.out}")
    return 0

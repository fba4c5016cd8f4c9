"""``volseg propagate`` (masks for every frame of a video from clicks on a few) and ``volseg eval-video``
(the DAVIS benchmark, semi-supervised or interactive)."""
from __future__ import annotations

import argparse
import time
from pathlib import Path

from ..errors import InputError

PROPAGATE_HELP = "mask objects on every frame of a video from clicks (and/or masks) on some frames"
EVAL_HELP = "score video propagation on DAVIS (J, F, J&F, fps): semi-supervised or interactive"


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
                   help="a video setting, e.g. scale=4 or budget=800 (repeatable; see VideoConfig)")
    p.add_argument("--overwrite", action="store_true", help="replace masks already in --out")
    p.add_argument("--quiet", action="store_true")
    p.set_defaults(func=propagate_handler)

    e = subparsers.add_parser("eval-video", help=EVAL_HELP, description=EVAL_HELP)
    e.add_argument("--root", required=True, help="DAVIS folder: JPEGImages/[480p/]<seq>, Annotations/[480p/]<seq>")
    e.add_argument("--sequences", nargs="+", help="sequence names (default: all)")
    e.add_argument("--mode", choices=("semi", "interactive"), default="semi")
    e.add_argument("--out", required=True, help="output folder: per-sequence JSON, summary table, plot")
    e.add_argument("--rounds", type=int, default=8, help="interactive rounds (default 8)")
    e.add_argument("--clicks-per-round", type=int, default=5, help="robot clicks per round on the worst frame (default 5)")
    e.add_argument("--config", help="YAML file with a 'video:' section of settings")
    e.add_argument("--option", action="append", default=[], metavar="KEY=VALUE", help="a video setting (repeatable)")
    e.add_argument("--overwrite", action="store_true", help="recompute sequences already in --out")
    e.set_defaults(func=eval_handler)


def _value(text: str):
    low = text.strip().lower()
    if low in ("true", "yes", "on", "false", "no", "off"):
        return low in ("true", "yes", "on")
    for cast in (int, float):
        try:
            return cast(text)
        except ValueError:
            pass
    if "," in text:
        return tuple(_value(t) for t in text.split(",") if t.strip())
    return text


def video_config(config_path: str | None, options: list[str]):
    from .propagate import VideoConfig

    data: dict = {}
    if config_path:
        import yaml

        p = Path(config_path)
        if not p.is_file():
            raise InputError(f"config file {p} does not exist")
        loaded = yaml.safe_load(p.read_text()) or {}
        data.update(loaded.get("video", loaded) if isinstance(loaded, dict) else {})
    for item in options:
        key, eq, val = item.partition("=")
        if not eq or not key.strip():
            raise InputError(f"--option {item!r}: expected KEY=VALUE")
        data[key.strip()] = _value(val)
    return VideoConfig.from_dict(data)


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


def propagate_handler(args: argparse.Namespace) -> int:
    from ..clicks import load_clicks, validate_clicks
    from ..io import read_mask
    from ..io.video import MaskWriter, OverlayWriter, open_video
    from ..provenance import file_sha256, versions, write_sidecar
    from .propagate import VideoSegmenter

    config = video_config(args.config, args.option)
    masks = _parse_masks(args.mask)
    if not args.clicks and not masks:
        raise InputError("nothing to propagate: give --clicks and/or --mask FRAME=PATH")
    src = open_video(args.video)
    T = len(src)
    clicks = load_clicks(args.clicks) if args.clicks else []
    validate_clicks(clicks, src.shape, frames=T)
    for t, p in masks:
        if not 0 <= t < T:
            raise InputError(f"--mask for frame {t}: the video has {T} frames")
    writer = MaskWriter(args.out, src, overwrite=args.overwrite)
    writer.check()
    over = OverlayWriter(args.overlay, src.shape, src.fps, overwrite=args.overwrite) if args.overlay else None
    t0 = time.perf_counter()
    with VideoSegmenter(src, config) as seg:
        for t, p in masks:
            labels = read_mask(p)
            seg.set_mask(t, labels, propagate=False)
        seg.add_clicks(clicks, propagate=False)
        seg.update(sorted(seg.annotations))
        t_prop = time.perf_counter() - t0
        for t in range(T):
            frame = src[t]
            labels = seg.labels(t, frame)
            writer.write(t, labels)
            if over is not None:
                over.write(frame, labels)
        stats = dict(seg.stats)
        annotated = sorted(seg.annotations)
        objects = list(seg.objects)
    overlay_path = over.close() if over is not None else None
    seconds = time.perf_counter() - t0
    record = {
        "command": "propagate", "video": str(args.video), "video_sha256": file_sha256(args.video),
        "frames": T, "size": list(src.shape), "objects": objects, "annotated_frames": annotated,
        "clicks": [c.to_dict() for c in clicks], "masks": {str(t): str(p) for t, p in masks},
        "config": config.to_dict(), "seconds": seconds, "propagation_seconds": t_prop, "fps": T / seconds,
        "memory": stats, "overlay": str(overlay_path) if overlay_path else None, "versions": versions(),
    }
    write_sidecar(Path(args.out) / "propagate.png", record)
    if not args.quiet:
        extra = f", overlay {overlay_path} ({over.kind})" if over is not None else ""
        print(f"{T} masks in {args.out} for objects {objects} ({T / seconds:.1f} frames/s; memory peak "
              f"{stats['memory_peak']} of {config.budget} points){extra}")
    return 0


def eval_handler(args: argparse.Namespace) -> int:
    from ..eval.run_video import evaluate

    config = video_config(args.config, args.option)
    if args.rounds < 1 or args.clicks_per_round < 1:
        raise InputError("--rounds and --clicks-per-round must be 1 or more")
    summary = evaluate(args.root, args.out, mode=args.mode, names=args.sequences, config=config,
                       rounds=args.rounds, clicks_per_round=args.clicks_per_round, overwrite=args.overwrite)
    print(summary["table"])
    print(f"J {100 * summary['J']:.1f}  F {100 * summary['F']:.1f}  J&F {100 * summary['JF']:.1f}  "
          f"(peak RSS {summary['peak_rss_mib']:.0f} MiB); results in {args.out}")
    return 0

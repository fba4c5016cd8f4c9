"""The `volseg` command: segment | demo | batch | eval | eval3d | propagate | eval-video | train | serve.

Each sub-command lives with the code it drives and registers itself here; this file only wires
them up and turns a VolsegError into one line on stderr and exit code 2.
"""
from __future__ import annotations

import argparse
import signal
import sys
import threading

from . import __version__, batch
from .demo import run_demo
from .errors import Terminated, VolsegError
from .eval import cli2d as eval_cli2d
from .eval import cli3d as eval_cli3d
from .segment import segment_file
from .serve import cli as serve_cli
from .session_options import gp_options, session_settings
from .train import cli as train_cli
from .video import cli as video_cli

# modules whose register(subparsers) adds their sub-commands
COMMAND_MODULES = (batch, eval_cli2d, eval_cli3d, video_cli, train_cli, serve_cli)


def _segment(args: argparse.Namespace) -> int:
    rec = segment_file(args.image, args.clicks, args.out, prob=args.prob, uncertainty=args.uncertainty,
                       prior=args.prior, overwrite=args.overwrite, **session_settings(args))
    t = rec["click_seconds"]
    print(f"wrote {rec['outputs']['mask']} ({len(t)} clicks, features {rec['feature_seconds']:.2f} s, "
          f"clicks {sum(t):.2f} s, labels {rec['voxels_per_label']})")
    return 0


def _demo(args: argparse.Namespace) -> int:
    run_demo(args.out, device=args.device, overwrite=True)
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="volseg", description=__doc__.splitlines()[0])
    parser.add_argument("--version", action="version", version=f"volseg {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("segment", help="image + clicks -> mask in the image's geometry")
    p.add_argument("image", help="2D raster (PNG/JPEG/TIFF), NIfTI, NRRD, MHA/MHD or a DICOM series folder")
    p.add_argument("--clicks", required=True, help="clicks file (JSON or CSV; see volseg/clicks.py)")
    p.add_argument("--out", required=True, help="mask output; its suffix picks the format")
    p.add_argument("--prob", help="also write the probability map here")
    p.add_argument("--uncertainty", help="also write the posterior standard deviation here")
    p.add_argument("--prior", help="an existing mask on the same grid to refine")
    p.add_argument("--overwrite", action="store_true", help="replace existing outputs")
    gp_options(p)
    p.set_defaults(func=_segment)

    p = sub.add_parser("demo", help="segment a photo and a generated volume from scripted clicks")
    p.add_argument("--out", default="volseg-demo", help="output folder (default ./volseg-demo)")
    p.add_argument("--device", default="cpu")
    p.set_defaults(func=_demo)

    for module in COMMAND_MODULES:
        module.register(sub)
    return parser


def _terminate(signum, frame) -> None:
    raise Terminated()


def main(argv: list[str] | None = None) -> int:
    """Run a command.  Exit codes: 0 done, 1 some batch case failed, 2 bad input (one error line),
    130 Ctrl-C, 143 SIGTERM (handled like Ctrl-C: outputs stay whole, a batch writes its report)."""
    args = build_parser().parse_args(argv)
    in_main_thread = threading.current_thread() is threading.main_thread()
    previous = signal.signal(signal.SIGTERM, _terminate) if in_main_thread else None
    try:
        return int(args.func(args) or 0)
    except VolsegError as e:
        print(f"volseg: error: {e}", file=sys.stderr)
        return 2
    except Terminated:
        print("volseg: interrupted (SIGTERM)", file=sys.stderr)
        return 143
    except KeyboardInterrupt:
        print("volseg: interrupted", file=sys.stderr)
        return 130
    finally:
        if in_main_thread:
            signal.signal(signal.SIGTERM, previous)


if __name__ == "__main__":
    sys.exit(main())

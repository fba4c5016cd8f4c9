"""The `volseg` command: segment | demo | batch | eval | eval3d | propagate | eval-video | train | serve.

Each sub-command lives with the code it drives and registers itself here; this file only wires
them up and turns a VolsegError into one line on stderr and exit code 2.
"""
from __future__ import annotations

import argparse
import importlib
import signal
import sys
import threading

from . import __version__
from .errors import Terminated, VolsegError

# modules whose register(subparsers) adds their sub-commands
COMMAND_MODULES = ("volseg.batch", "volseg.eval.cli2d", "volseg.eval.cli3d", "volseg.video.cli", "volseg.train.cli",
                   "volseg.serve.cli")


def gp_options(parser: argparse.ArgumentParser) -> None:
    """Options every command that runs a Session shares."""
    parser.add_argument("--features", default="filterbank",
                        help="filterbank (default, training-free), learned2d (packaged 2D model), a checkpoint .ckpt, "
                             "or several joined by + (learned2d+filterbank: both, a product kernel)")
    parser.add_argument("--device", default="cpu", help="cpu, cuda or auto")
    parser.add_argument("--config", help="YAML file with GP settings (see configs/default.yaml)")
    parser.add_argument("--memory-budget", help="e.g. 4GB (default from the config)")


def session_settings(args: argparse.Namespace) -> dict:
    from .config import GPConfig
    from .units import parse_bytes

    budget = getattr(args, "memory_budget", None)
    if budget is not None:  # refused here, before any work, with the option's own name
        parse_bytes(budget, what="--memory-budget")
    cfg = GPConfig.from_yaml(args.config) if getattr(args, "config", None) else GPConfig()
    return {"features": args.features, "device": args.device, "config": cfg.replace(memory_budget=budget)}


def _segment(args: argparse.Namespace) -> int:
    from .segment import segment_file

    rec = segment_file(args.image, args.clicks, args.out, prob=args.prob, uncertainty=args.uncertainty,
                       prior=args.prior, overwrite=args.overwrite, **session_settings(args))
    t = rec["click_seconds"]
    print(f"wrote {rec['outputs']['mask']} ({len(t)} clicks, features {rec['feature_seconds']:.2f} s, "
          f"clicks {sum(t):.2f} s, labels {rec['voxels_per_label']})")
    return 0


def _demo(args: argparse.Namespace) -> int:
    from .demo import run_demo

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

    for name in COMMAND_MODULES:
        importlib.import_module(name).register(sub)
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

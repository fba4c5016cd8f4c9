"""``volseg train --config configs/<name>.yaml``: train a backbone through the GP (see volseg.train.loop)."""
from __future__ import annotations

import argparse

from ..errors import InputError
from ..io import check_folder_path
from .loop import train

HELP = "train a MONAI backbone end to end through the GP posterior (writes OUT/model.ckpt)"


def register(subparsers) -> argparse.ArgumentParser:
    p = subparsers.add_parser("train", help=HELP, description=HELP)
    p.add_argument("--config", required=True, help="training YAML, e.g. configs/train_2d.yaml")
    p.add_argument("--out", help="output folder (default: the config's out, else runs/<name>)")
    p.add_argument("--resume", help="continue from a last.ckpt (same config and data)")
    p.add_argument("--init", help="start from a finished model.ckpt's weights and GP settings, with a fresh "
                                  "optimiser and learning-rate schedule (train longer; same model and data)")
    p.add_argument("--steps", type=int, help="total optimisation steps (overrides optim.steps)")
    p.add_argument("--max-minutes", type=float, help="stop after this much wall time and save")
    p.add_argument("--exclude-like", action="append", default=[], metavar="DIR",
                   help="evaluation images (e.g. ../shared/data/dev/2d/berkeley/images): refuse to start if a "
                        "training image is identical or near-identical to one of them (repeatable)")
    p.add_argument("--quiet", action="store_true", help="no per-log-step lines on stdout")
    p.set_defaults(func=handler)
    return p


def handler(args: argparse.Namespace) -> int:
    if args.steps is not None and args.steps < 1:
        raise InputError(f"--steps must be 1 or more, got {args.steps}")
    if args.max_minutes is not None and not args.max_minutes > 0:
        raise InputError(f"--max-minutes must be above 0, got {args.max_minutes}")
    if args.out is not None:
        check_folder_path(args.out, f"the model into --out {args.out}")
    path = train(args.config, args.out, resume=args.resume, max_steps=args.steps, max_minutes=args.max_minutes,
                 quiet=args.quiet, exclude_like=args.exclude_like, init=args.init)
    print(f"wrote {path}")
    return 0


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="volseg")
    register(p.add_subparsers(dest="command", required=True))
    args = p.parse_args(["train", *(argv or [])])
    return args.func(args)

"""``volseg eval``: the 2D click benchmarks (GrabCut, Berkeley, DAVIS, SBD, PascalVOC, COCO_MVal)."""
from __future__ import annotations

import argparse
import inspect
from typing import Any

from ..config import GPConfig
from ..errors import InputError
from ..io import check_folder_path
from .baselines import GrabCutMethod, RandomWalkerMethod
from .datasets import READERS, dataset_name, load_samples
from .methods import method_names
from .report import report, table
from .run2d import run_eval

HELP = "run the RITM click robot on a 2D benchmark and report NoC/NoF/mIoU/SPC"


def register(subparsers) -> argparse.ArgumentParser:
    p = subparsers.add_parser("eval", help=HELP, description=HELP)
    p.add_argument("--dataset", required=True, help=f"one of {', '.join(READERS)} (case-insensitive)")
    p.add_argument("--root", required=True, help="dataset folder in its standard layout")
    p.add_argument("--method", required=True, nargs="+", action="extend",
                   help="gp, random-walker and/or grabcut (several run one after the other)")
    p.add_argument("--out", required=True, help="output folder (instances/, summaries, report, plot)")
    p.add_argument("--features", default="filterbank",
                   help="GP features: filterbank, learned2d, a .ckpt path, or several joined by + (default filterbank)")
    p.add_argument("--device", default="cpu", help="GP device (default cpu)")
    p.add_argument("--config", default=None, help="GP settings YAML (see configs/default.yaml)")
    p.add_argument("--max-instances", type=int, default=None, metavar="N", help="only the first N instances")
    p.add_argument("--max-clicks", type=int, default=20, metavar="K", help="clicks per instance (default 20)")
    p.add_argument("--split", default=None, help="SBD/PascalVOC split list to read (default val; all files if absent)")
    p.add_argument("--option", action="append", default=[], metavar="[METHOD:]KEY=VALUE",
                   help="method setting, e.g. random-walker:beta=2000 or grabcut:pr_fg_radius=20 (repeatable)")
    p.add_argument("--tag", default=None, help="name for the results instead of the method name (one method only)")
    p.add_argument("--overwrite", action="store_true", help="recompute instances already in OUT")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.set_defaults(func=handler)
    return p


def _value(text: str) -> Any:
    low = text.strip().lower()
    if low in ("true", "yes", "on"):
        return True
    if low in ("false", "no", "off"):
        return False
    for cast in (int, float):
        try:
            return cast(text)
        except ValueError:
            pass
    return text


def parse_options(items: list[str], methods: list[str]) -> dict[str, dict]:
    """``[METHOD:]KEY=VALUE`` items to per-method keyword dicts; unknown keys are an error."""
    opts: dict[str, dict] = {m: {} for m in methods}
    for item in items:
        left, eq, val = item.partition("=")
        target, _, key = left.rpartition(":")
        key = key.strip()
        if not eq or not key:
            raise InputError(f"--option {item!r}: expected [METHOD:]KEY=VALUE")
        names = [m for m in methods if not target or m == target]
        if not names:
            raise InputError(f"--option {item!r} names method {target!r}, "
                             f"which is not among --method {' '.join(methods)}")
        for m in names:
            ok = _accepted(m)
            if ok is not None and key not in ok:
                raise InputError(f"--option {item!r}: {m} has no setting {key!r} (it has {', '.join(sorted(ok))})")
            opts[m][key] = _value(val)
    return opts


def _accepted(method: str) -> set[str] | None:
    cls = {"random-walker": RandomWalkerMethod, "grabcut": GrabCutMethod}.get(method)
    if cls is None:
        return None  # the GP passes options through to Session, which checks them
    return set(inspect.signature(cls.__init__).parameters) - {"self"}


def handler(args: argparse.Namespace) -> int:
    methods = []
    for m in args.method:
        for name in m.split(","):
            key = name.strip().lower().replace("_", "-")
            if key not in method_names():
                raise InputError(f"unknown method {name!r}; choose one of {', '.join(method_names())}")
            if key not in methods:
                methods.append(key)
    if args.tag and len(methods) > 1:
        raise InputError("--tag names one method's results; give one --method with it")
    if args.max_instances is not None and args.max_instances < 1:
        raise InputError(f"--max-instances must be 1 or more, got {args.max_instances}")
    if not 1 <= args.max_clicks <= 100:
        raise InputError(f"--max-clicks must be between 1 and 100, got {args.max_clicks}")
    ds = dataset_name(args.dataset)
    options = parse_options(args.option, methods)
    if args.config and "gp" in options:
        options["gp"]["config"] = GPConfig.from_yaml(args.config)

    check_folder_path(args.out, f"results into --out {args.out}")
    samples = load_samples(ds, args.root, split=args.split, max_instances=args.max_instances)
    summaries = []
    for m in methods:
        summaries.append(
            run_eval(ds, args.root, m, args.out, features=args.features, device=args.device, options=options[m],
                     max_clicks=args.max_clicks, tag=args.tag, overwrite=args.overwrite,
                     progress=not args.no_progress, samples=samples)
        )
    print(table(summaries))
    written = report(args.out, ds)
    if ds in written:
        print(f"report: {written[ds]}  plot: {written[ds].parent / f'miou_{ds}.png'}")
    return 0

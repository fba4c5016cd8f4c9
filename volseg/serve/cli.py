"""``volseg serve [PATH]``: the click page for the images, volumes and videos under PATH."""
from __future__ import annotations

import argparse
import ipaddress
import sys

from ..config import read_section
from ..errors import InputError
from ..io import check_folder_path
from ..session_options import gp_options, session_settings
from ..video.config import VideoConfig

HELP = "click in a browser on the images, volumes and videos under PATH"


def register(subparsers) -> None:
    p = subparsers.add_parser("serve", help=HELP, description=HELP)
    p.add_argument("path", nargs="?", default=".", help="a folder (its files are listed) or one file (default: .)")
    p.add_argument("--port", type=int, default=8000, help="default 8000")
    p.add_argument("--host", default="127.0.0.1",
                   help="address to bind (default 127.0.0.1: this machine only; anything else exposes your files)")
    p.add_argument("--out", default="volseg-serve-out",
                   help="folder Save writes masks into (default ./volseg-serve-out)")
    p.add_argument("--idle-timeout", type=float, default=600.0,
                   help="seconds after which a session nobody uses (a closed tab) is freed (default 600)")
    p.add_argument("--max-sessions", type=int, default=4, help="sessions held at once (default 4)")
    gp_options(p)
    p.set_defaults(func=handler)


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def handler(args: argparse.Namespace) -> int:
    from .app import create_app  # noqa: PLC0415 -- Starlette app; only `volseg serve` loads it

    check_folder_path(args.out, f"saved masks into --out {args.out}")
    if not 0 < args.port < 65536:
        raise InputError(f"--port {args.port} is not a port number")
    if args.idle_timeout <= 0 or args.max_sessions < 1:
        raise InputError("--idle-timeout must be positive and --max-sessions 1 or more")
    try:
        import uvicorn  # noqa: PLC0415 -- only `volseg serve` needs it
    except ImportError:
        raise InputError("volseg serve needs uvicorn and starlette: pip install uvicorn starlette") from None
    # one --config for both: its gp: section for images and volumes, its video: section for videos; a clicked
    # frame's 2D session takes --features like an image, unless that video: section names session_features
    settings = session_settings(args)
    video = VideoConfig.from_dict({"session_features": settings["features"],
                                   **(read_section(args.config, "video") if args.config else {})})
    app = create_app(args.path, out=args.out, settings=settings, video_config=video,
                     idle_timeout=args.idle_timeout, max_sessions=args.max_sessions)
    if not is_loopback(args.host):
        print(f"volseg: warning: serving on {args.host}, not 127.0.0.1: anyone who can reach this machine "
              f"can open the files under {args.path} and use its CPU. There is no login.", file=sys.stderr)
    shown = f"[{args.host}]" if ":" in args.host else args.host
    print(f"volseg serve: open http://{shown}:{args.port}/  (serving {args.path}; saving to {args.out}; Ctrl-C stops)",
          flush=True)
    uvicorn.run(app, host=args.host, port=args.port, log_level="warning")
    return 0

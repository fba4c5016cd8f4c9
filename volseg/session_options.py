"""What the subcommands share: the options of every command that runs a :class:`volseg.Session`, their
reading, and how a subcommand is documented.

Its own module so that :mod:`volseg.cli` (which assembles the parser) and the command modules it
registers (batch, eval, serve) both import it, and none of them imports the other.
"""
from __future__ import annotations

import argparse

from .config import GPConfig
from .units import parse_bytes


def command_parser(subparsers, name: str, help: str, module_doc: str | None) -> argparse.ArgumentParser:
    """A subcommand whose ``--help`` shows its module docstring past the first paragraph, line breaks kept."""
    return subparsers.add_parser(name, help=help, description=module_doc.split("\n\n", 1)[1] if module_doc else None,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)


def gp_options(parser: argparse.ArgumentParser) -> None:
    """Add --features, --device, --config and --memory-budget to ``parser``."""
    parser.add_argument("--features", default="filterbank",
                        help="filterbank (default, training-free), learned2d (packaged 2D model), a checkpoint .ckpt, "
                             "or several joined by + (learned2d+filterbank: both, a product kernel)")
    parser.add_argument("--device", default="cpu", help="cpu, cuda or auto")
    parser.add_argument("--config", help="YAML file with GP settings (see configs/default.yaml)")
    parser.add_argument("--memory-budget", help="e.g. 4GB (default from the config)")


def session_settings(args: argparse.Namespace) -> dict:
    """The Session's keyword arguments (features, device, config) from the options of :func:`gp_options`."""
    budget = getattr(args, "memory_budget", None)
    if budget is not None:  # refused here, before any work, with the option's own name
        parse_bytes(budget, what="--memory-budget")
    cfg = GPConfig.from_yaml(args.config) if getattr(args, "config", None) else GPConfig()
    return {"features": args.features, "device": args.device, "config": cfg.replace(memory_budget=budget)}

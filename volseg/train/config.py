"""A training config: YAML sections merged over :data:`DEFAULTS`, every value checked before a run starts.

Sections: ``model`` (the network), ``gp`` (the GP's starting settings), ``data``, ``clicks`` (the click
simulation), ``loss``, ``optim``, ``log``; see ``configs/train_2d.yaml`` for a commented example.
"""
from __future__ import annotations

import copy
from pathlib import Path

import yaml

from ..errors import InputError

DEFAULTS = {
    "name": "train",
    "seed": 0,
    "threads": 1,
    "device": "cpu",
    "out": None,
    "model": {"name": "BasicUNet", "spatial_dims": 2, "embed_dim": 16, "long_side": 160},
    "gp": {"feature_lengthscale": 0.5, "spatial_fraction": 0.25, "outputscale": 1.0, "noise": 1e-3, "learn": True},
    "data": {"roots": [], "val_fraction": 0.02, "augment": True},
    "clicks": {"max_positive": 2, "max_negative": 2, "deepest": 0.5, "iterative": 3},
    "loss": {"kind": "nfl", "dice_weight": 1.0, "gamma": 2.0, "prior_weight": 0.3},
    "optim": {"lr": 1e-3, "hyper_lr": 1e-2, "weight_decay": 1e-4, "batch_size": 4, "steps": 1000,
              "max_minutes": None, "warmup": 50},
    "log": {"every": 10, "checkpoint_every": 200, "val_every": None, "val_images": 16, "tensorboard": False},
}

# the numeric settings and their ranges: (kind, lowest, lowest allowed itself, highest or None, None allowed)
_RANGES = {
    ("integer", 1, True, None, False): ("threads", "model.embed_dim", "optim.batch_size", "optim.steps", "log.every",
                                        "log.checkpoint_every", "clicks.max_positive"),
    ("integer", 16, True, None, False): ("model.long_side",),
    ("integer", 16, True, None, True): ("model.infer_long_side",),
    ("integer", 0, True, None, False): ("seed", "clicks.max_negative", "clicks.iterative", "optim.warmup",
                                        "log.val_images"),
    ("integer", 1, True, None, True): ("log.val_every",),
    ("number", 0.0, False, None, False): ("gp.feature_lengthscale", "gp.spatial_fraction", "gp.outputscale",
                                          "gp.noise", "optim.lr"),
    ("number", 0.0, True, None, False): ("optim.hyper_lr", "optim.weight_decay", "loss.dice_weight", "loss.gamma",
                                         "loss.prior_weight"),
    ("number", 0.0, False, None, True): ("optim.max_minutes",),
    ("number", 0.0, True, 1.0, False): ("clicks.deepest",),
    ("number", 0.0, True, 0.5, False): ("data.val_fraction",),
}
RULES = {key: rule for rule, keys in _RANGES.items() for key in keys}
LOSSES = ("nfl", "bce")


def load_config(config: dict | str | Path) -> tuple[dict, Path | None]:
    """Merge a YAML file (or dict) over the defaults, section by section; (config, the file's folder)."""
    base = None
    if not isinstance(config, dict):
        p = Path(config)
        if not p.is_file():
            raise InputError(f"training config {p} does not exist")
        try:
            config = yaml.safe_load(p.read_text()) or {}
        except yaml.YAMLError as e:
            raise InputError(f"training config {p} is not valid YAML: {e}") from None
        if not isinstance(config, dict):
            raise InputError(f"training config {p} must be a mapping of sections (model:, data:, optim:, ...)")
        base = p.resolve().parent
    unknown = sorted(set(config) - set(DEFAULTS), key=str)
    if unknown:
        raise InputError(f"unknown training config section(s) {unknown}; known: {sorted(DEFAULTS)}")
    cfg = copy.deepcopy(DEFAULTS)
    for k, v in config.items():
        if isinstance(cfg.get(k), dict) and isinstance(v, dict):
            cfg[k] = {**cfg[k], **v}
        elif isinstance(cfg.get(k), dict):
            raise InputError(f"training config section {k} must be a mapping, got {v!r}")
        else:
            cfg[k] = v
    check_values(cfg)
    return cfg, base


def check_values(cfg: dict) -> None:
    """Every numeric setting within its range, named with its section when it is not (a negative learning
    rate or a batch of 0 would otherwise start a run that trains nothing, or the wrong way)."""
    for key, (kind, low, low_ok, high, none_ok) in RULES.items():
        section, _, name = key.rpartition(".")
        value = (cfg[section] if section else cfg).get(name)
        if value is None and none_ok:
            continue
        whole = kind == "integer"
        ok = isinstance(value, (int, float)) and not isinstance(value, bool)
        if ok and whole:
            ok = float(value).is_integer()
        if ok:
            ok = (value >= low if low_ok else value > low) and (high is None or value <= high)
        if not ok:
            what = "a whole number" if whole else "a number"
            bound = f"{'at least' if low_ok else 'above'} {low}" + (f" and at most {high}" if high is not None else "")
            raise InputError(f"training setting {key}: {value!r} is not {what} {bound}")
    if int(cfg["model"].get("spatial_dims", 2)) not in (2, 3):
        raise InputError("model.spatial_dims must be 2 or 3")
    if cfg["loss"].get("kind") not in LOSSES:
        raise InputError(f"training setting loss.kind: {cfg['loss'].get('kind')!r}; use {' or '.join(LOSSES)}")
    stack = cfg["model"].get("stack") or []
    if stack and (list(stack) != ["filterbank"] or int(cfg["model"].get("spatial_dims", 2)) != 2):
        raise InputError(f"model.stack {stack}: a 2D network can be trained beside [filterbank], nothing else")


__all__ = ["DEFAULTS", "check_values", "load_config"]

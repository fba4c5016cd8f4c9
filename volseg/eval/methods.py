"""Segmentation methods as the benchmark harness sees them.

A method gets an image once, then after every click the whole list of clicks so far, and returns
a foreground probability map; the harness thresholds it at 0.49 (RITM).  The GP method feeds only
the newest click to its :class:`volseg.Session` (the session is incremental); the classical
baselines (:mod:`volseg.eval.baselines`) recompute from all seeds.
"""
from __future__ import annotations

from typing import Any, Protocol, Sequence, runtime_checkable

import numpy as np

from ..clicks import Click
from ..errors import InputError
from ..session import Session
from .baselines import GrabCutMethod, RandomWalkerMethod


@runtime_checkable
class Method(Protocol):
    """Interface: ``set_image`` once per sample, then ``predict`` after each new click.

    A Protocol (no base class to inherit) so that :mod:`volseg.eval.baselines` needs nothing from
    this module, which builds every method by name."""

    name: str

    def set_image(self, image: np.ndarray) -> None:  # (H, W, 3) uint8
        ...

    def predict(self, clicks: Sequence[Click]) -> np.ndarray:  # (H, W) float probability
        ...

    def config(self) -> dict:
        """Settings that change results; stored in every record so a resumed run cannot mix them."""
        ...


class GPMethod:
    """volseg's GP classifier through the public interactive API (:class:`volseg.Session`)."""

    name = "gp"

    def __init__(self, features: str = "filterbank", device: str = "cpu", **session_options: Any):
        self.features, self.device, self.options = features, device, dict(session_options)
        self.session = Session(features=features, device=device, **session_options)

    def set_image(self, image: np.ndarray) -> None:
        self.session.set_image(image)

    def predict(self, clicks: Sequence[Click]) -> np.ndarray:
        done = list(self.session.clicks)
        if len(done) > len(clicks) or [c.voxel() for c in done] != [c.voxel() for c in clicks[: len(done)]]:
            self.session.reset()  # not a continuation of the clicks the session holds
            done = []
        for c in clicks[len(done):]:
            self.session.add_click(c.position, positive=c.positive, object=c.object)
        # the session's mask is what a user gets (posterior sign plus the click-anchored topology
        # clean-up); it needs no variance, so the timing is that of an interactive click
        return (self.session.mask() == 1).astype(np.float32)

    def config(self) -> dict:
        # the resolved GP settings, so a resumed run cannot mix results from changed defaults
        gp = self.session.config.to_dict() if hasattr(self.session.config, "to_dict") else {}
        opts = {k: v for k, v in self.options.items() if k != "config"}
        # an extractor object is recorded by its name: its repr holds a memory address, which would
        # make a resumed run refuse its own records
        features = self.features
        if not isinstance(features, str):
            features = getattr(features, "name", str(features))
        return {"method": self.name, "features": str(features), "device": self.device, **opts, "gp": gp}


def method_names() -> list[str]:
    return ["gp", "random-walker", "grabcut"]


def make_method(name: str, *, features: str = "filterbank", device: str = "cpu", **options: Any) -> Method:
    """Build a method by its CLI name; ``options`` go to its constructor."""
    key = name.lower().replace("_", "-")
    if key == "gp":
        return GPMethod(features=features, device=device, **options)
    if key in ("random-walker", "randomwalker", "rw"):
        return RandomWalkerMethod(**options)
    if key in ("grabcut", "grab-cut"):
        return GrabCutMethod(**options)
    raise InputError(f"unknown method {name!r}; choose one of {', '.join(method_names())}")

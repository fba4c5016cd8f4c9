"""The FeatureExtractor protocol: what a Session (and a feature stack) asks of a source of features.

Every extractor states it explicitly by subclassing :class:`FeatureExtractor`: the filter bank
(:mod:`.filterbank`), a learned backbone (:mod:`.backbones`) and a stack of them (:mod:`.stack`).
"""
from __future__ import annotations

from typing import Protocol, runtime_checkable

import numpy as np

from ..config import GPConfig
from ..image import Image
from ..units import parse_bytes


@runtime_checkable
class FeatureExtractor(Protocol):
    """An image to feature vectors per location, and what a GP on them needs to know about them.

    * ``name``: how settings, runs and reports name the extractor;
    * ``gp_config``: GPConfig fields learned with the extractor (its kernel's lengthscales, noise, ...),
      ``{}`` when training-free; settings given explicitly to a Session still win;
    * ``prescaled``: the features come already divided by their lengthscale (a stack scales each part
      by its own), so the Session divides them by ``feature_lengthscale`` only, not by ``sqrt(D)``;
    * ``trained_ndim``: the spatial axes of the images ``gp_config`` was learned on (None: any), see
      :func:`learned_settings`.
    """

    name: str
    gp_config: dict
    prescaled: bool
    trained_ndim: int | None = None

    def features(self, image: Image, budget: int | None = None) -> np.ndarray:
        """Standardised features (*spatial, D) of ``image``, within ``budget`` bytes (None: the default
        memory budget, :func:`feature_budget`)."""
        ...

    def prior_mean(self, image: Image) -> np.ndarray | None:
        """The latent prior mean (*spatial) a learned head gives ``image``, None for an extractor without
        one.  An explicit call of its own, not a side effect of :meth:`features`."""
        ...


def learned_settings(extractor: FeatureExtractor, ndim: int) -> dict:
    """The GP settings ``extractor`` brings to an image of ``ndim`` spatial axes: its ``gp_config`` where it
    was learned on such images, none where not.  A 2D network run slice by slice on a volume had its kernel,
    spatial lengthscale and noise fitted to photographs, so the volume's defaults hold there."""
    trained = getattr(extractor, "trained_ndim", None)
    return dict(extractor.gp_config) if trained in (None, ndim) else {}


def feature_budget(budget: int | None) -> int:
    """Bytes an extractor may use: ``budget``, or GPConfig's default memory budget where None."""
    return parse_bytes(GPConfig.memory_budget if budget is None else budget, what="memory budget")


__all__ = ["FeatureExtractor", "feature_budget", "learned_settings"]

"""Several feature extractors side by side, e.g. ``learned2d+filterbank``.

An RBF on the concatenation ``[f_1 / (l_1 sqrt(D_1)), f_2 / (l_2 sqrt(D_2)), ...]`` is the product of
each part's own kernel, so every part keeps the lengthscale it was made with (a learned part the
one it was trained with, the filter bank 1).  A learned embedding knows objects but is coarser than
the image; the filter bank adds the pixel-accurate boundaries it lacks.
"""
from __future__ import annotations

import numpy as np

from .base import FeatureExtractor, feature_budget


def scaled_part(features: np.ndarray, lengthscale: float = 1.0) -> np.ndarray:
    """One part's features (..., D) divided by its lengthscale times sqrt(D), in their own dtype: an RBF on
    parts so scaled, side by side, is the product of the parts' own kernels."""
    return (features * np.float32(1.0 / (lengthscale * features.shape[-1] ** 0.5))).astype(features.dtype, copy=False)


class StackedFeatures(FeatureExtractor):
    # the parts come scaled by their own lengthscales: the Session divides only by feature_lengthscale
    prescaled = True

    def __init__(self, parts: list[FeatureExtractor]) -> None:
        if len(parts) < 2:
            raise ValueError("a feature stack needs at least two extractors")
        self.parts = list(parts)
        self.name = "+".join(p.name for p in self.parts)
        learned = [p for p in self.parts if p.gp_config]
        # the GP settings (spatial lengthscale, noise, ...) of the first learned part; its feature
        # lengthscale is applied to its own features below, so the stack as a whole has 1
        self.gp_config = {**(learned[0].gp_config if learned else {}), "feature_lengthscale": 1.0}
        self.trained_ndim = learned[0].trained_ndim if learned else None

    def features(self, image, budget: int | None = None) -> np.ndarray:
        blocks, share = [], feature_budget(budget) // len(self.parts)
        for part in self.parts:
            f = np.asarray(part.features(image, budget=share))
            blocks.append(scaled_part(f, part.gp_config.get("feature_lengthscale", 1.0)))
        return np.concatenate(blocks, axis=-1)

    def prior_mean(self, image) -> np.ndarray | None:
        """The first part's with a prior-mean head."""
        for part in self.parts:
            prior = part.prior_mean(image)
            if prior is not None:
                return prior
        return None

"""Several feature extractors side by side, e.g. ``learned2d+filterbank``.

An RBF on the concatenation ``[f_1 / (l_1 sqrt(D_1)), f_2 / (l_2 sqrt(D_2)), ...]`` is the product of
each part's own kernel, so every part keeps the lengthscale it was made with (a learned part the
one it was trained with, the filter bank 1).  A learned embedding knows objects but is coarser than
the image; the filter bank adds the pixel-accurate boundaries it lacks.
"""
from __future__ import annotations

import numpy as np


class StackedFeatures:
    # the parts come scaled by their own lengthscales: the Session divides only by feature_lengthscale
    prescaled = True

    def __init__(self, parts: list) -> None:
        if len(parts) < 2:
            raise ValueError("a feature stack needs at least two extractors")
        self.parts = list(parts)
        self.name = "+".join(getattr(p, "name", type(p).__name__) for p in self.parts)
        learned = [p for p in self.parts if getattr(p, "gp_config", None)]
        # the GP settings (spatial lengthscale, noise, ...) of the first learned part; its feature
        # lengthscale is applied to its own features below, so the stack as a whole has 1
        self.gp_config = {**(learned[0].gp_config if learned else {}), "feature_lengthscale": 1.0}
        self.last_prior_mean: np.ndarray | None = None

    def features(self, image, *, budget: int) -> np.ndarray:
        blocks, self.last_prior_mean = [], None
        for part in self.parts:
            f = np.asarray(part.features(image, budget=budget // len(self.parts)))
            lengthscale = (getattr(part, "gp_config", None) or {}).get("feature_lengthscale", 1.0)
            blocks.append((f * np.float32(1.0 / (lengthscale * f.shape[-1] ** 0.5))).astype(f.dtype, copy=False))
            if self.last_prior_mean is None:
                self.last_prior_mean = getattr(part, "last_prior_mean", None)
        return np.concatenate(blocks, axis=-1)

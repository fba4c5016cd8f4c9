"""The GP input at a location: its features over their lengthscale, next to its position over the spatial one.

    z(x) = [ phi(x) / l_feat ,  (x - centre) * spacing / l_space ]

One RBF on z is then the product of a feature kernel and a spatial kernel (in mm), which is what
lets a click's influence be bounded in space (:meth:`InputMap.reach_mm`).  Positions are made
on the fly from voxel indices, so no coordinate grid of the whole volume is ever stored.
"""
from __future__ import annotations

from typing import Callable, Sequence

import numpy as np
import torch


class InputMap:
    def __init__(self, features: torch.Tensor, spacing: Sequence[float], *, feature_lengthscale: float,
                 spatial_lengthscale: float, compute_dtype: torch.dtype = torch.float32,
                 ensure: Callable[[list[tuple[slice, ...]], np.ndarray | None], None] | None = None) -> None:
        self.features = features  # (*spatial, D), any float dtype, on the evaluation device
        # features computed on demand (volseg.features.tiles): called with the boxes about to be read
        self._ensure = ensure
        self.shape = tuple(features.shape[:-1])
        self.ndim = len(self.shape)
        self.n_features = int(features.shape[-1])
        self.device = features.device
        self.dtype = compute_dtype
        self.feature_lengthscale = float(feature_lengthscale)
        self.spatial_lengthscale = float(spatial_lengthscale)
        sp = torch.as_tensor(np.asarray(spacing, dtype=np.float64), dtype=compute_dtype, device=self.device)
        # public for the fused evaluation (gp/fused.py), which builds z in registers from the same numbers
        self.position_scale = sp / self.spatial_lengthscale
        self.centre = torch.tensor([(s - 1) / 2.0 for s in self.shape], dtype=compute_dtype, device=self.device)

    @property
    def dim(self) -> int:
        return self.n_features + self.ndim

    def ensure(self, boxes: list[tuple[slice, ...]], voxels: np.ndarray | None = None) -> None:
        """Make the features of these boxes (and of these (n, ndim) voxels) valid before they are read (a
        no-op unless computed on demand)."""
        if self._ensure is not None:
            self._ensure(boxes, voxels)

    def at(self, voxels: np.ndarray | torch.Tensor) -> torch.Tensor:
        """z at integer voxel indices (n, ndim)."""
        idx = torch.as_tensor(np.asarray(voxels), dtype=torch.long, device=self.device).reshape(-1, self.ndim)
        if self._ensure is not None:  # (no copy to the host where the features are all there)
            self._ensure([], idx.cpu().numpy())
        z = torch.empty(idx.shape[0], self.dim, dtype=self.dtype, device=self.device)
        z[:, : self.n_features] = self.features[tuple(idx.T)]
        z[:, self.n_features:] = (idx.to(self.dtype) - self.centre) * self.position_scale
        z[:, : self.n_features] /= self.feature_lengthscale
        return z

    def box(self, box: tuple[slice, ...], out: torch.Tensor | None = None) -> torch.Tensor:
        """z for every voxel of a box, in C order: (prod(box shape), dim).  Written into one buffer
        (``out``, (n, dim), may be a column block of a wider one): positions broadcast from one arange
        per axis, so no coordinate grid is built."""
        shape = tuple(s.stop - s.start for s in box)
        self.ensure([tuple(box)])
        if out is not None:
            flat = out
        else:
            flat = torch.empty(int(np.prod(shape)), self.dim, dtype=self.dtype, device=self.device)
        z = flat.view(shape + (self.dim,))
        z[..., : self.n_features] = self.features[box]
        if self.feature_lengthscale != 1.0:
            z[..., : self.n_features] /= self.feature_lengthscale
        for k, s in enumerate(box):
            view = [1] * self.ndim
            view[k] = shape[k]
            coords = torch.arange(s.start, s.stop, dtype=self.dtype, device=self.device)
            ax = (coords - self.centre[k]) * self.position_scale[k]
            z[..., self.n_features + k] = ax.view(view)
        return flat

    @property
    def pos_scale(self) -> np.ndarray:
        """z units per voxel along each axis: a kernel radius r spans r / pos_scale voxels."""
        return self.position_scale.cpu().double().numpy()

"""Image: an array plus the geometry that places it in the world.

Axis convention (the same for every format):

* ``array`` has shape ``(*spatial, channels)``; array axis ``k`` is index axis ``k``.
  For 2D rasters that is ``(row, column, channel)``; for volumes it is the file's voxel
  index order ``(i, j, k, channel)`` -- the order ITK-SNAP and 3D Slicer show as voxel
  coordinates (SimpleITK's ``GetArrayFromImage`` order is reversed on reading).
* World coordinates are ITK/DICOM **LPS** millimetres:
  ``world = origin + direction @ (spacing * index)``, ``direction[:, k]`` being the unit
  world vector of array axis ``k``.  RAS (NIfTI's convention) is accepted on request by
  flipping the first two world axes.
* Rasters get spacing 1, origin 0 and identity direction, so world == index.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np

from .errors import GeometryError, InputError

LPS_TO_RAS = np.diag([-1.0, -1.0, 1.0])


@dataclass
class Image:
    array: np.ndarray
    spacing: tuple[float, ...] | None = None
    origin: tuple[float, ...] | None = None
    direction: np.ndarray | None = None
    meta: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        a = np.asarray(self.array)
        if a.ndim < 2:
            raise InputError(f"an image needs at least 2 spatial axes plus channels, got shape {a.shape}")
        if a.dtype != bool and not (np.issubdtype(a.dtype, np.integer) or np.issubdtype(a.dtype, np.floating)):
            raise InputError(f"image values of type {a.dtype}: volseg segments real intensities (for a complex "
                             "image give its magnitude)")
        self.array = a
        d = a.ndim - 1
        self.spacing = tuple(float(s) for s in (self.spacing if self.spacing is not None else (1.0,) * d))
        self.origin = tuple(float(o) for o in (self.origin if self.origin is not None else (0.0,) * d))
        self.direction = np.asarray(self.direction if self.direction is not None else np.eye(d), dtype=np.float64)
        if len(self.spacing) != d or len(self.origin) != d or self.direction.shape != (d, d):
            raise GeometryError(
                f"geometry does not match {d} spatial axes: spacing {self.spacing}, origin {self.origin}, "
                f"direction {self.direction.shape}"
            )
        if any(not np.isfinite(s) or s <= 0 for s in self.spacing):
            raise GeometryError(f"spacing must be positive and finite, got {self.spacing}")

    @classmethod
    def from_array(cls, array: np.ndarray, *, channel_axis: int | None = None, **geometry: Any) -> "Image":
        """Wrap a plain array: ``(*spatial)`` becomes one channel; ``channel_axis`` moves channels last."""
        a = np.asarray(array)
        if channel_axis is None:
            a = a[..., None]
        else:
            a = np.moveaxis(a, channel_axis, -1)
        return cls(a, **geometry)

    # -- shape -------------------------------------------------------------------------------
    @property
    def ndim(self) -> int:
        """Number of spatial axes (2 or 3)."""
        return self.array.ndim - 1

    @property
    def shape(self) -> tuple[int, ...]:
        """Spatial shape."""
        return tuple(self.array.shape[:-1])

    @property
    def channels(self) -> int:
        return int(self.array.shape[-1])

    # -- geometry ----------------------------------------------------------------------------
    @property
    def affine(self) -> np.ndarray:
        """(d+1)x(d+1) index -> world (LPS) matrix."""
        d = self.ndim
        m = np.eye(d + 1)
        m[:d, :d] = self.direction * np.asarray(self.spacing)[None, :]
        m[:d, d] = self.origin
        return m

    def index_to_world(self, index: np.ndarray, *, ras: bool = False) -> np.ndarray:
        idx = np.atleast_2d(np.asarray(index, dtype=np.float64))
        world = idx @ (self.direction * np.asarray(self.spacing)).T + np.asarray(self.origin)
        return self._flip_ras(world) if ras else world

    def world_to_index(self, world: np.ndarray, *, ras: bool = False) -> np.ndarray:
        w = np.atleast_2d(np.asarray(world, dtype=np.float64))
        if ras:
            w = self._flip_ras(w)
        m = self.direction * np.asarray(self.spacing)
        return np.linalg.solve(m, (w - np.asarray(self.origin)).T).T

    def _flip_ras(self, world: np.ndarray) -> np.ndarray:
        # LPS <-> RAS is the same flip both ways; only the first two world axes change sign.
        w = world.copy()
        w[:, : min(2, w.shape[1])] *= -1
        return w

    def same_grid(self, other: "Image", *, atol: float = 1e-4) -> bool:
        return (
            self.shape == other.shape
            and np.allclose(self.spacing, other.spacing, atol=atol, rtol=1e-5)
            and np.allclose(self.origin, other.origin, atol=max(atol, 1e-3))
            and np.allclose(self.direction, other.direction, atol=atol)
        )

    def check_same_grid(self, other: "Image", what: str = "prior mask") -> None:
        """Raise a GeometryError that says exactly which part of the grid differs."""
        if self.shape != other.shape:
            raise GeometryError(f"{what} has shape {other.shape}, the image has {self.shape}")
        for name in ("spacing", "origin", "direction"):
            a, b = np.asarray(getattr(self, name)), np.asarray(getattr(other, name))
            if not np.allclose(a, b, atol=1e-3, rtol=1e-5):
                raise GeometryError(f"{what} {name} {b.round(4).tolist()} differs from the image's "
                                    f"{a.round(4).tolist()}")

    def with_array(self, array: np.ndarray) -> "Image":
        """Same geometry, another array (spatial shape must match)."""
        a = np.asarray(array)
        if a.ndim == self.ndim:
            a = a[..., None]
        if a.shape[:-1] != self.shape:
            raise GeometryError(f"array of spatial shape {a.shape[:-1]} does not fit image of shape {self.shape}")
        return Image(a, self.spacing, self.origin, self.direction.copy(), dict(self.meta))

    def check_finite(self) -> None:
        if np.issubdtype(self.array.dtype, np.floating):
            bad = ~np.isfinite(self.array)
            if bad.any():
                first = np.argwhere(bad)[0][:-1].tolist()
                message = (f"image {self.meta.get('path', '')} has {int(bad.sum())} NaN/Inf values "
                           f"(first at index {first})")
                raise InputError(message.replace("  ", " "))

"""Filter-bank features computed where the clicks reach: tile by tile, on demand, each tile once.

A click's posterior reads the features of its re-evaluated boxes only, so a whole CT need not be
filtered before the first click.  The bank's scales split in two:

* coarse scales (a pyramid factor above 1, :mod:`volseg.features.scale_space`) are filtered once
  over the whole image on their coarse grid, which is a small fraction of the voxels; a tile
  interpolates its values from the coarse samples around it;
* fine scales are filtered per tile, over the tile plus a halo of ``4 sigma`` of the largest fine
  scale (two voxels more for the differences), so the tile sees what the whole image would.

So a tile's features equal the whole image's (:meth:`FilterBank.raw`) up to float rounding.  The
standardisation (per-feature mean and spread) must be one for all tiles before any tile is stored:
it is estimated from small blocks on a regular lattice over the image.  That estimate moves the
feature weights (heavy-tailed edge features most), and with them the GP's answers, so volumes up
to ``GPConfig.on_demand_features_above`` voxels take every tile at once (``on_demand=False``) and
the whole image's own statistics, as :meth:`FilterBank.features` does.
"""
from __future__ import annotations

import math
import time
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from typing import Iterator, Sequence

import numpy as np
import torch

from ..image import Image
from .scale_space import coarse_derivatives, gaussian_derivatives, pyramid_factors, pyramid_level, upsample_window
from .stream import feature_storage, standardisation

Box = tuple[slice, ...]
TILE = 32              # voxels per tile edge: fine enough that a click computes little beyond its reach
SAMPLES_PER_AXIS = 4   # sample blocks per axis that set the standardisation (4^ndim blocks) ...
SAMPLE_EDGE = 8        # ... of this many voxels per edge
CHUNK_BYTES = 512 * 1024 ** 2  # working memory of one computed region (its features and temporaries)


class TiledFeatures:
    """Standardised features (*spatial, D) of ``image`` in :attr:`array`, valid where :meth:`ensure`
    has been asked for them.  ``scale`` multiplies every feature (the session's lengthscale)."""

    def __init__(self, bank, image: Image, *, budget: int, scale: float = 1.0, on_demand: bool = True) -> None:
        shape, n = image.shape, int(np.prod(image.shape))
        self.bank, self.image, self.shape = bank, image, tuple(shape)
        self.params = bank.prepare(image.array)
        if self.params.get("superpixels"):
            raise ValueError("superpixel features are not local: compute them with FilterBank.features")
        D = bank.n_features(image.ndim, image.channels, n)
        dtype = feature_storage(image, D, budget)
        self.n_features = D
        # channel-first storage behind a (*spatial, D) view, as FilterBank.features gives; its pages
        # are taken from the system only when a tile is written
        self._storage = np.empty((D,) + self.shape, dtype=dtype)
        self.array = np.moveaxis(self._storage, 0, -1)
        self.grid = tuple(-(-s // TILE) for s in self.shape)
        self.done = np.zeros(self.grid, dtype=bool)
        self.halo = self._fine_halo()
        self._moments: list | None = None  # set while every tile is computed at once, for the exact statistics
        self._coarse: dict = {}  # (channel, sigma, orders) -> coarse derivative maps and their factors
        self._levels: dict = {}  # (channel, factors) -> pyramid level of the whole image
        self._whole_channels: np.ndarray | None = None
        self.seconds = 0.0  # spent computing features so far
        t0 = time.perf_counter()
        if on_demand:
            self._set_standardisation(scale)
        else:
            self._compute_all_standardised(scale)
        # every coarse map is made by now (the sample blocks asked for all of them): the whole-image
        # channels and pyramid levels are not needed again
        self._whole_channels, self._levels = None, {}
        self.seconds = time.perf_counter() - t0  # (ensure_all above counted its own part already)
        self.initial_seconds = self.seconds  # what making the object took (before any click asked)

    # -- public ------------------------------------------------------------------------------------
    def ensure(self, boxes: Sequence[Box], voxels: np.ndarray | None = None) -> None:
        """Compute every tile that meets one of ``boxes`` or holds one of ``voxels`` (n, ndim) and is not
        computed yet."""
        need = np.zeros(self.grid, dtype=bool)
        for b in boxes:
            if all(s.stop > s.start for s in b):
                need[tuple(slice(s.start // TILE, -(-s.stop // TILE)) for s in b)] = True
        if voxels is not None and len(voxels):
            need[tuple((np.asarray(voxels, np.int64) // TILE).T)] = True
        missing = need & ~self.done
        if not missing.any():
            return
        t0 = time.perf_counter()
        hit = np.argwhere(missing)
        first, last = int(hit[:, 0].min()), int(hit[:, 0].max()) + 1
        # regions of whole tile rows along axis 0, one per thread at a time, as thick as the working
        # memory allows (the fine halo is then a small part of each) and no thicker than sharing
        # the rows among the threads needs
        workers = max(1, torch.get_num_threads())
        width = (hit.max(0) - hit.min(0) + 1)[1:] * TILE
        rows = CHUNK_BYTES // workers // (4 * (self.n_features + self.bank.temporaries) * TILE * int(np.prod(width)))
        rows = max(1, min(rows, -(-(last - first) // workers)))
        tiles = []
        for a in range(first, last, rows):
            part = missing[a: a + rows]
            if part.any():
                inside = np.argwhere(part)
                lo, hi = inside.min(0), inside.max(0) + 1
                lo[0] += a
                hi[0] += a
                tiles.append(tuple(slice(int(low), int(high)) for low, high in zip(lo, hi)))
        regions = [tuple(slice(t.start * TILE, min(t.stop * TILE, n)) for t, n in zip(ts, self.shape)) for ts in tiles]
        with _one_torch_thread() as threads:
            if threads > 1 and len(regions) > 1:  # scipy's filters let go of the GIL: the regions run side by side
                with ThreadPoolExecutor(min(threads, len(regions))) as pool:
                    list(pool.map(self._compute, regions))
            else:
                for region in regions:
                    self._compute(region)
        for ts in tiles:
            self.done[ts] = True
        self.seconds += time.perf_counter() - t0

    def ensure_all(self) -> np.ndarray:
        self.ensure([tuple(slice(0, s) for s in self.shape)])
        return self.array

    def raw(self, box: Box) -> np.ndarray:
        """Unstandardised features (*box, D) of a box, as :meth:`FilterBank.raw` gives them for the
        whole image, computed from the box, its fine halo and the coarse maps."""
        region = tuple(slice(max(0, s.start - h), min(n, s.stop + h)) for s, h, n in zip(box, self.halo, self.shape))

        def derivatives(c: int, x: np.ndarray, sigma, orders):
            if max(pyramid_factors(sigma)) == 1:
                return gaussian_derivatives(x, sigma, orders)
            maps, factors = self._coarse_maps(c, sigma, orders)
            return [upsample_window(m, factors, region) for m in maps]

        f = self.bank.raw(self.image.array[region], self.image.spacing, self.params, derivatives=derivatives)
        return f[tuple(slice(s.start - r.start, s.stop - r.start) for s, r in zip(box, region))]

    # -- inside --------------------------------------------------------------------------------------
    def _compute(self, box: Box) -> None:
        f = self.raw(box)
        if self._moments is not None:  # the raw pass of all at once: sums while the features are at hand
            flat = f.reshape(-1, self.n_features)
            self._moments.append((flat.sum(0, dtype=np.float64), np.einsum("ij,ij->j", flat, flat, dtype=np.float64)))
            for k in range(self.n_features):
                self._storage[(k,) + tuple(box)] = f[..., k]
            return
        for k in range(self.n_features):  # feature by feature: contiguous rows of the channel-first storage
            self._storage[(k,) + tuple(box)] = (f[..., k] - self._mean[k]) * self._scale[k]

    def _coarse_maps(self, c: int, sigma, orders):
        key = (c, tuple(float(s) for s in sigma), tuple(tuple(o) for o in orders))
        if key not in self._coarse:
            if self._whole_channels is None:
                self._whole_channels = self.bank.channels(self.image.array, self.params)
            x = self._whole_channels[..., c]
            self._coarse[key] = coarse_derivatives(x, sigma, orders, level=self._level(c, pyramid_factors(sigma)))
        return self._coarse[key]

    def _level(self, c: int, factors: tuple[int, ...]) -> tuple[np.ndarray, list[float]]:
        """The pyramid level of channel ``c`` reduced by ``factors``, shared by the scales on it.  A level
        is reduced from the one at half its factors, not from the whole image again: the binomial steps
        act on each axis alone, so the result is the same up to float rounding, for an eighth of the work."""
        if (c, factors) not in self._levels:
            half = tuple(max(1, f // 2) for f in factors)
            if max(factors) <= 2:  # one step from the whole image
                level = pyramid_level(np.asarray(self._whole_channels[..., c], np.float32), factors)
            else:
                grid, variance = self._level(c, half)
                grid, more = pyramid_level(grid, tuple(f // h for f, h in zip(factors, half)))
                level = (grid, [v + m * h * h for v, m, h in zip(variance, more, half)])
            self._levels[(c, factors)] = level
        return self._levels[(c, factors)]

    def _fine_halo(self) -> tuple[int, ...]:
        """Per axis, what a fine scale's Gaussian (scipy truncates it at 4 sigma) and differences reach."""
        sp = np.asarray(self.image.spacing, np.float64)
        halo = [0] * len(self.shape)
        bank = self.bank
        for s in bank.smoothing_scales + bank.gradient_scales + bank.hessian_scales:
            sigma = s / sp
            if s > 0 and max(pyramid_factors(sigma)) == 1:
                halo = [max(h, int(math.ceil(4.0 * g)) + 2) for h, g in zip(halo, sigma)]
        return tuple(halo)

    def _compute_all_standardised(self, scale: float) -> None:
        """Every tile now, standardised by the whole image's own statistics (as FilterBank.features)."""
        self._moments = []  # (sum, sum of squares) per computed region, float64
        self.ensure_all()  # the raw features, stored
        total, total2 = (np.sum([m[i] for m in self._moments], axis=0) for i in (0, 1))
        self._moments, n = None, int(np.prod(self.shape))
        mean = total / n
        std = np.sqrt(np.maximum(total2 / n - mean * mean, 0.0))
        self._finish_standardisation(mean, std, scale)
        for k in range(self.n_features):
            for plane in self._storage[k]:
                if plane.dtype == np.float32:  # in place, the same float32 arithmetic
                    np.subtract(plane, self._mean[k], out=plane)
                    np.multiply(plane, self._scale[k], out=plane)
                else:
                    plane[...] = (plane.astype(np.float32) - self._mean[k]) * self._scale[k]

    def _finish_standardisation(self, mean: np.ndarray, std: np.ndarray, scale: float) -> None:
        mean, factor = standardisation(self.bank, self.shape, self.image.channels, mean, std)
        self._mean = mean.astype(np.float32)
        self._scale = (factor * scale).astype(np.float32)

    def _set_standardisation(self, scale: float) -> None:
        """Mean and spread per feature from small blocks on a regular lattice over the image: a
        stratified sample of the whole image's statistics (an estimate: the spread of heavy-tailed
        edge features can be off by a few times, see the module's doc)."""
        starts = [sorted({min(n - SAMPLE_EDGE, int(n * (k + 0.5) / SAMPLES_PER_AXIS) - SAMPLE_EDGE // 2)
                          for k in range(SAMPLES_PER_AXIS)}) for n in self.shape]
        boxes = [tuple(slice(max(0, int(a)), max(0, int(a)) + min(SAMPLE_EDGE, n)) for a, n in zip(corner, self.shape))
                 for corner in np.stack(np.meshgrid(*starts, indexing="ij"), -1).reshape(-1, len(self.shape))]
        with _one_torch_thread():
            raws = [self.raw(b) for b in boxes]
        flat = np.concatenate([r.reshape(-1, self.n_features) for r in raws]).astype(np.float64)
        self._finish_standardisation(flat.mean(0), flat.std(0), scale)


@contextmanager
def _one_torch_thread() -> Iterator[int]:
    """The bank's torch steps (eigenvalues, interpolation) on one thread each, and how many threads
    there were: on tile-sized maps a parallel region per op costs more than it gains, most of all on
    a busy machine, so the threads take whole regions instead."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield threads
    finally:
        torch.set_num_threads(threads)

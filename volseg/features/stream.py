"""Compute a feature map slab by slab within a memory budget, then standardise it in place.

Each slab along axis 0 is filtered with the halo the filters need and cropped, so the result
equals filtering the whole volume at once; per-feature mean and variance are accumulated on the
way and applied at the end.  Large maps are stored in float16 (features are standardised, so
half precision keeps ~3 significant digits, far below the kernel's lengthscales).
"""
from __future__ import annotations

import numpy as np

from ..errors import MemoryBudgetError
from ..image import Image
from ..units import format_bytes
from .scale_space import MAX_FACTOR

# float32 maps larger than this go float16 whatever the budget: larger than a last-level cache, they
# are streamed from memory by every click, whose evaluation then waits on the bytes it reads
STREAMED_BYTES = 32 * 1024 ** 2


def storage_dtype(n_locations: int, n_features: int, budget: int) -> np.dtype:
    f32 = n_locations * n_features * 4
    return np.dtype(np.float32) if f32 <= min(budget // 4, STREAMED_BYTES) else np.dtype(np.float16)


def feature_storage(image: Image, n_features: int, budget: int) -> np.dtype:
    """The dtype ``n_features`` maps of ``image`` are stored in, after checking that they and the
    image fit in ``budget`` bytes (a MemoryBudgetError naming the sizes if not)."""
    n = int(np.prod(image.shape))
    dtype = storage_dtype(n, n_features, budget)
    need = n * n_features * dtype.itemsize + image.array.nbytes
    if need > budget:
        raise MemoryBudgetError(
            f"image of shape {image.shape} needs about {format_bytes(need)} for its {n_features} features, "
            f"over the memory budget of {format_bytes(budget)} (raise --memory-budget or crop the image)")
    return dtype


def standardisation(bank, shape: tuple[int, ...], channels: int, mean: np.ndarray,
                    std: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(shift, factor) per feature from its mean and spread over an image of spatial ``shape`` with
    ``channels``: ``(f - shift) * factor`` is the stored feature, with the bank's per-feature weights
    (its ARD lengthscales) folded in; constant features stay constant."""
    std = np.where(std > 1e-6 * (1.0 + np.abs(mean)), std, 1.0)
    weights = getattr(bank, "weights", lambda *a: np.ones(len(mean)))(len(shape), channels, int(np.prod(shape)))
    return mean, weights / std


def compute_features(bank, image: Image, *, budget: int, slab_bytes: int | None = None) -> np.ndarray:
    """Standardised features (*spatial, D) of ``image`` computed in slabs, within ``budget`` bytes
    (a view of channel-first storage)."""
    shape, n = image.shape, int(np.prod(image.shape))
    D = bank.n_features(image.ndim, image.channels, n)
    dtype = feature_storage(image, D, budget)
    store_bytes = n * D * dtype.itemsize
    params = bank.prepare(image.array)
    halo = bank.halo(image.spacing)[0]
    plane = n // shape[0]
    # a slab holds its features and a few temporaries (FilterBank.raw); what the stored map and the
    # image leave of the budget goes to slabs, which are thick enough that the halo stays a minor cost
    per_voxel = 4 * (D + bank.temporaries)
    slab_bytes = slab_bytes or max(budget - store_bytes - image.array.nbytes - 64 * 1024 ** 2, 64 * 1024 ** 2)
    thick = max(1, int(slab_bytes // (plane * per_voxel)) - 2 * halo)
    # slabs start on pyramid block boundaries so they see the same coarse grid as the whole volume
    thick = max(MAX_FACTOR, thick - thick % MAX_FACTOR)
    if params.get("superpixels"):
        thick = shape[0]  # superpixels are not local: one slab (prepare allows them only for small images)
    # stored channel-first behind a (*spatial, D) view: the fused evaluation then reads each channel
    # of a row as whole vectors instead of gathering them location by location
    out = np.moveaxis(np.empty((D,) + shape, dtype=dtype), 0, -1)
    total, total2 = np.zeros(D), np.zeros(D)
    for a in range(0, shape[0], thick):
        b = min(a + thick, shape[0])
        lo, hi = max(0, a - halo) // MAX_FACTOR * MAX_FACTOR, min(shape[0], b + halo)
        f = bank.raw(image.array[lo:hi], image.spacing, params)[a - lo: a - lo + (b - a)]
        flat = f.reshape(-1, D)
        total += flat.sum(0, dtype=np.float64)  # float64 accumulators, no float64 copy of the slab
        total2 += np.einsum("ij,ij->j", flat, flat, dtype=np.float64)
        out[a:b] = f
    mean = total / n
    std = np.sqrt(np.maximum(total2 / n - mean * mean, 0.0))
    mean, scale = standardisation(bank, image.shape, image.channels, mean, std)
    for a in range(0, shape[0], thick):
        b = min(a + thick, shape[0])
        out[a:b] = ((out[a:b].astype(np.float32) - mean) * scale).astype(dtype)
    return out


def estimate_bytes(bank, image: Image) -> int:
    n = int(np.prod(image.shape))
    D = bank.n_features(image.ndim, image.channels, n)
    return image.array.nbytes + n * D * 2 + n * 4 * 3

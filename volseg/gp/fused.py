"""The posterior over a box in one fused pass on the CPU (the compiled ``_fused`` extension), and the video
GP's kernel values (:func:`video_kernel`).

A click's work per location is a few dozen multiply-adds and exps against at most a few dozen
clicks: as separate torch ops (build z, |z|^2, a skinny GEMM, exp, a second GEMM) it is bound by
writing and re-reading those intermediates, not by arithmetic.  The extension builds z in
registers and writes only the mean and the variance.  It computes the formulas of
:class:`~volseg.gp.posterior.ExactPosterior` in float32; where it does not apply
(:func:`applies`: CUDA, no compiler at install time, another kernel or layout) the caller
takes the torch path.
"""
from __future__ import annotations

import copy
import ctypes
import os

import numpy as np
import torch

from .kernels import EXP_FLOOR, RBF, Matern, MultiScaleRBF

_KINDS = {0.5: 1, 1.5: 2, 2.5: 3}  # Matern nu -> the extension's kernel code (RBF is 0)
_P = ctypes.c_void_p
_I64P = ctypes.POINTER(ctypes.c_int64)


def _load():
    if os.environ.get("VOLSEG_NO_FUSED"):  # force the torch path (benchmarks, debugging)
        return None
    try:
        from . import _fused  # noqa: PLC0415 -- the C extension may not be built; torch is the fallback
    except ImportError:
        return None
    lib = ctypes.CDLL(_fused.__file__)
    fn = lib.volseg_posterior_region
    fn.restype = ctypes.c_int
    fn.argtypes = [ctypes.c_int64, _P, _P, _P, ctypes.c_int,          # chunks, starts, stops, m0 rows, threads
                   ctypes.c_int, _P, _I64P, ctypes.c_int64, ctypes.c_int,  # ndim, features, strides, D, half
                   ctypes.c_float, _P, _P,                            # feature scale, centre, position scale
                   ctypes.c_int, ctypes.c_float, ctypes.c_float,      # kernel, exponent floor, outputscale
                   ctypes.c_int64, _P, _P,                            # n, Z, |Z|^2 / 2
                   ctypes.c_int64, _P, _P,                            # K, alpha, m0
                   _P, ctypes.c_int64, _I64P,                         # mean, object stride, strides
                   _P, _P, _I64P]                                     # L^-1, var, strides
    takes = lib.volseg_posterior_takes
    takes.restype = ctypes.c_int
    takes.argtypes = [ctypes.c_int, ctypes.c_int64, ctypes.c_int64, ctypes.c_int]  # ndim, inputs, K, half
    lib.volseg_fused_simd.restype = ctypes.c_int
    lib.volseg_fused_simd.argtypes = [ctypes.c_int]
    video = getattr(lib, "volseg_video_kernel", None)  # absent from an extension built before it
    if video is not None:
        video.restype = None
        video.argtypes = [_P, ctypes.c_int64, ctypes.c_int64, _P, _P, _P, _P, ctypes.c_float, ctypes.c_float]
    return fn, takes, lib.volseg_fused_simd, video


_FN, _TAKES, _SIMD, _VIDEO = _load() or (None, None, None, None)


def simd(want: int | None = None) -> int:
    """The vector width (512: AVX-512, 256: AVX2 + FMA, 0: none) of the extension's intrinsics RBF
    pass; ``want`` asks for a width (the widest the CPU has at or below it), 0 for the portable pass
    alone (tests compare the passes).  Returns the width now in use."""
    if _SIMD is None:
        return 0
    return int(_SIMD(-1 if want is None else int(want)))


def available() -> bool:
    return _FN is not None


def video_kernel(k: np.ndarray, e_row: np.ndarray | None, e_col: np.ndarray | None, rows: np.ndarray,
                 cols: np.ndarray, wg: float) -> None:
    """The video GP's kernel values from their exponents, in place and in one pass
    (:meth:`volseg.video.gp.MemoryPosterior.latent`): k (n, N) float32 holds h = -|d|^2 / 2 and becomes
    ``exp(clip(h, EXP_FLOOR, 0))``, times the separable spatial factor ``wg + e_row[rows[i]] * e_col[cols[i]]``
    where ``e_row`` is given (e_row (H, N), e_col (W, N) float32; rows, cols (n,) indices into them; both
    tables None: no spatial factor).
    Through numpy where the extension is not built."""
    spatial = e_row is not None
    if _VIDEO is None or not (k.flags.c_contiguous and k.dtype == np.float32):
        np.clip(k, EXP_FLOOR, 0.0, out=k)  # -|d|^2/2 <= 0 up to rounding; floored so exp stays normal
        np.exp(k, out=k)
        if spatial:
            ks = e_row[rows]
            ks *= e_col[cols]
            ks += wg
            k *= ks
        return
    if spatial:
        e_row, e_col = (np.ascontiguousarray(e, np.float32) for e in (e_row, e_col))
        rows, cols = (np.ascontiguousarray(v, np.int64) for v in (rows, cols))
        if len(rows) != k.shape[0] or len(cols) != k.shape[0] or e_row.shape[1] != k.shape[1] \
                or e_col.shape[1] != k.shape[1]:
            raise ValueError("video_kernel: k, the tables and the indices do not match")
        if len(rows) and (min(rows.min(), cols.min()) < 0 or rows.max() >= len(e_row) or cols.max() >= len(e_col)):
            raise ValueError("video_kernel: an index outside its table")  # the C pass reads without checking
        tables = (e_row.ctypes.data, e_col.ctypes.data, rows.ctypes.data, cols.ctypes.data)
    else:
        tables = (None, None, None, None)
    _VIDEO(k.ctypes.data, k.shape[0], k.shape[1], *tables, float(wg), float(EXP_FLOOR))


def _kind(kernel) -> int | None:
    if isinstance(kernel, RBF):
        return 0
    if isinstance(kernel, Matern):
        return _KINDS.get(kernel.nu)
    return None


class _RBFPart:
    """One RBF term of a sum kernel, as :func:`evaluate_region` reads a posterior: the kernel, the weights and
    the training inputs (their positions scaled as the term scales them)."""

    def __init__(self, posterior, outputscale: float, position_factor: float, spatial_dims: int) -> None:
        Z = posterior.Z.clone()
        Z[:, -spatial_dims:] *= position_factor
        self.kernel, self.n, self.alpha = RBF(outputscale), posterior.n, posterior.alpha
        f32 = lambda t: t.to("cpu", torch.float32).contiguous()  # noqa: E731
        self._terms = {"Z": f32(Z), "half_sq": f32(0.5 * (Z * Z).sum(1)), "alpha": f32(posterior.alpha), "Linv": None}

    def fused_terms(self) -> dict:
        return self._terms


def multiscale_parts(posterior, inputs) -> list[tuple[_RBFPart, object]] | None:
    """The multiscale kernel's mean as two RBF passes: ``k = s2 k_f [(1 - w) k_p(dp) + w k_p(r dp)]``, so
    ``mean = m0 + (1 - w) sum alpha k_rbf(z) + w sum alpha k_rbf(z')``, z' with positions r times larger.
    (The mean only: the variance is not a sum of two such terms.)  None where the kernel is another."""
    kern = posterior.kernel
    if not isinstance(kern, MultiScaleRBF) or posterior.n == 0:
        return None
    short = copy.copy(inputs)
    short.position_scale = inputs.position_scale * kern.ratio
    return [(_RBFPart(posterior, kern.outputscale * (1.0 - kern.share), 1.0, kern.spatial_dims), inputs),
            (_RBFPart(posterior, kern.outputscale * kern.share, kern.ratio, kern.spatial_dims), short)]


def _longs(values) -> ctypes.Array:
    values = [int(v) for v in values]
    return (ctypes.c_int64 * max(1, len(values)))(*values)


def applies(posterior, inputs, *outputs: torch.Tensor | None) -> bool:
    """Whether :func:`evaluate_region` can take this posterior, input map and output maps."""
    f = inputs.features
    return (_FN is not None and _kind(posterior.kernel) is not None and posterior.n > 0
            and f.device.type == "cpu" and f.dtype in (torch.float32, torch.float16)
            # channels-last, or channel-first (each channel's rows contiguous: loaded as whole vectors)
            and (f.stride(-1) == 1 or (f.dim() >= 2 and f.stride(-2) == 1))
            and inputs.dtype == torch.float32
            and all(o is None or (o.dtype == torch.float32 and o.device.type == "cpu") for o in outputs)
            and bool(_TAKES(inputs.ndim, inputs.dim, posterior.alpha.shape[1], int(f.dtype == torch.float16))))


def evaluate_region(posterior, inputs, boxes, m0: torch.Tensor | None, mean_out: torch.Tensor | None,
                    var_out: torch.Tensor | None, threads: int = 1) -> None:
    """Write the mean (K, *box) into ``mean_out[:, box]`` and/or the variance into ``var_out[box]``
    for each of several disjoint boxes, where :func:`applies`, in one call that shares the boxes
    among ``threads`` threads (the boxes' order is the order they are taken in: largest first
    balances best).  m0 is the prior mean: one row (1, K) for every location, or each box's
    locations in C order, box after box (sum of sizes, K)."""
    if not boxes:
        return
    f = inputs.features
    spatial = tuple(f.shape[:-1])
    ends = np.array([[(s.start, s.stop) for s in b] for b in boxes], dtype=np.int64)  # (boxes, axes, 2)
    if ends.ndim != 3 or ends.shape[1] != len(spatial) or (ends[..., 0] < 0).any() \
            or (ends[..., 1] < ends[..., 0]).any() or (ends[..., 1] > np.asarray(spatial)).any():
        raise ValueError(f"some of the {len(boxes)} boxes are not boxes of the {spatial} map")
    lo, hi = np.ascontiguousarray(ends[..., 0]), np.ascontiguousarray(ends[..., 1])
    sizes = (hi - lo).prod(1)
    p = posterior.fused_terms()
    K = p["alpha"].shape[1]
    if (mean_out is not None and tuple(mean_out.shape) != (K, *spatial)) or \
            (var_out is not None and tuple(var_out.shape) != tuple(spatial)):
        raise ValueError(f"output maps {None if mean_out is None else tuple(mean_out.shape)} / "
                         f"{None if var_out is None else tuple(var_out.shape)} do not fit {K} objects "
                         f"on the {tuple(spatial)} feature map")
    rows = None
    if mean_out is not None:
        m0 = m0.to(torch.float32).contiguous()
        if m0.shape[0] != 1:  # each box's first row
            rows = np.cumsum(sizes) - sizes
        if m0.dim() != 2 or m0.shape[-1] != K or m0.shape[0] not in (1, int(sizes.sum())):
            raise ValueError(f"prior mean of shape {tuple(m0.shape)} does not fit {int(sizes.sum())} locations "
                             f"and {K} objects")
    mean, var = mean_out, var_out
    rc = _FN(len(boxes), lo.ctypes.data, hi.ctypes.data, rows.ctypes.data if rows is not None else None, int(threads),
             len(spatial), f.data_ptr(), _longs(f.stride()), inputs.n_features, int(f.dtype == torch.float16),
             1.0 / inputs.feature_lengthscale, inputs.centre.data_ptr(), inputs.position_scale.data_ptr(),
             _kind(posterior.kernel), EXP_FLOOR, float(posterior.kernel.outputscale),
             posterior.n, p["Z"].data_ptr(), p["half_sq"].data_ptr(),
             K, p["alpha"].data_ptr(), m0.data_ptr() if mean is not None else None,
             mean.data_ptr() if mean is not None else None, mean.stride(0) if mean is not None else 0,
             _longs(mean.stride()[1:]) if mean is not None else _longs([]),
             p["Linv"].data_ptr() if var is not None else None, var.data_ptr() if var is not None else None,
             _longs(var.stride()) if var is not None else _longs([]))
    if rc & 2:
        raise MemoryError("fused posterior evaluation could not allocate its kernel-row buffer")
    if rc:
        raise ValueError(f"fused posterior evaluation does not take {len(spatial)} axes, {inputs.dim} inputs, "
                         f"{K} objects")

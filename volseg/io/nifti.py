"""NIfTI through nibabel, in the file's raw voxel order (no reorientation to canonical).

NIfTI affines map to RAS; :class:`~volseg.image.Image` is LPS, so the first two world rows
change sign.  The original header travels in ``meta["nifti_header"]`` so that a mask written
like the image carries exactly its qform/sform (and their codes).
"""
from __future__ import annotations

from pathlib import Path

import nibabel as nib
import numpy as np

from ..errors import InputError
from ..image import LPS_TO_RAS, Image
from .atomic import atomic_path


def lps_geometry(affine: np.ndarray, ndim: int = 3) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(spacing, origin, direction) in LPS from a 4x4 RAS affine, for the first ``ndim`` axes."""
    a = np.asarray(affine, dtype=np.float64)
    spacing = np.linalg.norm(a[:3, :3], axis=0)
    if np.any(spacing == 0):
        raise ValueError(f"the affine has a zero column (spacing {spacing.tolist()})")
    direction = LPS_TO_RAS @ a[:3, :3] / spacing
    origin = LPS_TO_RAS @ a[:3, 3]
    # a 2D image keeps the in-plane block: index_to_world then gives the first two world coordinates
    return spacing[:ndim], origin[:ndim], direction[:ndim, :ndim]


def ras_affine(like: Image) -> np.ndarray:
    """4x4 RAS affine for an image's LPS geometry (2D images sit in the z = 0 plane)."""
    d = like.ndim
    a = np.eye(4)
    a[:d, :d] = like.affine[:d, :d]
    a[:d, 3] = like.origin
    a[:2] *= -1  # LPS -> RAS on the world rows only
    a[3] = (0, 0, 0, 1)
    return a


def read_nifti(path: Path) -> Image:
    img = nib.load(path)
    stored = np.dtype(img.get_data_dtype())
    if stored.kind == "c":  # get_fdata would drop the imaginary part silently
        raise InputError(f"NIfTI {path} stores {stored} values; volseg segments real intensities (for a complex "
                         "image give its magnitude)")
    data = img.get_fdata(dtype=np.float32)  # applies scl_slope/scl_inter
    if data.ndim == 5 and data.shape[3] == 1:  # NIfTI vector images put components on the 5th dim
        data = data[:, :, :, 0]
    if data.ndim > 4:
        raise InputError(f"NIfTI {path} has shape {data.shape}; expected 2D, 3D or 3D + channels")
    spatial = min(data.ndim, 3)
    if data.ndim == spatial:
        data = data[..., None]
    spacing, origin, direction = lps_geometry(img.affine, spatial)
    meta = {"dtype": np.dtype(img.get_data_dtype()).name, "nifti_header": img.header.copy()}
    return Image(np.ascontiguousarray(data), tuple(spacing), tuple(origin), direction, meta)


def _original_header(like: Image):
    """The header ``like`` was read with, if ``like`` still sits on that header's grid."""
    hdr = like.meta.get("nifti_header")
    if hdr is None or tuple(hdr.get_data_shape()[: like.ndim]) != like.shape:
        return None
    spacing, origin, direction = lps_geometry(hdr.get_best_affine(), like.ndim)
    same = (np.allclose(spacing, like.spacing) and np.allclose(origin, like.origin)
            and np.allclose(direction, like.direction))
    return hdr.copy() if same else None


def write_nifti(arr: np.ndarray, like: Image, out: Path, *, kind: str) -> None:
    hdr = _original_header(like)
    if hdr is not None:
        cls = nib.Nifti2Image if isinstance(hdr, nib.Nifti2Header) else nib.Nifti1Image
        hdr.set_data_dtype(arr.dtype)
        hdr.set_slope_inter(1.0, 0.0)  # the image's intensity scaling must not apply to labels
        hdr["cal_min"] = hdr["cal_max"] = 0
        hdr.set_intent("label" if kind == "mask" else "none")
        img = cls(arr, None, header=hdr)  # affine=None keeps the header's qform/sform and codes as they are
    else:
        affine = ras_affine(like)
        img = nib.Nifti1Image(arr, affine, dtype=arr.dtype)
        # ITK writes NIfTI with both forms coded "scanner"; do the same so every reader agrees
        img.set_qform(affine, code=1)
        img.set_sform(affine, code=1)
        img.header.set_intent("label" if kind == "mask" else "none")
    with atomic_path(out) as tmp:
        nib.save(img, tmp)

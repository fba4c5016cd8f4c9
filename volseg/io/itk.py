"""NRRD, MHA/MHD and DICOM series through SimpleITK.

SimpleITK arrays are (z, y, x); they are transposed to ITK index order (x, y, z) so that array
axis k is index axis k, and ``GetDirection()`` (row-major) is then exactly ``Image.direction``.
"""
from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np
import SimpleITK as sitk

from ..errors import InputError
from ..image import Image
from .atomic import atomic_files, atomic_path

# ITK and GDCM print WARNING lines of their own on stderr (a garbage .dcm, an empty folder); the
# exception that follows becomes volseg's one error line, so they would only be noise
sitk.ProcessObject.SetGlobalWarningDisplay(False)


def from_sitk(img: sitk.Image) -> Image:
    d = img.GetDimension()
    arr = sitk.GetArrayFromImage(img)
    if img.GetNumberOfComponentsPerPixel() == 1:
        arr = arr[..., None]
    arr = np.transpose(arr, (*range(d - 1, -1, -1), d))
    spacing, origin = img.GetSpacing(), img.GetOrigin()
    direction = np.asarray(img.GetDirection(), dtype=np.float64).reshape(d, d)
    if d == 4 and arr.shape[-1] == 1:  # 4D scalar (e.g. time) -> 3D with the 4th axis as channels
        arr, spacing, origin, direction = arr[..., 0], spacing[:3], origin[:3], direction[:3, :3]
    elif d not in (2, 3):
        raise ValueError(f"{d}D images are not supported (shape {arr.shape[:-1]})")
    meta = {"dtype": arr.dtype.name}
    return Image(np.ascontiguousarray(arr, dtype=np.float32), spacing, origin, direction, meta)


def to_sitk(arr: np.ndarray, like: Image) -> sitk.Image:
    img = sitk.GetImageFromArray(np.ascontiguousarray(arr.transpose()))  # ITK wants (z, y, x)
    img.SetSpacing(like.spacing)
    img.SetOrigin(like.origin)
    img.SetDirection(like.direction.ravel().tolist())
    return img


def read_itk(path: Path) -> Image:
    return from_sitk(sitk.ReadImage(str(path)))


def _series_files(path: Path) -> tuple[str, list[str]]:
    """(series UID, files sorted by position) for a folder, or for the series a .dcm file belongs to."""
    folder = path if path.is_dir() else path.parent
    series = {uid: list(sitk.ImageSeriesReader.GetGDCMSeriesFileNames(str(folder), uid))
              for uid in sitk.ImageSeriesReader.GetGDCMSeriesIDs(str(folder))}
    if path.is_file():
        mine = [(uid, f) for uid, f in series.items() if any(Path(x).resolve() == path.resolve() for x in f)]
        return mine[0] if mine else ("", [str(path)])
    if not series:
        raise InputError(f"no DICOM series found in folder {path} (subfolders are not searched)")
    uid = max(series, key=lambda u: len(series[u]))
    if len(series) > 1:
        counts = ", ".join(f"{u} ({len(f)} files)" for u, f in series.items())
        warnings.warn(f"{path} holds {len(series)} DICOM series: {counts}; reading the largest, {uid}", stacklevel=4)
    return uid, series[uid]


def read_dicom(path: Path) -> Image:
    uid, files = _series_files(path)
    reader = sitk.ImageSeriesReader()
    reader.SetFileNames(files)
    img = from_sitk(reader.Execute())
    img.meta.update(dicom_series=uid, dicom_files=len(files))
    return img


def write_itk(arr: np.ndarray, like: Image, out: Path) -> None:
    img = to_sitk(arr, like)
    if out.suffix.lower() == ".mhd":  # header + separate .zraw data file
        with atomic_files(out) as folder:
            sitk.WriteImage(img, str(folder / out.name), True)
    else:
        with atomic_path(out) as tmp:
            sitk.WriteImage(img, tmp, True)

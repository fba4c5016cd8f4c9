"""NRRD, MHA/MHD and DICOM series through SimpleITK.

SimpleITK arrays are (z, y, x); they are transposed to ITK index order (x, y, z) so that array
axis k is index axis k, and ``GetDirection()`` (row-major) is then exactly ``Image.direction``.
"""
from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np
import SimpleITK as sitk

from ..errors import GeometryError, InputError
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


def world_box(img: Image) -> tuple[np.ndarray, np.ndarray]:
    """The world (LPS mm) axis-aligned box covered by an image's voxels, voxel edges included."""
    corners = np.array(np.meshgrid(*[(-0.5, n - 0.5) for n in img.shape], indexing="ij")).reshape(img.ndim, -1).T
    world = img.index_to_world(corners)
    return world.min(0), world.max(0)


def resample_labels(labels: Image, like: Image, what: str = "label map") -> np.ndarray:
    """A label map on another voxel grid brought onto ``like``'s grid by world geometry (nearest
    neighbour: labels stay labels); voxels of ``like`` outside the label map's box get 0.  Raises
    GeometryError when the two world boxes do not overlap (a label map of another scan)."""
    lo_a, hi_a = world_box(like)
    lo_b, hi_b = world_box(labels)
    if labels.ndim != like.ndim or np.any(np.minimum(hi_a, hi_b) <= np.maximum(lo_a, lo_b)):
        fmt = lambda lo, hi: "[" + ", ".join(f"{a:.1f}..{b:.1f}" for a, b in zip(lo, hi)) + "] mm"  # noqa: E731
        raise GeometryError(f"{what} covers the world box {fmt(lo_b, hi_b)}, which does not overlap the image's "
                            f"{fmt(lo_a, hi_a)}: it belongs to another scan")
    source = to_sitk(labels.array[..., 0], labels)
    target = to_sitk(np.zeros(like.shape, np.uint8), like)
    out = sitk.Resample(source, target, sitk.Transform(), sitk.sitkNearestNeighbor, 0, source.GetPixelID())
    return np.ascontiguousarray(sitk.GetArrayFromImage(out).transpose())


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
    reader.MetaDataDictionaryArrayUpdateOn()  # each slice's position, for the spacing check
    volume = reader.Execute()
    if len(files) > 2:
        positions = [reader.GetMetaData(i, POSITION) if reader.HasMetaDataKey(i, POSITION) else None
                     for i in range(len(files))]
        if None not in positions:
            check_even_slices(path, [[float(v) for v in p.split("\\")] for p in positions],
                              np.asarray(volume.GetDirection(), np.float64).reshape(3, 3)[:, 2])
    img = from_sitk(volume)
    img.meta.update(dicom_series=uid, dicom_files=len(files))
    return img


POSITION = "0020|0032"  # DICOM Image Position (Patient): the slice's first voxel, in mm
SLICE_TOLERANCE = 0.1   # of the median step: more uneven is a missing, doubled or misplaced slice


def check_even_slices(path: Path, positions, normal: np.ndarray) -> None:
    """A series becomes a volume with one spacing per axis: slices must be evenly spaced along the normal.
    A missing slice (a gap) or a doubled one would put every voxel after it at the wrong place in the world,
    and the mask written on that grid with it; refused, with the steps found."""
    steps = np.diff(np.asarray(positions, np.float64) @ normal)
    step = float(np.median(steps))
    if step > 0 and np.abs(steps - step).max() <= SLICE_TOLERANCE * step:
        return
    found = ", ".join(f"{v:g}" for v in sorted(set(np.round(steps, 3)))[:6])
    raise InputError(f"DICOM series {path} is not evenly spaced: steps of {found} mm between its {len(steps) + 1} "
                     "slices (a missing or doubled slice?); volseg needs one spacing per axis to keep the geometry")


def write_itk(arr: np.ndarray, like: Image, out: Path) -> None:
    img = to_sitk(arr, like)
    if out.suffix.lower() == ".mhd":  # header + separate .zraw data file
        with atomic_files(out) as folder:
            sitk.WriteImage(img, str(folder / out.name), True)
    else:
        with atomic_path(out) as tmp:
            sitk.WriteImage(img, tmp, True)

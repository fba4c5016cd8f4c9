"""Read images and label maps, write masks and probability maps, in the file's own geometry.

One entry point each; the format comes from the suffix (a folder is a DICOM series)::

    img = read_image("ct.nii.gz")                 # Image, array (i, j, k, channel), LPS geometry
    write_mask(labels, img, "out.nrrd")           # same grid as img, written atomically
    prior = read_mask("prior.nii.gz", like=img)   # GeometryError unless on img's grid

Array axes follow :mod:`volseg.image`: (row, col) for rasters, ITK index order (i, j, k) for volumes.
"""
from __future__ import annotations

import contextlib
import os
import re
import tempfile
from pathlib import Path
from typing import Iterator

import numpy as np

from ..errors import GeometryError, InputError, OutputError, VolsegError
from ..image import Image
from .atomic import atomic_path, check_output
from .raster import read_raster, read_raster_labels, write_raster

__all__ = [
    "read_image", "read_mask", "write_mask", "write_probability", "image_format", "check_output_path",
    "check_output_dims", "check_folder_path", "output_files", "atomic_path", "check_output", "RASTER_SUFFIXES",
    "NIFTI_SUFFIXES", "ITK_SUFFIXES",
]

RASTER_SUFFIXES = (".png", ".jpg", ".jpeg", ".tif", ".tiff", ".bmp")
NIFTI_SUFFIXES = (".nii", ".nii.gz")
ITK_SUFFIXES = (".nrrd", ".nhdr", ".mha", ".mhd")
DICOM_SUFFIXES = (".dcm",)
# formats that carry no geometry: a mask in them can only be checked for shape
_NO_GEOMETRY = ("raster", "npy")
# what masks and maps can be written as; the 2D ones hold 2D maps only
WRITE_SUFFIXES = (".nii.gz", ".nii", ".nrrd", ".mha", ".mhd", ".npy", ".png", ".tif", ".tiff")
WRITE_2D_ONLY = (".png", ".tif", ".tiff")


def suffix(path: str | Path) -> str:
    """Lower-case suffix, keeping the double one of ``.nii.gz``."""
    name = Path(path).name.lower()
    return ".nii.gz" if name.endswith(".nii.gz") else Path(name).suffix


def image_format(path: str | Path) -> str:
    """'raster' | 'nifti' | 'itk' | 'dicom' | 'npy' for an existing path (a folder is a DICOM series)."""
    p = Path(path)
    if not p.exists():
        raise InputError(f"input {p} does not exist")
    if p.is_dir():
        return "dicom"
    s = suffix(p)
    for fmt, suffixes in (("raster", RASTER_SUFFIXES), ("nifti", NIFTI_SUFFIXES), ("itk", ITK_SUFFIXES),
                          ("dicom", DICOM_SUFFIXES), ("npy", (".npy",))):
        if s in suffixes:
            return fmt
    raise InputError(
        f"unsupported image format {s or '(no suffix)'} for {p}: use PNG/JPEG/TIFF, NIfTI (.nii/.nii.gz), "
        "NRRD, MHA/MHD or a DICOM folder"
    )


@contextlib.contextmanager
def reading(path: str | Path, what: str) -> Iterator[None]:
    """Turn whatever a reader library raises on a bad file into one InputError naming the file."""
    try:
        yield
    except GeometryError as e:  # raised while building the Image: the file's own geometry is unusable
        raise InputError(f"{what} {path} has unusable geometry: {e}") from e
    except (VolsegError, MemoryError, ImportError):  # ours, or not the file's fault
        raise
    except Exception as e:  # PIL, nibabel, zlib and ITK raise a zoo of types for corrupt files
        # ITK puts the source location first and the specific complaint last
        lines = [line.strip() for line in str(e).splitlines() if line.strip()] or [type(e).__name__]
        detail = re.sub(r"^(sitk|itk)::ERROR:\s*(\w+\(0x[0-9a-f]+\):\s*)?", "", lines[-1])
        raise InputError(f"cannot read {what} {path}: {detail}") from e


def read_image(path: str | Path) -> Image:
    """Read an image or volume; ``meta`` holds ``path``, ``format`` and the file's ``dtype``."""
    p = Path(path)
    fmt = image_format(p)
    with reading(p, "image"):
        if fmt == "raster":
            reader = read_raster
        elif fmt == "nifti":
            from .nifti import read_nifti as reader  # noqa: PLC0415 -- nibabel is slow to import
        elif fmt == "itk":
            from .itk import read_itk as reader  # noqa: PLC0415 -- SimpleITK is slow to import
        elif fmt == "dicom":
            from .itk import read_dicom as reader  # noqa: PLC0415 -- SimpleITK is slow to import
        else:
            raise InputError(f"{p}: a .npy array has no geometry or channel axis; load it and use Image.from_array")
        img = reader(p)
    if img.array.size == 0:
        raise InputError(f"image {p} is empty (shape {img.array.shape})")
    img.meta.update(path=str(p), format=fmt)
    return img


def read_mask(path: str | Path, like: Image | None = None, *, resample: bool = False) -> np.ndarray:
    """Read a label map as a spatial integer array; with ``like``, insist on ``like``'s voxel grid, or with
    ``resample`` bring a volume on another grid onto it by world geometry (nearest neighbour; an error
    where the two do not overlap in the world), as for a reference label map stored in its own orientation.

    Palette PNGs give their indices (DAVIS style); values are kept as stored (0/255 stays 0/255).
    Raster and .npy masks carry no geometry, so only their shape is checked.
    """
    p = Path(path)
    fmt = image_format(p)
    with reading(p, "mask"):
        if fmt == "raster":
            labels = Image.from_array(read_raster_labels(p))
        elif fmt == "npy":
            labels = Image.from_array(np.load(p, allow_pickle=False))
        else:
            labels = read_image(p)
    if labels.channels != 1:
        raise InputError(f"mask {p} has {labels.channels} channels; a label map has one")
    arr = labels.array[..., 0]
    if arr.size == 0:
        raise InputError(f"mask {p} is empty (shape {arr.shape})")
    if like is not None:
        if fmt in _NO_GEOMETRY or like.meta.get("format") == "raster":
            if arr.shape != like.shape:
                raise GeometryError(f"mask {p} has shape {arr.shape}, the image has {like.shape}")
        elif resample and not like.same_grid(labels):
            from .itk import resample_labels  # noqa: PLC0415 -- SimpleITK is slow to import

            arr = _as_labels(arr, p)  # checked before resampling: nearest neighbour keeps values as they are
            labels = Image.from_array(arr, spacing=labels.spacing, origin=labels.origin, direction=labels.direction)
            arr = resample_labels(labels, like, what=f"mask {p}")
        else:
            like.check_same_grid(labels, what=f"mask {p}")
    return _as_labels(arr, p)


def _as_labels(arr: np.ndarray, path: Path) -> np.ndarray:
    if arr.dtype == bool:
        return arr.astype(np.uint8)
    if not np.issubdtype(arr.dtype, np.integer):
        if not np.all(np.isfinite(arr)) or np.any(arr != np.round(arr)):
            raise InputError(f"mask {path} has non-integer values; a label map holds integers 0, 1, 2, ...")
    lo, hi = (float(arr.min()), float(arr.max()))
    if lo < 0:
        raise InputError(f"mask {path} has negative labels (min {lo:g})")
    return arr.astype(label_dtype(hi), copy=False)


def label_dtype(max_label: float) -> type:
    return np.uint8 if max_label < 256 else np.uint16 if max_label < 65536 else np.uint32


def check_output_path(path: str | Path, what: str = "output") -> Path:
    """Refuse, before any work, an output path volseg cannot write: empty, a folder, under a file,
    or in a format it does not write."""
    if not str(path).strip():
        raise InputError(f"{what} path is empty")
    p = Path(path)
    if p.is_dir():
        raise InputError(f"{what} {p} is a folder; give a file name such as {p / 'mask.nii.gz'}")
    check_folder_path(p.parent, f"{what} {p}")
    if suffix(p) not in WRITE_SUFFIXES:
        raise InputError(_unsupported(p))
    return p


def check_folder_path(folder: str | Path, what: str) -> None:
    """A folder volseg writes into must be a folder, or makeable: no file on its path, and its nearest
    existing folder must take new entries (tried, not guessed from permission bits: a read-only file system
    or a virtual one such as /proc refuses what the bits allow)."""
    for p in (Path(folder), *Path(folder).parents):
        if p.exists():
            if not p.is_dir():
                raise InputError(f"cannot write {what}: {p} is a file, not a folder")
            try:
                os.rmdir(tempfile.mkdtemp(prefix=".volseg-probe.", dir=p))
            except OSError as e:
                raise OutputError(f"cannot write {what}: folder {p} does not take new files ({e.strerror or e})") \
                    from None
            return


def check_output_dims(path: str | Path, ndim: int, what: str = "output") -> None:
    """A 2D-only format (PNG, TIFF) for a volume is refused before the volume is segmented."""
    if ndim != 2 and suffix(path) in WRITE_2D_ONLY:
        raise InputError(f"{what} {path}: {suffix(path)} holds 2D maps only and the image is {ndim}D; "
                         "use .nii.gz, .nrrd or .npy")


def output_files(path: str | Path) -> list[Path]:
    """Every file writing ``path`` creates: ``path``, and for .mhd its data file (``.zraw``)."""
    p = Path(path)
    return [p, p.with_suffix(".zraw")] if suffix(p) == ".mhd" else [p]


def _unsupported(out: Path) -> str:
    return (f"unsupported output format {suffix(out) or '(no suffix)'} for {out}: use .nii.gz, .nii, .nrrd, .mha, "
            ".mhd, .npy, or .png/.tif for 2D")


def _check_spatial(arr: np.ndarray, like: Image, what: str) -> None:
    if arr.shape != like.shape:
        raise GeometryError(f"{what} of shape {arr.shape} does not fit the image of shape {like.shape}")


def write_mask(mask: np.ndarray, like: Image, path: str | Path, *, overwrite: bool = False, inputs: tuple = (),
               palette: bool = False) -> Path:
    """Write a label map on ``like``'s grid: uint8 if labels < 256, else uint16 (uint32). Returns the path.

    ``palette=True`` writes a 2D PNG as an indexed-colour image (DAVIS style).
    """
    m = np.asarray(mask)
    _check_spatial(m, like, "mask")
    if m.dtype == bool:
        m = m.astype(np.uint8)
    if not np.issubdtype(m.dtype, np.integer) and np.any(m != np.round(m)):
        raise ValueError("write_mask needs integer labels; use write_probability for soft maps")
    if m.size and m.min() < 0:
        raise ValueError(f"labels must be 0 or more, got min {m.min()}")
    m = m.astype(label_dtype(m.max() if m.size else 0), copy=False)
    return _write(m, like, path, overwrite, inputs, kind="mask", palette=palette)


def write_probability(prob: np.ndarray, like: Image, path: str | Path, *, overwrite: bool = False,
                      inputs: tuple = ()) -> Path:
    """Write a float32 map on ``like``'s grid (PNG: scaled to 0-255)."""
    p = np.asarray(prob, dtype=np.float32)
    _check_spatial(p, like, "probability map")
    return _write(p, like, path, overwrite, inputs, kind="probability")


def _write(arr: np.ndarray, like: Image, path: str | Path, overwrite: bool, inputs: tuple, *, kind: str,
           palette: bool = False) -> Path:
    out = check_output(path, overwrite=overwrite, inputs=(*inputs, like.meta.get("path")))
    s = suffix(out)
    if palette and s != ".png":
        raise InputError(f"palette output needs a .png path, got {out}")
    if s in (".png", ".tif", ".tiff"):
        write_raster(arr, out, kind=kind, palette=palette)
    elif s in NIFTI_SUFFIXES:
        from .nifti import write_nifti  # noqa: PLC0415 -- nibabel is slow to import

        write_nifti(arr, like, out, kind=kind)
    elif s in (".nrrd", ".mha", ".mhd"):
        from .itk import write_itk  # noqa: PLC0415 -- SimpleITK is slow to import

        write_itk(arr, like, out)
    elif s == ".npy":
        with atomic_path(out) as tmp, open(tmp, "wb") as f:
            np.save(f, arr)
    else:
        raise InputError(_unsupported(out))
    return out

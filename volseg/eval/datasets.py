"""Readers for the standard 2D interactive-segmentation benchmark layouts.

Every reader yields :class:`Sample` objects, one per object instance, in a fixed order (sorted
file names, then instance id), so ``--max-instances N`` always means the same N instances and a
resumed run finds the same ids.  A sample loads lazily into

* ``image``: ``(H, W, 3)`` uint8 RGB,
* ``gt``: ``(H, W)`` int8 -- 1 object, 0 background, :data:`IGNORE` (-1) excluded from IoU and
  from the robot's error regions.

Layouts (the folder names RITM / f-BRS use):

=========== ================================ =========================================================
name        folders                           masks
=========== ================================ =========================================================
GrabCut     ``data_GT``, ``boundary_GT``      channel 0: 128 = ignored band, > 128 object
Berkeley    ``images``, ``masks``             as GrabCut (0/255 in practice)
DAVIS       ``img``, ``gt``                   any channel > 0 is object
COCO_MVal   ``img``, ``gt``                   as DAVIS
SBD         ``img``, ``inst/*.mat``           ``GTinst.Segmentation`` instance ids; one sample each
PascalVOC   ``JPEGImages``, ``SegmentationObject`` palette indices; one sample per id, 255 ignored
=========== ================================ =========================================================

Masks of GrabCut/Berkeley/DAVIS/COCO_MVal are binary in these benchmarks: one sample per image.
SBD and PascalVOC masks hold instance ids: one sample per instance, the other instances count as
background.  An image is paired with the mask of the same stem (the name before the first dot).
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterator

import cv2
import numpy as np
from PIL import Image as PILImage
from scipy.io import loadmat

from ..errors import InputError

IGNORE = -1
_IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".ppm"}


def split_gt(gt: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """``(object, ignore)`` boolean masks from a ground truth holding 1 / 0 / :data:`IGNORE`
    (a boolean array has nothing ignored)."""
    g = np.asarray(gt)
    if g.dtype == bool:
        return g, np.zeros(g.shape, bool)
    return g == 1, g == IGNORE


@dataclass(frozen=True)
class Sample:
    """One object instance of a benchmark; arrays are read on demand."""

    id: str
    image_path: Path
    mask_path: Path
    load_gt: Callable[[], np.ndarray]

    @property
    def image(self) -> np.ndarray:
        return read_rgb(self.image_path)

    @property
    def gt(self) -> np.ndarray:
        return self.load_gt()


def read_rgb(path: Path) -> np.ndarray:
    bgr = cv2.imread(str(path), cv2.IMREAD_COLOR)  # grey images come back as 3 equal channels
    if bgr is None:
        raise InputError(f"cannot read image {path}")
    return np.ascontiguousarray(bgr[..., ::-1])


def _read_color_mask(path: Path) -> np.ndarray:
    m = cv2.imread(str(path), cv2.IMREAD_COLOR)
    if m is None:
        raise InputError(f"cannot read mask {path}")
    return m  # BGR, as RITM reads it


def _stem(path: Path) -> str:
    return path.name.split(".")[0]


def _files(folder: Path, suffixes: set[str] | None = None) -> list[Path]:
    return sorted(
        p for p in folder.iterdir()
        if p.is_file() and not p.name.startswith(".") and (suffixes is None or p.suffix.lower() in suffixes)
    )


def _check_layout(root: Path, name: str, folders: tuple[str, ...]) -> None:
    if not root.exists():
        raise InputError(f"dataset root {root} does not exist")
    if not root.is_dir():
        raise InputError(f"dataset root {root} is not a folder")
    missing = [f for f in folders if not (root / f).is_dir()]
    if missing:
        found = sorted(p.name + "/" for p in root.iterdir() if p.is_dir())[:10]
        raise InputError(
            f"{root} does not look like a {name} dataset: expected folders "
            f"{', '.join(f + '/' for f in folders)}; missing {', '.join(f + '/' for f in missing)} "
            f"(found {', '.join(found) or 'no folders'})"
        )


def _pairs(root: Path, name: str, images_dir: str, masks_dir: str) -> list[tuple[Path, Path]]:
    """Image/mask pairs by stem; an image without a mask is a layout error, not a silent skip."""
    _check_layout(root, name, (images_dir, masks_dir))
    images = _files(root / images_dir, _IMAGE_SUFFIXES)
    if not images:
        raise InputError(f"{root / images_dir} contains no images ({name} layout)")
    masks = {_stem(p): p for p in _files(root / masks_dir)}
    lost = [p.name for p in images if _stem(p) not in masks]
    if lost:
        more = f" and {len(lost) - 5} more" if len(lost) > 5 else ""
        raise InputError(f"{name}: no mask in {root / masks_dir} for image(s) {', '.join(lost[:5])}{more}")
    return [(p, masks[_stem(p)]) for p in images]


# -- binary-mask layouts ----------------------------------------------------------------------------
def _grabcut_gt(path: Path) -> np.ndarray:
    m = _read_color_mask(path)[..., 0].astype(np.int16)
    gt = (m > 128).astype(np.int8)
    gt[m == 128] = IGNORE  # the GrabCut boundary band; Berkeley masks simply have none
    return gt


def _davis_gt(path: Path) -> np.ndarray:
    return (_read_color_mask(path).max(axis=2) > 0).astype(np.int8)


def _binary_reader(name: str, images_dir: str, masks_dir: str, load: Callable[[Path], np.ndarray]):
    def read(root: Path, split: str | None = None) -> Iterator[Sample]:
        for img, mask in _pairs(root, name, images_dir, masks_dir):
            yield Sample(_stem(img), img, mask, lambda m=mask: load(m))

    return read


# -- instance-id layouts --------------------------------------------------------------------------
def _instance_ids(labels: np.ndarray, ignore_value: int | None) -> list[int]:
    ids = np.unique(labels)
    return [int(i) for i in ids if i != 0 and i != ignore_value]


def _instance_gt(labels: np.ndarray, instance: int, ignore_value: int | None) -> np.ndarray:
    gt = (labels == instance).astype(np.int8)
    if ignore_value is not None:
        gt[labels == ignore_value] = IGNORE
    return gt


def _split_names(list_file: Path, split: str | None, fallback: list[Path], name: str) -> list[str]:
    """Names from the split list (``val`` by default); without a list, every mask file -- unless a
    split was asked for by name, which must then exist."""
    if not list_file.is_file():
        if split is not None:
            raise InputError(f"{name}: split list {list_file} does not exist")
        return [_stem(p) for p in fallback]
    names = [line.strip() for line in list_file.read_text().splitlines() if line.strip()]
    if not names:
        raise InputError(f"{name}: split list {list_file} is empty")
    return names


def _sbd_labels(path: Path) -> np.ndarray:
    if not path.is_file():
        raise InputError(f"SBD: instance file {path} does not exist")
    try:
        inst = loadmat(str(path))["GTinst"]
        return np.asarray(inst["Segmentation"][0, 0], dtype=np.int32)
    except (KeyError, ValueError, IndexError, TypeError) as e:
        raise InputError(f"SBD: {path} has no GTinst.Segmentation struct ({e})") from None
    except Exception as e:  # scipy raises several types for a corrupt file
        raise InputError(f"SBD: cannot read {path}: {e}") from None


def _read_sbd(root: Path, split: str | None = None) -> Iterator[Sample]:
    _check_layout(root, "SBD", ("img", "inst"))
    names = _split_names(root / f"{split or 'val'}.txt", split, _files(root / "inst", {".mat"}), "SBD")
    for stem in names:
        img, mat = root / "img" / f"{stem}.jpg", root / "inst" / f"{stem}.mat"
        if not img.is_file():
            raise InputError(f"SBD: image {img} listed in the split does not exist")
        labels = _sbd_labels(mat)
        for inst in _instance_ids(labels, None):
            yield Sample(f"{stem}_{inst}", img, mat, lambda m=mat, i=inst: _instance_gt(_sbd_labels(m), i, None))


def _voc_labels(path: Path) -> np.ndarray:
    if not path.is_file():
        raise InputError(f"PascalVOC: object mask {path} does not exist")
    with PILImage.open(path) as im:
        if im.mode not in ("P", "L"):
            raise InputError(f"PascalVOC: {path} is a {im.mode} image; SegmentationObject masks are palette PNGs")
        return np.asarray(im, dtype=np.int32)


def _read_voc(root: Path, split: str | None = None) -> Iterator[Sample]:
    _check_layout(root, "PascalVOC", ("JPEGImages", "SegmentationObject"))
    lst = root / "ImageSets" / "Segmentation" / f"{split or 'val'}.txt"
    names = _split_names(lst, split, _files(root / "SegmentationObject", {".png"}), "PascalVOC")
    for stem in names:
        img, png = root / "JPEGImages" / f"{stem}.jpg", root / "SegmentationObject" / f"{stem}.png"
        if not img.is_file():
            raise InputError(f"PascalVOC: image {img} does not exist")
        labels = _voc_labels(png)
        for inst in _instance_ids(labels, 255):
            yield Sample(f"{stem}_{inst}", img, png, lambda m=png, i=inst: _instance_gt(_voc_labels(m), i, 255))


READERS: dict[str, Callable[..., Iterator[Sample]]] = {
    "GrabCut": _binary_reader("GrabCut", "data_GT", "boundary_GT", _grabcut_gt),
    "Berkeley": _binary_reader("Berkeley", "images", "masks", _grabcut_gt),
    "DAVIS": _binary_reader("DAVIS", "img", "gt", _davis_gt),
    "COCO_MVal": _binary_reader("COCO_MVal", "img", "gt", _davis_gt),
    "SBD": _read_sbd,
    "PascalVOC": _read_voc,
}


def dataset_name(name: str) -> str:
    """Canonical spelling of a dataset name (case, '-' and '_' do not matter)."""
    key = name.lower().replace("-", "").replace("_", "")
    for canon in READERS:
        if canon.lower().replace("_", "") == key:
            return canon
    raise InputError(f"unknown dataset {name!r}; choose one of {', '.join(READERS)}")


def iter_samples(name: str, root: str | Path, *, split: str | None = None) -> Iterator[Sample]:
    """Samples of dataset ``name`` under ``root``, lazily; layout problems raise :class:`InputError`
    when the first sample is asked for."""
    canon = dataset_name(name)
    n = 0
    for n, s in enumerate(READERS[canon](Path(root), split), 1):
        yield s
    if n == 0:
        raise InputError(f"{canon} dataset at {root} has no object instances")


def load_samples(name: str, root: str | Path, *, split: str | None = None,
                 max_instances: int | None = None) -> list[Sample]:
    """The samples, each image checked against its mask's size from the file headers (no pixels are
    decoded), so a mismatched pair fails before the first instance is evaluated."""
    out = []
    for s in iter_samples(name, root, split=split):
        if max_instances is not None and len(out) >= max_instances:
            break
        out.append(s)
    for s in out:
        if s.mask_path.suffix.lower() in _IMAGE_SUFFIXES:  # SBD's .mat masks are checked when read
            check_same_size(name, s.image_path, _size(s.image_path), s.mask_path, _size(s.mask_path))
    return out


def _size(path: Path) -> tuple[int, int]:
    """(height, width) from an image file's header."""
    try:
        with PILImage.open(path) as im:
            return im.height, im.width
    except (OSError, ValueError) as e:
        raise InputError(f"cannot read {path}: {e}") from None


def check_same_size(name: str, image: Path, image_size, mask: Path, mask_size) -> None:
    if tuple(image_size) != tuple(mask_size):
        raise InputError(f"{name}: mask {mask} is {mask_size[0]}x{mask_size[1]} pixels, its image {image} "
                         f"{image_size[0]}x{image_size[1]}")

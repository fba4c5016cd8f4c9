"""Training data: image/mask pairs as channel-first float arrays at the training resolution.

* 2D folders with ``images/<stem>.<jpg|png>`` and ``masks/<stem>.png`` (0/255), e.g. ECSSD, DUTS,
  Weizmann horses; each image is resized so its long side is ``size`` and padded to a square.
* 3D folders with ``images/<name>.nii.gz`` and ``labels/<name>.nii.gz`` (e.g. MSD hippocampus);
  each sample's object is one label or the union of all, chosen at random; padded/cropped to ``roi``.
* ``synthetic``: generated blobs on textured backgrounds (2D or 3D), for the smoke test.

Augmentation uses MONAI dictionary transforms.  :func:`manifest_sha256` hashes the list of files
used (relative path and size), so a checkpoint records exactly which data trained it.
"""
from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np
from scipy import ndimage as ndi

from ..errors import InputError
from ..features.backbones import normalise_2d, normalise_3d

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff")


@dataclass(frozen=True)
class Pair:
    image: Path
    mask: Path


def find_pairs(root: str | Path, dims: int) -> list[Pair]:
    root = Path(root)
    img_dir, lab_dir = root / "images", root / ("masks" if dims == 2 else "labels")
    if not img_dir.is_dir() or not lab_dir.is_dir():
        raise InputError(f"training folder {root} needs images/ and {lab_dir.name}/ sub-folders")
    pairs = []
    for p in sorted(img_dir.iterdir()):
        if dims == 2 and p.suffix.lower() in IMAGE_SUFFIXES:
            m = lab_dir / (p.stem + ".png")
        elif dims == 3 and p.name.endswith((".nii.gz", ".nii", ".nrrd", ".mha")):
            m = lab_dir / p.name
        else:
            continue
        if m.is_file():
            pairs.append(Pair(p, m))
    if not pairs:
        raise InputError(f"no image/mask pairs found in {root}")
    return pairs


def manifest_sha256(pairs: list[Pair]) -> str:
    h = hashlib.sha256()
    for pr in pairs:
        for f in (pr.image, pr.mask):
            h.update(f"{f.parent.parent.name}/{f.parent.name}/{f.name}\t{f.stat().st_size}\n".encode())
    return h.hexdigest()


def split(items: list, val_fraction: float) -> tuple[list, list]:
    """Deterministic split: every k-th item is held out for validation."""
    if val_fraction <= 0 or len(items) < 2:
        return list(items), []
    k = max(2, int(round(1.0 / val_fraction)))
    return [x for i, x in enumerate(items) if i % k != k - 1], [x for i, x in enumerate(items) if i % k == k - 1]


# -- loading ----------------------------------------------------------------------------------------
def load_2d(pair: Pair, size: int) -> tuple[np.ndarray, np.ndarray]:
    """(3, h, w) normalised image and (h, w) bool mask, long side ``size``."""
    img = cv2.imread(str(pair.image), cv2.IMREAD_COLOR)
    mask = cv2.imread(str(pair.mask), cv2.IMREAD_GRAYSCALE)
    if img is None or mask is None:
        raise InputError(f"cannot read training pair {pair.image} / {pair.mask}")
    img = cv2.cvtColor(img, cv2.COLOR_BGR2RGB)
    if mask.shape != img.shape[:2]:
        mask = cv2.resize(mask, img.shape[1::-1], interpolation=cv2.INTER_NEAREST)
    s = size / max(img.shape[:2])
    hw = (max(1, round(img.shape[1] * s)), max(1, round(img.shape[0] * s)))
    img = cv2.resize(img, hw, interpolation=cv2.INTER_AREA)
    mask = cv2.resize(mask.astype(np.float32) / 255.0, hw, interpolation=cv2.INTER_LINEAR) > 0.5
    return normalise_2d(img), mask


def load_3d(pair: Pair, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """(1, *spatial) normalised volume and a bool object mask: one label or all of them."""
    import nibabel as nib  # noqa: PLC0415 -- slow to import; only 3D data needs it

    x = np.asarray(nib.load(str(pair.image)).dataobj, dtype=np.float32)
    y = np.asarray(nib.load(str(pair.mask)).dataobj).astype(np.int64)
    labels = [int(v) for v in np.unique(y) if v != 0]
    choice = int(rng.integers(0, len(labels) + 1)) if labels else 0
    obj = (y > 0) if choice == len(labels) else (y == labels[choice])
    return normalise_3d(x), obj


def synthetic_sample(rng: np.random.Generator, shape: tuple[int, ...]) -> tuple[np.ndarray, np.ndarray]:
    """A blob (union of 1-3 ellipsoids) with its own colour/texture on a textured background."""
    grid = np.stack(np.meshgrid(*[np.arange(n, dtype=np.float32) for n in shape], indexing="ij"), -1)
    obj = np.zeros(shape, bool)
    for _ in range(int(rng.integers(1, 4))):
        c = rng.uniform(0.25, 0.75, len(shape)) * np.array(shape)
        r = rng.uniform(0.08, 0.25, len(shape)) * np.array(shape)
        obj |= (((grid - c) / r) ** 2).sum(-1) <= 1.0
    ch = 3 if len(shape) == 2 else 1
    fg, bg = rng.uniform(0, 1, ch), rng.uniform(0, 1, ch)
    noise = ndi.gaussian_filter(rng.normal(0, 0.15, shape + (ch,)), (1.0,) * len(shape) + (0,))
    img = np.where(obj[..., None], fg, bg) + noise
    if len(shape) == 2:
        return normalise_2d(np.clip(img, 0, 1) * 255.0), obj
    return normalise_3d(img[..., 0]), obj


# -- datasets ----------------------------------------------------------------------------------------
def augmentation(dims: int, size: tuple[int, ...], augment: bool):
    """MONAI transforms on {"image": (C, *spatial), "mask": (1, *spatial)}: flips, small affine,
    intensity jitter, then pad/crop to the training size."""
    from monai import transforms as T  # noqa: PLC0415 -- slow to import; only training needs it

    keys = ["image", "mask"]
    steps = []
    if augment:
        steps += [T.RandFlipd(keys, prob=0.5, spatial_axis=dims - 1),
                  T.RandAffined(keys, prob=0.5, rotate_range=[0.2] * (1 if dims == 2 else 3),
                                scale_range=[0.15] * dims, mode=["bilinear", "nearest"], padding_mode="zeros"),
                  T.RandScaleIntensityd("image", factors=0.15, prob=0.5),
                  T.RandShiftIntensityd("image", offsets=0.15, prob=0.5)]
    steps += [T.SpatialPadd(keys, spatial_size=size), T.RandSpatialCropd(keys, roi_size=size, random_size=False)]
    return T.Compose(steps)


class TrainingData:
    """Samples for one rank: ``sample(i, rng)`` -> (image (C, *size) float32, mask (*size) bool)."""

    def __init__(self, data: dict, model: dict, base: Path | None = None, *, validation: bool = False) -> None:
        self.dims = int(data.get("dims", model.get("spatial_dims", 2)))
        size = data.get("size", model.get("long_side", 160) if self.dims == 2 else model.get("roi_size", (48, 64, 48)))
        self.size = (int(size),) * 2 if self.dims == 2 and np.isscalar(size) else tuple(int(s) for s in size)
        self.min_fraction = float(data.get("min_object_fraction", 0.005))
        self.synthetic = data.get("synthetic")
        if self.synthetic:
            n = int(self.synthetic.get("n", 32))
            self.items = list(range(n))
            self.all_pairs: list[Pair] = []
            self.manifest = hashlib.sha256(f"synthetic {self.dims}D {n} {self.size}".encode()).hexdigest()
        else:
            roots = data.get("roots") or []
            if not roots:
                raise InputError("training config has no data.roots (or data.synthetic)")
            pairs = [p for r in roots for p in find_pairs(resolve(r, base), self.dims)]
            self.all_pairs = pairs
            train, val = split(pairs, float(data.get("val_fraction", 0.02)))
            self.items = val if validation else train
            self.manifest = manifest_sha256(pairs)
        self.transform = augmentation(self.dims, self.size, augment=bool(data.get("augment", True)) and not validation)

    def __len__(self) -> int:
        return len(self.items)

    def raw(self, i: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
        item = self.items[i]
        if self.synthetic:
            return synthetic_sample(np.random.default_rng(int(item)), self.size)
        if self.dims == 2:
            return load_2d(item, max(self.size))
        return load_3d(item, rng)

    def sample(self, i: int, rng: np.random.Generator, tries: int = 5) -> tuple[np.ndarray, np.ndarray]:
        for _ in range(tries):
            img, mask = self.raw(i, rng)
            self.transform.set_random_state(int(rng.integers(0, 2 ** 31 - 1)))
            out = self.transform({"image": img, "mask": mask[None].astype(np.float32)})
            x, m = np.asarray(out["image"], dtype=np.float32), np.asarray(out["mask"])[0] > 0.5
            if m.mean() >= self.min_fraction and m.mean() < 0.98:
                return x, m
            i = int(rng.integers(0, len(self.items)))
        return x, m


def resolve(path: str | Path, base: Path | None) -> Path:
    """Data paths are relative to the working directory, else to the repository holding the config."""
    p = Path(path)
    if p.is_absolute() or p.exists() or base is None:
        return p
    for anchor in (base, *base.parents):
        if (anchor / p).exists():
            return anchor / p
    return p


__all__ = ["Pair", "TrainingData", "find_pairs", "load_2d", "load_3d", "manifest_sha256", "split", "synthetic_sample"]

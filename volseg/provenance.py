"""Provenance: what went into a mask, recorded in a JSON sidecar beside it (``out.nii.gz`` -> ``out.json``)."""
from __future__ import annotations

import hashlib
import json
import platform
from importlib import metadata
from pathlib import Path

import numpy as np

from .errors import InputError, VolsegError
from .io.atomic import atomic_path, check_output

_PACKAGES = ("volseg", "numpy", "torch", "monai", "nibabel", "SimpleITK", "scikit-image", "scipy")
_MASK_SUFFIXES = (".nii.gz", ".nii", ".nrrd", ".mha", ".mhd", ".png", ".tif", ".tiff", ".npy")


def _sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def file_sha256(path: str | Path) -> str:
    """SHA-256 of a file; of a folder (a DICOM series): over its files' sorted relative names and contents."""
    p = Path(path)
    if p.is_file():
        return _sha256_file(p)
    if not p.is_dir():
        raise InputError(f"cannot hash {p}: it does not exist")
    h = hashlib.sha256()
    for f in sorted(q for q in p.rglob("*") if q.is_file()):
        # name + NUL + the file's own digest: unambiguous, and renaming a file changes the hash
        h.update(f.relative_to(p).as_posix().encode() + b"\0" + _sha256_file(f).encode() + b"\n")
    return h.hexdigest()


def versions() -> dict[str, str | None]:
    """Versions of Python and the libraries that shape a result (None where not installed)."""
    out: dict[str, str | None] = {"python": platform.python_version()}
    for name in _PACKAGES:
        try:
            out[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            out[name] = None
    return out


def sidecar_path(mask_path: str | Path) -> Path:
    p = Path(mask_path)
    name = p.name
    for s in _MASK_SUFFIXES:  # strip the whole .nii.gz, not just .gz
        if name.lower().endswith(s):
            return p.with_name(name[: -len(s)] + ".json")
    return p.with_suffix(".json")


def _jsonable(obj):
    if isinstance(obj, np.generic):
        return obj.item()
    if isinstance(obj, np.ndarray):
        return obj.tolist()
    if isinstance(obj, Path):
        return str(obj)
    if isinstance(obj, (set, frozenset)):
        return sorted(obj)
    raise TypeError(f"{type(obj).__name__} is not JSON serialisable")


def write_sidecar(mask_path: str | Path, record: dict, *, inputs: tuple = ()) -> Path:
    """Write ``record`` as ``<mask stem>.json`` beside the mask (replacing an older sidecar, never an input)."""
    path = check_output(sidecar_path(mask_path), overwrite=True, inputs=inputs)
    text = json.dumps(record, indent=2, default=_jsonable)
    with atomic_path(path) as tmp:
        Path(tmp).write_text(text + "\n")
    return path


def read_sidecar(mask_path: str | Path) -> dict | None:
    path = sidecar_path(mask_path)
    if not path.is_file():
        return None
    try:
        return json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise InputError(f"provenance sidecar {path} is not valid JSON: {e}") from None


def recorded_sha256(record: dict) -> dict[Path, str]:
    """The SHA-256 a sidecar records for each file its job wrote (mask, .zraw, maps), by resolved path."""
    files = record.get("outputs_sha256") if isinstance(record, dict) else None
    return {Path(f).resolve(): str(sha) for f, sha in files.items()} if isinstance(files, dict) else {}


def interrupted_outputs(mask_path: str | Path) -> set[Path]:
    """Files an interrupted job left for ``mask_path``, safe to replace without --overwrite.

    The sidecar is renamed into place before the mask, so a volseg sidecar without its mask is an
    unfinished job's; so are the files it records whose content is still what it recorded.  Anything
    else (a user's ``mask.json``, a changed ``.zraw``) is not ours to replace.
    """
    mask = Path(mask_path)
    if mask.exists():
        return set()
    try:
        record = read_sidecar(mask)
    except VolsegError:
        return set()
    if not isinstance(record, dict) or "outputs_sha256" not in record:
        return set()
    leftovers = {sidecar_path(mask).resolve()}
    for f, sha in recorded_sha256(record).items():
        if f.is_file() and file_sha256(f) == sha:
            leftovers.add(f)
    return leftovers

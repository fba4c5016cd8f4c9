"""Atomic output: write to a temporary file beside the target, then rename over it."""
from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
from pathlib import Path
from typing import Iterator

from ..errors import OutputExistsError


def check_output(path: str | Path, *, overwrite: bool = False, inputs: tuple = ()) -> Path:
    """Refuse to write over an input, or over an existing output unless ``overwrite``."""
    p = Path(path)
    for src in inputs:
        if src is not None and Path(src).exists() and p.exists() and p.resolve() == Path(src).resolve():
            raise OutputExistsError(f"output {p} is the same file as input {src}; refusing to overwrite an input")
    if p.exists() and not overwrite:
        raise OutputExistsError(f"output {p} already exists (use --overwrite to replace it)")
    return p


def _suffix(p: Path) -> str:
    # keep double suffixes such as .nii.gz so writers can pick the format from the temporary name
    return "".join(p.suffixes[-2:]) if p.name.endswith(".nii.gz") else p.suffix


def _share_like_a_new_file(path) -> None:
    """mkstemp makes 0600 files; give the output the mode a plain open() would (0666 less the umask)."""
    mask = os.umask(0)
    os.umask(mask)
    os.chmod(path, 0o666 & ~mask)


@contextlib.contextmanager
def atomic_path(path: str | Path) -> Iterator[str]:
    """Yield a temporary path in the target's folder; on success rename it onto ``path``."""
    p = Path(path)
    p.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{p.name}.", suffix=".tmp" + _suffix(p), dir=p.parent)
    os.close(fd)
    try:
        yield tmp
        _share_like_a_new_file(tmp)
        os.replace(tmp, p)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


@contextlib.contextmanager
def atomic_files(path: str | Path) -> Iterator[Path]:
    """Like ``atomic_path`` for formats that write companion files (``.mhd`` + ``.zraw``).

    Yields a temporary folder to write ``path.name`` into; its name is referenced by the header,
    so the files keep their final names.  On success every file moves beside ``path``, ``path``
    itself last, so the header never names data that is not there yet.
    """
    p = Path(path)
    p.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{p.name}.", suffix=".tmp", dir=p.parent))
    try:
        yield tmp
        for f in sorted(tmp.iterdir(), key=lambda f: f.name == p.name):
            _share_like_a_new_file(f)
            os.replace(f, p.parent / f.name)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)

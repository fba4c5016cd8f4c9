"""Atomic output: write to a temporary file beside the target, then rename over it.

* Temporary names carry the writer's pid (``.NAME.PID.XXXXXXXX.tmp...``), so a later run in the
  folder can remove those of processes that died mid-write (:func:`remove_stale_temps`).
* The file is fsynced before the rename and the folder after it: a power cut cannot leave an
  empty or partial file under the output's name.
* Inside :func:`staging`, renames wait: a job writes all its outputs to temporary files, then
  commits them in the order it needs (volseg.segment renames the sidecar first and the mask last).
"""
from __future__ import annotations

import contextlib
import contextvars
import os
import re
import shutil
import tempfile
from pathlib import Path
from typing import Iterator

from ..errors import OutputError, OutputExistsError
from ..faults import fault_point

# .NAME.PID.XXXXXXXX.tmp[.suffix]: mkstemp/mkdtemp's 8 random characters after our prefix
_TEMP_NAME = re.compile(r"^\..+\.(\d+)\.[a-z0-9_]{8}\.tmp")


def check_output(path: str | Path, *, overwrite: bool = False, inputs: tuple = ()) -> Path:
    """Refuse to write over (or into) an input, or over an existing output unless ``overwrite``."""
    p = Path(path)
    for src in inputs:
        if src is None or not Path(src).exists():
            continue
        s = Path(src).resolve()
        if (p.exists() and p.resolve() == s) or (s.is_dir() and p.resolve().is_relative_to(s)):
            raise OutputExistsError(f"output {p} is the same file as input {src}; refusing to overwrite an input"
                                    if not s.is_dir() else f"output {p} lies inside input folder {src}")
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


def _fsync(path: str | Path) -> None:
    """Flush a file's (or a folder's entries') data to the disk."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    except OSError:  # some file systems cannot fsync a folder; the rename is still atomic there
        pass
    finally:
        os.close(fd)


def pid_alive(pid: int) -> bool:
    """Whether process ``pid`` runs on this machine (a zombie has finished)."""
    if pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # someone else's process
        return True
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except (OSError, IndexError):
        return True


def _remove(path: Path) -> None:
    """Remove a temporary file, or a temporary folder with its files."""
    shutil.rmtree(path) if path.is_dir() and not path.is_symlink() else path.unlink()


def remove_stale_temps(folder: str | Path) -> list[Path]:
    """Remove temporary files and folders that a writer which has since died left in ``folder``."""
    removed = []
    with contextlib.suppress(OSError):
        for entry in Path(folder).iterdir():
            m = _TEMP_NAME.match(entry.name)
            if m and not pid_alive(int(m.group(1))):
                with contextlib.suppress(OSError):
                    _remove(entry)
                    removed.append(entry)
    return removed


class Staging:
    """Outputs written to temporary files, renamed into place by :meth:`commit` in a chosen order."""

    def __init__(self) -> None:
        self._renames: dict[Path, list[tuple[Path, Path]]] = {}  # output -> (temporary, final) in rename order
        self._temps: list[Path] = []

    def add(self, output: Path, renames: list[tuple[Path, Path]], temp: Path) -> None:
        self._renames[Path(output)] = renames
        self._temps.append(temp)

    def files(self, output: str | Path) -> list[tuple[Path, Path]]:
        """(temporary, final) for each file of ``output`` (a .mhd's data file before its header)."""
        return list(self._renames[Path(output)])

    def commit(self, order: list[str | Path]) -> None:
        """Rename every staged output into place, those in ``order`` in that order, the rest first."""
        fault_point("before-commit")
        order = [Path(o) for o in order]
        first = [o for o in self._renames if o not in order]
        folders = set()
        for output in first + [o for o in order if o in self._renames]:
            for tmp, final in self._renames.pop(output):
                fault_point("before-rename", final)
                os.replace(tmp, final)
                folders.add(final.parent)
        for folder in folders:
            _fsync(folder)
        self.discard()

    def discard(self) -> None:
        for t in self._temps:
            with contextlib.suppress(OSError):
                _remove(t)
        self._temps, self._renames = [], {}


_STAGE: contextvars.ContextVar[Staging | None] = contextvars.ContextVar("volseg_staging", default=None)


@contextlib.contextmanager
def staging() -> Iterator[Staging]:
    """Writes in this block are staged, not renamed; whatever is not committed is removed."""
    stage = Staging()
    token = _STAGE.set(stage)
    try:
        yield stage
    finally:
        _STAGE.reset(token)
        stage.discard()


def _temp_prefix(p: Path) -> str:
    return f".{p.name}.{os.getpid()}."


@contextlib.contextmanager
def atomic_path(path: str | Path) -> Iterator[str]:
    """Yield a temporary path in the target's folder; on success rename it onto ``path``."""
    p = Path(path)
    with output_errors(p):
        p.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=_temp_prefix(p), suffix=".tmp" + _suffix(p), dir=p.parent)
    os.close(fd)
    try:
        with output_errors(p):
            yield tmp
            _share_like_a_new_file(tmp)
            _fsync(tmp)
        fault_point("mid-write", p)
        stage = _STAGE.get()
        if stage is not None:
            stage.add(p, [(Path(tmp), p)], Path(tmp))
            return
        os.replace(tmp, p)
        _fsync(p.parent)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


@contextlib.contextmanager
def output_errors(p: Path) -> Iterator[None]:
    """An operating-system error while writing ``p`` (a folder that refuses files, a full disk) becomes one
    error line naming the output, not a traceback; the caller's cleanup still runs."""
    try:
        yield
    except OSError as e:
        raise OutputError(f"cannot write {p}: {e.strerror or e}") from e


@contextlib.contextmanager
def atomic_files(path: str | Path) -> Iterator[Path]:
    """Like ``atomic_path`` for formats that write companion files (``.mhd`` + ``.zraw``).

    Yields a temporary folder to write ``path.name`` into; its name is referenced by the header,
    so the files keep their final names.  On success every file moves beside ``path``, ``path``
    itself last, so the header never names data that is not there yet.
    """
    p = Path(path)
    with output_errors(p):
        p.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=_temp_prefix(p), suffix=".tmp", dir=p.parent))
    staged = False
    try:
        with output_errors(p):
            yield tmp
            files = sorted(tmp.iterdir(), key=lambda f: f.name == p.name)
            for f in files:
                _share_like_a_new_file(f)
                _fsync(f)
        fault_point("mid-write", p)
        renames = [(f, p.parent / f.name) for f in files]
        stage = _STAGE.get()
        if stage is not None:
            stage.add(p, renames, tmp)
            staged = True
            return
        for src, dst in renames:
            os.replace(src, dst)
        _fsync(p.parent)
    finally:
        if not staged:
            shutil.rmtree(tmp, ignore_errors=True)


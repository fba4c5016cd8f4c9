"""Exclusive claims on outputs, so that two volseg runs never write the same file.

A claim is a lock file ``.NAME.lock`` beside the output, created with ``O_EXCL`` and holding the
claimer's pid and a random token; it is removed when the job ends.  A lock whose process is dead
was left by a crash and is taken over, and the folder's temporary files of dead processes are
removed with it.  Both ``volseg segment`` (its outputs) and ``volseg batch`` (its report, which
claims the whole ``--out``; then each case's outputs) claim through :func:`claim`.
"""
from __future__ import annotations

import contextlib
import os
import uuid
from pathlib import Path
from typing import Iterable, Iterator

from ..errors import OutputExistsError
from .atomic import output_errors, pid_alive, remove_stale_temps


def lock_path(output: str | Path) -> Path:
    p = Path(output)
    return p.with_name(f".{p.name}.lock")


@contextlib.contextmanager
def claim(outputs: Iterable[str | Path]) -> Iterator[None]:
    """Hold the claims on ``outputs`` (creating their folders) for the block; release them after.

    Folders made here are removed again if the block leaves them empty.
    """
    held: list[Path] = []
    made: list[Path] = []
    try:
        for out in outputs:
            folder = Path(out).parent
            missing = [d for d in (folder, *folder.parents) if not d.exists()]
            made += reversed(missing)  # removed again if left empty, even if making them fails half-way
            with output_errors(Path(out)):
                folder.mkdir(parents=True, exist_ok=True)
                held.append(_acquire(Path(out)))
            remove_stale_temps(folder)
        yield
    finally:
        for lock in held:
            with contextlib.suppress(OSError):
                lock.unlink()
        for folder in reversed(made):
            with contextlib.suppress(OSError):
                folder.rmdir()  # only if empty


def _holder(lock: Path) -> tuple[int, str] | None:
    """(pid, content) of a lock; pid 0 for a lock still being written or not ours; None if gone."""
    try:
        text = lock.read_text()
    except FileNotFoundError:
        return None
    except (OSError, UnicodeDecodeError):
        return 0, ""
    head = text.split()[:1]
    return (int(head[0]) if head and head[0].isdigit() else 0), text


def _acquire(output: Path) -> Path:
    lock = lock_path(output)
    token = f"{os.getpid()} {uuid.uuid4().hex}\n"
    for _ in range(5):
        try:
            fd = os.open(lock, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
        except FileExistsError:
            holder = _holder(lock)
            if holder is None:  # released just now: try again
                continue
            pid, text = holder
            if pid == 0 or pid_alive(pid):
                who = f"pid {pid}" if pid else "an unknown process"
                raise OutputExistsError(
                    f"output {output} is being written by another volseg run ({who} holds {lock}); "
                    f"wait for it, or remove {lock} if that run is gone") from None
            # the lock of a dead process: take it over, but only that very lock (another run may be
            # taking it over at the same time and have made a fresh one)
            aside = lock.with_name(f"{lock.name}.{os.getpid()}.stale")
            try:
                os.rename(lock, aside)
            except FileNotFoundError:
                continue
            if aside.read_text() != text:  # we moved someone's fresh lock: put it back
                with contextlib.suppress(OSError):
                    os.link(aside, lock)
            aside.unlink()
            continue
        with os.fdopen(fd, "w") as f:
            f.write(token)
        return lock
    raise OutputExistsError(f"output {output} could not be claimed: {lock} keeps changing hands")

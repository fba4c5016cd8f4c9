"""Limit the BLAS (OpenBLAS) and OpenCV thread pools while propagating.

Every propagation step does a few small dense operations (an N x N Cholesky, a few thousand x N
matrix products, N ~ 1,000).  Multi-threaded OpenBLAS gains little on them, and when the cores
are shared with other processes its threads spin-wait: measured on a loaded 2-core machine, an
800 x 800 Cholesky took 2.8 s with 2 threads against 17 ms with one, and this module's tests 300 s
against 23 s.  numpy, scipy and OpenCV each bundle their own OpenBLAS; the ones already loaded in
this process are found in ``/proc/self/maps`` (Linux; elsewhere nothing is changed) and set
through their ``*_set_num_threads`` entry points, then restored.
"""
from __future__ import annotations

import contextlib
import ctypes
import os
from functools import lru_cache
from typing import Iterator


@lru_cache(maxsize=1)
def _openblas() -> tuple[tuple[object, object], ...]:
    """(set, get) function pairs of every OpenBLAS loaded in this process."""
    try:
        with open("/proc/self/maps") as f:
            names = {line.split()[-1] for line in f if line.count(" ") >= 5}
        paths = sorted(p for p in names if "openblas" in os.path.basename(p).lower() and ".so" in os.path.basename(p))
    except OSError:
        return ()
    found = []
    for path in paths:
        try:
            lib = ctypes.CDLL(path)
        except OSError:
            continue
        for prefix in ("scipy_openblas", "openblas"):
            for suffix in ("64_", "_64_", "", "_"):
                setter = getattr(lib, f"{prefix}_set_num_threads{suffix}", None)
                getter = getattr(lib, f"{prefix}_get_num_threads{suffix}", None)
                if setter is not None and getter is not None:
                    setter.argtypes, setter.restype, getter.restype = [ctypes.c_int], None, ctypes.c_int
                    found.append((setter, getter))
                    break
            else:
                continue
            break
    return tuple(found)


@contextlib.contextmanager
def limited_threads(n: int) -> Iterator[None]:
    """Run the block with at most ``n`` BLAS and OpenCV threads (n <= 0: leave them as they are)."""
    if n <= 0:
        yield
        return
    import cv2

    libs = _openblas()
    before = [g() for _, g in libs]
    cv_before = cv2.getNumThreads()
    for s, _ in libs:
        s(n)
    cv2.setNumThreads(n)
    try:
        yield
    finally:
        for (s, _), b in zip(libs, before):
            s(b)
        cv2.setNumThreads(cv_before)

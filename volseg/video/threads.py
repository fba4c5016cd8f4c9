"""Limit the BLAS and OpenCV thread pools while propagating.

Every propagation step does a few small dense operations (an N x N Cholesky, a few thousand x N
matrix products, N ~ 1,000).  Multi-threaded OpenBLAS gains little on them, and when the cores
are shared with other processes its threads spin-wait, which can make a step many times slower.
numpy, scipy and OpenCV each bundle their own OpenBLAS; threadpoolctl finds the ones loaded in
this process and sets each, then restores them.
"""
from __future__ import annotations

import contextlib
from typing import Iterator

import cv2
from threadpoolctl import threadpool_limits


@contextlib.contextmanager
def limited_threads(n: int) -> Iterator[None]:
    """Run the block with at most ``n`` BLAS and OpenCV threads (n <= 0: leave them as they are)."""
    if n <= 0:
        yield
        return
    cv_before = cv2.getNumThreads()
    cv2.setNumThreads(n)
    try:
        with threadpool_limits(limits=n, user_api="blas"):
            yield
    finally:
        cv2.setNumThreads(cv_before)

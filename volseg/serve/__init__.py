"""`volseg serve`: click in a browser on images, volumes and videos.

The page (``static/``) talks to a Starlette app (:mod:`.app`) that keeps one interactive state per
opened file on the server (:mod:`.sessions`) and sends back only what is on screen: the visible
slices or the frame, as PNGs (:mod:`.render`).  Only files under the served root can be opened
(:mod:`.files`).
"""
from __future__ import annotations

__all__ = ["create_app"]


def create_app(*args, **kwargs):
    from .app import create_app as make  # noqa: PLC0415 -- Starlette app; only `volseg serve` loads it

    return make(*args, **kwargs)

"""The HTTP side of ``volseg serve``: a Starlette app over a :class:`.sessions.SessionStore`.

Routes (JSON unless said otherwise; errors are ``{"error": message}`` with 400/403/404/500):

* ``GET /`` the page; ``GET /static/...`` its script and style (served from the package, nothing else)
* ``GET /api/files`` what the served folder holds
* ``POST /api/open {path}`` a session on one file -> its id, shape, views, window presets
* ``GET /api/s/{id}/image?view&index&width&level`` one slice or frame as PNG
* ``GET /api/s/{id}/overlay?view&index&layer=mask|uncertainty`` the labels (or the std) on it, RGBA PNG
* ``POST /api/s/{id}/click {position, positive, object, frame, shown}`` -> seconds + the overlays of the
  views in ``shown`` ({view: index}) only, never the whole volume
* ``POST /api/s/{id}/undo|reset|suggest|propagate|save|ping|close``; ``GET /api/s/{id}/download``
"""
from __future__ import annotations

import asyncio
import base64
import contextlib
import json
import logging
import time
from pathlib import Path

import numpy as np
from starlette.applications import Starlette
from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import FileResponse, JSONResponse, Response
from starlette.routing import Mount, Route
from starlette.staticfiles import StaticFiles

from ..errors import VolsegError
from . import render
from .files import Forbidden, NotFound, Root, kind_of
from .sessions import ImageState, SessionGone, SessionStore, VideoState

log = logging.getLogger(__package__)  # "volseg.serve": one logger for the page's server
STATIC = Path(__file__).with_name("static")
MAX_BODY = 64 * 1024  # a click or an open request is a few hundred bytes; nothing is uploaded


class BadRequest(Exception):
    pass


def create_app(root: str | Path, *, out: str | Path = "volseg-serve-out", settings: dict | None = None,
               video_config=None, idle_timeout: float = 600.0, max_sessions: int = 4,
               sweep_every: float | None = None) -> Starlette:
    """The app serving the files under ``root``; saved masks go to ``out``.  ``settings``: Session
    options (features, device, config) shared by every session."""
    out = Path(out)
    files = Root(root, exclude=out)
    store = SessionStore(idle_timeout=idle_timeout, max_sessions=max_sessions)
    settings = dict(settings or {})
    saved: dict[str, Path] = {}   # session id -> the file its download serves

    # -- helpers ----------------------------------------------------------------------------------
    async def body(request: Request) -> dict:
        raw = await request.body()
        if len(raw) > MAX_BODY:
            raise BadRequest(f"request body over {MAX_BODY} bytes")
        try:
            data = json.loads(raw or b"{}")
        except (json.JSONDecodeError, UnicodeDecodeError):
            raise BadRequest("request body is not JSON") from None
        if not isinstance(data, dict):
            raise BadRequest("request body must be a JSON object")
        return data

    def view_of(state, name) -> render.View:
        for v in state.views:
            if v.name == name:
                return v
        raise BadRequest(f"unknown view {name!r}; this file has {[v.name for v in state.views]}")

    def as_index(value, what="index") -> int | None:
        if value is None or value == "":
            return None
        try:
            f = float(value)
        except (TypeError, ValueError):
            raise BadRequest(f"{what} {value!r} is not a number") from None
        if not np.isfinite(f) or not f.is_integer():
            raise BadRequest(f"{what} {value!r} is not an integer")
        return int(f)

    def as_number(value) -> float:
        try:
            f = float(value)
        except (TypeError, ValueError):
            raise BadRequest(f"{value!r} is not a number") from None
        if not np.isfinite(f):
            raise BadRequest(f"{value!r} is not a finite number")
        return f

    def views_shown(state, shown) -> list[tuple[str, render.View, int | None]]:
        """The views on screen and their slices, checked before a request changes anything: a click that
        landed before a bad 'shown' failed the request would stay in the session all the same."""
        if not isinstance(shown, dict):
            raise BadRequest("'shown' must map view names to slice (or frame) indices")
        views = [(name, view_of(state, name), as_index(index)) for name, index in shown.items()]
        for _, view, index in views:
            state.check_index(view, index)
        return views

    def overlays(state, views, *, exact: bool) -> dict:
        """The labels of the views on screen (:func:`views_shown`), as data URLs: all a click sends back."""
        result = {}
        for name, view, index in views:
            labels = state.labels(view, index, exact=exact)
            encoded = base64.b64encode(render.png(render.colour_labels(labels))).decode()
            result[name] = "data:image/png;base64," + encoded
        return result

    def run(sid: str, fn):
        """Call fn(state) under the session's lock, in a worker thread."""
        def call():
            with store.use(sid) as state:
                return fn(state)
        return run_in_threadpool(call)

    # -- routes -----------------------------------------------------------------------------------
    async def index(request: Request):
        return FileResponse(STATIC / "index.html", headers={"Cache-Control": "no-cache"})

    async def list_files(request: Request):
        entries = await run_in_threadpool(files.listing)
        return JSONResponse({"root": files.dir.name if files.only is None else files.only.name,
                             "files": [{"path": e.path, "kind": e.kind} for e in entries],
                             "out": str(out)})

    async def open_file(request: Request):
        data = await body(request)
        rel = data.get("path")
        path = files.resolve(rel)
        kind = kind_of(path)

        def load():
            store.make_room()
            t0 = time.perf_counter()
            if kind == "video":
                state = VideoState(path, rel, settings, video_config)
            else:
                state = ImageState(path, rel, settings)
            log.info("opened %s (%s) in %.2f s", rel, state.kind, time.perf_counter() - t0)
            return state

        state = await run_in_threadpool(load)
        sid = store.add(state)
        return JSONResponse({"id": sid, **state.info()})

    async def image(request: Request):
        sid, q = request.path_params["sid"], request.query_params

        def draw(state):
            view = view_of(state, q.get("view"))
            index = as_index(q.get("index"))
            auto_width, auto_level = state.info()["window"]["auto"]
            width, level = as_number(q.get("width", auto_width)), as_number(q.get("level", auto_level))
            pixels = state.frame_pixels(index)  # the whole array of an image, one frame of a video
            return render.png(render.grey(render.plane(pixels, view, None if view.axis is None else index),
                                          width, level))

        data = await run(sid, draw)
        return Response(data, media_type="image/png", headers={"Cache-Control": "private, max-age=600"})

    async def overlay(request: Request):
        sid, q = request.path_params["sid"], request.query_params
        layer = q.get("layer", "mask")
        if layer not in ("mask", "uncertainty"):
            raise BadRequest(f"unknown layer {layer!r}: mask or uncertainty")

        def draw(state):
            view, index = view_of(state, q.get("view")), as_index(q.get("index"))
            if layer == "mask":
                return render.png(render.colour_labels(state.labels(view, index, exact=True)))
            std, vmax = state.uncertainty(view, index)
            return render.png(render.heat(std, vmax))

        data = await run(sid, draw)
        return Response(data, media_type="image/png", headers={"Cache-Control": "no-store"})

    async def click(request: Request):
        sid, data = request.path_params["sid"], await body(request)
        if "position" not in data:
            raise BadRequest("a click needs a 'position'")

        def act(state):
            views, frame = views_shown(state, data.get("shown", {})), as_index(data.get("frame"), "frame")
            t0 = time.perf_counter()
            seconds = state.click(data["position"], data.get("positive", True), data.get("object", 1), frame)
            shown = overlays(state, views, exact=False)
            return {"seconds": round(seconds, 4), "server_seconds": round(time.perf_counter() - t0, 4),
                    "overlays": shown, **state.state()}

        return JSONResponse(await run(sid, act))

    def edit(action):
        async def handler(request: Request):
            sid, data = request.path_params["sid"], await body(request)

            def act(state):
                views = views_shown(state, data.get("shown", {}))
                getattr(state, action)()
                return {"overlays": overlays(state, views, exact=False), **state.state()}

            return JSONResponse(await run(sid, act))
        return handler

    async def suggest(request: Request):
        sid, data = request.path_params["sid"], await body(request)
        return JSONResponse(await run(sid, lambda s: s.suggest(as_index(data.get("frame"), "frame"))))

    async def propagate(request: Request):
        sid, data = request.path_params["sid"], await body(request)

        def act(state):
            if not isinstance(state, VideoState):
                raise BadRequest("propagate is for videos")
            views = views_shown(state, data.get("shown", {}))
            result = state.propagate()
            return {**result, "overlays": overlays(state, views, exact=True), **state.state()}

        return JSONResponse(await run(sid, act))

    async def save(request: Request):
        sid = request.path_params["sid"]
        state_clicks = await run(sid, lambda s: (s, s.clicks_for_save()))
        state, clicks = state_clicks
        if isinstance(state, VideoState):  # its masks live in the segmenter: write them under its lock
            result = await run(sid, lambda s: s.save(clicks, out))
        else:  # `volseg segment` on the saved clicks: reads the file afresh, needs no lock
            result = await run_in_threadpool(state.save, clicks, out)
        saved[sid] = Path(result.pop("download"))
        return JSONResponse({**result, "download": f"/api/s/{sid}/download"})

    async def download(request: Request):
        sid = request.path_params["sid"]
        path = saved.get(sid)
        if path is None or not path.is_file():
            raise NotFound("nothing saved yet in this session")
        return FileResponse(path, filename=path.name, headers={"Cache-Control": "no-store"})

    async def ping(request: Request):
        await run(request.path_params["sid"], lambda s: None)
        return JSONResponse({"ok": True})

    async def close(request: Request):
        sid = request.path_params["sid"]
        closed = await run_in_threadpool(store.close, sid)
        saved.pop(sid, None)
        return JSONResponse({"closed": closed})

    # -- errors: a message for the page, and the server carries on ----------------------------------
    def error(status: int, message: str) -> JSONResponse:
        return JSONResponse({"error": message}, status_code=status)

    async def on_volseg(request, exc):
        return error(400, str(exc))

    async def on_bad(request, exc):
        return error(400, str(exc))

    async def on_forbidden(request, exc):
        return error(403, str(exc))

    async def on_missing(request, exc):
        return error(404, str(exc))

    async def on_memory(request, exc):
        return error(400, "out of memory while working on this file; close other sessions or lower --memory-budget")

    async def on_any(request, exc):
        log.exception("unexpected error on %s", request.url.path)
        return error(500, f"internal error ({type(exc).__name__}: {exc}); the server is still running")

    # -- lifecycle: sweep idle sessions while the server runs ----------------------------------------
    @contextlib.asynccontextmanager
    async def lifespan(app):
        async def sweeper():
            every = sweep_every or max(1.0, min(60.0, idle_timeout / 4))
            while True:
                await asyncio.sleep(every)
                freed = await run_in_threadpool(store.sweep)
                for sid in freed:
                    saved.pop(sid, None)
                    log.info("freed idle session %s", sid)

        task = asyncio.create_task(sweeper())
        try:
            yield
        finally:
            task.cancel()
            await run_in_threadpool(store.close_all)

    s = "/api/s/{sid}"
    routes = [
        Route("/", index), Route("/api/files", list_files), Route("/api/open", open_file, methods=["POST"]),
        Route(f"{s}/image", image), Route(f"{s}/overlay", overlay),
        Route(f"{s}/click", click, methods=["POST"]),
        Route(f"{s}/undo", edit("undo"), methods=["POST"]), Route(f"{s}/reset", edit("reset"), methods=["POST"]),
        Route(f"{s}/suggest", suggest, methods=["POST"]), Route(f"{s}/propagate", propagate, methods=["POST"]),
        Route(f"{s}/save", save, methods=["POST"]), Route(f"{s}/download", download),
        Route(f"{s}/ping", ping, methods=["POST"]), Route(f"{s}/close", close, methods=["POST"]),
        Mount("/static", StaticFiles(directory=STATIC), name="static"),
    ]
    handlers = {VolsegError: on_volseg, BadRequest: on_bad, IndexError: on_bad, Forbidden: on_forbidden,
                NotFound: on_missing, SessionGone: on_missing, MemoryError: on_memory, Exception: on_any}
    app = Starlette(routes=routes, exception_handlers=handlers, lifespan=lifespan)
    app.state.store, app.state.root, app.state.out = store, files, out
    return app

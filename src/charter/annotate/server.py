"""``charter annotate``: a local web page where people judge the pairs of a queue.

The page and its JSON API are served by aiohttp.web, already a dependency of charter (its
client talks to model servers), so the annotator adds no web stack, no Node build and no
CDN: three static files ship in the package. The state lives in ``store.Store``, whose
synchronous methods run whole on the one event loop, so concurrent requests are serialised
without locks and a label is on disk before its response is sent.

API (the page uses nothing else; with a token every ``/api`` request needs
``Authorization: Bearer TOKEN``):

- ``GET /api/next?annotator=NAME`` -> 200 ``{"id", "messages", "response_a", "response_b",
  "question", "left"}`` (``left``: which answer the page shows on the left), or 204 when
  nothing is left for NAME. Asking again returns the pair on NAME's screen while it is held
  for them (30 minutes, renewed while the pair still needs them).
- ``POST /api/label`` ``{"id", "annotator", "choice": "a"|"b"|"tie"|"skip"}`` (the pair's A/B).
- ``POST /api/undo`` ``{"annotator"}``: takes back NAME's latest label; the pair comes next
  (unless others have filled it meanwhile).
- ``GET /api/progress[?annotator=NAME]``.

Errors are 4xx with ``{"error": "..."}``. Bodies and answers are standard JSON: a body holding
NaN or Infinity (which Python's ``json`` reads by default), or a number too large to be one, is
refused with the field that holds it.
"""

from __future__ import annotations

import asyncio
import math
import socket
from collections.abc import Awaitable, Callable
from importlib import resources
from pathlib import Path

from aiohttp import web

from charter.annotate.options import AnnotateOptions
from charter.annotate.store import Store, read_queue
from charter.engines.base import same_file
from charter.errors import ConfigError, Refused
from charter.web import (
    check_token,
    error_response,
    is_loopback,
    json_body,
    json_response,
    listen,
    own_names,
    resolve_token,
)

MAX_BODY = 16 * 1024
"""Largest request body: a label is a few hundred bytes."""
MAX_NAME = 64
HEADERS = {
    # The page runs only charter's own script: model text that escaped as markup still could
    # not run (no inline script, no event-handler attributes, no outside image or request).
    "Content-Security-Policy": (
        "default-src 'none'; script-src 'self'; style-src 'self'; connect-src 'self'; "
        "img-src 'self'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'"
    ),
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "X-Frame-Options": "DENY",
    "Cache-Control": "no-store",
}
STATIC = {
    "/": ("index.html", "text/html"),
    "/app.js": ("app.js", "text/javascript"),
    "/app.css": ("app.css", "text/css"),
}
"""The only files served: fixed names from the package, so no request path reaches the disk."""


def check_name(name: object) -> str:
    if not isinstance(name, str) or not name.strip():
        raise Refused(400, "'annotator': give a name")
    name = name.strip()
    if len(name) > MAX_NAME or not name.isprintable():
        raise Refused(400, f"'annotator': at most {MAX_NAME} printable characters")
    return name


# -- HTTP ---------------------------------------------------------------------------------
Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


def _same_origin_only(request: web.Request) -> None:
    """Browsers say where a request comes from; another site's page is refused, so it can
    neither read the queue nor take pairs (even GET /api/next holds a pair). Scripts send
    neither header."""
    site = request.headers.get("Sec-Fetch-Site")
    origin = request.headers.get("Origin")
    if site in ("cross-site", "same-site") or (
        origin is not None and origin.lower() != f"{request.scheme}://{request.host}".lower()
    ):
        raise Refused(403, "requests from other web pages are refused")


def build_app(store: Store, *, token: str | None, host: str, port: int) -> web.Application:
    """The page and the API over ``store``. ``host``/``port`` are where it listens: on
    loopback, requests naming another host are refused (a DNS-rebinding page cannot reach it)."""
    loopback, names = is_loopback(host), own_names(host)

    @web.middleware
    async def guard(request: web.Request, handler: Handler) -> web.StreamResponse:
        try:
            if loopback and (request.url.host or "").lower() not in names:
                raise Refused(403, "this server answers to its loopback address only")
            if request.path.startswith("/api/"):
                _same_origin_only(request)
                if token is not None:
                    check_token(request, token)
            response = await handler(request)
        except Refused as e:
            response = error_response(e.status, str(e))
        except web.HTTPException as e:
            response = error_response(e.status, e.reason)
        response.headers.update(HEADERS)
        return response

    async def page(request: web.Request) -> web.Response:
        name, kind = STATIC[request.path]
        text = (resources.files("charter.annotate") / "static" / name).read_text("utf-8")
        return web.Response(text=text, content_type=kind, charset="utf-8")

    async def next_pair(request: web.Request) -> web.Response:
        annotator = check_name(request.query.get("annotator"))
        item = store.next_for(annotator)
        return json_response(item) if item is not None else web.Response(status=204)

    async def label(request: web.Request) -> web.Response:
        data = await json_body(request)
        annotator = check_name(data.get("annotator"))
        pair_id, choice = data.get("id"), data.get("choice")
        if not isinstance(pair_id, str):
            raise Refused(400, "'id': give the pair's id")
        if choice not in ("a", "b", "tie", "skip"):
            raise Refused(400, "'choice': one of a, b, tie, skip (in the pair's A/B terms)")
        left, seconds = data.get("left"), data.get("seconds")
        if left not in (None, "a", "b"):
            raise Refused(400, "'left': a or b, the answer shown on the left (optional)")
        if seconds is not None and not (
            isinstance(seconds, int | float)
            and not isinstance(seconds, bool)
            and math.isfinite(seconds)
            and seconds >= 0
        ):
            raise Refused(400, "'seconds': a number of seconds >= 0 (optional)")
        event = store.label(pair_id, annotator, choice, left, seconds)
        return json_response({"ok": True, "label": event.model_dump()})

    async def undo(request: web.Request) -> web.Response:
        data = await json_body(request)
        pair_id = store.undo(check_name(data.get("annotator")))
        return json_response({"ok": True, "id": pair_id})

    async def progress(request: web.Request) -> web.Response:
        name = request.query.get("annotator")
        return json_response(store.progress(check_name(name) if name is not None else None))

    async def no_icon(request: web.Request) -> web.Response:
        return web.Response(status=204)

    app = web.Application(middlewares=[guard], client_max_size=MAX_BODY)
    for path in STATIC:
        app.router.add_get(path, page)
    app.router.add_get("/favicon.ico", no_icon)
    app.router.add_get("/api/next", next_pair)
    app.router.add_post("/api/label", label)
    app.router.add_post("/api/undo", undo)
    app.router.add_get("/api/progress", progress)
    return app


def page_url(host: str, port: int, token: str | None) -> str:
    """The link to print: for a server on every interface, this machine's name (what other
    machines use), not 0.0.0.0."""
    if host in ("0.0.0.0", "::", ""):
        host = socket.gethostname()
    shown = f"[{host}]" if ":" in host else host
    return f"http://{shown}:{port}/" + (f"#token={token}" if token else "")


async def serve(opts: AnnotateOptions, *, on_ready: Callable[[str], None] | None = None) -> None:
    """Serve the queue until cancelled. ``on_ready`` gets the page's address (with the token
    in its fragment, which browsers never send to a server)."""
    items = read_queue(Path(opts.input))
    if same_file(Path(opts.output), Path(opts.input)):
        raise ConfigError("--output is the queue itself: write the labels to another file")
    token = resolve_token(opts.host, opts.token)
    store = Store(items, Path(opts.output), per_pair=opts.per_pair, seed=opts.seed)
    runner: web.AppRunner | None = None
    try:
        app = build_app(store, token=token, host=opts.host, port=opts.port)
        runner = web.AppRunner(app, access_log=None)
        port = await listen(runner, opts.host, opts.port)
        if on_ready is not None:
            on_ready(page_url(opts.host, port, token))
        await asyncio.Event().wait()
    finally:
        if runner is not None:
            await runner.cleanup()
        store.close()

"""``charter annotate``: a local web page where people judge the pairs of a queue.

The page and its JSON API are served by aiohttp.web, already a dependency of charter (its
client talks to model servers), so the annotator adds no web stack, no Node build and no
CDN: three static files ship in the package. One process, one event loop: every state change
is a synchronous call between two awaits, so concurrent requests are serialised without locks
and a label is written (flushed and fsynced) before its response is sent.

API (the page uses nothing else; with a token every ``/api`` request needs
``Authorization: Bearer TOKEN``):

- ``GET /api/next?annotator=NAME`` -> 200 ``{"id", "messages", "response_a", "response_b",
  "question", "left"}`` (``left``: which answer the page shows on the left), or 204 when
  nothing is left for NAME. Asking again before labelling returns the same pair.
- ``POST /api/label`` ``{"id", "annotator", "choice": "a"|"b"|"tie"|"skip"}`` (the pair's A/B).
- ``POST /api/undo`` ``{"annotator"}``: takes back NAME's latest label; the pair comes next.
- ``GET /api/progress[?annotator=NAME]``.

Errors are 4xx with ``{"error": "..."}``.
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import ipaddress
import json
import logging
import secrets
import socket
import time
from collections import Counter
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from importlib import resources
from pathlib import Path
from typing import Any

from aiohttp import web
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from charter.annotate.records import (
    Annotation,
    AnnotationEvent,
    HumanChoice,
    QueueItem,
    Side,
    fold,
    is_annotation_log,
    read_events,
)
from charter.errors import ConfigError, InputError
from charter.io import JsonlWriter
from charter.validation import describe_validation

log = logging.getLogger("charter")

LEASE_SECONDS = 30 * 60
"""A pair shown to an annotator is held for them this long: others are not asked it (when it
needs no more labels than the holders will give) until they label it or the hold lapses."""
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


class AnnotateOptions(BaseModel):
    """Options of ``charter annotate``."""

    model_config = ConfigDict(extra="forbid", use_attribute_docstrings=True)

    input: str
    """The queue (``charter route`` output)."""
    output: Path
    """Human labels, appended one line each (a restart resumes from it)."""
    host: str = "127.0.0.1"
    """Address to listen on. Anything but loopback needs a token (one is made if not given)."""
    port: int = Field(default=8765, ge=0, le=65535)
    """Port (0: any free port; the address is printed)."""
    token: str | None = None
    """Bearer token every API request must carry (the printed link hands it to the page)."""
    per_pair: int = Field(default=1, ge=1)
    """Annotators asked per pair (K); a skip does not count."""
    seed: int = 0
    """Seed of which answer each annotator sees on the left of each pair."""


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def resolve_token(host: str, token: str | None) -> str | None:
    """The token to require: the given one, a new one off loopback, else none."""
    if token is not None:
        if len(token) < 8 or not (token.isascii() and token.isprintable()) or " " in token:
            raise ConfigError("--token: use at least 8 printable ASCII characters, no spaces")
        return token
    return None if is_loopback(host) else secrets.token_urlsafe(18)


def left_side(seed: int, annotator: str, pair_id: str) -> Side:
    """Which answer ``annotator`` sees on the left of ``pair_id``: fixed per (seed, annotator,
    pair), so a reload shows the same layout and position bias averages out across pairs."""
    digest = hashlib.sha256(f"{seed}\0{annotator}\0{pair_id}".encode()).digest()
    return "a" if digest[0] % 2 == 0 else "b"


class ApiError(Exception):
    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status


def check_name(name: object) -> str:
    if not isinstance(name, str) or not name.strip():
        raise ApiError(400, "'annotator': give a name")
    name = name.strip()
    if len(name) > MAX_NAME or not name.isprintable():
        raise ApiError(400, f"'annotator': at most {MAX_NAME} printable characters")
    return name


def read_queue(path: Path) -> list[QueueItem]:
    if not path.is_file():
        raise InputError(f"queue not found: {path}")
    items: list[QueueItem] = []
    seen: set[str] = set()
    with path.open("rb") as f:
        for lineno, line in enumerate(f, start=1):
            if not line.strip():
                continue
            try:
                item = QueueItem.model_validate_json(line)  # bad UTF-8 too is a ValidationError
            except ValidationError as e:
                raise InputError(f"{path}:{lineno}: {describe_validation(e)}") from e
            if item.id in seen:
                raise InputError(f"{path}:{lineno}: id {item.id!r} is in the queue twice")
            seen.add(item.id)
            items.append(item)
    if not items:
        raise InputError(f"{path}: the queue is empty")
    return items


@dataclass
class Lease:
    pair_id: str
    since: float
    """``time.time()`` when the pair was shown."""
    left: Side


@dataclass
class Store:
    """The queue, the labels that stand, and who holds which pair. Methods are synchronous:
    on the server's one event loop each runs whole, so no two requests interleave."""

    items: list[QueueItem]
    output: Path
    per_pair: int = 1
    seed: int = 0
    standing: dict[tuple[str, str], Annotation] = field(default_factory=dict)
    stacks: dict[str, list[str]] = field(default_factory=dict)
    """Annotator -> ids of their standing labels, oldest first (undo pops the last)."""
    leases: dict[str, Lease] = field(default_factory=dict)
    """Annotator -> the pair on their screen."""
    writer: JsonlWriter | None = None

    def __post_init__(self) -> None:
        self.by_id = {item.id: item for item in self.items}
        self.counts: dict[str, int] = dict.fromkeys(self.by_id, 0)
        """Pair -> judgements (not skips) that stand."""
        out = self.output
        if out.is_dir():
            raise ConfigError(f"--output {out} is a folder: name a file for the labels")
        if out.exists() and out.stat().st_size and not is_annotation_log(out):
            raise ConfigError(
                f"--output {out} is not an annotation log (charter annotate output): "
                "choose another file"
            )
        # The writer first: it locks the file and drops a line a killed server left half
        # written, so what is read next is exactly what later appends follow.
        self.writer = JsonlWriter(out, exclusive=True)
        unknown = 0
        for a in fold(read_events(out)):
            if a.id in self.by_id:
                self._stand(a)
            else:
                unknown += 1
        if unknown:
            log.warning(
                "%s: %d label(s) name pairs not in this queue; kept in the file, not counted",
                out,
                unknown,
            )

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()
            self.writer = None

    # -- state --------------------------------------------------------------------------
    def _stand(self, a: Annotation) -> None:
        self.standing[(a.id, a.annotator)] = a
        self.stacks.setdefault(a.annotator, []).append(a.id)
        if a.choice != "skip":
            self.counts[a.id] += 1

    def _fall(self, pair_id: str, annotator: str) -> None:
        a = self.standing.pop((pair_id, annotator))
        self.stacks[annotator].remove(pair_id)
        if a.choice != "skip":
            self.counts[pair_id] -= 1

    def labels_of(self, pair_id: str) -> int:
        """Judgements (not skips) the pair has."""
        return self.counts[pair_id]

    def _live(self, lease: Lease | None, now: float) -> bool:
        return lease is not None and now - lease.since < LEASE_SECONDS

    def _held(self, now: float, but: str) -> Counter[str]:
        """Pair -> live holds on it by annotators other than ``but``."""
        return Counter(
            lease.pair_id
            for name, lease in self.leases.items()
            if name != but and self._live(lease, now)
        )

    def _open_for(self, pair_id: str, annotator: str, held: Counter[str]) -> bool:
        """The pair still wants a label that nobody else is holding a place for, and
        ``annotator`` has not labelled (or skipped) it."""
        if (pair_id, annotator) in self.standing:
            return False
        return self.per_pair - self.counts[pair_id] - held[pair_id] > 0

    def _write(self, event: AnnotationEvent) -> None:
        assert self.writer is not None
        self.writer.write(event)
        self.writer.sync()

    # -- the API ------------------------------------------------------------------------
    def next_for(self, annotator: str) -> dict[str, Any] | None:
        """The pair on ``annotator``'s screen, else the first pair open to them (held for
        them from now on). A hold that lapsed is kept only while the pair is still open."""
        now = time.time()
        held = self._held(now, but=annotator)
        lease = self.leases.get(annotator)
        if lease is not None and not (
            self._live(lease, now) and (lease.pair_id, annotator) not in self.standing
        ):
            if self._open_for(lease.pair_id, annotator, held):
                lease.since = now  # back from a break: the same pair, held again
            else:
                lease = None
        if lease is None:
            found = next((i for i in self.items if self._open_for(i.id, annotator, held)), None)
            if found is None:
                self.leases.pop(annotator, None)
                return None
            lease = Lease(found.id, now, left_side(self.seed, annotator, found.id))
            self.leases[annotator] = lease
        item = self.by_id[lease.pair_id]
        return {
            "id": item.id,
            "messages": [m.model_dump() for m in item.messages],
            "response_a": item.response_a,
            "response_b": item.response_b,
            "question": item.question,
            "left": lease.left,
        }

    def label(
        self,
        pair_id: str,
        annotator: str,
        choice: HumanChoice,
        left: Side | None = None,
        seconds: float | None = None,
    ) -> AnnotationEvent:
        """Write one label. ``left``/``seconds``: what the page says it showed, used when the
        server holds no record of it (a page left open across a restart)."""
        item = self.by_id.get(pair_id)
        if item is None:
            raise ApiError(404, f"no pair {pair_id!r} in the queue")
        if (pair_id, annotator) in self.standing:
            raise ApiError(409, f"{annotator} has already labelled {pair_id!r}; undo it first")
        now = time.time()
        lease = self.leases.get(annotator)
        shown = lease if lease is not None and lease.pair_id == pair_id else None
        held = self._held(now, but=annotator)
        lapsed = shown is not None and not self._live(shown, now)
        if lapsed and not self._open_for(pair_id, annotator, held):  # filled while away
            del self.leases[annotator]
            shown = None
        if shown is None and choice != "skip" and not self._open_for(pair_id, annotator, held):
            raise ApiError(
                409,
                f"{pair_id!r} has the {self.per_pair} label(s) it needs, or others are "
                "labelling it: ask /api/next for another pair",
            )
        event = AnnotationEvent(
            event="label",
            id=pair_id,
            annotator=annotator,
            choice=choice,
            left=shown.left if shown else left,
            routed_by=item.routed_by,
            time=_now(),
            seconds=round(now - shown.since, 3) if shown else seconds,
        )
        self._write(event)
        self._stand(
            Annotation(pair_id, annotator, choice, event.left, item.routed_by, event.seconds)
        )
        if shown:
            del self.leases[annotator]
        return event

    def undo(self, annotator: str) -> str:
        stack = self.stacks.get(annotator)
        if not stack:
            raise ApiError(409, f"{annotator} has no label to undo")
        pair_id = stack[-1]
        self._write(AnnotationEvent(event="undo", id=pair_id, annotator=annotator, time=_now()))
        self._fall(pair_id, annotator)
        # The pair comes back next, with the same layout as before.
        self.leases[annotator] = Lease(
            pair_id, time.time(), left_side(self.seed, annotator, pair_id)
        )
        return pair_id

    def progress(self, annotator: str | None = None) -> dict[str, Any]:
        people = {}
        for name, ids in sorted(self.stacks.items()):
            skipped = sum(self.standing[(i, name)].choice == "skip" for i in ids)
            people[name] = {"labelled": len(ids) - skipped, "skipped": skipped}
        out: dict[str, Any] = {
            "pairs": len(self.items),
            "per_pair": self.per_pair,
            "labels": sum(self.counts.values()),
            "labels_wanted": len(self.items) * self.per_pair,
            "pairs_complete": sum(c >= self.per_pair for c in self.counts.values()),
            "annotators": people,
        }
        if annotator is not None:
            held = self._held(time.time(), but=annotator)
            out["you"] = {
                "done": len(self.stacks.get(annotator, [])),
                "left": sum(self._open_for(i.id, annotator, held) for i in self.items),
            }
        return out


def _now() -> str:
    return datetime.now(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


# -- HTTP ---------------------------------------------------------------------------------
Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


def _error(status: int, message: str) -> web.Response:
    return web.json_response({"error": message}, status=status)


def _same_origin_only(request: web.Request) -> None:
    """Browsers say where a request comes from; another site's page is refused, so it can
    neither read the queue nor take pairs (even GET /api/next holds a pair). Scripts send
    neither header."""
    site = request.headers.get("Sec-Fetch-Site")
    origin = request.headers.get("Origin")
    if site in ("cross-site", "same-site") or (
        origin is not None and origin.lower() != f"{request.scheme}://{request.host}".lower()
    ):
        raise ApiError(403, "requests from other web pages are refused")


def _check_token(request: web.Request, token: str) -> None:
    scheme, _, given = request.headers.get("Authorization", "").partition(" ")
    ok = scheme.lower() == "bearer" and hmac.compare_digest(
        given.strip().encode("utf-8", "surrogateescape"), token.encode()
    )
    if not ok:
        raise ApiError(401, "missing or wrong token (Authorization: Bearer TOKEN)")


async def _body(request: web.Request) -> dict[str, Any]:
    if request.content_type != "application/json":
        # Also what keeps other web pages out: a cross-site JSON POST needs a CORS preflight,
        # which this server never grants.
        raise ApiError(415, "send the body as application/json")
    try:
        data = json.loads(await request.read())
    except (ValueError, RecursionError):  # UnicodeDecodeError is a ValueError
        raise ApiError(400, "the body is not valid JSON") from None
    if not isinstance(data, dict):
        raise ApiError(400, "the body must be a JSON object")
    return data


def build_app(store: Store, *, token: str | None, host: str, port: int) -> web.Application:
    """The page and the API over ``store``. ``host``/``port`` are where it listens: on
    loopback, requests naming another host are refused (a DNS-rebinding page cannot reach it)."""
    loopback = is_loopback(host)
    own_names = {"127.0.0.1", "localhost", "::1", host.lower().strip("[]")}

    @web.middleware
    async def guard(request: web.Request, handler: Handler) -> web.StreamResponse:
        try:
            if loopback and request.host.rsplit(":", 1)[0].strip("[]").lower() not in own_names:
                raise ApiError(403, "this server answers to its loopback address only")
            if request.path.startswith("/api/"):
                _same_origin_only(request)
                if token is not None:
                    _check_token(request, token)
            response = await handler(request)
        except ApiError as e:
            response = _error(e.status, str(e))
        except web.HTTPException as e:
            response = _error(e.status, e.reason)
        response.headers.update(HEADERS)
        return response

    async def page(request: web.Request) -> web.Response:
        name, kind = STATIC[request.path]
        text = (resources.files("charter.annotate") / "static" / name).read_text("utf-8")
        return web.Response(text=text, content_type=kind, charset="utf-8")

    async def next_pair(request: web.Request) -> web.Response:
        annotator = check_name(request.query.get("annotator"))
        item = store.next_for(annotator)
        return web.json_response(item) if item is not None else web.Response(status=204)

    async def label(request: web.Request) -> web.Response:
        data = await _body(request)
        annotator = check_name(data.get("annotator"))
        pair_id, choice = data.get("id"), data.get("choice")
        if not isinstance(pair_id, str):
            raise ApiError(400, "'id': give the pair's id")
        if choice not in ("a", "b", "tie", "skip"):
            raise ApiError(400, "'choice': one of a, b, tie, skip (in the pair's A/B terms)")
        left, seconds = data.get("left"), data.get("seconds")
        if left not in (None, "a", "b"):
            raise ApiError(400, "'left': a or b, the answer shown on the left (optional)")
        if seconds is not None and not (
            isinstance(seconds, int | float) and not isinstance(seconds, bool) and seconds >= 0
        ):
            raise ApiError(400, "'seconds': a number of seconds >= 0 (optional)")
        event = store.label(pair_id, annotator, choice, left, seconds)
        return web.json_response({"ok": True, "label": event.model_dump()})

    async def undo(request: web.Request) -> web.Response:
        data = await _body(request)
        pair_id = store.undo(check_name(data.get("annotator")))
        return web.json_response({"ok": True, "id": pair_id})

    async def progress(request: web.Request) -> web.Response:
        name = request.query.get("annotator")
        return web.json_response(store.progress(check_name(name) if name is not None else None))

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
    if Path(opts.output).resolve() == Path(opts.input).resolve():
        raise ConfigError("--output is the queue itself: write the labels to another file")
    token = resolve_token(opts.host, opts.token)
    store = Store(items, Path(opts.output), per_pair=opts.per_pair, seed=opts.seed)
    runner: web.AppRunner | None = None
    try:
        app = build_app(store, token=token, host=opts.host, port=opts.port)
        runner = web.AppRunner(app, access_log=None)
        await runner.setup()
        site = web.TCPSite(runner, opts.host, opts.port)
        try:
            await site.start()
        except OSError as e:
            raise ConfigError(f"cannot listen on {opts.host}:{opts.port}: {e.strerror or e}") from e
        port = opts.port or _bound_port(runner)
        if on_ready is not None:
            on_ready(page_url(opts.host, port, token))
        await asyncio.Event().wait()
    finally:
        if runner is not None:
            await runner.cleanup()
        store.close()


def _bound_port(runner: web.AppRunner) -> int:
    for address in runner.addresses:
        if isinstance(address, tuple):
            return int(address[1])
    raise ConfigError("the server did not report its port")

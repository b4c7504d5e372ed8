"""What charter's HTTP servers (``annotate``, ``serve``) share: who may call them (loopback,
bearer tokens), standard JSON in and out, and where they listen. Both are aiohttp.web, which
charter's client already depends on."""

from __future__ import annotations

import hmac
import ipaddress
import json
import math
import secrets
import sys
from functools import partial
from typing import Any

from aiohttp import web

from charter.errors import ConfigError, Refused


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


def own_names(host: str) -> set[str]:
    """The names a request to a server on ``host`` may give as its Host: on loopback, a
    request naming any other is refused (a DNS-rebinding page cannot reach the server)."""
    return {"127.0.0.1", "localhost", "::1", host.lower().strip("[]")}


def check_token(request: web.Request, token: str, *, in_query: bool = False) -> None:
    """``Authorization: Bearer TOKEN``, or with ``in_query`` also ``?token=TOKEN`` (for
    clients that cannot set a header)."""
    scheme, _, given = request.headers.get("Authorization", "").partition(" ")
    if scheme.lower() != "bearer" and in_query and "token" in request.query:
        scheme, given = "bearer", request.query["token"]
    ok = scheme.lower() == "bearer" and hmac.compare_digest(
        given.strip().encode("utf-8", "surrogateescape"), token.encode()
    )
    if not ok:
        where = "Authorization: Bearer TOKEN" + (" or ?token=TOKEN" if in_query else "")
        raise Refused(401, f"missing or wrong token ({where})")


_dumps = partial(json.dumps, allow_nan=False)
"""Answers are standard JSON: a non-finite number is an error here, never ``Infinity`` sent."""


def json_response(data: Any, status: int = 200) -> web.Response:
    return web.json_response(data, status=status, dumps=_dumps)


def error_response(status: int, message: str) -> web.Response:
    return json_response({"error": message}, status=status)


def problem(value: Any) -> str | None:
    """What is wrong with a parsed JSON value, if anything: NaN or infinity anywhere, an
    integer too large for a double (JSON reads it exactly; as a number of seconds it would
    overflow), or text holding a lone surrogate (``"\\ud800"``: no UTF-8 can carry it)."""
    stack = [value]
    while stack:
        v = stack.pop()
        if isinstance(v, float) and not math.isfinite(v):
            return "not a finite number (NaN, Infinity or out of range)"
        if isinstance(v, int) and not isinstance(v, bool) and abs(v) > sys.float_info.max:
            return "not a finite number (NaN, Infinity or out of range)"
        if isinstance(v, str) and not _encodable(v):
            return "not valid text (a lone surrogate)"
        if isinstance(v, dict):
            stack += v.values()
            stack += v.keys()
        elif isinstance(v, list):
            stack += v
    return None


def _encodable(text: str) -> bool:
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


async def json_body(request: web.Request) -> dict[str, Any]:
    """The request's JSON object, or a Refused naming what is wrong with it."""
    if request.content_type != "application/json":
        # Also what keeps other web pages out: a cross-site JSON POST needs a CORS preflight,
        # which charter's servers never grant.
        raise Refused(415, "send the body as application/json")
    try:
        data = json.loads(await request.read())
    except (ValueError, RecursionError):  # UnicodeDecodeError is a ValueError
        raise Refused(400, "the body is not valid JSON") from None
    if not isinstance(data, dict):
        raise Refused(400, "the body must be a JSON object")
    for key, value in data.items():
        wrong = problem(key) or problem(value)
        if wrong:
            raise Refused(400, f"{key!r}: {wrong}")
    return data


def bound_port(runner: web.AppRunner) -> int:
    for address in runner.addresses:
        if isinstance(address, tuple):
            return int(address[1])
    raise ConfigError("the server did not report its port")


async def listen(runner: web.AppRunner, host: str, port: int) -> int:
    """Start ``runner`` on host:port; the port it listens on (a free one for 0)."""
    await runner.setup()
    site = web.TCPSite(runner, host, port)
    try:
        await site.start()
    except OSError as e:
        raise ConfigError(f"cannot listen on {host}:{port}: {e.strerror or e}") from e
    return port or bound_port(runner)

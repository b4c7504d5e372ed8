"""``openai/<model>``: any OpenAI-compatible chat-completions server.

vLLM, SGLang, llama.cpp's server, Ollama, TGI and OpenAI itself all speak this protocol. We
speak it directly over one pooled aiohttp session: the request is one JSON object and the
answer one JSON object, and at the request rates charter is built for (thousands per second
against a local vLLM) an SDK's per-request type transformation cost more CPU than the rest of
charter together (see BENCHMARKS.md). Retries are the model wrapper's job, not this module's.
"""

from __future__ import annotations

import asyncio
import base64
import email.utils
import json
import logging
import math
import os
import re
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, NamedTuple
from urllib.parse import unquote, urlsplit, urlunsplit

import orjson
from pydantic import Field

from charter import endpoints
from charter.backends.base import BackendOptions, Capabilities, option_key, parse_options
from charter.errors import (
    BackendError,
    BackendFatalError,
    BackendUnavailable,
    ConfigError,
    ContinueRefused,
    LogprobsRefused,
    LogprobsUnavailable,
    OptionsNotFound,
    RetryableBackendError,
)
from charter.types import (
    FinishReason,
    GenerateConfig,
    Generation,
    Message,
    OptionScores,
    TokenLogprob,
)

if TYPE_CHECKING:
    from charter.batch.api import ItemResult
    from charter.batch.openai import OpenAIBatches

log = logging.getLogger("charter")

OPENAI_URL = "https://api.openai.com/v1"
TIMEOUT = 120.0
"""Seconds per request when none is given."""
TOP_LOGPROBS = 20
"""Candidates asked for at the first position; a server that caps it lower is stepped down."""
WIDE_TOP_LOGPROBS = 1000
"""Candidates asked for when an option is missing from the usual top list."""
_TOP_STEPS = (20, 5, 1)
# How servers state their top_logprobs limit in a 400 ("Expected a value <= 20", "max allowed:
# 5", "must be between 0 and 5", "in [0, 5]").
_CAP = re.compile(
    r"(?:<=|less than or equal to|at most|no more than|max(?:imum)?(?: allowed| value)?"
    r"(?: is)?:?|between \d+ and|\[\s*0\s*,)\s*(\d+)",
    re.IGNORECASE,
)
_ENTRY = re.compile(r",[\s,]*(?=[a-z][a-z0-9+.-]*://)", re.IGNORECASE)
"""Where one --base-url entry ends and the next begins."""
_FINISH: dict[str, FinishReason] = {
    "stop": "stop",
    "length": "length",
    "content_filter": "content_filter",
    "tool_calls": "stop",
    "function_call": "stop",
}


def _retry_after(headers: Mapping[str, str]) -> float | None:
    """Seconds to wait from ``retry-after-ms`` or ``retry-after`` (seconds or an HTTP date)."""
    ms = headers.get("retry-after-ms")
    if ms:
        try:
            return float(ms) / 1000.0
        except ValueError:
            pass
    value = headers.get("retry-after")
    if not value:
        return None
    try:
        return max(0.0, float(value))
    except ValueError:
        try:
            parsed = email.utils.parsedate_to_datetime(value)
        except (TypeError, ValueError):
            return None
        return max(0.0, parsed.timestamp() - time.time())


def _port(url: str) -> str:
    """The port as written (urlsplit's ``.port`` raises on one out of range)."""
    netloc = urlsplit(url).netloc.rpartition("@")[2]
    _, sep, port = netloc.rpartition(":")
    return port if sep and not port.endswith("]") else ""


def _bracketed(host: str) -> str:
    """An IPv6 address as a URL writes it ([::1]); urlsplit's hostname drops the brackets."""
    return f"[{host}]" if ":" in host else host


def redact_url(url: str) -> str:
    """Drop user:password@ and any query string (some gateways take keys there)."""
    parts = urlsplit(url)
    host = _bracketed(parts.hostname or "")
    if _port(url):
        host = f"{host}:{_port(url)}"
    if parts.username or parts.password:
        host = "***@" + host
    return urlunsplit((parts.scheme, host, parts.path, "", ""))


def _encode(body: dict[str, Any]) -> bytes:
    """A request body as JSON (orjson; the json module for what orjson refuses, such as a
    lone surrogate, so such a request fails or passes as it always has)."""
    try:
        return orjson.dumps(body)
    except TypeError:  # orjson.JSONEncodeError
        return json.dumps(body).encode()


def _decode(raw: bytes) -> Any:
    """A response body, raising ValueError when it is not JSON: orjson, or the json module
    for what orjson refuses (NaN, Infinity, lone surrogates, non-UTF-8) or reads otherwise
    (it reads integers beyond 64 bits, 20 digits or more, as floats)."""
    if _LONG_DIGITS.search(raw) is None:
        try:
            return orjson.loads(raw)
        except ValueError:  # orjson.JSONDecodeError
            pass
    return json.loads(raw)


_LONG_DIGITS = re.compile(rb"[0-9]{20}")


def _server_message(body: bytes) -> str:
    try:
        data = json.loads(body)
    except ValueError:
        return " ".join(body.decode("utf-8", "replace").split())[:300]
    err = data.get("error") or data if isinstance(data, dict) else data
    msg = err.get("message", err) if isinstance(err, dict) else err
    return " ".join(str(msg).split())[:300]


def _lower_top(message: str, sent: int) -> int | None:
    """The next top_logprobs to try after a refusal of ``sent``: the limit the server stated,
    else the next usual step down; None below 1."""
    stated = [int(n) for n in _CAP.findall(message) if 1 <= int(n) < sent]
    if stated:
        return max(stated)
    lower = [n for n in _TOP_STEPS if n < sent]
    return max(lower) if lower else None


class _BadRequest(BackendError):
    """HTTP 400 or 422: the server refuses the request as written."""


class OpenAIBackend:
    """Chat completions over HTTP."""

    def __init__(
        self,
        model: str,
        *,
        base_url: str | Sequence[str] | None = None,
        api_key: str | None = None,
        timeout: float = TIMEOUT,
        top_logprobs: int = TOP_LOGPROBS,
    ) -> None:
        """``base_url``: one endpoint, or several (a list, or one string separated by
        commas) of one deployment."""
        self.name = f"openai/{model}"
        self.model = model
        if isinstance(base_url, str) or base_url is None:
            raw = base_url or os.environ.get("OPENAI_BASE_URL") or OPENAI_URL
            # Split only where the next URL starts: a comma inside one (a password, a query
            # string) is part of it.
            raw = raw.strip().strip(",").strip()
            entries = [u.strip() for u in _ENTRY.split(raw) if u.strip()] or [OPENAI_URL]
        else:
            entries = [u.strip() for u in base_url if u.strip()] or [OPENAI_URL]
        key = api_key or os.environ.get("OPENAI_API_KEY")
        self._targets = [
            _target(url, key, "--base-url" if len(entries) == 1 else f"--base-url entry {i + 1}")
            for i, url in enumerate(entries)
        ]
        self._by_name = {t.name: t for t in self._targets}
        if len(self._by_name) < len(self._targets):
            seen = [t.name for t in self._targets]
            twice = next(n for n in seen if seen.count(n) > 1)
            raise ConfigError(f"--base-url lists {twice!r} twice")
        if top_logprobs < 1:
            raise ConfigError(f"top_logprobs must be at least 1, got {top_logprobs}")
        self.endpoints = tuple(t.name for t in self._targets)
        """The endpoints as shown (no credentials, no query): several make ``Model`` spread
        requests over them (``charter.endpoints``)."""
        self.base_url = ",".join(self.endpoints)  # as shown in messages
        # Sorted: the deployment, whichever endpoint answers and in whatever order listed.
        self.server = ",".join(sorted(self.endpoints))
        """Which server(s) answer: part of the cache key, so two servers that serve one model
        name never share cached answers, while the endpoints of one deployment do."""
        if not key and any(t.url == OPENAI_URL + "/chat/completions" for t in self._targets):
            raise ConfigError(
                "OPENAI_API_KEY is not set (needed for api.openai.com; "
                "use --base-url for a local server)"
            )
        self._timeout = timeout
        self._session: Any = None
        self.capabilities = Capabilities(option_logprobs=True, continue_final=True)
        self.top_logprobs = top_logprobs
        """top_logprobs sent with option requests: lowered once if the server caps it."""
        self._top_known = False
        self._refusal: str | None = None  # set once the server refuses logprobs requests
        self._wide_ok: bool | None = None
        """Whether the server returns top lists wider than asked by default (None: unknown)."""
        self._continue_ok: bool | None = None
        """Whether the server continues a last assistant message (None: not yet asked)."""
        self.batcher: Any = None
        """Set in batch mode (``charter.batch.runner.Batcher``): requests go into the
        provider's batches instead of being sent one by one."""

    def _client(self) -> Any:
        """One pooled session per event loop (created lazily inside it)."""
        import aiohttp

        loop = asyncio.get_running_loop()
        if self._session is None or self._session.closed or self._session._loop is not loop:
            self._session = aiohttp.ClientSession(
                connector=aiohttp.TCPConnector(limit=0, ttl_dns_cache=300),
                # The model wrapper's per-request timeout is the one that fires (it retries);
                # here only connecting is bounded, so the two never race.
                timeout=aiohttp.ClientTimeout(total=None, sock_connect=self._timeout),
                headers={"Content-Type": "application/json"},
            )
        return self._session

    def _status_error(
        self, status: int, body: bytes, headers: Mapping[str, str], where: str
    ) -> BackendError:
        detail = f"HTTP {status} from {where}: {_server_message(body)}"
        if status in (401, 403):
            return BackendFatalError(
                f"HTTP {status} from {where}: authentication failed (check OPENAI_API_KEY)"
            )
        if status == 404:
            return BackendFatalError(
                f"{detail} (is the model name {self.model!r} right, and does the base URL end "
                "with the API's path, usually /v1?)"
            )
        if status in (408, 409, 425, 429) or status >= 500:
            return RetryableBackendError(detail, retry_after=_retry_after(headers))
        if status in (400, 422):
            return _BadRequest(detail)
        return BackendError(detail)

    async def _post(self, body: dict[str, Any]) -> dict[str, Any]:
        import aiohttp

        if self.batcher is not None:
            return self._answered(await self.batcher.send(body))
        # The endpoint the request holds in the model's EndpointPool, if it has several.
        lease = endpoints.current()
        target = self._by_name.get(lease.name) if lease is not None else None
        if target is None:
            lease, target = None, self._targets[0]
        where = target.name
        session = self._client()
        try:
            async with session.post(target.url, data=_encode(body), headers=target.headers) as resp:
                raw = await resp.read()
                if lease is not None:
                    if resp.status >= 500:
                        lease.failed(f"HTTP {resp.status}")
                    else:
                        lease.answered()
                if resp.status >= 400:
                    raise self._status_error(resp.status, raw, resp.headers, where)
        except aiohttp.ClientConnectorError as e:
            why = f"{type(e).__name__}: {e.strerror or e.os_error or 'no answer'}"
            if lease is None:
                raise BackendUnavailable(f"cannot reach the server at {where} ({why})") from e
            then = lease.refused(why)
            if then == "resend":  # it never reached a server: resend at once, elsewhere
                raise RetryableBackendError(
                    f"cannot reach {where} ({why}); resending to another endpoint",
                    retry_after=0,
                ) from e
            if then == "unreachable":
                raise BackendUnavailable(
                    f"cannot reach any endpoint of --base-url: {lease.pool.unreachable()}"
                ) from e
            raise RetryableBackendError(
                f"cannot reach {where} ({why}), and the other endpoints of {self.base_url} "
                "are set aside after failing"
            ) from e
        except asyncio.TimeoutError as e:
            if lease is not None:
                lease.failed("connecting timed out")
            raise RetryableBackendError(f"request to {where} timed out") from e
        except aiohttp.ClientError as e:  # reached the server, then lost the connection
            if lease is not None:
                lease.failed(f"connection dropped ({type(e).__name__})")
            raise RetryableBackendError(
                f"connection to {where} dropped ({type(e).__name__})"
            ) from e
        try:
            data = _decode(raw)
        except ValueError as e:  # proxies and crashed workers answer 200 with HTML
            raise RetryableBackendError(f"{where} returned a body that is not JSON") from e
        return _checked(data, raw, where)

    def _answered(self, result: ItemResult) -> dict[str, Any]:
        """A request's result from a batch, raising as the same answer live would."""
        where = f"{self.endpoints[0]} (batch)"
        if result.status is None:  # expired, cancelled: worth another batch
            raise RetryableBackendError(f"{where}: {result.error or 'not answered'}")
        raw = _encode(result.body if result.body is not None else {})
        if result.status >= 400:
            raise self._status_error(result.status, raw, {}, where)
        return _checked(result.body, raw, where)

    def batch_api(self) -> OpenAIBatches:
        """The server's batch endpoints (``/files``, ``/batches``) at the first endpoint."""
        from charter.batch.openai import OpenAIBatches

        target = self._targets[0]
        return OpenAIBatches(target.name, target.url, target.headers)

    def _body(self, messages: Sequence[Message], config: GenerateConfig) -> dict[str, Any]:
        body: dict[str, Any] = {
            "model": self.model,
            "messages": [{"role": m.role, "content": m.content} for m in messages],
            "max_tokens": config.max_tokens,
            "temperature": config.temperature,
        }
        if config.top_p != 1.0:
            body["top_p"] = config.top_p
        if config.stop:
            body["stop"] = list(config.stop)
        if config.seed is not None:
            body["seed"] = config.seed
        return body

    async def generate(self, messages: Sequence[Message], config: GenerateConfig) -> Generation:
        return _generation(await self._post(self._body(messages, config)))

    async def generate_logprobs(
        self, messages: Sequence[Message], config: GenerateConfig
    ) -> Generation:
        """A generation with the log-probabilities of its tokens and the top candidates at
        each (``Generation.tokens``; None when the server gave none)."""
        body = self._body(messages, config)
        if "messages" not in body:  # not the chat API (a subclass): no per-token shape here
            return await self.generate(messages, config)
        body["logprobs"] = True
        data = await self._post_logprobs(body)
        return _generation(data).model_copy(update={"tokens": _token_logprobs(data["choices"][0])})

    async def option_logprobs(
        self, messages: Sequence[Message], options: Sequence[str], config: GenerateConfig
    ) -> OptionScores:
        body = self._body(messages, config.model_copy(update={"max_tokens": 1, "temperature": 0.0}))
        body["logprobs"] = True
        continuing = bool(messages) and messages[-1].role == "assistant" and "messages" in body
        if continuing:  # vLLM's fields: the partial assistant message is continued
            if self._continue_ok is False:
                raise ContinueRefused(f"{self.base_url} does not continue assistant messages")
            body["continue_final_message"] = True
            body["add_generation_prompt"] = False
        try:
            data = await self._post_logprobs(body)
        except _BadRequest as e:
            if not continuing or self._continue_ok:
                raise
            self._no_continue(str(e))
            raise ContinueRefused(str(e)) from e
        if continuing:
            self._continue_ok = True
        message = data["choices"][0].get("message") or {}
        usage = data.get("usage") or {}
        prompt_tokens = usage.get("prompt_tokens") or 0
        if any(message.get(k) for k in REASONING_FIELDS):
            # The first token was reasoning, which a reasoning parser moved out of content: the
            # returned log-probabilities are the reasoning's, not an answer's.
            raise OptionsNotFound(
                f"{self.base_url}: the judge reasons before it answers", prompt_tokens=prompt_tokens
            )
        candidates = _first_position_candidates(data["choices"][0])
        if not candidates:
            raise LogprobsUnavailable(f"{self.base_url} returned no log-probabilities")
        floor = min(lp for _, lp in candidates)
        try:
            scores = _score_options(candidates, options, prompt_tokens, self.base_url)
        except OptionsNotFound:
            scores = None
        if scores is not None and not scores.missing:
            cached = _cached_tokens(usage)
            return scores.model_copy(update={"cached_prompt_tokens": cached}) if cached else scores
        try:
            wide = await self._wide(body, options, len(candidates))
        except OptionsNotFound as e:  # not even in the wider list: both requests counted
            spent = prompt_tokens + e.prompt_tokens
            raise OptionsNotFound(str(e), requests=2, prompt_tokens=spent) from e
        requests, spent = 1 + wide.requests, prompt_tokens + wide.prompt_tokens
        if wide.found is None:
            if scores is None:
                raise OptionsNotFound(
                    f"none of the options {list(options)} is among the top {len(candidates)} "
                    f"tokens returned by {self.base_url}",
                    requests=requests,
                    prompt_tokens=spent,
                )
            return scores.model_copy(
                update={"floor": floor, "requests": requests, "prompt_tokens": spent}
            )
        found, wide_floor = wide.found
        # the raw mass seen in the usual top list is kept: it says what the judge meant to say
        return found.model_copy(
            update={
                "wide": True,
                "floor": wide_floor,
                "requests": requests,
                "prompt_tokens": prompt_tokens + found.prompt_tokens,
                "seen_mass": 0.0 if scores is None else scores.mass,
            }
        )

    async def _wide(self, body: dict[str, Any], options: Sequence[str], listed: int) -> _Wide:
        """Options missing from the usual top list, looked up in a much wider one (llama.cpp
        returns as many candidates as asked, up to the vocabulary): (scores, the wide list's
        floor), or none when the server cannot give a wider list than ``listed`` (found out
        once per server); with what the asking cost."""
        if self._wide_ok is False:
            return _Wide(None)
        try:
            data = await self._post({**body, "top_logprobs": WIDE_TOP_LOGPROBS})
        except _BadRequest as e:
            self._no_wide(f"it refuses top_logprobs={WIDE_TOP_LOGPROBS} ({e})")
            return _Wide(None)
        candidates = _first_position_candidates(data["choices"][0])
        usage = data.get("usage") or {}
        if len(candidates) <= listed:
            self._no_wide(f"it returned {len(candidates)} candidates when asked for more")
            return _Wide(None, requests=1, prompt_tokens=usage.get("prompt_tokens") or 0)
        if self._wide_ok is None:
            self._wide_ok = True
            log.info(
                "%s: options missing from the top %d are looked up among the top %d",
                self.base_url,
                listed,
                WIDE_TOP_LOGPROBS,
            )
        floor = min(lp for _, lp in candidates)
        # none of the options even among the wider list: OptionsNotFound names its size
        scores = _score_options(candidates, options, usage.get("prompt_tokens") or 0, self.base_url)
        return _Wide((scores, floor), requests=1)  # its prompt tokens are in scores

    def _no_continue(self, why: str) -> None:
        """The server refused continue_final_message: say so once; callers ask instead."""
        if self._continue_ok is None:
            log.warning(
                "%s does not continue a partial assistant message (%s): --cot-style continue "
                "falls back to ask (the letter asked in a second user turn)",
                self.base_url,
                why,
            )
        self._continue_ok = False
        self.capabilities = Capabilities(option_logprobs=True, continue_final=False)

    def _no_wide(self, why: str) -> None:
        if self._wide_ok is None:
            log.warning(
                "%s gives no wider top list (%s): an option missing from its top list is given "
                "the list's floor, an upper bound, and the label is flagged topk_truncated",
                self.base_url,
                why,
            )
        self._wide_ok = False

    async def _post_logprobs(self, body: dict[str, Any]) -> dict[str, Any]:
        """Send with the largest top_logprobs the server takes, found on the first request.
        (``Model`` sends option requests one at a time until one succeeds, so a server that
        caps the value sees one refusal per step down, not one per record.)"""
        if self._refusal is not None:
            raise LogprobsRefused(self._refusal)
        if not self._top_known:
            return await self._find_top(body)
        return await self._post({**body, "top_logprobs": self.top_logprobs})

    async def _find_top(self, body: dict[str, Any]) -> dict[str, Any]:
        top = self.top_logprobs
        first: _BadRequest | None = None
        while True:
            try:
                data = await self._post({**body, "top_logprobs": top})
            except _BadRequest as e:
                first = first or e
                lower = _lower_top(str(e), top)
                if lower is None:
                    err = await self._refused(body, first, e)
                    if err is e:
                        raise
                    raise err from e
                top = lower
                continue
            if top != self.top_logprobs:
                log.warning(
                    "%s takes top_logprobs up to %d only",
                    self.base_url,
                    top,
                )
            self.top_logprobs, self._top_known = top, True
            return data

    async def _refused(
        self, body: dict[str, Any], first: _BadRequest, last: _BadRequest
    ) -> BackendError:
        """Every top_logprobs was refused: the request itself is bad (too long, say) if the
        server refuses it without log-probabilities too, else the server refuses their shape."""
        plain = {k: v for k, v in body.items() if k not in ("logprobs", "top_logprobs")}
        try:
            await self._post(plain)
        except _BadRequest:
            return first
        self._refusal = (
            f"{last} (it answers the same request without log-probabilities, but refuses "
            "them even with top_logprobs=1)"
        )
        return LogprobsRefused(self._refusal)

    async def aclose(self) -> None:
        if self._session is not None and not self._session.closed:
            await self._session.close()


def _checked(data: Any, raw: bytes, where: str) -> dict[str, Any]:
    """A 200's body, which must hold choices."""
    if isinstance(data, dict) and data.get("error") and not data.get("choices"):
        raise RetryableBackendError(f"{where} answered 200 with an error: {_server_message(raw)}")
    if not isinstance(data, dict) or not data.get("choices"):
        raise RetryableBackendError(f"{where} returned no choices")
    return data


class _Wide(NamedTuple):
    """What asking for a wider top list gave: the options' scores and the list's floor (None
    when no wider list came), and the requests and prompt tokens it cost besides."""

    found: tuple[OptionScores, float] | None
    requests: int = 0
    prompt_tokens: int = 0


@dataclass(frozen=True)
class _Target:
    """One endpoint as requests are sent to it."""

    name: str
    """As shown in messages: no credentials, no query."""
    url: str
    """The chat-completions URL, query string included."""
    headers: dict[str, str] | None
    """Authorization, when a key or credentials in the URL give one."""


def _target(raw: str, key: str | None, flag: str) -> _Target:
    """One ``--base-url`` entry, checked; ``flag`` names it in errors."""
    raw = raw.rstrip("/")
    try:
        parts = urlsplit(raw)
    except ValueError as e:  # e.g. an unclosed IPv6 bracket
        raise ConfigError(f"{flag} is not a valid URL ({e})") from None
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ConfigError(f"{flag} must be an http(s) URL, got {redact_url(raw)!r}")
    if "," in parts.path or "," in parts.netloc.rpartition("@")[2]:
        raise ConfigError(
            f"{flag} has a comma in its host or path ({redact_url(raw)!r}): separate several "
            "endpoints with commas, each starting with http:// or https://"
        )
    try:
        port = parts.port
    except ValueError:
        raise ConfigError(
            f"{flag} has port {_port(raw)}, outside 0-65535: {redact_url(raw)!r}"
        ) from None
    headers = {"Authorization": f"Bearer {key}"} if key else None
    netloc = parts.netloc
    if parts.username or parts.password:
        # Credentials in the URL (a gateway with basic auth) replace the bearer key.
        user, password = unquote(parts.username or ""), unquote(parts.password or "")
        try:
            pair = f"{user}:{password}".encode("latin-1")  # as aiohttp.BasicAuth encodes
        except UnicodeEncodeError:
            pair = f"{user}:{password}".encode()
        headers = {"Authorization": "Basic " + base64.b64encode(pair).decode("ascii")}
        netloc = _bracketed(parts.hostname or "") + (f":{port}" if port else "")
    # Query strings (api-version=..., key=...) go after the path, as gateways expect.
    url = urlunsplit((parts.scheme, netloc, parts.path + "/chat/completions", parts.query, ""))
    return _Target(name=redact_url(raw), url=url, headers=headers)


def _first_position_candidates(choice: Mapping[str, Any]) -> list[tuple[str, float]]:
    """(token, logprob) pairs at the first generated position, in whichever shape the server
    used (chat ``content[0].top_logprobs``, or the legacy ``top_logprobs[0]`` mapping)."""
    lp = choice.get("logprobs")
    if not isinstance(lp, dict):
        return []
    content = lp.get("content")
    if isinstance(content, list) and content:
        first = content[0]
        listed = [(t["token"], t.get("logprob")) for t in first.get("top_logprobs") or []]
        pairs = [(t, lp) for t, lp in listed if isinstance(lp, float | int) and math.isfinite(lp)]
        token = first.get("token")
        value = first.get("logprob")
        if (
            token is not None
            and isinstance(value, float | int)
            and math.isfinite(value)
            and all(token != t for t, _ in pairs)
        ):
            pairs.append((token, float(value)))
        return pairs
    legacy = lp.get("top_logprobs")
    if isinstance(legacy, list) and legacy and isinstance(legacy[0], dict):
        return [(str(t), float(v)) for t, v in legacy[0].items()]
    return []


REASONING_FIELDS = ("reasoning_content", "reasoning")
"""Where servers' reasoning parsers put the text before the answer (vLLM, SGLang)."""


def _generation(data: Mapping[str, Any]) -> Generation:
    """The answer in ``content``; reasoning that a server's reasoning parser split out
    (``reasoning_content`` as vLLM and SGLang name it, or ``reasoning``) kept apart."""
    choice = data["choices"][0]
    message = choice.get("message") or {}
    usage = data.get("usage") or {}
    reasoning = next((message[k] for k in REASONING_FIELDS if message.get(k)), None)
    return Generation(
        text=_valid_text(message.get("content") or ""),
        finish_reason=_FINISH.get(choice.get("finish_reason") or "", "unknown"),
        prompt_tokens=usage.get("prompt_tokens") or 0,
        completion_tokens=usage.get("completion_tokens") or 0,
        cached_prompt_tokens=_cached_tokens(usage),
        reasoning=_valid_text(reasoning) if isinstance(reasoning, str) and reasoning else None,
    )


def _cached_tokens(usage: Mapping[str, Any]) -> int:
    """Prompt tokens read from the provider's prompt cache (OpenAI's
    ``usage.prompt_tokens_details.cached_tokens``; 0 where a server does not say)."""
    details = usage.get("prompt_tokens_details")
    cached = details.get("cached_tokens") if isinstance(details, dict) else None
    return cached if isinstance(cached, int) and cached > 0 else 0


def _token_logprobs(choice: Mapping[str, Any]) -> tuple[TokenLogprob, ...] | None:
    """The chat shape's per-token ``logprobs.content`` list; None when there is none."""
    lp = choice.get("logprobs")
    content = lp.get("content") if isinstance(lp, dict) else None
    if not isinstance(content, list) or not content:
        return None
    tokens = []
    for entry in content:
        token, value = entry.get("token"), entry.get("logprob")
        if not isinstance(token, str):
            return None
        top = tuple(
            (_valid_text(t["token"]), float(t["logprob"]))
            for t in entry.get("top_logprobs") or []
            if isinstance(t.get("token"), str)
            and isinstance(t.get("logprob"), float | int)
            and math.isfinite(t["logprob"])
        )
        # -inf would not survive the request cache's JSON: a very low finite value instead
        finite = isinstance(value, float | int) and math.isfinite(value)
        logprob = float(value) if finite else -1e9
        tokens.append(TokenLogprob(token=_valid_text(token), logprob=logprob, top=top))
    return tuple(tokens)


def _valid_text(text: str) -> str:
    """A server's text with any lone UTF-16 surrogate (valid JSON, not valid Unicode: it could
    be neither cached nor written) replaced by U+FFFD."""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return _SURROGATE.sub("\ufffd", text)
    return text


_SURROGATE = re.compile("[\ud800-\udfff]")


def _score_options(
    candidates: list[tuple[str, float]], options: Sequence[str], prompt_tokens: int, where: str
) -> OptionScores:
    found: dict[str, list[float]] = {o: [] for o in options}
    for token, logprob in candidates:
        key = option_key(token)
        if key in found and logprob is not None and math.isfinite(logprob):
            found[key].append(logprob)
    if not any(found.values()):
        shown = ", ".join(repr(t) for t, _ in candidates[:5])
        raise OptionsNotFound(
            f"none of the options {list(options)} is among the top {len(candidates)} "
            f"tokens returned by {where} (top: {shown})",
            prompt_tokens=prompt_tokens,
        )
    logprobs: dict[str, float | None] = {}
    for option, values in found.items():
        if values:
            top = max(values)
            logprobs[option] = top + math.log(sum(math.exp(v - top) for v in values))
        else:
            logprobs[option] = None
    return OptionScores(logprobs=logprobs, prompt_tokens=prompt_tokens)


class OpenAIOptions(BackendOptions):
    """Options of ``openai/<model>``."""

    base_url: str | None = None
    """Server URL, or several endpoints separated by commas (default: $OPENAI_BASE_URL, else
    api.openai.com)."""
    api_key: str | None = None
    """Bearer key (default: $OPENAI_API_KEY); credentials in base_url replace it."""
    timeout: float = Field(default=TIMEOUT, gt=0)
    """Seconds per request."""
    top_logprobs: int = Field(default=TOP_LOGPROBS, ge=1)
    """Candidates asked for at the first position; lowered once if the server caps it."""


def create(model: str, **options: Any) -> OpenAIBackend:
    if not model:
        raise ConfigError("openai/ needs a model name, e.g. openai/gpt-4o-mini")
    opts = parse_options("openai/", OpenAIOptions, options)
    return OpenAIBackend(model, **opts.model_dump())

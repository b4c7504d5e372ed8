"""``anthropic/<model>``: Claude through Anthropic's Messages API.

Spoken directly over one pooled aiohttp session, as ``openai/`` speaks chat completions: one
JSON request, one JSON answer. The API returns no log-probabilities, so a Claude judge gives
parsed verdicts (or ``--votes``); a reply's ``thinking`` blocks are kept apart as reasoning and
never read for a verdict. In batch mode (``--batch``) the same request bodies go through the
Message Batches API (``charter.batch.anthropic``) instead, and their answers come back through
the same checks as live ones.
"""

from __future__ import annotations

import asyncio
import os
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit, urlunsplit

from pydantic import Field

from charter.backends.base import BackendOptions, Capabilities, parse_options
from charter.backends.openai import (
    TIMEOUT,
    _BadRequest,
    _decode,
    _encode,
    _retry_after,
    _server_message,
    _target,
    _valid_text,
)
from charter.batch.api import ItemResult
from charter.errors import (
    BackendError,
    BackendFatalError,
    BackendUnavailable,
    ConfigError,
    LogprobsUnavailable,
    RetryableBackendError,
)
from charter.types import FinishReason, GenerateConfig, Generation, Message, OptionScores

if TYPE_CHECKING:
    from charter.batch.anthropic import AnthropicBatches

ANTHROPIC_URL = "https://api.anthropic.com/v1"
API_VERSION = "2023-06-01"
"""The ``anthropic-version`` header every request carries."""
_FINISH: dict[str, FinishReason] = {
    "end_turn": "stop",
    "stop_sequence": "stop",
    "tool_use": "stop",
    "max_tokens": "length",
    "model_context_window_exceeded": "length",
    "refusal": "content_filter",
}
"""Anthropic's stop reasons; any other (``pause_turn``, a new one) is ``unknown``."""


def api_root(base_url: str | None, api_key: str | None) -> tuple[str, str, dict[str, str]]:
    """``base_url`` checked: (the API root that paths are appended to, with any query string
    and without credentials; the URL as shown, without either; the headers every request
    carries). Credentials in the URL (a gateway's basic auth) go as a header."""
    raw = (base_url or os.environ.get("ANTHROPIC_BASE_URL") or ANTHROPIC_URL).strip()
    checked = _target(raw, None, "--base-url")  # scheme, host, port, commas: one-line errors
    parts = urlsplit(checked.url)
    path = parts.path.removesuffix("/chat/completions")
    root = urlunsplit((parts.scheme, parts.netloc, path, parts.query, ""))
    headers = {"anthropic-version": API_VERSION, **(checked.headers or {})}
    key = api_key or os.environ.get("ANTHROPIC_API_KEY")
    if key:
        headers["x-api-key"] = key
    elif parts.hostname == urlsplit(ANTHROPIC_URL).hostname:
        raise ConfigError(
            "ANTHROPIC_API_KEY is not set (needed for api.anthropic.com; "
            "use --base-url for a local server)"
        )
    return root, checked.name, headers


def _at(root: str, path: str) -> str:
    """``path`` under the API root, the root's query string kept after it."""
    parts = urlsplit(root)
    return urlunsplit((parts.scheme, parts.netloc, parts.path + path, parts.query, ""))


class AnthropicBackend:
    """Claude over the Messages API."""

    def __init__(
        self,
        model: str,
        *,
        base_url: str | None = None,
        api_key: str | None = None,
        timeout: float = TIMEOUT,
    ) -> None:
        self.name = f"anthropic/{model}"
        self.model = model
        self._root, self.base_url, self._headers = api_root(base_url, api_key)
        self._url = _at(self._root, "/messages")
        self.server = self.base_url
        """Which server answers (no credentials, no query): part of the cache key."""
        self.endpoints = (self.base_url,)
        self._timeout = timeout
        self._session: Any = None
        self.capabilities = Capabilities(option_logprobs=False)
        self.batcher: Any = None
        """Set by charter's batch runner in batch mode: every request body then goes to its
        ``send`` (an ItemResult back) instead of the Messages API."""

    def _client(self) -> Any:
        """One pooled session per event loop (created lazily inside it)."""
        import aiohttp

        loop = asyncio.get_running_loop()
        if self._session is None or self._session.closed or self._session._loop is not loop:
            self._session = aiohttp.ClientSession(
                connector=aiohttp.TCPConnector(limit=0, ttl_dns_cache=300),
                # The model wrapper's per-request timeout is the one that fires (it retries).
                timeout=aiohttp.ClientTimeout(total=None, sock_connect=self._timeout),
                headers={"Content-Type": "application/json", **self._headers},
            )
        return self._session

    def _status_error(
        self, status: int, body: bytes, headers: Mapping[str, str], where: str
    ) -> BackendError:
        detail = f"HTTP {status} from {where}: {_server_message(body)}"
        if status in (401, 403):
            return BackendFatalError(
                f"HTTP {status} from {where}: authentication failed (check ANTHROPIC_API_KEY)"
            )
        if status == 402:
            return BackendFatalError(f"{detail} (billing: check the account's credit)")
        if status == 404:
            return BackendFatalError(
                f"{detail} (is the model name {self.model!r} right, and does the base URL end "
                "with the API's path, /v1?)"
            )
        if status in (408, 409, 425, 429) or status >= 500:  # 529: overloaded
            return RetryableBackendError(detail, retry_after=_retry_after(headers))
        if status in (400, 413, 422):
            return _BadRequest(detail)
        return BackendError(detail)

    def _checked(self, data: Any, where: str) -> dict[str, Any]:
        """A 200's body as a message, or the retryable error a broken one is."""
        if isinstance(data, dict) and data.get("type") == "error":
            raise RetryableBackendError(
                f"{where} answered 200 with an error: {_server_message(_encode(data))}"
            )
        if not isinstance(data, dict) or not isinstance(data.get("content"), list):
            raise RetryableBackendError(f"{where} returned no message content")
        return data

    def _answered(self, result: ItemResult) -> dict[str, Any]:
        """A batch result as the live answer it stands for: the message, or the error the
        same answer live would raise (one that never ran is retryable, live)."""
        where = f"{self.base_url} (batch)"
        if result.status is None:
            why = result.error or "no result"
            raise RetryableBackendError(f"batch request {result.custom_id} did not run: {why}")
        if result.status >= 400:
            body = _encode(result.body) if result.body is not None else b""
            raw = body or (result.error or "").encode()
            raise self._status_error(result.status, raw, {}, where)
        return self._checked(result.body, where)

    async def _post(self, body: dict[str, Any]) -> dict[str, Any]:
        if self.batcher is not None:
            return self._answered(await self.batcher.send(body))
        import aiohttp

        where = self.base_url
        try:
            async with self._client().post(self._url, data=_encode(body)) as resp:
                raw = await resp.read()
                if resp.status >= 400:
                    raise self._status_error(resp.status, raw, resp.headers, where)
        except aiohttp.ClientConnectorError as e:
            why = f"{type(e).__name__}: {e.strerror or e.os_error or 'no answer'}"
            raise BackendUnavailable(f"cannot reach the server at {where} ({why})") from e
        except asyncio.TimeoutError as e:
            raise RetryableBackendError(f"request to {where} timed out") from e
        except aiohttp.ClientError as e:  # reached the server, then lost the connection
            raise RetryableBackendError(
                f"connection to {where} dropped ({type(e).__name__})"
            ) from e
        try:
            data = _decode(raw)
        except ValueError as e:  # proxies answer 200 with HTML
            raise RetryableBackendError(f"{where} returned a body that is not JSON") from e
        return self._checked(data, where)

    def _body(self, messages: Sequence[Message], config: GenerateConfig) -> dict[str, Any]:
        if config.temperature > 1.0:
            raise ConfigError(
                f"{self.name} takes a temperature from 0 to 1, got {config.temperature:g}"
            )
        system, turns = _turns(messages, self.name)
        body: dict[str, Any] = {
            "model": self.model,
            "max_tokens": config.max_tokens,
            "messages": turns,
            "temperature": config.temperature,
        }
        if system:
            body["system"] = system
        if config.top_p != 1.0:
            body["top_p"] = config.top_p
        if config.stop:
            body["stop_sequences"] = list(config.stop)
        return body  # no seed: the API has none

    async def generate(self, messages: Sequence[Message], config: GenerateConfig) -> Generation:
        return _generation(await self._post(self._body(messages, config)))

    async def option_logprobs(
        self, messages: Sequence[Message], options: Sequence[str], config: GenerateConfig
    ) -> OptionScores:
        raise LogprobsUnavailable(f"{self.name}: the Messages API gives no log-probabilities")

    def batch_api(self) -> AnthropicBatches:
        """The Message Batches API at this backend's URL, with its credentials."""
        from charter.batch.anthropic import AnthropicBatches

        return AnthropicBatches(
            self._root, self._headers, endpoint=self.base_url, timeout=self._timeout
        )

    async def aclose(self) -> None:
        if self._session is not None and not self._session.closed:
            await self._session.close()


def _turns(messages: Sequence[Message], name: str) -> tuple[str, list[dict[str, str]]]:
    """The system prompt (every system message, in order) and the turns as the API takes
    them: alternating, starting with the user's; consecutive turns of one speaker are joined,
    and a last assistant turn (which Claude continues) loses its trailing whitespace, which
    the API refuses there (and is left out when nothing else is left of it)."""
    system = "\n\n".join(m.content for m in messages if m.role == "system")
    turns: list[dict[str, str]] = []
    for m in messages:
        if m.role == "system":
            continue
        if turns and turns[-1]["role"] == m.role:
            turns[-1]["content"] += "\n\n" + m.content
        else:
            turns.append({"role": m.role, "content": m.content})
    if not turns or turns[0]["role"] != "user":
        first = "an assistant turn" if turns else "no turn at all"
        raise _BadRequest(f"{name}: a conversation must start with a user turn, not {first}")
    if turns[-1]["role"] == "assistant":
        turns[-1]["content"] = turns[-1]["content"].rstrip()
        if not turns[-1]["content"]:  # nothing to continue (the API refuses empty text)
            turns.pop()
    return system, turns


def _generation(data: Mapping[str, Any]) -> Generation:
    """The text blocks as the answer; thinking blocks kept apart as reasoning (redacted ones,
    encrypted, are dropped); prompt tokens counting cache reads and writes."""
    blocks = [b for b in data.get("content") or [] if isinstance(b, dict)]
    text = "".join(str(b.get("text") or "") for b in blocks if b.get("type") == "text")
    thought = [
        str(b["thinking"]) for b in blocks if b.get("type") == "thinking" and b.get("thinking")
    ]
    usage = data.get("usage") or {}
    read = usage.get("cache_read_input_tokens") or 0
    written = usage.get("cache_creation_input_tokens") or 0
    return Generation(
        text=_valid_text(text),
        finish_reason=_FINISH.get(data.get("stop_reason") or "", "unknown"),
        prompt_tokens=(usage.get("input_tokens") or 0) + read + written,
        completion_tokens=usage.get("output_tokens") or 0,
        cached_prompt_tokens=read,
        cache_write_tokens=written,
        reasoning=_valid_text("\n\n".join(thought)) if thought else None,
    )


class AnthropicOptions(BackendOptions):
    """Options of ``anthropic/<model>``."""

    base_url: str | None = None
    """API URL (default: $ANTHROPIC_BASE_URL, else https://api.anthropic.com/v1)."""
    api_key: str | None = None
    """Sent as x-api-key (default: $ANTHROPIC_API_KEY)."""
    timeout: float = Field(default=TIMEOUT, gt=0)
    """Seconds per request."""


def create(model: str, **options: Any) -> AnthropicBackend:
    if not model:
        raise ConfigError("anthropic/ needs a model name, e.g. anthropic/claude-sonnet-4-5")
    opts = parse_options("anthropic/", AnthropicOptions, options)
    return AnthropicBackend(model, **opts.model_dump())

"""``openai/<model>``: any OpenAI-compatible chat-completions server.

vLLM, SGLang, llama.cpp's server, Ollama, TGI and OpenAI itself all speak this protocol.
The SDK's own retries are switched off: the model wrapper owns retries for every backend.
"""

from __future__ import annotations

import email.utils
import math
import os
import time
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from charter.backends.base import Capabilities, option_key
from charter.errors import (
    BackendError,
    BackendFatalError,
    BackendUnavailable,
    ConfigError,
    LogprobsUnavailable,
    OptionsNotFound,
    RetryableBackendError,
)
from charter.types import FinishReason, GenerateConfig, Generation, Message, OptionScores

if TYPE_CHECKING:
    import openai

OPENAI_URL = "https://api.openai.com/v1"
TOP_LOGPROBS = 20
_FINISH: dict[str, FinishReason] = {
    "stop": "stop",
    "length": "length",
    "content_filter": "content_filter",
    "tool_calls": "stop",
    "function_call": "stop",
}


def _retry_after(headers: Any) -> float | None:
    """Seconds to wait from ``retry-after-ms`` or ``retry-after`` (seconds or an HTTP date)."""
    if headers is None:
        return None
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
        parsed = email.utils.parsedate_to_datetime(value) if value else None
        return max(0.0, parsed.timestamp() - time.time()) if parsed else None


def redact_url(url: str) -> str:
    """Drop user:password@ and any query string (some gateways take keys there)."""
    from urllib.parse import urlsplit, urlunsplit

    parts = urlsplit(url)
    host = parts.hostname or ""
    if parts.port:
        host = f"{host}:{parts.port}"
    if parts.username or parts.password:
        host = "***@" + host
    return urlunsplit((parts.scheme, host, parts.path, "", ""))


def _refused(cause: BaseException) -> bool:
    """Could not connect at all (refused, unknown host), as opposed to a dropped connection.
    Matched by name: the SDK's transport is httpx or its fork httpx2, depending on version."""
    names = {cls.__name__ for cls in type(cause).__mro__}
    return bool(names & {"ConnectError", "ConnectTimeout"}) or isinstance(cause, OSError)


def _server_message(e: openai.APIStatusError) -> str:
    body = e.body
    if isinstance(body, dict):
        err = body.get("error", body)
        msg = err.get("message") if isinstance(err, dict) else err
        if msg:
            return " ".join(str(msg).split())[:300]
    return " ".join(str(e.message).split())[:300]


class OpenAIBackend:
    """Chat completions over HTTP through the official SDK."""

    def __init__(
        self,
        model: str,
        *,
        base_url: str | None = None,
        api_key: str | None = None,
        timeout: float = 120.0,
    ) -> None:
        import openai

        self._openai = openai
        self.name = f"openai/{model}"
        self.model = model
        raw_url = (base_url or os.environ.get("OPENAI_BASE_URL") or OPENAI_URL).rstrip("/")
        self.base_url = redact_url(raw_url)
        """The URL as shown in messages: credentials and query strings removed."""
        key = api_key or os.environ.get("OPENAI_API_KEY")
        if not key:
            if raw_url == OPENAI_URL:
                raise ConfigError(
                    "OPENAI_API_KEY is not set (needed for api.openai.com; "
                    "use --base-url for a local server)"
                )
            key = "not-needed"  # local servers usually accept any key
        self.capabilities = Capabilities(option_logprobs=True)
        self._client = openai.AsyncOpenAI(
            base_url=raw_url, api_key=key, max_retries=0, timeout=timeout
        )

    def _translate(self, e: Exception) -> BackendError:
        """SDK errors become charter errors; never include the API key."""
        oa = self._openai
        if isinstance(e, oa.APITimeoutError):
            return RetryableBackendError(f"request to {self.base_url} timed out")
        if isinstance(e, oa.APIConnectionError):
            cause = e.__cause__ or e
            if not _refused(cause):  # reached the server, then lost the connection: transient
                return RetryableBackendError(
                    f"connection to {self.base_url} dropped ({type(cause).__name__})"
                )
            return BackendUnavailable(
                f"cannot reach the server at {self.base_url} "
                f"({type(cause).__name__}: {' '.join(str(cause).split())[:120] or 'no answer'})"
            )
        if isinstance(e, oa.APIStatusError):
            status = e.status_code
            detail = f"HTTP {status} from {self.base_url}: {_server_message(e)}"
            if status in (401, 403):
                return BackendFatalError(
                    f"HTTP {status} from {self.base_url}: authentication failed "
                    "(check OPENAI_API_KEY)"
                )
            if status == 404:
                return BackendFatalError(f"{detail} (is the model name {self.model!r} right?)")
            if status in (408, 409, 425, 429) or status >= 500:
                return RetryableBackendError(detail, retry_after=_retry_after(e.response.headers))
            return BackendError(detail)
        return BackendError(f"{type(e).__name__} from {self.base_url}: {e}")

    def _params(self, config: GenerateConfig) -> dict[str, Any]:
        params: dict[str, Any] = {
            "max_tokens": config.max_tokens,
            "temperature": config.temperature,
        }
        if config.top_p != 1.0:
            params["top_p"] = config.top_p
        if config.stop:
            params["stop"] = list(config.stop)
        if config.seed is not None:
            params["seed"] = config.seed
        return params

    async def _create(self, messages: Sequence[Message], **params: Any) -> Any:
        try:
            return await self._client.chat.completions.create(
                model=self.model,
                messages=[{"role": m.role, "content": m.content} for m in messages],  # type: ignore[misc]
                **params,
            )
        except self._openai.OpenAIError as e:
            raise self._translate(e) from e
        except ValueError as e:  # a 200 whose body is not JSON (proxies, crashed workers)
            raise RetryableBackendError(f"{self.base_url} returned a body that is not JSON") from e

    async def generate(self, messages: Sequence[Message], config: GenerateConfig) -> Generation:
        resp = await self._create(messages, **self._params(config))
        if not resp.choices:
            raise RetryableBackendError(f"{self.base_url} returned no choices")
        choice = resp.choices[0]
        usage = resp.usage
        return Generation(
            text=choice.message.content or "",
            finish_reason=_FINISH.get(choice.finish_reason or "", "unknown"),
            prompt_tokens=(usage.prompt_tokens or 0) if usage else 0,
            completion_tokens=(usage.completion_tokens or 0) if usage else 0,
        )

    async def option_logprobs(
        self, messages: Sequence[Message], options: Sequence[str], config: GenerateConfig
    ) -> OptionScores:
        params = self._params(config.model_copy(update={"max_tokens": 1, "temperature": 0.0}))
        resp = await self._create(messages, logprobs=True, top_logprobs=TOP_LOGPROBS, **params)
        if not resp.choices:
            raise RetryableBackendError(f"{self.base_url} returned no choices")
        candidates = _first_position_candidates(resp.choices[0])
        if not candidates:
            raise LogprobsUnavailable(f"{self.base_url} returned no log-probabilities")
        return _score_options(candidates, options, resp.usage, self.base_url)

    async def aclose(self) -> None:
        await self._client.close()


def _first_position_candidates(choice: Any) -> list[tuple[str, float]]:
    """(token, logprob) pairs at the first generated position, in whichever shape the
    server used (chat ``content[0].top_logprobs`` or legacy ``top_logprobs[0]`` dict)."""
    lp = getattr(choice, "logprobs", None)
    if lp is None:
        return []
    content = getattr(lp, "content", None)
    if content:
        first = content[0]
        pairs = [(t.token, t.logprob) for t in (first.top_logprobs or [])]
        if first.token is not None and all(first.token != t for t, _ in pairs):
            pairs.append((first.token, first.logprob))
        return pairs
    extra = getattr(lp, "model_extra", None) or {}
    legacy = extra.get("top_logprobs")
    if isinstance(legacy, list) and legacy and isinstance(legacy[0], dict):
        return [(str(t), float(v)) for t, v in legacy[0].items()]
    return []


def _score_options(
    candidates: list[tuple[str, float]], options: Sequence[str], usage: Any, where: str
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
            f"tokens returned by {where} (top: {shown})"
        )
    logprobs: dict[str, float | None] = {}
    for option, values in found.items():
        if values:
            top = max(values)
            logprobs[option] = top + math.log(sum(math.exp(v - top) for v in values))
        else:
            logprobs[option] = None
    return OptionScores(logprobs=logprobs, prompt_tokens=(usage.prompt_tokens or 0) if usage else 0)


def create(model: str, **options: Any) -> OpenAIBackend:
    if not model:
        raise ConfigError("openai/ needs a model name, e.g. openai/gpt-4o-mini")
    allowed = {k: options[k] for k in ("base_url", "api_key", "timeout") if k in options}
    return OpenAIBackend(model, **allowed)

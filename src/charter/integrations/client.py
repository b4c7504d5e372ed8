"""A client of ``charter serve``'s ``POST /v1/rewards``, blocking (verl calls its reward
function from worker threads) and async (TRL awaits its reward functions)."""

from __future__ import annotations

import json
import os
import urllib.error
import urllib.request
from collections.abc import Sequence
from typing import Any

from charter.errors import BackendError, ConfigError
from charter.types import Message

URL_ENV = "CHARTER_REWARD_URL"
TOKEN_ENV = "CHARTER_REWARD_TOKEN"


def server_url(url: str | None) -> str:
    """The server's base URL: given, else $CHARTER_REWARD_URL."""
    url = url or os.environ.get(URL_ENV)
    if not url:
        raise ConfigError(
            f"where is charter serve? pass url=... or set ${URL_ENV} (e.g. http://127.0.0.1:8766)"
        )
    url = url.rstrip("/")
    if not url.startswith(("http://", "https://")):
        raise ConfigError(f"{url}: a charter serve URL starts with http:// or https://")
    return url.removesuffix("/v1/rewards")


def body(
    messages: Sequence[dict[str, str]], completions: Sequence[str], reference: str | None
) -> dict[str, Any]:
    out: dict[str, Any] = {
        "messages": list(messages),
        "completions": list(completions),
        "allow_ungraded": True,
    }
    if reference is not None:
        out["reference"] = reference
    return out


def headers(token: str | None) -> dict[str, str]:
    token = token or os.environ.get(TOKEN_ENV)
    out = {"Content-Type": "application/json"}
    if token:
        out["Authorization"] = f"Bearer {token}"
    return out


def answer(status: int, text: str, url: str) -> list[float | None]:
    """The rewards of a reply, or a BackendError with the server's own words."""
    try:
        data = json.loads(text)
    except ValueError:
        data = None
    if status != 200:
        why = data.get("error") if isinstance(data, dict) else text[:300]
        raise BackendError(f"charter serve at {url} answered {status}: {why}")
    if not isinstance(data, dict) or not isinstance(data.get("rewards"), list):
        raise BackendError(f"charter serve at {url}: the reply holds no 'rewards'")
    return [None if r is None else float(r) for r in data["rewards"]]


def post_rewards(
    url: str,
    messages: Sequence[dict[str, str]],
    completions: Sequence[str],
    *,
    reference: str | None = None,
    token: str | None = None,
    timeout: float = 600.0,
) -> list[float | None]:
    """The server's rewards of ``completions`` to ``messages`` (None: ungraded), blocking."""
    data = json.dumps(body(messages, completions, reference)).encode()
    request = urllib.request.Request(
        f"{url}/v1/rewards", data=data, headers=headers(token), method="POST"
    )
    try:
        with urllib.request.urlopen(request, timeout=timeout) as r:
            return answer(r.status, r.read().decode("utf-8", "replace"), url)
    except urllib.error.HTTPError as e:
        return answer(e.code, e.read().decode("utf-8", "replace"), url)
    except (urllib.error.URLError, OSError) as e:
        reason = getattr(e, "reason", e)
        raise BackendError(f"cannot reach charter serve at {url}: {reason}") from e


def reference_of(value: Any) -> str | None:
    """A reference answer: a non-blank string; anything else (None, a number) is none."""
    return value if isinstance(value, str) and value.strip() else None


def by_conversation(
    conversations: Sequence[Sequence[Message]], references: Sequence[str | None]
) -> list[list[int]]:
    """The indices of the completions that answer the same conversation with the same
    reference, in the order first seen: each group is one request."""
    groups: dict[tuple[str | None, tuple[tuple[str, str], ...]], list[int]] = {}
    for i, (conv, ref) in enumerate(zip(conversations, references, strict=True)):
        groups.setdefault((ref, tuple((m.role, m.content) for m in conv)), []).append(i)
    return list(groups.values())

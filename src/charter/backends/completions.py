"""``openai-completions/<model>``: a base (pretrained, not chat-tuned) model behind an
OpenAI-compatible ``/v1/completions`` endpoint (vLLM, SGLang, llama.cpp, TGI).

The CAI paper's feedback model was a pretrained LM asked a multiple-choice question. A base
model has no chat template, so charter writes the conversation as a plain transcript
(``Human:`` / ``Assistant:`` turns, a system message as a preamble) and stops generation at
the next ``Human:`` turn. To score options it ends the prompt with an answer lead-in
(``Assistant: The answer is (``), so the very next token is the option letter or
number, whose log-probability the server returns in the legacy completions shape.

Everything else — endpoints, retries, the top-logprobs negotiation, the wide-list fallback —
is the chat backend's, over another path and body.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import replace
from typing import Any

from charter.backends.base import parse_options
from charter.backends.openai import (
    _FINISH,
    OpenAIBackend,
    OpenAIOptions,
    _valid_text,
)
from charter.errors import ConfigError
from charter.types import GenerateConfig, Generation, Message, OptionScores

ANSWER_PREFIX = "The answer is ("
"""Ends an option request, so the next token is the option ("(A" in the judge's words)."""
SPEAKERS = {"user": "Human", "assistant": "Assistant"}
STOP = "\n\nHuman:"
"""Where a base model would go on to write the human's next turn."""


def plain_prompt(messages: Sequence[Message]) -> str:
    """The conversation as a transcript a base model continues. A last assistant message is
    left open (the model continues it); otherwise an ``Assistant:`` turn is opened."""
    parts: list[str] = []
    for m in messages:
        if m.role == "system":
            parts.append(m.content.strip())
        else:
            parts.append(f"{SPEAKERS.get(m.role, m.role.capitalize())}: {m.content}")
    text = "\n\n".join(parts)
    if not messages or messages[-1].role != "assistant":
        text += "\n\nAssistant:"
    return text


class CompletionsBackend(OpenAIBackend):
    """Text completions over HTTP, for base models."""

    def __init__(self, model: str, **options: Any) -> None:
        super().__init__(model, **options)
        self.name = f"openai-completions/{model}"
        self._targets = [
            replace(t, url=t.url.replace("/chat/completions", "/completions", 1))
            for t in self._targets
        ]
        self._by_name = {t.name: t for t in self._targets}

    def _body(self, messages: Sequence[Message], config: GenerateConfig) -> dict[str, Any]:
        body = super()._body(messages, config)
        del body["messages"]
        body["prompt"] = plain_prompt(messages)
        body["stop"] = [*body.get("stop", []), STOP]
        return body

    async def _post(self, body: dict[str, Any]) -> dict[str, Any]:
        # The completions API asks for top-K log-probabilities as ``logprobs: K``.
        if "top_logprobs" in body or body.get("logprobs") is True:
            body = dict(body)
            body["logprobs"] = body.pop("top_logprobs", None) or self.top_logprobs
        return await super()._post(body)

    async def generate(self, messages: Sequence[Message], config: GenerateConfig) -> Generation:
        data = await self._post(self._body(messages, config))
        choice = data["choices"][0]
        usage = data.get("usage") or {}
        return Generation(
            text=_valid_text(choice.get("text") or "").strip(),
            finish_reason=_FINISH.get(choice.get("finish_reason") or "", "unknown"),
            prompt_tokens=usage.get("prompt_tokens") or 0,
            completion_tokens=usage.get("completion_tokens") or 0,
        )

    async def option_logprobs(
        self, messages: Sequence[Message], options: Sequence[str], config: GenerateConfig
    ) -> OptionScores:
        if messages and messages[-1].role == "assistant":  # the caller's answer prefix
            return await super().option_logprobs(messages, options, config)
        lead = Message(role="assistant", content=ANSWER_PREFIX)
        return await super().option_logprobs([*messages, lead], options, config)


def create(model: str, **options: Any) -> CompletionsBackend:
    if not model:
        raise ConfigError(
            "openai-completions/ needs a model name, e.g. openai-completions/my-base-model"
        )
    opts = parse_options("openai-completions/", OpenAIOptions, options)
    return CompletionsBackend(model, **opts.model_dump())

"""Reading a conversation back out of the text a chat template rendered.

RL engines such as OpenRLHF send a reward server each completion as one string: the prompt as
the policy's chat template rendered it, then the response, special tokens left in. charter's
judges and reward models take a conversation (messages) and an answer, so the server splits
that string and reads the turns back.

``ChatFormat`` learns a template's turn markers by rendering a conversation of known
sentinels and looking around them: each turn is ``OPEN + role + HEAD + content``, turns are
separated by ``CLOSE``, and the generation prompt (``OPEN + assistant + HEAD`` after the last
turn) is the *assistant marker* after which a response starts. That covers templates that name
the role in the marker (ChatML: SmolLM2, Qwen; Llama 3; Phi-3); a template that does not
(Gemma's ``model``, Mistral's ``[INST]``) is refused when the server starts.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

from charter.errors import ConfigError
from charter.types import Message

ROLES = ("system", "user", "assistant")
_S = {"system": "S7q1", "user": "U7q2", "assistant": "A7q3", "user2": "U7q4"}
"""Sentinel contents, unlikely in any template."""


@dataclass(frozen=True)
class ChatFormat:
    """A chat template's turn markers (``from_tokenizer``) and how to split by them."""

    name: str
    open: str
    """What starts a turn, before the role's name (``<|im_start|>``)."""
    head: str
    """What follows the role's name before the content (``\\n``)."""
    close: str
    """What ends a turn (``<|im_end|>\\n``)."""
    padding: tuple[str, ...] = ()
    """The tokenizer's padding, beginning-, end-of-text and unknown tokens, left around a decoded
    string (never its role tokens: Phi-3's ``<|user|>`` is a marker)."""

    @classmethod
    def from_tokenizer(cls, tokenizer: Any, name: str) -> ChatFormat:
        """The markers of ``tokenizer``'s chat template, or a ConfigError saying why not."""
        turns = [
            {"role": "system", "content": _S["system"]},
            {"role": "user", "content": _S["user"]},
            {"role": "assistant", "content": _S["assistant"]},
            {"role": "user", "content": _S["user2"]},
        ]
        try:
            text = tokenizer.apply_chat_template(turns, tokenize=False, add_generation_prompt=True)
        except Exception as e:  # a template that refuses a system turn, or has none at all
            raise ConfigError(
                f"{name}: cannot render its chat template ({' '.join(str(e).split())[:200]})"
            ) from e
        if not isinstance(text, str):
            raise ConfigError(f"{name}: its chat template did not render text")
        try:
            pieces = _between(text, [_S[k] for k in ("system", "user", "assistant", "user2")])
        except ValueError:
            raise ConfigError(f"{name}: its chat template drops or reorders turns") from None
        # pieces: before S, S..U1, U1..A1, A1..U2, after U2 (the generation prompt)
        marks = [(pieces[1], "user"), (pieces[2], "assistant"), (pieces[3], "user")]
        splits = [_around_role(p, role) for p, role in marks]
        last = _around_role(pieces[4], "assistant")
        if any(s is None for s in splits) or last is None or len(set(splits)) != 1:
            raise ConfigError(
                f"{name}: its chat template does not name each turn's role in one marker "
                "(supported: ChatML, Llama 3, Phi-3 and the like); send each query's prompt "
                "(OpenRLHF's 'prompts') and start charter serve without --template"
            )
        before, head = splits[0]  # type: ignore[misc]
        # 'before' is CLOSE + OPEN; OPEN is what also starts the first turn, before 'system'
        at = pieces[0].rfind("system" + head)  # Llama 3 puts a preamble before the content
        if at < 0:
            raise ConfigError(f"{name}: its chat template does not open the system turn alike")
        lead = pieces[0][:at]
        added = getattr(tokenizer, "added_tokens_decoder", None) or {}
        specials = [str(t) for t in getattr(tokenizer, "all_special_tokens", []) if t]
        specials += [str(getattr(t, "content", t)) for t in added.values()]
        open_ = _snap(_common_suffix(before, lead), specials)
        if not open_:
            raise ConfigError(f"{name}: its chat template has no marker that opens a turn")
        kinds = ("pad_token", "bos_token", "eos_token", "unk_token")
        named = (getattr(tokenizer, k, None) for k in kinds)
        padding = tuple(sorted({str(t) for t in named if t}, key=len, reverse=True))
        return cls(name=name, open=open_, head=head, close=before[: -len(open_)], padding=padding)

    @property
    def assistant_marker(self) -> str:
        """What precedes a response: the template's generation prompt."""
        return self.open + "assistant" + self.head

    def _turns(self) -> re.Pattern[str]:
        roles = "|".join(ROLES)
        return re.compile(re.escape(self.open) + f"({roles})" + re.escape(self.head))

    def strip_padding(self, text: str) -> str:
        """``text`` without the padding and beginning-of-text tokens before it."""
        changed = True
        while changed:
            changed = False
            for token in self.padding:
                if token != self.open and text.startswith(token):
                    text, changed = text[len(token) :], True
        return text

    def strip_end(self, response: str) -> str:
        """The response without the turn's close and the padding and end-of-text tokens
        decoded after it."""
        changed = True
        while changed:
            changed = False
            for end in (self.close, self.close.rstrip(), *self.padding):
                if end and response.endswith(end):
                    response, changed = response[: -len(end)], True
        return response

    def has_markers(self, text: str) -> bool:
        """Whether ``text`` holds a turn marker of this template."""
        return self._turns().search(text) is not None

    def split(self, query: str) -> tuple[str, str] | None:
        """(prompt, response) of a rendered conversation and its response: the response is
        what follows the last assistant marker; None where there is none."""
        at = query.rfind(self.assistant_marker)
        if at < 0:
            return None
        cut = at + len(self.assistant_marker)
        return query[:cut], self.strip_end(query[cut:])

    def messages(self, prompt: str) -> list[Message] | None:
        """The turns of a rendered prompt (its generation prompt left out); None where the
        text holds no turn marker of this template."""
        text = self.strip_padding(prompt)
        found = list(self._turns().finditer(text))
        if not found or text[: found[0].start()].strip(" \n"):
            return None
        out: list[Message] = []
        for i, m in enumerate(found):
            end = found[i + 1].start() if i + 1 < len(found) else len(text)
            content = text[m.end() : end]
            if i + 1 < len(found) and content.endswith(self.close):
                content = content[: -len(self.close)]
            elif i + 1 == len(found):
                content = self.strip_end(content)
            out.append(Message(role=m.group(1), content=content))
        if out and out[-1].role == "assistant" and not out[-1].content:
            out.pop()  # the generation prompt
        return out or None


def _between(text: str, marks: list[str]) -> list[str]:
    """The text before, between and after ``marks``, which must appear once each in order."""
    pieces, at = [], 0
    for mark in marks:
        i = text.index(mark, at)
        pieces.append(text[at:i])
        at = i + len(mark)
    pieces.append(text[at:])
    return pieces


def _around_role(piece: str, role: str) -> tuple[str, str] | None:
    """(what comes before, what comes after) the role's name in a marker, if named once."""
    if piece.count(role) != 1:
        return None
    before, _, after = piece.partition(role)
    return before, after


def _snap(marker: str, specials: list[str]) -> str:
    """``marker`` from where a special token starts in it: the common text of two strings can
    begin inside the token before (Llama 3's ``|>`` of ``<|eot_id|>``). Unchanged where no
    special token starts in it (Phi-3's ``<|`` of ``<|user|>``)."""
    for i in range(len(marker)):
        if any(marker.startswith(t, i) for t in specials):
            return marker[i:]
    return marker


def _common_suffix(a: str, b: str) -> str:
    n = 0
    while n < min(len(a), len(b)) and a[len(a) - 1 - n] == b[len(b) - 1 - n]:
        n += 1
    return a[len(a) - n :] if n else ""

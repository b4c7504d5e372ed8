"""verl's custom reward function, answered by ``charter serve``.

In verl's config (``custom_reward_function``)::

    custom_reward_function.path=pkg://charter.integrations.verl
    custom_reward_function.name=compute_score        # or compute_score_batch, with
                                                     # reward_model.reward_manager=batch
    +custom_reward_function.reward_kwargs.url=http://127.0.0.1:8766

(or ``$CHARTER_REWARD_URL``; a token in ``token`` or ``$CHARTER_REWARD_TOKEN``).

verl hands a reward function the decoded response and the row's ``ground_truth`` and
``extra_info``, not the prompt: put the prompt in ``extra_info`` as ``prompt`` (text or a
conversation of role/content dicts; ``question`` is read too). ``ground_truth``, where it is a
string, goes to the server as the reference answer (``--constitution`` compares with it; a
rubric judge sees it). A completion the server cannot reward raises, unless the server
states an ``--ungraded-reward``: a reward function that returned a made-up number would train
on it silently.
"""

from __future__ import annotations

from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from charter.errors import InputError, UngradedError
from charter.integrations.client import post_rewards, server_url
from charter.rewards import trl_messages

PROMPT_KEYS = ("prompt", "messages", "question")
"""Where in ``extra_info`` the prompt is looked for, in order."""


def _conversation(extra_info: Any) -> list[dict[str, str]]:
    if isinstance(extra_info, dict):
        for key in PROMPT_KEYS:
            value = extra_info.get(key)
            if (isinstance(value, str) and value) or (isinstance(value, list) and value):
                return [m.model_dump() for m in trl_messages(value)]
    raise InputError(
        "charter's verl reward needs each row's prompt in extra_info "
        f"({' or '.join(PROMPT_KEYS)}): the judge and reward models read the conversation"
    )


def _reference(ground_truth: Any) -> str | None:
    return ground_truth if isinstance(ground_truth, str) and ground_truth.strip() else None


def _one(value: float | None, where: str) -> float:
    if value is None:
        raise UngradedError(
            f"charter serve could not reward {where} (its /metrics and log say why); start it "
            "with --ungraded-reward X to give such completions X instead"
        )
    return value


def compute_score(
    data_source: Any,
    solution_str: str,
    ground_truth: Any,
    extra_info: Any = None,
    *,
    url: str | None = None,
    token: str | None = None,
    timeout: float = 600.0,
    **_: Any,
) -> float:
    """verl's ``compute_score``: the server's reward of one response."""
    base = server_url(url)
    rewards = post_rewards(
        base,
        _conversation(extra_info),
        [solution_str],
        reference=_reference(ground_truth),
        token=token,
        timeout=timeout,
    )
    return _one(rewards[0], "the completion")


def compute_score_batch(
    data_sources: Sequence[Any],
    solution_strs: Sequence[str],
    ground_truths: Sequence[Any],
    extra_infos: Sequence[Any],
    *,
    url: str | None = None,
    token: str | None = None,
    timeout: float = 600.0,
    concurrency: int = 16,
    **_: Any,
) -> list[float]:
    """verl's batched form (``reward_model.reward_manager=batch``): the responses of one
    prompt and reference go in one request, up to ``concurrency`` requests at a time."""
    base = server_url(url)
    groups: dict[str, list[int]] = {}
    convs = [_conversation(e) for e in extra_infos]
    for i, conv in enumerate(convs):
        key = repr((conv, _reference(ground_truths[i])))
        groups.setdefault(key, []).append(i)
    scores: list[float | None] = [None] * len(solution_strs)

    def ask(indices: list[int]) -> None:
        first = indices[0]
        got = post_rewards(
            base,
            convs[first],
            [solution_strs[i] for i in indices],
            reference=_reference(ground_truths[first]),
            token=token,
            timeout=timeout,
        )
        for i, value in zip(indices, got, strict=True):
            scores[i] = value

    with ThreadPoolExecutor(max_workers=concurrency) as pool:
        list(pool.map(ask, groups.values()))
    return [_one(v, f"completion {i}") for i, v in enumerate(scores)]

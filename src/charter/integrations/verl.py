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
from charter.integrations.client import by_conversation, post_rewards, reference_of, server_url
from charter.rewards import trl_messages
from charter.types import Message

PROMPT_KEYS = ("prompt", "messages", "question")
"""Where in ``extra_info`` the prompt is looked for, in order."""


def _conversation(extra_info: Any) -> list[Message]:
    if isinstance(extra_info, dict):
        for key in PROMPT_KEYS:
            value: Any = extra_info.get(key)
            if hasattr(value, "tolist"):  # a numpy array: how verl's parquet rows give lists
                value = value.tolist()
            if (isinstance(value, str) and value) or (isinstance(value, list) and value):
                return trl_messages(value)
    raise InputError(
        "charter's verl reward needs each row's prompt in extra_info "
        f"({' or '.join(PROMPT_KEYS)}): the judge and reward models read the conversation"
    )


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
        [m.model_dump() for m in _conversation(extra_info)],
        [solution_str],
        reference=reference_of(ground_truth),
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
    n = len(solution_strs)
    if not len(data_sources) == len(ground_truths) == len(extra_infos) == n:
        raise InputError(
            f"compute_score_batch: {n} responses, {len(ground_truths)} ground truths and "
            f"{len(extra_infos)} extra_infos: give one of each per response"
        )
    convs = [_conversation(e) for e in extra_infos]
    refs = [reference_of(g) for g in ground_truths]
    scores: list[float | None] = [None] * n

    def ask(indices: list[int]) -> None:
        first = indices[0]
        got = post_rewards(
            base,
            [m.model_dump() for m in convs[first]],
            [solution_strs[i] for i in indices],
            reference=refs[first],
            token=token,
            timeout=timeout,
        )
        for i, value in zip(indices, got, strict=True):
            scores[i] = value

    with ThreadPoolExecutor(max_workers=concurrency) as pool:
        list(pool.map(ask, by_conversation(convs, refs)))
    return [_one(v, f"completion {i}") for i, v in enumerate(scores)]

"""``charter serve``: rewards over HTTP for RL engines, on a tiny random reward model with
SmolLM2's tokenizer and the mock judge (mechanics, never judgement)."""

from __future__ import annotations

import asyncio
import importlib
import json
import queue
import random
import subprocess
import sys
import threading
import types
import urllib.error
import urllib.request
import zlib
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager, contextmanager
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp import web

import charter
from charter.errors import BackendError, ConfigError, InputError
from charter.rewards import Query, RewardMix
from charter.serve.options import ServeOptions
from charter.serve.server import Service, build_app, build_service
from charter.types import Message
from charter.web import listen
from tests.conftest import run_cli

pytest.importorskip("transformers")

PROMPTS = [
    ("How do I pick my neighbour's lock?", "I can't help with that."),
    ("What is 2+2?", "4, because two and two make four."),
    ("Say hi.", "Hello there!\nNice to meet you."),
]


@pytest.fixture(scope="module")
def tokenizer(rm_dir: Path) -> Any:
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(rm_dir)


@asynccontextmanager
async def served(
    token: str | None = None, host: str = "127.0.0.1", **options: Any
) -> AsyncIterator[tuple[str, Service]]:
    """A server on a free port for the options; its base URL and service."""
    service = build_service(ServeOptions(**options))
    runner = web.AppRunner(build_app(service, token=token, host=host), access_log=None)
    try:
        port = await listen(runner, "127.0.0.1", 0)
        yield f"http://127.0.0.1:{port}", service
    finally:
        await runner.cleanup()
        await service.aclose()


async def post(url: str, body: Any, **kw: Any) -> tuple[int, Any]:
    async with aiohttp.ClientSession() as s, s.post(url, json=body, **kw) as r:
        return r.status, await r.json()


def rendered(tokenizer: Any, prompt: str) -> str:
    """A prompt as OpenRLHF sends it: through the policy's chat template."""
    conversation = [{"role": "user", "content": prompt}]
    text = tokenizer.apply_chat_template(conversation, tokenize=False, add_generation_prompt=True)
    assert isinstance(text, str)
    return text


@pytest.fixture(scope="module")
def scored(rm_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> list[float]:
    """``charter score --judge rm/DIR`` on the prompts and answers."""
    folder = tmp_path_factory.mktemp("score")
    src = folder / "answers.jsonl"
    src.write_text(
        "".join(
            json.dumps({"id": f"r{i}", "prompt": p, "response": a}) + "\n"
            for i, (p, a) in enumerate(PROMPTS)
        )
    )
    out = folder / "scores.jsonl"
    charter.run("score", input=src, output=out, judge=f"rm/{rm_dir}", rubric="helpfulness")
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    return [row["reward"] for row in sorted(rows, key=lambda row: row["id"])]


async def test_openrlhf_rewards_equal_charter_score_with_or_without_prompts(
    rm_dir: Path, tokenizer: Any, scored: list[float]
) -> None:
    prompts = [rendered(tokenizer, p) for p, _ in PROMPTS]
    # as OpenRLHF decodes prompt + response tokens: padding before, the turn's end after
    queries = [
        "<|endoftext|>" * i + p + a + "<|im_end|>\n<|endoftext|>"
        for i, (p, (_, a)) in enumerate(zip(prompts, PROMPTS, strict=True))
    ]
    async with served(reward=[f"rm/{rm_dir}"]) as (url, service):
        status, with_prompts = await post(
            f"{url}/get_reward", {"query": queries, "prompts": prompts}
        )
        assert status == 200, with_prompts
        status, by_marker = await post(f"{url}/get_reward", {"query": queries})
        assert status == 200, by_marker
        assert service.chat is not None and service.chat.name == f"rm/{rm_dir}"
        forged = "text before the turns" + prompts[0]
        status, bad = await post(
            f"{url}/get_reward", {"query": [forged + "x"], "prompts": [forged]}
        )
        assert status == 400 and "'prompts[0]': holds" in bad["error"], bad
        metrics = await _text(f"{url}/metrics")
    # micro-batched: the three queries of a request ran in fewer forward passes than three
    passes = float(metrics.split("charter_serve_model_batch_size_count ")[1].split()[0])
    assert passes < 6
    assert "charter_serve_split_by_marker_total 3.0" in metrics  # the request without prompts
    assert with_prompts["rewards"] == pytest.approx(scored, abs=1e-5)
    assert by_marker["rewards"] == pytest.approx(scored, abs=1e-5)
    assert with_prompts["scores"] == with_prompts["rewards"]
    assert with_prompts["extra_logs"] == {"ungraded": [0, 0, 0]}


async def test_v1_rewards_equal_the_direct_reward_and_normalise_as_stated(
    rm_dir: Path, scored: list[float], tmp_path: Path
) -> None:
    prompt, answer = PROMPTS[1]
    body = {"messages": [{"role": "user", "content": prompt}], "completions": [answer, answer]}
    async with served(reward=[f"rm/{rm_dir}"]) as (url, _):
        status, got = await post(f"{url}/v1/rewards", body)
    assert status == 200, got
    assert got["rewards"] == pytest.approx([scored[1]] * 2, abs=1e-5)
    # --normalize-from: the mean and std of charter score's rewards of this model
    scores = tmp_path / "scores.jsonl"
    rows = [{"id": f"r{i}", "judge": f"rm/{rm_dir}", "reward": r} for i, r in enumerate(scored)]
    scores.write_text("".join(json.dumps(r) + "\n" for r in rows))
    mean = sum(scored) / 3
    std = (sum((r - mean) ** 2 for r in scored) / 3) ** 0.5
    async with served(reward=[f"rm/{rm_dir}"], normalize_from=[scores]) as (url, _):
        status, got = await post(f"{url}/v1/rewards", body)
        async with aiohttp.ClientSession() as s, s.get(f"{url}/health") as r:
            health = await r.json()
    assert got["rewards"][0] == pytest.approx((scored[1] - mean) / std, abs=1e-5)
    assert health["normalisation"][f"rm/{rm_dir}"]["mean"] == pytest.approx(mean)
    assert str(scores) in health["normalisation"][f"rm/{rm_dir}"]["source"]


async def test_rubric_judge_rewards_are_train_rl_s_and_a_mix_weighs_them(rm_dir: Path) -> None:
    from charter.rewards import RubricReward
    from charter.train.rewards import JudgeReward

    messages = [Message(role="user", content="Tell me a joke.")]
    completions = ["Why did the chicken cross the road?", "No.", "Knock knock."]
    body = {"messages": [m.model_dump() for m in messages], "completions": completions}
    async with served(judge="mock/judge", rubric="helpfulness") as (url, service):
        status, got = await post(f"{url}/v1/rewards", body)
        source = service.mix.sources[0]
        assert isinstance(source, RubricReward)
    assert status == 200, got
    judge = JudgeReward("mock/judge", source.rubric)
    try:
        direct = await judge([[m.model_dump() for m in messages]] * 3, completions)
    finally:
        await judge.aclose()
    assert got["rewards"] == pytest.approx(direct)
    assert len(set(got["rewards"])) > 1  # the mock's scores differ by answer
    async with served(
        reward=[f"rm/{rm_dir}"], judge="mock/judge", rubric="helpfulness", reward_weights=[0.5, 2]
    ) as (url, service):
        status, mixed = await post(f"{url}/v1/rewards", body)
        rm = [await service.mix.sources[0](Query(messages, c)) for c in completions]
    assert status == 200, mixed
    want = [0.5 * r + 2 * j for r, j in zip(rm, direct, strict=True)]
    assert mixed["rewards"] == pytest.approx(want)


async def test_reference_rewards_are_charter_label_s_p_a(tmp_path: Path) -> None:
    """--constitution: P(completion better than the reference), as charter label judges the
    pair (completion as A, reference as B) with the same settings."""
    messages = [Message(role="user", content="How do I make tea?")]
    completion, reference = "Boil water, steep the leaves.", "I don't know."
    qid = Query(messages, completion, reference).id
    pairs = tmp_path / "pairs.jsonl"
    row = {
        "id": qid,
        "prompt": messages[0].content,
        "response_a": completion,
        "response_b": reference,
    }
    pairs.write_text(json.dumps(row) + "\n")
    out = tmp_path / "labels.jsonl"
    r = run_cli(
        "label", str(pairs), "-o", str(out), "-j", "mock/judge", "--constitution", "harmless"
    )
    assert r.returncode == 0, r.stderr
    label = json.loads(out.read_text())
    body = {
        "messages": [m.model_dump() for m in messages],
        "completions": [completion],
        "reference": reference,
    }
    async with served(judge="mock/judge", constitution="harmless") as (url, _):
        status, got = await post(f"{url}/v1/rewards", body)
        status2, missing = await post(f"{url}/v1/rewards", body | {"reference": None})
        # OpenRLHF: the references are the labels
        status3, orl = await post(
            f"{url}/get_reward",
            {
                "query": ["How do I make tea?" + completion],
                "prompts": ["How do I make tea?"],
                "labels": [reference],
            },
        )
        # TRL's reward function: a row without a reference is refused, never judged against
        # the text "None"
        from charter.integrations.trl import RemoteReward

        remote = RemoteReward(url, references="reference")
        with pytest.raises(BackendError, match="400"):
            await remote(["How do I make tea?"], [completion], reference=[None])
        assert await remote(["How do I make tea?"], [completion], reference=[reference]) == [
            pytest.approx(label["p_a"])
        ]
    assert status == 200, got
    assert got["rewards"] == [pytest.approx(label["p_a"])]
    assert status2 == 400 and "'reference'" in missing["error"]
    assert status3 == 200 and orl["rewards"] == [pytest.approx(label["p_a"])]


async def test_ungraded_completions_are_an_error_or_the_stated_reward_and_counted() -> None:
    from charter.backends.mock import MockBackend, register_mock, unregister_mock

    # a judge that never answers with a score on the scale
    register_mock(MockBackend("mock/mute", responder=lambda m, c: "no idea", logprobs=False))
    body = {"messages": [{"role": "user", "content": "Hi"}], "completions": ["Hello", "Hey"]}
    try:
        async with served(judge="mock/mute", rubric="helpfulness") as (url, _):
            status, got = await post(f"{url}/v1/rewards", body)
            assert status == 502
            assert got["error"].startswith("completions[0]: no reward (")
            assert "2 of 2 ungraded" in got["error"] and "--ungraded-reward" in got["error"]
            status, nulls = await post(f"{url}/v1/rewards", body | {"allow_ungraded": True})
            assert status == 200 and nulls["rewards"] == [None, None]
            assert [u["index"] for u in nulls["ungraded"]] == [0, 1]
            status, orl = await post(f"{url}/get_reward", {"query": ["qx"], "prompts": ["q"]})
            assert status == 502 and orl["error"].startswith("query[0]: no reward")
            metrics = await _text(f"{url}/metrics")
        assert 'charter_serve_ungraded_total{route="/v1/rewards"} 4.0' in metrics
        assert 'charter_serve_ungraded_total{route="/get_reward"} 1.0' in metrics
        async with served(judge="mock/mute", rubric="helpfulness", ungraded_reward=-1) as (url, _):
            status, got = await post(f"{url}/get_reward", {"query": ["qx"], "prompts": ["q"]})
            assert status == 200 and got["rewards"] == [-1] and got["extra_logs"]["ungraded"] == [1]
            metrics = await _text(f"{url}/metrics")
        assert 'charter_serve_ungraded_total{route="/get_reward"} 1.0' in metrics
    finally:
        unregister_mock("mock/mute")


async def _text(url: str, **kw: Any) -> str:
    async with aiohttp.ClientSession() as s, s.get(url, **kw) as r:
        return await r.text()


async def test_a_judge_that_cannot_be_reached_is_a_503_not_a_reward() -> None:
    body = {"messages": [{"role": "user", "content": "Hi"}], "completions": ["Hello"]}
    async with served(
        judge="openai/m", rubric="helpfulness", base_url="http://127.0.0.1:9/v1", retries=0
    ) as (url, _):
        status, got = await post(f"{url}/v1/rewards", body)
    assert status == 503 and "cannot be asked" in got["error"], got


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({}, "'query'"),
        ({"query": "text"}, "'query'"),
        ({"query": []}, "'query'"),
        ({"query": ["a", 3]}, "'query'"),
        ({"query": ["a"], "prompts": ["a", "b"]}, "'prompts'"),
        ({"query": ["no marker here"]}, "'query[0]'"),
        ({"query": ["a"], "prompts": ["a"], "x": float("nan")}, "'x'"),
        ({"query": ["a\ud800"], "prompts": ["a"]}, "'query': not valid text"),
    ],
)
async def test_bad_openrlhf_requests_get_a_4xx_naming_the_field(
    body: dict[str, Any], field: str
) -> None:
    async with served(judge="mock/judge", rubric="helpfulness") as (url, _):
        data = json.dumps(body, allow_nan=True)
        async with (
            aiohttp.ClientSession() as s,
            s.post(
                f"{url}/get_reward", data=data, headers={"Content-Type": "application/json"}
            ) as r,
        ):
            assert 400 <= r.status < 500
            assert field in (await r.json())["error"]


async def test_bad_v1_requests_and_the_batch_cap() -> None:
    async with served(judge="mock/judge", rubric="helpfulness", max_batch=2) as (url, _):
        for body, field in [
            ({"completions": ["a"]}, "'messages'"),
            (
                {"messages": [{"role": "bot", "content": "x"}], "completions": ["a"]},
                "'messages[0]'",
            ),
            ({"messages": [{"role": "user", "content": "x"}]}, "'completions'"),
            (
                {"messages": [{"role": "assistant", "content": "x"}], "completions": ["a"]},
                "'messages[0]': end with the user turn",
            ),
            (
                {"messages": [{"role": "user", "content": "x"}], "completions": ["a"] * 3},
                "at most 2",
            ),
            (
                {
                    "messages": [{"role": "user", "content": "x"}],
                    "completions": ["a"],
                    "allow_ungraded": 1,
                },
                "'allow_ungraded'",
            ),
        ]:
            status, got = await post(f"{url}/v1/rewards", body)
            assert 400 <= status < 500 and field in got["error"], (body, got)
        async with aiohttp.ClientSession() as s, s.post(f"{url}/v1/rewards", data="{") as r:
            assert r.status == 415
        async with aiohttp.ClientSession() as s, s.get(f"{url}/nowhere") as r:
            assert r.status == 404 and "error" in await r.json()


async def test_token_and_host_checks() -> None:
    body = {"messages": [{"role": "user", "content": "Hi"}], "completions": ["Hello"]}
    async with served(token="s3cret-token", judge="mock/judge", rubric="helpfulness") as (url, _):
        status, got = await post(f"{url}/v1/rewards", body)
        assert status == 401 and "token" in got["error"]
        status, _ = await post(f"{url}/v1/rewards", body, headers={"Authorization": "Bearer nope"})
        assert status == 401
        auth = {"Authorization": "Bearer s3cret-token"}
        assert (await post(f"{url}/v1/rewards", body, headers=auth))[0] == 200
        # OpenRLHF sets no header: the token may ride in the URL it is given
        assert (
            await post(f"{url}/get_reward?token=s3cret-token", {"query": ["qx"], "prompts": ["q"]})
        )[0] == 200
        async with aiohttp.ClientSession() as s, s.get(f"{url}/health") as r:
            assert r.status == 200  # health needs no token
        # a page that rebinds its own name to 127.0.0.1 names itself as the host
        status, got = await post(f"{url}/v1/rewards", body, headers=auth | {"Host": "evil.example"})
        assert status == 403
    with pytest.raises(ValueError, match="--rubric"):
        ServeOptions(judge="mock/judge")
    with pytest.raises(ValueError, match="nothing to serve"):
        ServeOptions()


class Checksum:
    """A reward that is a function of the whole query, so any mix-up shows."""

    name = "checksum"

    async def __call__(self, query: Query) -> float:
        await asyncio.sleep(0)  # answers come back out of order
        text = query.messages[-1].content + "|" + query.response
        return float(zlib.crc32(text.encode()) % 100_000)


async def test_64_clients_each_get_their_own_rewards_none_lost() -> None:
    """64 concurrent clients x 1,000 queries each, in requests of 1 to 200 on both routes:
    every query is answered once, with its own reward (the judge's cost aside: a reward
    that is a checksum of the query)."""
    service = Service(mix=RewardMix([Checksum()]))
    runner = web.AppRunner(build_app(service, token=None, host="127.0.0.1"), access_log=None)
    port = await listen(runner, "127.0.0.1", 0)
    url = f"http://127.0.0.1:{port}"

    async def client(k: int, session: aiohttp.ClientSession) -> int:
        rng, done = random.Random(k), 0
        while done < 1000:
            n = min(rng.randint(1, 200), 1000 - done)
            prompt = f"client {k} asks {done}"
            batch = [f"answer {rng.random()}" for _ in range(n)]
            want = [float(zlib.crc32(f"{prompt}|{a}".encode()) % 100_000) for a in batch]
            if k % 2:
                body: dict[str, Any] = {
                    "query": [prompt + a for a in batch],
                    "prompts": [prompt] * n,
                }
                route = "/get_reward"
            else:
                body = {"messages": [{"role": "user", "content": prompt}], "completions": batch}
                route = "/v1/rewards"
            async with session.post(url + route, json=body) as r:
                assert r.status == 200
                got = (await r.json())["rewards"]
            assert got == want
            done += n
        return done

    try:
        connector = aiohttp.TCPConnector(limit=64)
        async with aiohttp.ClientSession(connector=connector) as session:
            counts = await asyncio.gather(*(client(k, session) for k in range(64)))
        metrics = await _text(f"{url}/metrics")
    finally:
        await runner.cleanup()
    assert counts == [1000] * 64
    for route in ("/get_reward", "/v1/rewards"):
        assert f'charter_serve_completions_total{{route="{route}"}} 32000.0' in metrics


OPENRLHF = Path(sys.prefix) / "openrlhf"
"""Where ``make install`` puts OpenRLHF 0.11.2's files (``pip install --no-deps --target``)."""


@pytest.fixture
def openrlhf_client(monkeypatch: pytest.MonkeyPatch) -> Any:
    """OpenRLHF's own reward client class, ``SingleTurnAgentExecutor``, from its installed
    files. Its package ``__init__`` files import torch, transformers and sympy for the rest of
    OpenRLHF; the client module needs none of them, so the two packages are registered bare
    (their real folders) and ``agent.py`` and ``logging_utils.py`` load as shipped."""
    root = OPENRLHF / "openrlhf"
    if not (root / "utils" / "agent.py").is_file():
        pytest.skip(f"OpenRLHF 0.11.2 is not installed in {OPENRLHF} (make install puts it there)")
    for name, path in (("openrlhf", root), ("openrlhf.utils", root / "utils")):
        package = types.ModuleType(name)
        package.__path__ = [str(path)]
        monkeypatch.setitem(sys.modules, name, package)
    for name in ("openrlhf.utils.agent", "openrlhf.utils.logging_utils"):
        monkeypatch.delitem(sys.modules, name, raising=False)
    agent = importlib.import_module("openrlhf.utils.agent")
    return agent.SingleTurnAgentExecutor


async def test_openrlhf_s_own_client_gets_charter_score_s_rewards(
    rm_dir: Path, tokenizer: Any, scored: list[float], openrlhf_client: Any
) -> None:
    """OpenRLHF 0.11.2's ``_fetch_rewards_via_http``, as its rollouts call it (one URL, the
    token in it, as its --remote_rm_url cannot set a header)."""
    prompts = [rendered(tokenizer, p) for p, _ in PROMPTS]
    queries = [p + a + "<|im_end|>" for p, (_, a) in zip(prompts, PROMPTS, strict=True)]
    labels = [None] * len(queries)
    async with served(token="tok-12345", reward=[f"rm/{rm_dir}"]) as (url, _):
        client = openrlhf_client(f"{url}/get_reward?token=tok-12345")
        replies = await client._fetch_rewards_via_http(queries, prompts, labels)
        split = await client._fetch_rewards_via_http(queries, [""] * 3, labels)
    assert len(replies) == 1  # one server: one request
    assert replies[0]["rewards"] == pytest.approx(scored, abs=1e-5)
    assert replies[0]["scores"] == replies[0]["rewards"]
    assert replies[0]["extra_logs"] == {"ungraded": [0, 0, 0]}
    # prompts that do not prefix the queries: split at the template's assistant marker
    assert split[0]["rewards"] == pytest.approx(scored, abs=1e-5)


async def test_trl_and_verl_functions_get_the_server_s_rewards(rm_dir: Path) -> None:
    from charter.integrations import verl
    from charter.integrations.trl import RemoteReward

    async with served(reward=[f"rm/{rm_dir}"]) as (url, service):
        prompts = [p for p, _ in PROMPTS]
        answers = [a for _, a in PROMPTS]
        want = [
            await service.mix.sources[0](Query([Message(role="user", content=p)], a))
            for p, a in PROMPTS
        ]
        # TRL: conversational prompts and completions, two completions per prompt
        reward = RemoteReward(url)
        conv = [[{"role": "user", "content": p}] for p in prompts]
        got = await reward(
            [c for c in conv for _ in (0, 1)],
            [[{"role": "assistant", "content": a}] for a in answers for _ in (0, 1)],
        )
        assert got == pytest.approx([w for w in want for _ in (0, 1)], abs=1e-5)
        # verl calls its reward function from worker threads, blocking
        one = await asyncio.to_thread(
            verl.compute_score, "hh", answers[0], None, {"prompt": prompts[0]}, url=url
        )
        many = await asyncio.to_thread(
            verl.compute_score_batch,
            ["hh"] * 3,
            answers,
            [None] * 3,
            [{"prompt": p} for p in prompts],
            url=url,
        )
        with pytest.raises(InputError, match="extra_info"):
            await asyncio.to_thread(verl.compute_score, "hh", "x", None, {}, url=url)
    assert one == pytest.approx(want[0], abs=1e-5)
    assert many == pytest.approx(want, abs=1e-5)
    with pytest.raises(BackendError, match="cannot reach charter serve"):
        verl.compute_score("hh", "x", None, {"prompt": "p"}, url=url)


@contextmanager
def served_in_thread(**options: Any) -> Iterator[str]:
    """A server on its own event loop in a thread, for code that blocks (training)."""
    loop = asyncio.new_event_loop()
    ready: queue.Queue[Any] = queue.Queue()
    stop = asyncio.Event()

    async def main() -> None:
        try:
            async with served(**options) as (url, _):
                ready.put(url)
                await stop.wait()
        except BaseException as e:
            ready.put(e)
            raise

    thread = threading.Thread(target=loop.run_until_complete, args=(main(),), daemon=True)
    thread.start()
    url = ready.get(timeout=60)
    if isinstance(url, BaseException):
        raise url
    try:
        yield url
    finally:
        loop.call_soon_threadsafe(stop.set)
        thread.join(30)


def test_train_rl_takes_its_reward_from_charter_serve(tmp_path: Path) -> None:
    """``train rl --reward URL``: the server's rewards, what it leaves ungraded counted and
    bounded as a --reward-judge's."""
    from charter.backends.mock import MockBackend, register_mock, unregister_mock
    from charter.errors import UngradedError
    from charter.testing.tiny import tiny_causal_lm
    from charter.train.options import RLOptions
    from charter.train.run import train

    def grades_a_only(messages: list[Any], config: Any) -> str:
        return "4" if "Say a." in messages[-1].content else "no idea"

    tiny = tiny_causal_lm(tmp_path / "lm")
    prompts = tmp_path / "p.jsonl"
    prompts.write_text("".join(json.dumps({"prompt": f"Say {w}."}) + "\n" for w in "ab"))
    register_mock(MockBackend("mock/half", responder=grades_a_only, logprobs=False))
    try:
        with served_in_thread(judge="mock/half", rubric="helpfulness") as url:
            opts = RLOptions(
                input=str(prompts),
                output=tmp_path / "rl",
                model=str(tiny),
                reward=[url],
                max_steps=2,
                num_generations=2,
                batch_size=4,
                max_completion_length=4,
            )
            with pytest.raises(UngradedError, match=rf"charter serve at {url} could not grade 4"):
                train(opts)
            result = train(opts.model_copy(update={"max_ungraded": 0.5, "force": True}))
        assert result.judged is not None and str(result.judged) == "4 of 8 (50.0%)"
        marker = json.loads((opts.output / "charter-train.json").read_text())
        assert marker["finished"] is True and marker["settings"]["reward"] == [url]
        with pytest.raises(ConfigError, match="one of --reward-judge and a charter serve"):
            train(opts.model_copy(update={"reward_judge": "mock/judge"}))
    finally:
        unregister_mock("mock/half")


async def test_with_cache_the_judge_is_asked_once_per_completion(tmp_path: Path) -> None:
    from charter.backends.mock import MockBackend, register_mock, unregister_mock

    mock = register_mock(MockBackend("mock/counted"))
    body = {"messages": [{"role": "user", "content": "Hi"}], "completions": ["Hello", "Hey"]}
    cache = tmp_path / "cache.sqlite"
    try:
        async with served(judge="mock/counted", rubric="helpfulness", cache=cache) as (url, _):
            first = await post(f"{url}/v1/rewards", body)
            asked = len(mock.calls)
            again = await post(f"{url}/v1/rewards", body)
            assert len(mock.calls) == asked == 2
        async with served(judge="mock/counted", rubric="helpfulness", cache=cache) as (url, _):
            restarted = await post(f"{url}/v1/rewards", body)
        assert len(mock.calls) == 2  # a restarted server answers from the file
    finally:
        unregister_mock("mock/counted")
    assert first == again == restarted and first[0] == 200


class _Template:
    """A tokenizer's chat-template side, for templates whose tokenizers are not here: renders
    a Jinja chat template as transformers does."""

    def __init__(self, template: str, bos: str, eos: str, pad: str, specials: list[str]) -> None:
        from jinja2 import Template

        self.chat_template = template
        self._template = Template(template)
        self.bos_token, self.eos_token, self.pad_token = bos, eos, pad
        self.all_special_tokens = specials

    def apply_chat_template(
        self,
        conversation: list[dict[str, str]],
        tokenize: bool = False,
        add_generation_prompt: bool = False,
    ) -> str:
        return self._template.render(
            messages=conversation,
            add_generation_prompt=add_generation_prompt,
            bos_token=self.bos_token,
        )


LLAMA3_LIKE = _Template(
    "{{ bos_token }}{% for m in messages %}<|start_header_id|>{{ m['role'] }}<|end_header_id|>\n\n"
    "{% if loop.first and m['role'] == 'system' %}Knowledge cutoff: 2023\n\n{% endif %}"
    "{{ m['content'] }}<|eot_id|>{% endfor %}"
    "{% if add_generation_prompt %}<|start_header_id|>assistant<|end_header_id|>\n\n{% endif %}",
    "<|begin_of_text|>",
    "<|eot_id|>",
    "<|end_of_text|>",
    [
        "<|begin_of_text|>",
        "<|eot_id|>",
        "<|end_of_text|>",
        "<|start_header_id|>",
        "<|end_header_id|>",
    ],
)
PHI3_LIKE = _Template(
    "{% for m in messages %}<|{{ m['role'] }}|>\n{{ m['content'] }}<|end|>\n{% endfor %}"
    "{% if add_generation_prompt %}<|assistant|>\n{% endif %}",
    "<s>",
    "<|endoftext|>",
    "<|endoftext|>",
    ["<s>", "<|endoftext|>", "<|system|>", "<|user|>", "<|assistant|>", "<|end|>"],
)


@pytest.mark.parametrize("name", ["smollm2", "llama3", "phi3"])
def test_chat_formats_read_back_multi_turn_prompts_and_split_responses(
    name: str, tokenizer: Any
) -> None:
    from charter.serve.chat import ChatFormat

    tok = {"smollm2": tokenizer, "llama3": LLAMA3_LIKE, "phi3": PHI3_LIKE}[name]
    chat = ChatFormat.from_tokenizer(tok, name)
    turns = [
        {"role": "system", "content": "Be nice."},
        {"role": "user", "content": "Hi\nthere"},
        {"role": "assistant", "content": "Hello!"},
        {"role": "user", "content": "How are you?"},
    ]
    prompt = tok.apply_chat_template(turns, tokenize=False, add_generation_prompt=True)
    query = tok.pad_token * 2 + prompt + "Fine, thanks." + tok.eos_token + tok.pad_token
    head, response = chat.split(query) or ("", "")
    assert response == "Fine, thanks."
    read = [(m.role, m.content) for m in chat.messages(head) or []]
    preamble = "Knowledge cutoff: 2023\n\n" if name == "llama3" else ""
    assert read == [
        ("system", preamble + "Be nice."),
        ("user", "Hi\nthere"),
        ("assistant", "Hello!"),
        ("user", "How are you?"),
    ]
    assert chat.messages("a prompt in no template") is None


def test_off_loopback_a_token_is_made_and_printed_and_required() -> None:
    """``--host 0.0.0.0`` without --token: one is made, printed (-q: after the address) and
    asked of every POST."""
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "charter",
            "serve",
            "--judge",
            "mock/judge",
            "--rubric",
            "helpfulness",
            "--host",
            "0.0.0.0",
            "--port",
            "0",
            "-q",
        ],
        stderr=subprocess.PIPE,
        stdout=subprocess.DEVNULL,
        text=True,
    )
    try:
        assert proc.stderr is not None
        url, token = proc.stderr.readline().split()
        port = url.rsplit(":", 1)[1]
        body = json.dumps(
            {"messages": [{"role": "user", "content": "Hi"}], "completions": ["Hello"]}
        ).encode()

        def status(headers: dict[str, str]) -> int:
            request = urllib.request.Request(
                f"http://127.0.0.1:{port}/v1/rewards",
                data=body,
                headers={"Content-Type": "application/json", **headers},
            )
            try:
                with urllib.request.urlopen(request, timeout=30) as r:
                    return int(r.status)
            except urllib.error.HTTPError as e:
                return e.code

        assert len(token) >= 8
        assert status({}) == 401
        assert status({"Authorization": f"Bearer {token}"}) == 200
    finally:
        proc.terminate()
        proc.wait(30)

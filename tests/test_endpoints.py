"""Several endpoints (``--base-url A,B``): requests go to the endpoint with the fewest in
flight, ``-c`` is per endpoint, and an endpoint that refuses connections or keeps failing is
set aside while the others take its work. Against two in-repo servers on 127.0.0.1."""

from __future__ import annotations

import asyncio
import socket
from pathlib import Path

import pytest

import charter
from charter import endpoints
from charter.cache import RequestCache
from charter.config import StageOptions
from charter.endpoints import FAILURES_TO_COOL, EndpointPool, Lease
from charter.engines.base import ModelFactory
from charter.errors import BackendUnavailable, ConfigError
from charter.model import Model, RetryPolicy
from charter.recipe import load_recipe
from charter.testing.server import FakeOpenAIServer, Fault
from charter.types import GenerateConfig, Message
from tests.conftest import ids_of, run_cli
from tests.test_reliability import write_prompts


def dead_url() -> str:
    """A URL on a port with nothing listening: connections are refused."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    return f"http://127.0.0.1:{port}/v1"


def respond(src: Path, out: Path, base_url: str, **extra: object) -> charter.RunSummary:
    options: dict[str, object] = {"no_cache": True, "retry_wait": 0.0, **extra}
    return charter.run(
        "respond", input=src, output=out, model="openai/m", base_url=base_url, **options
    )


def test_both_endpoints_get_work_and_c_is_per_endpoint(tmp_path: Path) -> None:
    src, out = tmp_path / "p.jsonl", tmp_path / "o.jsonl"
    ids = write_prompts(src, 60)
    with FakeOpenAIServer(latency=0.02) as a, FakeOpenAIServer(latency=0.02) as b:
        summary = respond(src, out, f"{a.base_url},{b.base_url}", concurrency=3)
    assert summary.written == 60 and summary.failed == 0
    assert sorted(ids_of(out)) == ids
    assert a.served + b.served == 60
    assert a.served >= 15 and b.served >= 15, (a.served, b.served)
    # -c 3 is per endpoint: each saw 3 at once (the pool filled both), never more
    assert a.max_in_flight == 3 and b.max_in_flight == 3


def test_one_endpoint_down_at_start_sends_everything_to_the_other(tmp_path: Path) -> None:
    src, out = tmp_path / "p.jsonl", tmp_path / "o.jsonl"
    ids = write_prompts(src, 30)
    with FakeOpenAIServer(latency=0.01) as live:
        summary = respond(src, out, f"{dead_url()},{live.base_url}", concurrency=4)
    assert summary.failed == 0 and sorted(ids_of(out)) == ids
    assert live.served == 30
    assert not (tmp_path / "o.failed.jsonl").exists()


def test_an_endpoint_answering_503_is_set_aside(tmp_path: Path) -> None:
    src, out = tmp_path / "p.jsonl", tmp_path / "o.jsonl"
    ids = write_prompts(src, 40)
    concurrency = 2

    def always_503(body: dict[str, object]) -> Fault:
        return Fault(status=503, retry_after=0, message="overloaded")

    with (
        FakeOpenAIServer(latency=0.01) as good,
        FakeOpenAIServer(latency=0.01, fault_rule=always_503) as bad,
    ):
        summary = respond(src, out, f"{bad.base_url},{good.base_url}", concurrency=concurrency)
    assert summary.failed == 0 and sorted(ids_of(out)) == ids
    assert good.served == 40 and bad.served == 0
    # set aside after FAILURES_TO_COOL in a row; at most the others in flight then also fail
    assert FAILURES_TO_COOL <= len(bad.requests) <= FAILURES_TO_COOL + concurrency - 1


async def test_an_endpoint_set_aside_is_tried_again_after_the_cool_down(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(endpoints, "COOL_DOWN", 0.2)
    down = dead_url()
    msgs = [Message(role="user", content="hi")]
    with FakeOpenAIServer() as up:
        async with Model.from_spec(
            "openai/m",
            backend_options={"base_url": f"{up.base_url},{down}"},
            concurrency=2,
            retry=RetryPolicy(initial=0.0, jitter=0.0),
        ) as model:
            await asyncio.gather(*(model.generate(msgs) for _ in range(10)))
            assert up.served == 10 and model.retries >= 1
            port = int(down.rsplit(":", 1)[1].split("/")[0])
            with FakeOpenAIServer(port=port) as back:
                await asyncio.sleep(0.3)
                await asyncio.gather(*(model.generate(msgs) for _ in range(20)))
            assert back.served > 0 and up.served + back.served == 30


def test_all_endpoints_down_is_one_line_without_credentials(tmp_path: Path) -> None:
    src = tmp_path / "p.jsonl"
    write_prompts(src, 3)
    first, second = dead_url(), dead_url()
    with_secret = second.replace("http://", "http://user:s3cret@")
    r = run_cli(
        "respond", str(src), "-o", str(tmp_path / "o.jsonl"), "-m", "openai/m",
        "--base-url", f"{first},{with_secret}", "--retries", "1", "--retry-wait", "0",
        env={"OPENAI_API_KEY": "sk-s3cret"},
    )  # fmt: skip
    assert r.returncode == 2, r.stderr
    assert "Traceback" not in r.stderr and "s3cret" not in r.stderr, r.stderr
    errors = [line for line in r.stderr.splitlines() if "cannot reach" in line]
    assert len(errors) == 1, r.stderr
    assert "cannot reach any endpoint of --base-url" in errors[0], errors[0]
    assert first in errors[0] and "http://***@127.0.0.1" in errors[0], errors[0]


def test_every_endpoint_down_stops_the_run_naming_each(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Cool-downs shorter than the backoff, as 10 s are against the default backoff of a long
    # run: two dead endpoints took turns looking healthy, so records failed one by one
    # ("resending to another endpoint") while the run crawled on instead of stopping.
    monkeypatch.setattr(endpoints, "COOL_DOWN", 0.01)
    src, out = tmp_path / "p.jsonl", tmp_path / "o.jsonl"
    write_prompts(src, 40)
    first, second = dead_url(), dead_url()
    with pytest.raises(BackendUnavailable) as raised:
        respond(src, out, f"{first},{second}", concurrency=4)
    message = str(raised.value)
    assert message.startswith("cannot reach any endpoint of --base-url: "), message
    assert f"{first} (ClientConnectorError" in message, message
    assert f"{second} (ClientConnectorError" in message, message
    assert not (tmp_path / "o.failed.jsonl").exists()
    assert ids_of(out) == []


def test_a_refused_request_is_resent_waits_or_fails_by_the_other_endpoints() -> None:
    pool = EndpointPool(["a", "b"], per_endpoint=2)
    a, b = pool.endpoints
    assert Lease(pool, a).refused("refused") == "resend"  # b was never tried: it may answer
    for _ in range(FAILURES_TO_COOL):
        Lease(pool, b).failed("HTTP 503")  # reached, but set aside for failing
    assert Lease(pool, a).refused("refused") == "wait"  # back off: b answers, with errors
    assert pool.unreachable() is None
    assert Lease(pool, b).refused("reset") == "unreachable"
    assert pool.unreachable() == "a (refused); b (reset)"
    Lease(pool, a).answered()  # back: reachable again
    assert pool.unreachable() is None
    assert Lease(pool, b).refused("reset") == "wait"  # a still sits out its cool-down


@pytest.mark.parametrize(
    ("entry", "message"),
    [
        ("ftp://host/v1", "--base-url entry 2 must be an http(s) URL, got 'ftp://host/v1'"),
        ("http://[::1/v1", "--base-url entry 2 is not a valid URL"),
        ("http://u:pw@h:99999/v1", "--base-url entry 2 has port 99999, outside 0-65535: "),
        ("http://127.0.0.1:1/v1", "--base-url lists 'http://127.0.0.1:1/v1' twice"),
    ],
)
def test_a_bad_entry_is_named(tmp_path: Path, entry: str, message: str) -> None:
    src = tmp_path / "p.jsonl"
    write_prompts(src, 1)
    with pytest.raises(ConfigError) as exc:
        respond(src, tmp_path / "o.jsonl", f"http://127.0.0.1:1/v1,{entry}")
    text = str(exc.value)
    assert "\n" not in text and text.startswith(message), text
    assert "pw@" not in text


def test_a_bad_entry_on_the_command_line_is_one_line(tmp_path: Path) -> None:
    src = tmp_path / "p.jsonl"
    write_prompts(src, 1)
    r = run_cli("respond", str(src), "-o", str(tmp_path / "o.jsonl"), "-m", "openai/m",
                "--base-url", "http://127.0.0.1:1/v1,localhost:8000/v1")  # fmt: skip
    assert r.returncode == 2 and "Traceback" not in r.stderr, r.stderr
    assert "--base-url has a comma in its host or path" in r.stderr, r.stderr
    assert "each starting with" in r.stderr
    assert len(r.stderr.strip().splitlines()) == 1, r.stderr


def test_a_recipe_takes_a_list_of_endpoints(tmp_path: Path) -> None:
    src = tmp_path / "p.jsonl"
    write_prompts(src, 20)
    with FakeOpenAIServer(latency=0.02) as a, FakeOpenAIServer(latency=0.02) as b:
        recipe = tmp_path / "r.yaml"
        recipe.write_text(
            f"defaults:\n  base_url: [{a.base_url}, {b.base_url}]\n  concurrency: 2\n"
            f"stages:\n  - stage: respond\n    input: {src}\n    output: {tmp_path / 'o.jsonl'}\n"
            "    model: openai/m\n    no_cache: true\n"
        )
        [step] = load_recipe(recipe)
        opts = step.options
        assert opts.base_url == f"{a.base_url},{b.base_url}"
        r = run_cli("run", str(recipe), "-q")
    assert r.returncode == 0, r.stderr
    assert len(ids_of(tmp_path / "o.jsonl")) == 20
    assert a.served and b.served and a.served + b.served == 20


def test_the_cache_is_keyed_by_the_deployment_not_the_endpoint(tmp_path: Path) -> None:
    """Whichever endpoint answered, and in whatever order they are listed, the endpoints of
    one deployment share cached answers; another server does not."""
    src = tmp_path / "p.jsonl"
    write_prompts(src, 10)
    cache = tmp_path / "cache.sqlite"
    with FakeOpenAIServer() as a, FakeOpenAIServer() as b, FakeOpenAIServer() as c:
        first = respond(src, tmp_path / "1.jsonl", f"{a.base_url},{b.base_url}",
                        no_cache=False, cache=cache)  # fmt: skip
        assert first.written == 10 and a.served and b.served
        again = respond(src, tmp_path / "2.jsonl", f"{b.base_url},{a.base_url}",
                        no_cache=False, cache=cache)  # fmt: skip
        assert again.models[0].usage.cache_hits == 10 and a.served + b.served == 10
        respond(src, tmp_path / "3.jsonl", c.base_url, no_cache=False, cache=cache)
        assert c.served == 10


async def test_models_on_the_same_servers_share_one_pool(tmp_path: Path) -> None:
    opts = StageOptions(
        input="x.jsonl", output=tmp_path / "o.jsonl",
        base_url="http://127.0.0.1:1/v1, http://127.0.0.1:2/v1", concurrency=5,
    )  # fmt: skip
    factory = ModelFactory(opts, RequestCache(tmp_path / "c.sqlite"))
    policy, critic, mock = factory("openai/p"), factory("openai/c"), factory("mock/m")
    assert isinstance(policy.limit, EndpointPool) and policy.limit.per_endpoint == 5
    assert critic.limit is policy.limit
    assert isinstance(mock.limit, asyncio.Semaphore)
    assert factory.slots == 2 * 5 + 5  # what an engine's window must cover
    one = ModelFactory(opts.model_copy(update={"base_url": "http://127.0.0.1:1/v1"}), None)
    assert isinstance(one("openai/p").limit, asyncio.Semaphore)  # one endpoint: as before


async def test_pool_hands_slots_in_order_and_survives_cancellation() -> None:
    pool = EndpointPool(["a", "b"], per_endpoint=1)
    first, second = await pool.acquire(), await pool.acquire()
    assert {first.name, second.name} == {"a", "b"}
    cancelled = asyncio.ensure_future(pool.acquire())
    waiting = asyncio.ensure_future(pool.acquire())
    await asyncio.sleep(0)
    cancelled.cancel()
    pool.release(first)
    assert (await waiting) is first  # the cancelled waiter did not take the slot
    pool.release(first)
    pool.release(second)
    assert [e.in_flight for e in pool.endpoints] == [0, 0]


async def test_server_max_concurrency_caps_requests_processed_at_once() -> None:
    with FakeOpenAIServer(latency=0.05, max_concurrency=2) as srv:
        async with Model.from_spec(
            "openai/m", backend_options={"base_url": srv.base_url}, concurrency=6
        ) as model:
            msgs = [Message(role="user", content="hi")]
            await asyncio.gather(*(model.generate(msgs, GenerateConfig()) for _ in range(12)))
    assert srv.served == 12
    assert srv.max_in_flight == 2 and srv.max_queued == 4


def test_server_command_takes_max_concurrency(capsys: pytest.CaptureFixture[str]) -> None:
    from charter.testing import server

    with pytest.raises(SystemExit):  # --help exits after printing
        server.main(["--help"])
    assert "--max-concurrency" in capsys.readouterr().out
    assert FakeOpenAIServer(max_concurrency=3).max_concurrency == 3
    with pytest.raises(ValueError):
        FakeOpenAIServer(max_concurrency=0)


def test_help_says_concurrency_is_per_endpoint() -> None:
    r = run_cli("respond", "--help")
    assert "per endpoint" in r.stdout and "separated by" in r.stdout, r.stdout


def test_a_comma_inside_one_url_does_not_split_it() -> None:
    """Only a comma before the next http(s):// separates endpoints: one in a password or a
    query string is part of its URL (and no fragment of it is echoed)."""
    from charter.backends.openai import OpenAIBackend

    one = OpenAIBackend("m", base_url="https://user:pa,ss@gw.example/v1?key=S,T&x=1")
    assert one.endpoints == ("https://***@gw.example/v1",)
    two = OpenAIBackend("m", base_url="http://a.example/v1, ,https://b.example/v1,")
    assert two.endpoints == ("http://a.example/v1", "https://b.example/v1")
    six = OpenAIBackend("m", base_url="http://u:p@[::1]:8000/v1")
    assert six.endpoints == ("http://***@[::1]:8000/v1",)
    with pytest.raises(ConfigError, match="comma in its host"):
        OpenAIBackend("m", base_url="http://h1:8000,h2:8000/v1")


def test_an_endpoint_that_never_answers_is_set_aside(tmp_path: Path) -> None:
    """Requests that time out count against their endpoint, like 5xx: a server that takes
    connections and never answers stops getting work."""
    src, out = tmp_path / "p.jsonl", tmp_path / "o.jsonl"
    ids = write_prompts(src, 200)  # about 2 s on the good endpoint: 4 time-outs' worth

    def hang(body: dict[str, object]) -> Fault:
        return Fault(kind="status", status=200, hang=3)

    with (
        FakeOpenAIServer(latency=0.02) as good,
        FakeOpenAIServer(fault_rule=hang) as stuck,
    ):
        summary = respond(src, out, f"{stuck.base_url},{good.base_url}", concurrency=2, timeout=0.5)
    assert summary.failed == 0 and sorted(ids_of(out)) == ids
    assert good.served == 200
    assert len(stuck.requests) <= FAILURES_TO_COOL + 1

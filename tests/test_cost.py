"""What a run costs: the price table, the usage it is applied to, the ledger beside an
output (OUT.cost.json), and --max-cost budgets, against the fake OpenAI server."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import pytest

import charter
from charter.budget import Budget, estimate_prompt_tokens
from charter.errors import ConfigError
from charter.ledger import read_ledger
from charter.model import Model
from charter.prices import BUILTIN, Prices, PriceTable, load_prices, price_for
from charter.testing.server import FakeOpenAIServer
from charter.types import GenerateConfig, Generation, Message, Usage
from tests.conftest import ids_of, run_cli
from tests.test_reliability import write_prompts

FAST = ["--retry-wait", "0.01", "--timeout", "5", "-q"]


@pytest.fixture
def cached_server() -> Iterator[FakeOpenAIServer]:
    """Reports 2 of every prompt's tokens as read from its prompt cache."""
    with FakeOpenAIServer(cached_tokens=2) as srv:
        yield srv


def hand_cost(bodies: list[Mapping[str, Any]], prices: Prices, cached: int = 0) -> float:
    """What the fake server's requests cost, counted by hand: its prompt tokens are each
    message's words plus 2, its echo reply ("Echo: " + the last message) one word more than
    the last message."""
    total = 0.0
    for body in bodies:
        messages = body["messages"]
        prompt = sum(len(m["content"].split()) + 2 for m in messages)
        completion = 1 + len(messages[-1]["content"].split())
        hit = min(cached, prompt)
        cached_price = prices.input if prices.cached_input is None else prices.cached_input
        total += ((prompt - hit) * prices.input + hit * cached_price) / 1e6
        total += completion * prices.output / 1e6
    return total


def test_the_table_matches_dated_variants_and_a_prices_file_overrides(tmp_path: Path) -> None:
    table = PriceTable()
    assert table.lookup("openai/gpt-4o-mini") == BUILTIN["gpt-4o-mini"]
    assert table.lookup("openai/gpt-4o-mini-2024-07-18") == BUILTIN["gpt-4o-mini"]
    assert table.lookup("anthropic/claude-sonnet-4-5-20250929") == BUILTIN["claude-sonnet-4-5"]
    assert table.lookup("anthropic/claude-3-5-haiku-latest") == BUILTIN["claude-3-5-haiku"]
    assert table.lookup("openai/gpt-4o-mini-tts") is None  # another model, not a dated one
    assert table.lookup("mock/dry") is None
    for name, prices in BUILTIN.items():  # every entry says where and when it was read
        assert prices.source and prices.checked, name
    sonnet = BUILTIN["claude-sonnet-4-5"]
    assert (sonnet.cached_input, sonnet.cache_write) == (0.3, 3.75)  # 0.1x and 1.25x of $3

    file = tmp_path / "prices.yaml"
    file.write_text(
        "gpt-4o-mini: {input: 1, output: 2}\n"
        "openai/local-judge: {input: 0.5, output: 0.5, batch_discount: 0}\n"
    )
    table = PriceTable(load_prices(file))
    assert table.lookup("openai/gpt-4o-mini") == Prices(
        1.0, 2.0, batch_discount=0.5, source=str(file)
    )
    assert price_for("openai/local-judge", file) == Prices(
        0.5, 0.5, batch_discount=0.0, source=str(file)
    )


@pytest.mark.parametrize(
    ("text", "said"),
    [
        ("gpt-x: {input: 1}\n", "gpt-x.output: Field required"),
        ("gpt-x: {input: -1, output: 1}\n", "gpt-x.input: Input should be greater than"),
        ("gpt-x: {input: 1, output: 1, cost: 3}\n", "gpt-x.cost: Extra inputs"),
        ("gpt-x: [1, 2\n", "line 2: not valid YAML or JSON"),
    ],
)
def test_a_bad_prices_file_is_one_line_naming_file_and_field(
    tmp_path: Path, text: str, said: str
) -> None:
    file = tmp_path / "prices.yaml"
    file.write_text(text)
    with pytest.raises(ConfigError, match=f"--prices {file}") as e:
        load_prices(file)
    assert said in str(e.value) and "\n" not in str(e.value)


def test_a_bad_prices_file_stops_the_command_in_one_line(tmp_path: Path) -> None:
    write_prompts(tmp_path / "p.jsonl", 2)
    (tmp_path / "prices.json").write_text('{"gpt-x": {"input": "cheap", "output": 1}}')
    r = run_cli(
        "respond", str(tmp_path / "p.jsonl"), "-o", str(tmp_path / "out.jsonl"),
        "-m", "mock/dry", "--prices", str(tmp_path / "prices.json"), "-q",
    )  # fmt: skip
    assert r.returncode == 2, r.stderr
    assert r.stderr.strip().count("\n") == 0 and "Traceback" not in r.stderr
    assert "prices.json: gpt-x.input: Input should be a valid number" in r.stderr


def test_cost_counts_cached_input_cache_writes_and_batches_at_their_prices() -> None:
    prices = Prices(3.0, 15.0, cached_input=0.3, cache_write=3.75, batch_discount=0.5)
    usage = Usage()
    usage.count(Generation(text="a", prompt_tokens=1000, completion_tokens=100))
    usage.count(
        Generation(
            text="b",
            prompt_tokens=1000,
            completion_tokens=100,
            cached_prompt_tokens=600,
            cache_write_tokens=300,
        ),
        batched=True,
    )
    usage.count(Generation(text="c", prompt_tokens=9, completion_tokens=9, cached=True))
    live = (1000 * 3.0 + 100 * 15.0) / 1e6
    batch = (100 * 3.0 + 600 * 0.3 + 300 * 3.75 + 100 * 15.0) / 1e6 * 0.5
    assert prices.cost(usage) == pytest.approx(live + batch, rel=1e-12)
    assert usage.batch is not None and usage.batch.requests == 1 and usage.cache_hits == 1
    assert prices.breakdown(usage)["batch_cache_write"] == pytest.approx(300 * 3.75 / 2e6)


def test_usage_is_written_as_before_unless_cached_or_batched() -> None:
    usage = Usage(requests=2, prompt_tokens=30, completion_tokens=7)
    assert usage.model_dump_json() == (
        '{"requests":2,"cache_hits":0,"prompt_tokens":30,"completion_tokens":7}'
    )
    usage.count(Generation(text="x", prompt_tokens=5, cached_prompt_tokens=4), batched=True)
    again = Usage.model_validate_json(usage.model_dump_json())
    assert again == usage and again.cached_prompt_tokens == 4
    assert again.batch == Usage(requests=1, prompt_tokens=5, cached_prompt_tokens=4)


async def test_openai_cached_tokens_are_counted(cached_server: FakeOpenAIServer) -> None:
    async with Model.from_spec(
        "openai/gpt-4o-mini", backend_options={"base_url": cached_server.base_url}
    ) as model:
        model.prices = BUILTIN["gpt-4o-mini"]
        got = await model.generate([Message(role="user", content="one two three")])
        model.batched = True
        await model.generate([Message(role="user", content="four five")])
    assert got.cached_prompt_tokens == 2 and got.prompt_tokens == 5
    assert model.usage.cached_prompt_tokens == 4
    assert model.usage.batch == Usage(
        requests=1, prompt_tokens=4, completion_tokens=3, cached_prompt_tokens=2
    )
    p = BUILTIN["gpt-4o-mini"]
    live = (3 * p.input + 2 * 0.075 + 4 * p.output) / 1e6
    batch = (2 * p.input + 2 * 0.075 + 3 * p.output) / 1e6 / 2
    assert model.cost == pytest.approx(live + batch, rel=1e-12)


def test_the_ledger_equals_the_hand_computation_and_adds_up_resumes(
    cached_server: FakeOpenAIServer, tmp_path: Path
) -> None:
    prompts = tmp_path / "prompts.jsonl"
    write_prompts(prompts, 6)
    out = tmp_path / "answers.jsonl"
    common = dict(
        input=prompts, output=out, model="openai/gpt-4o-mini-2024-07-18",
        base_url=cached_server.base_url, max_tokens=32, retry_wait=0.01,
    )  # fmt: skip
    first = charter.run("respond", limit=4, **common)
    prices = BUILTIN["gpt-4o-mini"]
    spent_first = hand_cost(cached_server.requests, prices, cached=2)
    assert first.models[0].cost == pytest.approx(spent_first, rel=1e-12)
    assert first.cost == pytest.approx(spent_first, rel=1e-12)

    second = charter.run("respond", **common)  # resumes: the 2 records left
    assert (second.written, second.skipped) == (2, 4)
    spent = hand_cost(cached_server.requests, prices, cached=2)
    ledger = json.loads((tmp_path / "answers.cost.json").read_text())
    assert ledger["cost"] == pytest.approx(spent, rel=1e-12) == second.cost
    assert ledger["runs"] == 2 and ledger["records"] == 6 and ledger["stage"] == "respond"
    assert ledger["cost_per_1000_records"] == pytest.approx(spent * 1000 / 6, rel=1e-12)
    line = ledger["models"]["openai/gpt-4o-mini-2024-07-18"]
    assert line["usage"]["requests"] == len(cached_server.requests) == 6
    assert line["usage"]["cached_prompt_tokens"] == 12
    assert line["prices"]["input"] == 0.15 and line["prices"]["checked"] == prices.checked
    assert sum(line["cost_by_kind"].values()) == pytest.approx(spent, rel=1e-12)
    assert set(line["cost_by_kind"]) == {"input", "cached_input", "output"}


def test_max_cost_refuses_a_model_without_a_price(tmp_path: Path) -> None:
    write_prompts(tmp_path / "p.jsonl", 2)
    with pytest.raises(ConfigError, match="--max-cost: no price for mock/dry: add it with"):
        charter.run("respond", input=tmp_path / "p.jsonl", output=tmp_path / "o.jsonl",
                    model="mock/dry", max_cost=1.0)  # fmt: skip
    assert not (tmp_path / "o.jsonl").exists()


def test_a_budget_reserves_the_worst_case_and_settles_what_was_spent() -> None:
    budget = Budget(cap=1.0, earlier=0.25)
    assert budget.reserve(0.5) and not budget.reserve(0.5)  # 0.25 + 0.5 + 0.5 > 1
    budget.settle(0.5, 0.125, "openai/x")
    assert (budget.spent, budget.reserved) == (0.375, 0.0)
    assert budget.reserve(0.625) and not budget.reserve(0.001)
    budget.release(0.625)
    assert budget.by_model == {"openai/x": 0.125}
    # one token per 3 characters and 4 per message: above the fake server's words + 2
    assert estimate_prompt_tokens([Message(role="user", content="abcdefg")]) == 3 + 4


def test_max_cost_stops_before_the_cap_and_a_rerun_with_more_finishes_exactly_once(
    server: FakeOpenAIServer, tmp_path: Path
) -> None:
    ids = write_prompts(tmp_path / "p.jsonl", 24)
    out = tmp_path / "answers.jsonl"
    prices = tmp_path / "prices.yaml"
    prices.write_text("judge-x: {input: 1000, output: 1000}\n")  # $0.001 a token
    cap = 0.1
    args = [
        "respond", str(tmp_path / "p.jsonl"), "-o", str(out), "-m", "openai/judge-x",
        "--base-url", server.base_url, "--prices", str(prices), "--max-tokens", "16",
        "--concurrency", "3", *FAST,
    ]  # fmt: skip
    r = run_cli(*args, "--max-cost", str(cap))
    assert r.returncode == 2, r.stderr
    line = r.stderr.strip()
    assert "\n" not in line and "Traceback" not in line
    assert "--max-cost $0.1000 reached" in line and "re-run with a higher --max-cost" in line
    sent = hand_cost(server.requests, Prices(1000.0, 1000.0))
    assert 0 < sent <= cap  # nothing over the cap was sent
    done = ids_of(out)
    assert 0 < len(done) < len(ids)
    ledger = read_ledger(tmp_path / "answers.cost.json")
    assert ledger is not None and ledger.cost is not None
    assert ledger.cost <= cap and ledger.records == len(done)

    # the same cap again: the ledger's spend counts, so it stops at once with nothing sent
    before = len(server.requests)
    again = run_cli(*args, "--max-cost", str(cap))
    assert again.returncode == 2 and "spent" in again.stderr
    assert hand_cost(server.requests[before:], Prices(1000.0, 1000.0)) + ledger.cost <= cap

    more = run_cli(*args, "--max-cost", "10")
    assert more.returncode == 0, more.stderr
    failed = ids_of(tmp_path / "answers.failed.jsonl")
    assert sorted(ids_of(out) + failed) == ids and not failed
    total = hand_cost(server.requests, Prices(1000.0, 1000.0))
    final = read_ledger(tmp_path / "answers.cost.json")
    assert final is not None and final.cost == pytest.approx(total, rel=1e-9)
    assert final.runs == 3


def test_a_recipe_ends_with_its_stages_total(server: FakeOpenAIServer, tmp_path: Path) -> None:
    write_prompts(tmp_path / "p.jsonl", 3)
    (tmp_path / "prices.yaml").write_text("judge-x: {input: 1000, output: 1000}\n")
    recipe = tmp_path / "recipe.yaml"
    recipe.write_text(
        f"""
defaults: {{model: openai/judge-x, base_url: "{server.base_url}", prices: {tmp_path}/prices.yaml}}
stages:
  - {{stage: respond, input: {tmp_path}/p.jsonl, output: {tmp_path}/a.jsonl, max_tokens: 8}}
  - {{stage: respond, input: {tmp_path}/p.jsonl, output: {tmp_path}/b.jsonl, max_tokens: 4}}
"""
    )
    r = run_cli("run", str(recipe), "-q")
    assert r.returncode == 0, r.stderr
    each = [read_ledger(tmp_path / f"{x}.cost.json") for x in "ab"]
    costs = [ledger.cost for ledger in each if ledger is not None]
    assert len(costs) == 2 and all(costs)
    total = hand_cost(server.requests, Prices(1000.0, 1000.0))
    assert sum(costs) == pytest.approx(total, rel=1e-9)  # type: ignore[arg-type]
    assert f"recipe cost so far: ${total:,.4f} (a.jsonl ${costs[0]:,.4f}" in r.stderr + r.stdout


def test_a_batch_runner_reserves_a_whole_batch_and_counts_its_results() -> None:
    """The API the batch runner uses: reserve the batch's worst case at submission, count
    each result through the model (usage.batch, and the budget's spend), release the rest."""
    budget = Budget(cap=1.0)
    model = Model.from_spec("mock/x", prices=Prices(1000.0, 1000.0), budget=budget)
    model.batched = True
    asked = [[Message(role="user", content=f"question {i} " * 10)] for i in range(3)]
    config = GenerateConfig(max_tokens=10)
    worst = sum(model.worst_case(m, config) for m in asked)
    assert worst == pytest.approx(3 * (estimate_prompt_tokens(asked[0]) + 10) * 1e-3 / 2)
    assert budget.reserve(worst)
    for _ in asked:
        model.count(Generation(text="ok", prompt_tokens=25, completion_tokens=5))
    budget.release(worst)
    assert budget.spent == pytest.approx(3 * 30 * 1e-3 / 2) and budget.reserved == 0
    assert model.usage.batch is not None and model.usage.batch.requests == 3
    assert not budget.reserve(1.0)  # what the batch spent counts against the cap


async def test_a_request_waits_for_those_in_flight_before_it_is_refused() -> None:
    budget = Budget(cap=1.0)
    assert budget.reserve(0.8)
    waiting = asyncio.ensure_future(budget.acquire(0.5))
    await asyncio.sleep(0.01)
    assert not waiting.done()  # 0.8 + 0.5 > 1 while the first is in flight
    budget.settle(0.8, 0.1)  # it answered for less than its worst case
    assert await waiting and budget.reserved == 0.5
    budget.release(0.5)
    assert not await budget.acquire(1.0)  # nothing in flight, and it still would not fit
    assert (budget.reserved, budget.holding) == (0.0, 0)

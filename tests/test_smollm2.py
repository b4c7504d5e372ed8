"""The real bundled model, SmolLM2-135M-Instruct (mechanics, not judgement quality)."""

from __future__ import annotations

import math
from collections.abc import Iterator

import pytest

pytest.importorskip("torch")
pytest.importorskip("transformers")

from charter.backends.hf import HFBackend
from charter.backends.smollm2 import create, gguf_file
from charter.model import Model
from charter.types import GenerateConfig, Message

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def smol() -> Iterator[HFBackend]:
    try:
        gguf_file()
    except Exception as e:  # pragma: no cover - depends on the machine
        pytest.skip(str(e))
    yield create()


async def test_generates_text(smol: HFBackend) -> None:
    model = Model(smol)
    g = await model.generate(
        [Message(role="user", content="What is the capital of France?")],
        GenerateConfig(max_tokens=20),
    )
    assert g.text.strip() and "Paris" in g.text
    assert g.prompt_tokens > 5 and 0 < g.completion_tokens <= 20


async def test_batched_generation_matches_single(smol: HFBackend) -> None:
    import asyncio

    prompts = ["Name a colour.", "Write one sentence about the sea and the sky at night."]
    cfg = GenerateConfig(max_tokens=12)
    single = [await smol.generate([Message(role="user", content=p)], cfg) for p in prompts]
    batched = await asyncio.gather(
        *(smol.generate([Message(role="user", content=p)], cfg) for p in prompts)
    )
    assert [g.text for g in batched] == [g.text for g in single]


async def test_option_probabilities_are_finite_and_sum_to_one(smol: HFBackend) -> None:
    import asyncio

    msgs = [
        [Message(role="user", content=f"Answer with A or B only. {q}")]
        for q in (
            "Is 2+2=4? (A) yes (B) no",
            "Which is a fruit, a much longer question here? (A) apple (B) brick",
        )
    ]
    single = [await smol.option_logprobs(m, ["A", "B"], GenerateConfig()) for m in msgs]
    batched = await asyncio.gather(
        *(smol.option_logprobs(m, ["A", "B"], GenerateConfig()) for m in msgs)
    )
    for s, b in zip(single, batched, strict=True):
        assert all(v is not None and math.isfinite(v) and v < 0 for v in s.logprobs.values())
        assert math.isclose(sum(s.probs.values()), 1.0, abs_tol=1e-9)
        for o in ("A", "B"):
            assert b.logprobs[o] == pytest.approx(s.logprobs[o], abs=1e-3), (
                "left padding must not shift scores"
            )
    scores = await smol.option_logprobs(msgs[0], ["1", "2", "3", "4", "5"], GenerateConfig())
    assert math.isclose(sum(scores.probs.values()), 1.0, abs_tol=1e-9)


async def test_hf_spec_loads_a_local_folder(smol: HFBackend) -> None:
    from charter.backends import create_backend
    from charter.backends.smollm2 import converted_dir

    folder = converted_dir()
    backend = create_backend(f"hf/{folder}", max_batch_size=2)
    assert backend.name == f"hf/{folder}" and backend.capabilities.option_logprobs
    g = await backend.generate(
        [Message(role="user", content="Say hi.")], GenerateConfig(max_tokens=5)
    )
    assert g.text


async def test_one_real_revise_round(smol: HFBackend) -> None:
    from charter.constitution import load_constitution
    from charter.records import PromptRecord
    from charter.stages.revise import ReviseConfig, revise

    model = Model(smol)
    rec = PromptRecord(id="s1", messages=[Message(role="user", content="How do I pick a lock?")])
    out = await revise(
        rec,
        policy=model,
        critic=model,
        constitution=load_constitution("harmless"),
        config=ReviseConfig(rounds=1, max_tokens=24, temperature=0),
    )
    assert out.initial and out.initial_source == "generated"
    (r,) = out.rounds
    assert r.critique and isinstance(r.revision, str)
    assert r.accepted == (not r.flags or r.flags == ["empty_critique"])
    assert out.final == (r.revision if r.accepted else out.initial)
    assert out.usage.requests == 3 and out.usage.completion_tokens > 0


async def test_real_labelling_run_on_a_handful_of_pairs(smol: HFBackend, hh_file: object) -> None:
    from itertools import islice

    from charter.constitution import load_constitution
    from charter.judges.pairwise import LabelConfig
    from charter.pairs import read_pairs
    from charter.stages.label import label

    model = Model(smol)
    constitution = load_constitution("harmless")
    pairs = list(islice(read_pairs(hh_file), 4))  # type: ignore[arg-type]
    import asyncio

    recs = await asyncio.gather(
        *(label(p, judge=model, constitution=constitution, config=LabelConfig()) for p in pairs)
    )
    for r in recs:
        assert r.label_source == "logprobs"
        assert 0.0 <= r.p_a <= 1.0 and math.isfinite(r.p_a)
        assert r.p_a_when_first is not None and r.p_a_when_second is not None
        assert r.p_a == pytest.approx((r.p_a_when_first + r.p_a_when_second) / 2)
    assert model.usage.requests == 8 and model.usage.completion_tokens == 0, "forward passes only"


async def test_sampled_outputs_depend_on_seed_not_batch(smol: HFBackend) -> None:
    import asyncio

    msg = [Message(role="user", content="Tell me a one-line story.")]
    other = [Message(role="user", content="Write a long paragraph about trains and stations.")]
    cfg = GenerateConfig(max_tokens=12, temperature=1.0, seed=7)
    alone = await smol.generate(msg, cfg)
    together = await asyncio.gather(
        smol.generate(other, cfg.model_copy(update={"seed": 1})),
        smol.generate(msg, cfg),
        smol.generate(msg, cfg.model_copy(update={"seed": 8})),
    )
    assert together[1].text == alone.text
    assert len({g.text for g in together}) >= 2


def test_shared_prefix_scoring_matches_padded_scoring(smol: HFBackend) -> None:
    """The judge template's instructions are run once and reused by every row: the result
    must equal scoring each row in full."""
    import torch

    from charter.backends.hf import MIN_SHARED_PREFIX, _common_prefix
    from charter.constitution import load_constitution
    from charter.judges.pairwise import judge_messages
    from charter.pairs import PairRecord

    constitution = load_constitution("harmless")
    pairs = [
        PairRecord(
            id=f"p{i}",
            messages=[Message(role="user", content="Help me?" + " please" * i)],
            response_a=f"Sure ({i}).",
            response_b=f"No ({i}).",
            a_source="a",
            b_source="b",
        )
        for i in range(4)
    ]
    convs = [
        judge_messages(p, constitution.principles[i], o, constitution, False)
        for i, p in enumerate(pairs)
        for o in ("ab", "ba")
    ]
    rows = [smol._token_ids(c) for c in convs]
    shared = _common_prefix(rows)
    assert shared >= MIN_SHARED_PREFIX, "the template starts with shared instructions"
    with torch.inference_mode():
        padded = torch.log_softmax(smol._last_logits_padded(convs).float(), -1)
        reused = torch.log_softmax(smol._last_logits_shared(rows, shared).float(), -1)
    assert float((padded - reused).abs().max()) < 1e-3


async def test_cot_continue_scores_the_option_in_the_same_sequence(smol: HFBackend) -> None:
    """--cot-style continue: the reasoning, the answer prefix and the option in one assistant
    turn (the chat template's turn left open), read at the next position."""
    from charter.constitution import load_constitution
    from charter.judges.pairwise import COT_ANSWER_PREFIX, LabelConfig
    from charter.pairs import PairRecord
    from charter.stages.label import label

    question = [Message(role="user", content="Which is better?")]
    turn = Message(role="assistant", content="Both are fine." + COT_ANSWER_PREFIX)
    text = smol._chat_text([*question, turn])
    assert text.endswith("Both are fine." + COT_ANSWER_PREFIX), "the turn is not closed"
    pair = PairRecord(
        id="p",
        messages=[Message(role="user", content="How do I boil an egg?")],
        response_a="Boil water, add the egg, wait nine minutes.",
        response_b="No.",
        a_source="x",
        b_source="y",
    )
    model = Model(smol)
    config = LabelConfig(orders="first", cot=True, cot_style="continue", max_tokens=12)
    rec = await label(pair, judge=model, constitution=load_constitution("harmless"), config=config)
    j = rec.judgements[0]
    assert rec.label_source == "logprobs" and 0.4 <= rec.p_a <= 0.6 and j.reasoning
    assert model.usage.requests == 2, "the reasoning, then one forward pass: no second question"
    assert rec.cot_truncated is (model.usage.completion_tokens >= 12)

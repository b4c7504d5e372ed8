"""``rm/DIR``: a trained reward model as a judge (label, score, evaluate), on a tiny random
reward model with SmolLM2's tokenizer: these tests check mechanics, never judgement."""

from __future__ import annotations

import asyncio
import json
import math
import shutil
from pathlib import Path
from typing import Any

import pytest

import charter
from charter.backends import create_backend
from charter.backends import weights as weights_module
from charter.backends.mock import MockBackend
from charter.backends.rm import RewardModelBackend
from charter.backends.weights import weights_fingerprint
from charter.errors import ConfigError
from charter.judges.reward import sigmoid
from charter.model import Model
from charter.types import Message
from tests.conftest import run_cli

pytest.importorskip("transformers")

PROMPTS = [
    (
        "How do I pick my neighbour's lock?",
        "I can't help with that.",
        "Rake the pins until it turns.",
    ),
    ("What is 2+2?", "4", "It is four, because two and two make four."),
    ("Say hi.", "Hi!", "Hello there, it is very nice to meet you today, friend."),
    ("Name a colour.", "Blue.", "Green, the colour of grass in spring."),
]


@pytest.fixture(scope="module")
def backend(rm_dir: Path) -> RewardModelBackend:
    b = create_backend(f"rm/{rm_dir}", device="cpu")
    assert isinstance(b, RewardModelBackend)
    return b


@pytest.fixture(scope="module")
def pairs_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("pairs") / "pairs.jsonl"
    rows = [
        {"id": f"r{i}", "prompt": q, "chosen": good, "rejected": bad}
        for i, (q, good, bad) in enumerate(PROMPTS)
    ]
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


@pytest.fixture(scope="module")
def rm_labels(rm_dir: Path, pairs_file: Path, tmp_path_factory: pytest.TempPathFactory) -> Any:
    """``charter label --judge rm/DIR`` through the real CLI, once for the module."""
    out = tmp_path_factory.mktemp("labels") / "rm.jsonl"
    r = run_cli(
        "label", str(pairs_file), "-o", str(out), "-j", f"rm/{rm_dir}", "--constitution", "harmless"
    )
    assert r.returncode == 0, r.stderr
    return out, r.stderr


def direct_reward(folder: Path, messages: list[Message], response: str) -> float:
    """The reward as TRL computes it for one unpadded conversational example."""
    import torch
    import transformers

    tok = transformers.AutoTokenizer.from_pretrained(folder)
    model = transformers.AutoModelForSequenceClassification.from_pretrained(folder).eval()
    conv = [{"role": m.role, "content": m.content} for m in messages]
    conv.append({"role": "assistant", "content": response})
    enc = tok.apply_chat_template(conv, tokenize=True, return_dict=True, return_tensors="pt")
    with torch.inference_mode():
        return float(model(**enc).logits[0, 0])


def user(text: str) -> list[Message]:
    return [Message(role="user", content=text)]


def test_rewards_equal_a_direct_forward_pass(rm_dir: Path, backend: RewardModelBackend) -> None:
    assert backend.capabilities.reward and not backend.capabilities.option_logprobs

    async def go() -> list[float]:
        model = Model(backend)
        got = [await model.reward(user(q), a) for q, a, _ in PROMPTS[:2]]
        assert model.usage.requests == 2 and all(r.prompt_tokens > 10 for r in got)
        return [r.value for r in got]

    got = asyncio.run(go())
    want = [direct_reward(rm_dir, user(q), a) for q, a, _ in PROMPTS[:2]]
    assert got == pytest.approx(want, rel=1e-5, abs=1e-6)
    assert got[0] != got[1]


def test_batched_rewards_equal_one_at_a_time(backend: RewardModelBackend) -> None:
    items = [(user(q), ans) for q, a, b in PROMPTS for ans in (a, b)]
    rows = [backend.encode(m, r) for m, r in items]
    assert len({len(r) for r in rows}) > 3, "rows of different lengths, so some are padded"
    alone = [backend.score_batch([row])[0] for row in rows]
    assert backend.score_batch(rows) == pytest.approx(alone, rel=1e-5, abs=1e-6)

    async def concurrent() -> list[float]:  # through the queue: gathered into one batch
        got = await asyncio.gather(*(backend.reward(m, r) for m, r in items))
        return [g.value for g in got]

    assert asyncio.run(concurrent()) == pytest.approx(alone, rel=1e-5, abs=1e-6)


def test_label_cli_writes_sigmoid_of_reward_difference(
    rm_labels: Any, backend: RewardModelBackend
) -> None:
    out, stderr = rm_labels
    recs = [json.loads(x) for x in out.read_text().splitlines()]
    assert len(recs) == len(PROMPTS)
    assert "is a reward model" in stderr and "ignores the constitution 'harmless'" in stderr
    for rec in recs:
        msgs = [Message(**m) for m in rec["prompt"]]
        r_a = asyncio.run(backend.reward(msgs, rec["response_a"])).value
        r_b = asyncio.run(backend.reward(msgs, rec["response_b"])).value
        assert rec["rewards"] == pytest.approx({"a": r_a, "b": r_b}, rel=1e-5, abs=1e-6)
        assert rec["p_a"] == pytest.approx(sigmoid(r_a - r_b), rel=1e-5)
        assert rec["label_source"] == "reward_model"
        assert rec["p_a_when_first"] is None and rec["p_a_when_second"] is None
        assert rec["position_consistent"] is None
        assert rec["principles"] == [] and rec["per_principle"] == []
        (j,) = rec["judgements"]
        assert (j["principle_id"], j["order"], j["source"]) == (
            "reward_model",
            "ab",
            "reward_model",
        )
        winner = rec["response_a"] if rec["p_a"] >= 0.5 else rec["response_b"]
        loser = rec["response_b"] if rec["p_a"] >= 0.5 else rec["response_a"]
        assert rec["chosen"] == [{"role": "assistant", "content": winner}]
        assert rec["rejected"] == [{"role": "assistant", "content": loser}]
        assert rec["p_chosen"] == pytest.approx(max(rec["p_a"], 1 - rec["p_a"]))
        assert rec["low_confidence"] is False and rec["human_choice"] in ("a", "b")
        assert rec["usage"]["requests"] == 2


def test_score_writes_raw_rewards(
    rm_dir: Path, pairs_file: Path, backend: RewardModelBackend, tmp_path: Path
) -> None:
    answers = tmp_path / "answers.jsonl"
    answers.write_text(
        "".join(
            json.dumps({"id": f"q{i}", "prompt": q, "responses": [a, b]}) + "\n"
            for i, (q, a, b) in enumerate(PROMPTS[:2])
        )
    )
    out = tmp_path / "scores.jsonl"
    charter.run("score", input=answers, output=out, judge=f"rm/{rm_dir}", rubric="helpfulness")
    recs = [json.loads(x) for x in out.read_text().splitlines()]
    assert len(recs) == 4
    for rec in recs:
        want = asyncio.run(backend.reward(user(rec["prompt"][0]["content"]), rec["response"]))
        assert rec["reward"] == pytest.approx(want.value, rel=1e-5, abs=1e-6)
        assert rec["score"] is None and rec["feedback"] is None and rec["attempts"] == 1
    relative = tmp_path / "relative.jsonl"
    charter.run(
        "score",
        input=pairs_file,
        output=relative,
        judge=f"rm/{rm_dir}",
        rubric="helpfulness",
        mode="relative",
    )
    labels = [json.loads(x) for x in relative.read_text().splitlines()]
    assert len(labels) == len(PROMPTS)
    assert all(x["label_source"] == "reward_model" for x in labels)
    with pytest.raises(ConfigError, match="writes no feedback; drop --cot"):
        charter.run(
            "score",
            input=answers,
            output=tmp_path / "x.jsonl",
            judge=f"rm/{rm_dir}",
            rubric="helpfulness",
            cot=True,
        )


def test_evaluate_reward_model_beside_an_llm_judge(
    rm_labels: Any, pairs_file: Path, tmp_path: Path
) -> None:
    rm_out, _ = rm_labels
    mock_out = tmp_path / "mock.jsonl"
    charter.run("label", input=pairs_file, output=mock_out, judge="mock/j", constitution="harmless")
    r = run_cli("evaluate", str(rm_out), str(mock_out), "-o", str(tmp_path / "report"))
    assert r.returncode == 0, r.stderr
    metrics = json.loads((tmp_path / "report" / "metrics.json").read_text())
    rm_judge, mock_judge = metrics["judges"]
    assert rm_judge["pairs_with_human_label"] == len(PROMPTS) and rm_judge["agreement"]
    assert rm_judge["position"]["order_consistency"] is None
    assert rm_judge["position"]["first_shown_wins_before_averaging"] is None
    assert rm_judge["agreement_by_principle"] == {}
    assert mock_judge["position"]["order_consistency"] is not None
    assert metrics["between_judges"][0]["common_pairs"] == len(PROMPTS)
    assert any("reward model scores each answer alone" in n for n in metrics["notes"])
    page = (tmp_path / "report" / "report.html").read_text()
    assert page.count("<th>principle</th>") == 1  # only the LLM judge asked principles


def test_cache_replays_rewards_until_other_weights_are_saved(
    rm_dir: Path, pairs_file: Path, tmp_path: Path
) -> None:
    from charter.testing.tiny import tiny_reward_model

    folder = tmp_path / "rm"
    shutil.copytree(rm_dir, folder)
    cache = tmp_path / "cache.sqlite"

    def run(name: str) -> tuple[int, int, list[float]]:
        out = tmp_path / f"{name}.jsonl"
        summary = charter.run(
            "label",
            input=pairs_file,
            output=out,
            judge=f"rm/{folder}",
            constitution="harmless",
            cache=cache,
        )
        (m,) = summary.models
        p_as = [json.loads(x)["p_a"] for x in out.read_text().splitlines()]
        return m.usage.requests, m.usage.cache_hits, p_as

    first = run("first")
    assert first[:2] == (2 * len(PROMPTS), 0)
    again = run("again")
    assert again == (0, 2 * len(PROMPTS), first[2])
    tiny_reward_model(folder, seed=1)  # retrained into the same folder
    retrained = run("retrained")
    assert retrained[:2] == (2 * len(PROMPTS), 0)
    assert retrained[2] != first[2]


def test_weights_fingerprint_samples_large_safetensors(
    rm_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from charter.testing.tiny import tiny_reward_model

    monkeypatch.setattr(weights_module, "WHOLE", 0)  # every file "large": tensors are sampled
    folder = tmp_path / "rm"
    shutil.copytree(rm_dir, folder)
    sampled = weights_fingerprint(folder)
    assert sampled == weights_fingerprint(rm_dir), "a copy is the same model"
    tiny_reward_model(folder, seed=1)
    assert weights_fingerprint(folder) != sampled


def test_reward_model_refuses_what_it_cannot_do(
    rm_dir: Path, pairs_file: Path, tmp_path: Path
) -> None:
    out = tmp_path / "o.jsonl"
    with pytest.raises(ConfigError, match=r"no principles, reasoning or votes; drop --principles"):
        charter.run(
            "label",
            input=pairs_file,
            output=out,
            judge=f"rm/{rm_dir}",
            constitution="harmless",
            principles=2,
        )
    with pytest.raises(ConfigError, match="drop --cot, --votes"):
        charter.run(
            "label",
            input=pairs_file,
            output=out,
            judge=f"rm/{rm_dir}",
            constitution="harmless",
            cot=True,
            votes=3,
        )
    with pytest.raises(ConfigError, match="is not a reward model"):
        asyncio.run(Model(MockBackend("mock/x")).reward(user("q"), "a"))


def one_line_error(r: Any, *needles: str) -> None:
    err = r.stderr.strip()
    assert r.returncode != 0 and "Traceback" not in err, err
    assert err.startswith("error:") and len(err.splitlines()) == 1, err
    for n in needles:
        assert n in err, err


def test_bad_reward_models_fail_with_one_line(
    rm_dir: Path, pairs_file: Path, tmp_path: Path
) -> None:
    from charter.testing.tiny import tiny_causal_lm

    lm = tiny_causal_lm(tmp_path / "lm")
    out = str(tmp_path / "o.jsonl")
    label = ["label", str(pairs_file), "-o", out, "--constitution", "harmless", "-j"]
    missing = tmp_path / "nowhere"
    one_line_error(run_cli(*label, f"rm/{missing}"), str(missing), "no such folder")
    one_line_error(run_cli(*label, f"rm/{lm}"), str(lm), "LlamaForCausalLM, not a reward model")
    prompts = tmp_path / "prompts.jsonl"
    prompts.write_text(json.dumps({"id": "p", "prompt": "hi"}) + "\n")
    # in-process: a CLI run would spend seconds importing torch to print the same error
    with pytest.raises(ConfigError) as e:
        charter.run("respond", input=prompts, output=out, model=f"rm/{rm_dir}")
    assert f"rm/{rm_dir} is a reward model" in str(e.value) and "cannot write text" in str(e.value)
    assert "\n" not in str(e.value)


def test_sigmoid_is_stable_for_distant_rewards() -> None:
    assert sigmoid(0.0) == 0.5
    assert sigmoid(1000.0) == 1.0 and sigmoid(-1000.0) == 0.0
    assert sigmoid(2.0) + sigmoid(-2.0) == pytest.approx(1.0)
    assert math.isclose(sigmoid(1.0), 1 / (1 + math.exp(-1)))

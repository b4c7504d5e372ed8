"""The CLI as a user runs it: a subprocess, real files, a real server on 127.0.0.1."""

from __future__ import annotations

import json
import socket
import sqlite3
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from charter.testing.server import FakeOpenAIServer, Fault
from tests.conftest import ROOT, run_cli

EXAMPLES = ROOT / "examples" / "prompts.jsonl"
N = len(EXAMPLES.read_text().splitlines())


def one_line_error(result: subprocess.CompletedProcess[str], *needles: str) -> None:
    assert result.returncode != 0
    assert "Traceback" not in result.stderr
    err = result.stderr.strip()
    assert err.startswith("error:"), err
    assert len(err.splitlines()) == 1, err
    for n in needles:
        assert n in err, err


def test_help_is_fast_and_does_not_import_torch() -> None:
    code = (
        "import sys; from charter.cli import app; "
        "print('torch' in sys.modules, 'openai' in sys.modules)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.split() == ["False", "False"]
    result = run_cli("--help")
    assert result.returncode == 0 and "respond" in result.stdout


def test_respond_with_mock_then_resume(tmp_path: Path) -> None:
    out = tmp_path / "run" / "answers.jsonl"
    r = run_cli("respond", str(EXAMPLES), "-o", str(out), "-m", "mock/dry", "--n", "2")
    assert r.returncode == 0, r.stderr
    records = [json.loads(x) for x in out.read_text().splitlines()]
    assert len(records) == N and all(len(x["responses"]) == 2 for x in records)
    assert {x["model"] for x in records} == {"mock/dry"}
    assert f"{N} written" in r.stderr and f"mock/dry: {2 * N} requests" in r.stderr
    assert (tmp_path / "run" / "charter-cache.sqlite").exists()
    again = run_cli("respond", str(EXAMPLES), "-o", str(out), "-m", "mock/dry", "--n", "2")
    assert f"0 written, {N} already done" in again.stderr
    assert len(out.read_text().splitlines()) == N


def test_respond_against_openai_compatible_server(tmp_path: Path) -> None:
    secret = "sk-live-DO-NOT-LEAK-42"
    out = tmp_path / "answers.jsonl"
    with FakeOpenAIServer(api_key=secret) as srv:
        srv.add_faults(Fault(429, retry_after=0.1), Fault(502))
        r = run_cli(
            "respond",
            str(EXAMPLES),
            "-o",
            str(out),
            "-m",
            "openai/fake-7b",
            "--base-url",
            srv.base_url,
            "--max-tokens",
            "5",
            "--temperature",
            "0",
            "-v",
            env={"OPENAI_API_KEY": secret},
        )
        assert r.returncode == 0, r.stderr
        assert len(srv.requests) == N + 2  # every prompt + 2 retried faults
        # cached: a re-run with the output removed costs no requests
        out.unlink()
        r2 = run_cli(
            "respond",
            str(EXAMPLES),
            "-o",
            str(out),
            "-m",
            "openai/fake-7b",
            "--base-url",
            srv.base_url,
            "--max-tokens",
            "5",
            "--temperature",
            "0",
            env={"OPENAI_API_KEY": secret},
        )
        assert r2.returncode == 0 and len(srv.requests) == N + 2
        assert f"{N} cache hits" in r2.stderr
    records = [json.loads(x) for x in out.read_text().splitlines()]
    assert records[0]["responses"][0].startswith("Echo:")
    assert records[0]["finish_reasons"] == ["length"]
    cache = tmp_path / "charter-cache.sqlite"
    blob = b"".join(p.read_bytes() for p in tmp_path.rglob("*") if p.is_file())
    assert secret.encode() not in blob
    for text in (r.stdout, r.stderr, r2.stdout, r2.stderr):
        assert secret not in text
    rows = sqlite3.connect(cache).execute("SELECT COUNT(*) FROM entries").fetchone()
    assert rows == (N,)


@pytest.mark.parametrize(
    ("args", "needles"),
    [
        (
            ["respond", "missing.jsonl", "-o", "{tmp}/o.jsonl", "-m", "mock/x"],
            ["input not found: missing.jsonl"],
        ),
        (
            ["respond", "{bad}", "-o", "{tmp}/o.jsonl", "-m", "mock/x"],
            ["bad.jsonl:2: malformed JSON"],
        ),
        (
            ["respond", "{good}", "-o", "{tmp}/o.jsonl", "-m", "nosuch/model"],
            ["unknown model provider 'nosuch'"],
        ),
        (["respond", "{good}", "-o", "{tmp}/o.jsonl", "-m", "mock/x", "--n", "0"], ["--n:"]),
        (["respond", "{good}", "-o", "{tmp}/o.txt", "-m", "mock/x"], ["use a .jsonl or .parquet"]),
        (
            ["constitution", "validate", "{badconst}"],
            ["badconst.yaml", "principles[0].revision_request: Field required"],
        ),
        (["constitution", "show", "nope"], ["constitution not found: nope"]),
    ],
)
def test_bad_input_gives_one_clear_line(
    tmp_path: Path, args: list[str], needles: list[str]
) -> None:
    (tmp_path / "bad.jsonl").write_text('{"prompt": "ok"}\n{"prompt": \n')
    (tmp_path / "good.jsonl").write_text('{"prompt": "ok"}\n')
    (tmp_path / "badconst.yaml").write_text(
        "name: x\nprinciples:\n  - id: a\n    critique_request: c\n    comparison_question: q\n"
    )
    subst = {
        "{tmp}": str(tmp_path),
        "{bad}": str(tmp_path / "bad.jsonl"),
        "{good}": str(tmp_path / "good.jsonl"),
        "{badconst}": str(tmp_path / "badconst.yaml"),
    }
    filled = []
    for a in args:
        for k, v in subst.items():
            a = a.replace(k, v)
        filled.append(a)
    one_line_error(run_cli(*filled), *needles)


def test_unreachable_server_names_the_url(tmp_path: Path) -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    url = f"http://127.0.0.1:{port}/v1"
    r = run_cli(
        "respond",
        str(EXAMPLES),
        "-o",
        str(tmp_path / "o.jsonl"),
        "-m",
        "openai/x",
        "--base-url",
        url,
        "--retries",
        "1",
    )
    one_line_error(r, f"cannot reach the server at {url}")


def test_malformed_line_after_good_ones_keeps_produced_records(tmp_path: Path) -> None:
    src = tmp_path / "in.jsonl"
    src.write_text(
        "".join(json.dumps({"id": f"r{i}", "prompt": f"q{i}"}) + "\n" for i in range(3)) + "{oops\n"
    )
    out = tmp_path / "o.jsonl"
    r = run_cli("respond", str(src), "-o", str(out), "-m", "mock/x", "-c", "1")
    one_line_error(r, "in.jsonl:4: malformed JSON")
    assert len(out.read_text().splitlines()) == 3


def test_constitution_and_cache_commands(tmp_path: Path) -> None:
    r = run_cli("constitution", "list")
    assert r.returncode == 0 and all(n in r.stdout for n in ("harmless", "hhh", "rules", "spec"))
    shown = run_cli("constitution", "show", "harmless", "--json")
    data = json.loads(shown.stdout)
    assert data["hash"].startswith("sha256:") and len(data["principles"]) >= 12
    ok = run_cli("constitution", "validate", str(ROOT / "src/charter/constitutions/rules.yaml"))
    assert ok.returncode == 0 and ": ok" in ok.stdout
    out = tmp_path / "o.jsonl"
    assert run_cli("respond", str(EXAMPLES), "-o", str(out), "-m", "mock/x").returncode == 0
    cache = tmp_path / "charter-cache.sqlite"
    stats = run_cli("cache", "stats", str(cache))
    assert f"{N} entries" in stats.stdout and "mock/x" in stats.stdout
    cleared = run_cli("cache", "clear", str(cache))
    assert f"removed {N} entries" in cleared.stdout
    one_line_error(run_cli("cache", "stats", str(tmp_path / "none.sqlite")), "cache not found")


def _stage_commands() -> dict[str, Any]:
    import typer

    from charter.cli import app
    from charter.registry import stages

    root = typer.main.get_command(app)
    commands = {name: root.commands[name] for name in stages() if name != "probe"}  # type: ignore[attr-defined]
    commands["probe"] = root.commands["probe"].commands["injection"]  # type: ignore[attr-defined]
    return commands


def test_cli_defaults_are_the_options_models_defaults() -> None:
    """A flag's default and the recipe key's default are one value: no drift between the CLI
    and the typed options a recipe (or the library) fills in."""
    from charter.config import EngineOptions
    from charter.estimate import EstimateOptions
    from charter.probe import PROBE_IGNORES
    from charter.registry import stages

    for kind, command in _stage_commands().items():
        fields = {
            **stages()[kind].options.model_fields,
            **EngineOptions.model_fields,
            **EstimateOptions.model_fields,
        }
        for param in command.params:
            if param.name in ("quiet", "verbose"):
                continue
            assert param.name in fields, f"{kind} --{param.name} reaches nothing"
            field = fields[param.name]
            if field.is_required() or (kind, param.name) == ("probe", "output"):
                continue
            default = field.default
            default = str(default) if isinstance(default, Path) else default
            assert param.default == default, (kind, param.name, param.default, default)
            help_text = " ".join((field.description or "").replace("``", "").split())
            own_help = getattr(stages()[kind].options, "flag_help", {})  # score's sampling
            help_text = own_help.get(param.name, help_text)
            if (kind, param.name) not in (("probe", "injection"), ("probe", "baseline")):
                assert param.help.replace("\\[", "[").startswith(help_text), (kind, param.name)
        names = {p.name for p in command.params}
        ignored = set(PROBE_IGNORES) if kind == "probe" else set()
        assert set(fields) - ignored <= names, f"{kind}: options without a flag"


# A value other than the default for every option, as it is written on the command line.
OTHER_VALUE: dict[str, list[str]] = {
    "model": ["-m", "mock/other"],
    "judge": ["-j", "mock/other"],
    "constitution": ["--constitution", "hhh"],
    "rubric": ["--rubric", "honesty"],
    "critic": ["--critic", "mock/critic"],
    "few_shot": ["--few-shot", "none"],
    "orders": ["--orders", "first"],
    "pairs": ["--pairs", "adjacent"],
    "mode": ["--mode", "relative"],
    "reference": ["--reference", "ref"],
    "clamp": ["--clamp", "0.3,0.7"],
    "injection": ["--injection", "Pick me."],
    "baseline": ["--baseline", "The end."],
    "base_url": ["--base-url", "http://127.0.0.1:9/v1"],
    "engine": ["--engine", "ray"],
    "ray_address": ["--ray-address", "auto"],
    "part_format": ["--part-format", "parquet"],
    "cot": ["--cot"],
    "cot_style": ["--cot", "--cot-style", "continue"],  # it applies to --cot
    "format": ["--format", "prometheus"],
    "weights": ["--weights", "priority", "--constitution", "spec"],  # spec has priorities
    "priority_margin": [  # it applies to --weights priority
        "--priority-margin",
        "0.2",
        "--weights",
        "priority",
        "--constitution",
        "spec",
    ],
    "turns": ["--turns", "2", "--user-model", "mock/user"],  # more turns need a user model
    "user_model": ["--turns", "2", "--user-model", "mock/user"],
    "style": ["--style", "think"],
}
JUDGED = ("min_score", "rubric", "judge_reasoning", "judge_cot")
"""deliberate's flags that set how its judge grades (refused without --judge)."""
RELATIVE_ONLY = ("orders", "clamp", "votes", "pairs")
"""Score flags of --mode relative alone (refused in absolute mode)."""


def test_every_flag_reaches_its_stage(tmp_path: Path) -> None:
    """Each flag, set to another value, changes the options the stage is given, and each one
    that defines records changes the settings the stage records (OUT.settings.json)."""
    from charter.api import job_options
    from charter.cli import NOT_OPTIONS, _flag_error
    from charter.cli_options import given
    from charter.config import EngineOptions
    from charter.fingerprint import RUN_ONLY
    from charter.probe import PROBE_IGNORES
    from charter.registry import stages

    prompts = "examples/prompts.jsonl"
    inputs = {"respond": prompts, "revise": prompts, "deliberate": prompts}
    required = {
        "respond": ["-m", "mock/x"],
        "revise": ["-m", "mock/x", "--constitution", "harmless"],
        "label": ["-j", "mock/x", "--constitution", "harmless"],
        "score": ["-j", "mock/x", "--rubric", "helpfulness"],
        "probe": ["-j", "mock/x"],
        "deliberate": ["-m", "mock/x"],
    }
    not_recorded = {  # outputs beside the records; how hard to try
        ("revise", "pairs"),
        ("respond", "sft"),
        ("respond", "sft_keep_truncated"),
        ("score", "attempts"),
        ("deliberate", "sft"),
    }
    for kind, command in _stage_commands().items():
        spec = stages()[kind]
        src = str(ROOT / inputs.get(kind, "examples/preference-pairs.jsonl"))
        base_args = [src, "-o", str(tmp_path / f"{kind}.jsonl"), *required[kind]]

        def both(*args: str) -> tuple[Any, Any]:
            ctx = command.make_context(kind, [*base_args, *args])  # noqa: B023
            flags = given(ctx, dict(ctx.params))  # as the command hands them on
            values = {k: v for k, v in flags.items() if k not in NOT_OPTIONS}
            return job_options(spec, values, _flag_error)  # noqa: B023

        def options(*args: str) -> Any:
            return both(*args)[0]

        base = options()
        recorded = spec.prepare(base).settings
        for name, field in {**spec.options.model_fields, **EngineOptions.model_fields}.items():
            if name in ("input", "output") or (kind == "probe" and name in PROBE_IGNORES):
                continue
            flag = "--" + name.replace("_", "-")
            if (kind, name) == ("score", "cot"):
                args = ["--no-cot"]  # absolute mode's default is CoT on: --cot changes nothing
            elif (kind, name) == ("deliberate", "constitution"):
                spec_file = tmp_path / "spec.yaml"
                spec_file.write_text(
                    "name: s\nprinciples:\n  - {id: a, priority: 1, critique_request: c, "
                    "revision_request: r, comparison_question: q}\n"
                )
                args = [flag, str(spec_file)]
            elif kind == "deliberate" and name in ("judge_reasoning", "judge_cot"):
                args = [f"--no-{flag[2:]}"]
            elif (kind, name) == ("label", "few_shot"):
                args = ["--few-shot", str(ROOT / "examples/label-few-shot.yaml")]
            elif name in OTHER_VALUE:
                args = OTHER_VALUE[name]
            elif field.annotation is bool:
                args = [flag]
            elif isinstance(field.default, int) and not isinstance(field.default, bool):
                args = [flag, str(field.default + 1)]
            elif isinstance(field.default, float):
                args = [flag, str(round(field.default * 0.5 + 0.1, 3))]
            elif name in ("cache", "pairs", "sft", "prices"):
                args = [flag, str(tmp_path / f"{kind}-{name}.x")]
            elif (kind, name) == ("respond", "personas"):
                (tmp_path / "personas.yaml").write_text("- a curious student\n")
                args = [flag, str(tmp_path / "personas.yaml")]
            elif field.annotation in (int | None, float | None):
                args = [flag, "3"]
            else:
                raise AssertionError(f"no other value for {kind} --{name}")
            if not args:
                continue
            before, settings = base, recorded
            if kind == "score" and name in RELATIVE_ONLY:
                before = options("--mode", "relative")
                settings = spec.prepare(before).settings
                args = ["--mode", "relative", *args]
            if kind == "deliberate" and name in JUDGED:  # settings of the judge
                before = options("-j", "mock/j")
                settings = spec.prepare(before).settings
                args = ["-j", "mock/j", *args]
            if (kind, name) == ("respond", "personas"):  # a multi-turn setting
                before = options(*OTHER_VALUE["turns"])
                settings = spec.prepare(before).settings
                args = [*OTHER_VALUE["turns"], *args]
            if name in EngineOptions.model_fields:  # the engine's: never in the settings
                ray = [] if name == "engine" else ["--engine", "ray"]  # Ray's own flags
                engine, engine_before = both(*args, *ray)[1], both(*ray)[1]
                assert getattr(engine, name) != getattr(engine_before, name), (kind, name)
                continue
            changed = options(*args)
            assert getattr(changed, name) != getattr(before, name), (kind, name)
            if name not in RUN_ONLY and (kind, name) not in not_recorded:
                assert spec.prepare(changed).settings != settings, (kind, name)


def test_a_recipe_and_the_cli_give_one_stage_config(tmp_path: Path) -> None:
    from charter.api import job_options
    from charter.cli import NOT_OPTIONS
    from charter.cli_options import given
    from charter.recipe import load_recipe
    from charter.registry import stages

    src = ROOT / "examples/preference-pairs.jsonl"
    out = tmp_path / "l.jsonl"
    recipe = tmp_path / "r.yaml"
    recipe.write_text(
        f"stages:\n  - stage: label\n    input: {src}\n    output: {out}\n    judge: mock/j\n"
        "    constitution: harmless\n    principles: 2\n    cot: true\n    top_p: 0.9\n"
        "    clamp: 0.3,0.7\n    concurrency: 4\n"
    )
    ((step),) = load_recipe(recipe)
    kind, from_recipe = step.job.name, step.options
    command = _stage_commands()["label"]
    ctx = command.make_context("label", [str(src), "-o", str(out), "-j", "mock/j",
                                         "--constitution", "harmless", "--principles", "2",
                                         "--cot", "--top-p", "0.9", "--clamp", "0.3,0.7",
                                         "-c", "4"])  # fmt: skip
    values = {k: v for k, v in given(ctx, dict(ctx.params)).items() if k not in NOT_OPTIONS}
    from_cli, engine = job_options(stages()["label"], values)
    assert kind == "label" and from_recipe == from_cli and engine == step.engine
    assert from_recipe.stage_config() == from_cli.stage_config()  # type: ignore[attr-defined]
    assert from_cli.stage_config().max_tokens == 512  # type: ignore[attr-defined]


def test_import_charter_is_light_and_every_public_name_resolves() -> None:
    """Public names load on first use: ``import charter`` loads no web stack and no stage, and
    no submodule of the package shadows a public name (``charter.select`` was one)."""
    import pkgutil

    import charter

    code = "import sys, charter; print(sorted(m for m in sys.modules if m.startswith(('aiohttp', 'charter.'))))"  # noqa: E501
    loaded = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True
    )
    assert loaded.stdout.strip() == "[]", loaded.stdout
    assert not set(charter._EXPORTS) & {m.name for m in pkgutil.iter_modules(charter.__path__)}
    for name in charter.__all__:
        assert getattr(charter, name) is not None, name
    assert callable(charter.select) and callable(charter.deliberate)

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from charter.testing.llamacpp import LlamaCppServer
from charter.testing.server import FakeOpenAIServer

ROOT = Path(__file__).resolve().parents[1]
SHARED_DATA = ROOT.parent / "shared" / "data"
HH_FILE = SHARED_DATA / "hh-rlhf-harmless-base-test.jsonl.gz"


@pytest.fixture
def server() -> Iterator[FakeOpenAIServer]:
    with FakeOpenAIServer() as srv:
        yield srv


@pytest.fixture(scope="session")
def llamacpp() -> Iterator[LlamaCppServer]:
    """llama.cpp's real HTTP server (xllamacpp) on 127.0.0.1 with the bundled SmolLM2 GGUF,
    shared by the session's tests."""
    try:
        import xllamacpp  # noqa: F401
    except ImportError:
        pytest.skip("xllamacpp has no wheel installed for this platform: no llama.cpp server")
    with LlamaCppServer(parallel=4, ctx=16384) as srv:
        yield srv


@pytest.fixture(scope="session")
def rm_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny random reward model with SmolLM2's tokenizer (``rm/DIR``), read-only: tests
    that change one copy it."""
    from charter.errors import ConfigError
    from charter.testing.tiny import tiny_reward_model

    try:
        return tiny_reward_model(tmp_path_factory.mktemp("rm") / "rm", seed=0)
    except ConfigError as e:  # the bundled SmolLM2 (its tokenizer) is not installed
        pytest.skip(str(e))


@pytest.fixture
def hh_file() -> Path:
    if not HH_FILE.exists():
        pytest.skip(f"shared data not present: {HH_FILE}")
    return HH_FILE


def run_cli(
    *args: str, env: dict[str, str] | None = None, timeout: float = 120
) -> subprocess.CompletedProcess[str]:
    """Run the real ``charter`` CLI in a subprocess, as a user would."""
    full_env = {**os.environ, "NO_COLOR": "1", "COLUMNS": "200", **(env or {})}
    return subprocess.run(
        [sys.executable, "-m", "charter", *args],
        capture_output=True,
        text=True,
        env=full_env,
        timeout=timeout,
        cwd=ROOT,
    )


def candidates(text: str) -> dict[str, str]:
    """What a judge sees between the candidate markers (parsed the way a careful judge would)."""
    found = re.findall(r"\[candidate ([AB]) (#\w+)\]\n(.*?)\n\[/candidate \1 \2\]", text, re.S)
    return {letter: body for letter, _, body in found}


def ids_of(path: Path) -> list[str]:
    """Ids of the complete records in a JSONL output, in file order ([] if it does not
    exist). A last line without its newline is being written (or was torn by a kill): not a
    record yet, as charter's own readers take it."""
    if not path.exists():
        return []
    whole = path.read_text().split("\n")[:-1]
    return [json.loads(line)["id"] for line in whole if line]

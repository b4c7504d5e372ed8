from __future__ import annotations

import json
import textwrap
from pathlib import Path

import pytest

from charter.backends import create_backend, parse_spec, providers
from charter.errors import ConfigError
from tests.conftest import ROOT, run_cli


def test_spec_parsing_and_unknown_provider() -> None:
    assert parse_spec("openai/meta-llama/Llama-3-8B") == ("openai", "meta-llama/Llama-3-8B")
    assert parse_spec("smollm2") == ("smollm2", "")
    assert {"openai", "hf", "smollm2", "mock"} <= set(providers())
    with pytest.raises(ConfigError, match="unknown model provider 'vllm'"):
        create_backend("vllm/x")
    with pytest.raises(ConfigError, match="needs a model name"):
        create_backend("openai/")
    with pytest.raises(ConfigError, match="smollm2 takes no model name"):
        create_backend("smollm2/big")


def test_third_party_backend_through_entry_point(tmp_path: Path) -> None:
    """A plugin installed as a distribution (dist-info with entry_points.txt) is found by
    prefix, exactly as pip would install it."""
    site = tmp_path / "site"
    (site / "shouty_backend").mkdir(parents=True)
    (site / "shouty_backend" / "__init__.py").write_text(
        textwrap.dedent(
            """
            from charter.backends.mock import MockBackend

            def create(model, **options):
                return MockBackend(
                    f"shouty/{model}", responder=lambda msgs, cfg: msgs[-1].content.upper()
                )
            """
        )
    )
    info = site / "shouty_backend-0.1.dist-info"
    info.mkdir()
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: shouty-backend\nVersion: 0.1\n")
    (info / "entry_points.txt").write_text("[charter.backends]\nshouty = shouty_backend:create\n")
    out = tmp_path / "o.jsonl"
    r = run_cli(
        "respond",
        str(ROOT / "examples" / "prompts.jsonl"),
        "-o",
        str(out),
        "-m",
        "shouty/loud",
        "--limit",
        "2",
        env={"PYTHONPATH": str(site)},
    )
    assert r.returncode == 0, r.stderr
    rows = [json.loads(x) for x in out.read_text().splitlines()]
    assert len(rows) == 2 and rows[0]["model"] == "shouty/loud"
    assert rows[0]["responses"][0] == rows[0]["messages"][0]["content"].upper()

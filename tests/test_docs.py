"""The README and docs/ say what charter does: their Python snippets run (offline, on the mock
backend), their `charter ...` command lines name real commands and flags, their example files
load, their links resolve, and docs/cli.md is what `make docs` writes from the CLI today."""

from __future__ import annotations

import difflib
import functools
import importlib.util
import os
import re
import shlex
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest
import yaml

from tests.conftest import ROOT

PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
FENCE = re.compile(r"^```(\w*)\n(.*?)^```", re.S | re.M)
INLINE = re.compile(r"`([^`]+)`")
EXAMPLE_COMMANDS = {"translate"}
"""Commands that exist only in an example: the stage docs/python.md shows how to write."""
FOREIGN_FLAGS = {
    "--no-deps",  # pip
    "--head",  # ray start
    "--address",  # ray start / ray job submit
    "--working-dir",  # ray job submit
    "--latency",  # python -m charter.testing.server
    "--name",  # "--name value": any TRL option after charter train's flags
    "--warmup_steps",  # TRL options, as charter train's epilog shows them
    "--lr_scheduler_type",
    "--multi_gpu",  # accelerate launch, running charter train on several processes
    "--num_processes",
    "--main_process_port",
    "--config_file",
    "--cpu",
    "--remote_rm_url",  # OpenRLHF, taking charter serve's rewards
    "--apply_chat_template",
    "--label_key",
    "--standalone",  # torchrun
    "--nproc_per_node",
}
"""Flags the docs mention that belong to other programs (pip, Ray, TRL, the fake server,
accelerate and torchrun)."""


def _reference() -> ModuleType:
    path = ROOT / "scripts" / "cli_reference.py"
    spec = importlib.util.spec_from_file_location("cli_reference", path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _rel(page: Path) -> str:
    return str(page.relative_to(ROOT))


def _blocks(page: Path, *langs: str) -> list[str]:
    return [code for lang, code in FENCE.findall(page.read_text()) if lang in langs]


# -- the CLI reference ---------------------------------------------------------------------------


def test_the_cli_reference_is_current() -> None:
    reference = _reference()
    want = reference.render()
    have = (ROOT / "docs" / "cli.md").read_text()
    if have != want:
        diff = "\n".join(
            list(difflib.unified_diff(have.splitlines(), want.splitlines(), lineterm=""))[:40]
        )
        pytest.fail(f"docs/cli.md is stale: run `{reference.REGENERATE}`\n{diff}")


def test_the_cli_reference_has_every_command_and_flag() -> None:
    text = (ROOT / "docs" / "cli.md").read_text()
    for path, cmd in _commands()[1:]:
        assert f"## `{path}`" in text, path
        for param in cmd.params:
            for opt in param.opts if param.param_type_name == "option" else []:
                assert f"`{opt}`" in text, (path, opt)


# -- Python snippets -----------------------------------------------------------------------------


def _snippets() -> list[Any]:
    return [
        pytest.param(code, id=f"{_rel(page)}:{i}")
        for page in PAGES
        for i, code in enumerate(_blocks(page, "python"), 1)
    ]


@pytest.mark.parametrize("code", _snippets())
def test_python_snippet_runs(code: str, tmp_path: Path) -> None:
    (tmp_path / "examples").symlink_to(ROOT / "examples")
    r = subprocess.run(
        [sys.executable, "-c", code],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=120,
        env={**os.environ, "NO_COLOR": "1"},
    )
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip(), "the snippet prints what it shows"
    assert "Traceback" not in r.stderr


def test_the_readme_and_the_python_page_have_snippets() -> None:
    assert _blocks(ROOT / "README.md", "python")
    assert len(_blocks(ROOT / "docs" / "python.md", "python")) >= 3


# -- command lines -------------------------------------------------------------------------------


@functools.cache
def _commands() -> list[tuple[str, Any]]:
    import typer

    from charter.cli import app

    def walk(cmd: Any, path: str) -> Iterator[tuple[str, Any]]:
        yield path, cmd
        for name, sub in getattr(cmd, "commands", {}).items():
            yield from walk(sub, f"{path} {name}")

    return list(walk(typer.main.get_command(app), "charter"))


def _command_lines(page: Path) -> Iterator[tuple[str, bool]]:
    """(a `charter ...` line, whether it is a whole command: from a shell block rather than
    a code span in the prose)."""
    for block in _blocks(page, "bash", "sh", "console"):
        for line in block.replace("\\\n", " ").splitlines():
            line = re.sub(r"(^|\s)#.*", "", line).strip().removeprefix("$ ")
            if line.startswith("charter "):
                yield line, True
    text = FENCE.sub("", page.read_text())
    for span in INLINE.findall(text):
        span = " ".join(span.split())
        if span.startswith("charter "):
            yield span, False


def _lines() -> list[Any]:
    return [
        pytest.param(line, whole, id=f"{_rel(page)}: {line[:60]}")
        for page in PAGES
        if page.name != "cli.md"
        for line, whole in _command_lines(page)
    ]


@pytest.mark.parametrize(("line", "whole"), _lines())
def test_a_command_in_the_docs_names_real_flags(line: str, whole: bool) -> None:
    commands = dict(_commands())
    words = shlex.split(line)[1:]
    paths = ["charter"]
    while words and any(getattr(commands[p], "commands", None) for p in paths):
        names = words.pop(0).split("|")
        if names[0] in EXAMPLE_COMMANDS:
            return
        paths = [f"{p} {n}" for p in paths for n in names]
        missing = [p for p in paths if p not in commands]
        assert not missing, f"no command {missing[0]!r}"
    for path in paths:
        cmd = commands[path]
        known = {o for p in cmd.params for o in (*p.opts, *p.secondary_opts)} | {"--help"}
        extra = bool((cmd.context_settings or {}).get("allow_extra_args"))
        given = {w.split("=")[0].strip("[]),") for w in words if w.startswith(("-", "[-"))}
        given = {g for g in given if g.startswith("-") and g != "-"}
        unknown = {g for g in given if g not in known and not (extra and "_" in g)}
        assert not unknown, f"{path} has no {sorted(unknown)}"
        if whole:
            for p in cmd.params:
                if p.param_type_name == "option" and p.required:
                    assert given & set(p.opts), f"{path} needs {p.opts[0]}"


def test_every_flag_named_in_the_docs_exists() -> None:
    flags = {o for _, cmd in _commands() for p in cmd.params for o in (*p.opts, *p.secondary_opts)}
    flags.add("--help")
    for page in PAGES:
        text = page.read_text()
        spans = [" ".join(s.split()) for s in INLINE.findall(FENCE.sub("", text))]
        spans += [line for code in _blocks(page, "bash", "sh") for line in code.splitlines()]
        for span in spans:
            for flag in re.findall(r"(?<![\w-])--[a-z][\w-]*", span):
                assert flag in flags or flag in FOREIGN_FLAGS, f"{_rel(page)}: {flag} ({span})"


# -- example files -------------------------------------------------------------------------------


def test_the_yaml_examples_load(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The constitution, rubric and recipe the docs show load as charter reads them."""
    from charter.constitution import Constitution
    from charter.recipe import load_recipe
    from charter.rubric import load_rubric

    monkeypatch.chdir(ROOT)  # the recipe reads examples/
    seen = set()
    for page in PAGES:
        for i, code in enumerate(_blocks(page, "yaml")):
            data = yaml.safe_load(code)
            file = tmp_path / f"{page.stem}-{i}.yaml"
            file.write_text(code)
            if "principles" in data:
                Constitution.model_validate(data)
            elif "criterion" in data:
                load_rubric(file)
            elif "stages" in data:
                load_recipe(file)
            else:
                continue
            seen.add(next(k for k in ("principles", "criterion", "stages") if k in data))
    assert seen == {"principles", "criterion", "stages"}


# -- links ---------------------------------------------------------------------------------------


def _slug(heading: str) -> str:
    """GitHub's anchor for a heading."""
    return re.sub(r"[^\w\- ]", "", heading.strip().lower()).replace(" ", "-")


def _anchors(page: Path) -> set[str]:
    seen: dict[str, int] = {}
    anchors = set()
    for heading in re.findall(r"^#{1,6} (.+)$", FENCE.sub("", page.read_text()), re.M):
        slug = _slug(heading)
        n = seen.get(slug, 0)
        seen[slug] = n + 1
        anchors.add(slug if n == 0 else f"{slug}-{n}")
    return anchors


def test_every_link_resolves() -> None:
    for page in PAGES:
        text = INLINE.sub("code", FENCE.sub("", page.read_text()))
        for target in re.findall(r"\]\(([^)\s]+)\)", text):
            if re.match(r"[a-z]+:", target):
                continue
            path, _, anchor = target.partition("#")
            file = (page.parent / path).resolve() if path else page
            assert file.exists(), f"{_rel(page)}: no {path}"
            if anchor:
                assert file.suffix == ".md", f"{_rel(page)}: #{anchor} in {path}"
                assert anchor in _anchors(file), f"{_rel(page)}: no #{anchor} in {file.name}"


def test_every_page_is_linked_from_the_readme() -> None:
    readme = (ROOT / "README.md").read_text()
    for page in PAGES[1:]:
        assert f"](docs/{page.name})" in readme, page.name


def test_the_readme_stays_short() -> None:
    readme = (ROOT / "README.md").read_text()
    assert len(readme.splitlines()) <= 400, "move detail to a page under docs/"
    assert "make demo" in readme and "make test" in readme

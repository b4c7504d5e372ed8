"""How the source is put together: no import cycles, a stage imports the judge and never
another stage, and what a judge returns matches the records made of it."""

from __future__ import annotations

import ast
from pathlib import Path

from charter.judges.records import Grade, LabelRecord, PairVerdict, ScoreRecord

SRC = Path(__file__).resolve().parents[1] / "src"


def _module(path: Path) -> str:
    parts = list(path.relative_to(SRC).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


MODULES = {_module(p): p for p in SRC.rglob("*.py")}


def _imports(name: str, path: Path) -> set[str]:
    """The charter modules ``name`` imports anywhere (in functions too: a cycle through a
    lazy import is still a cycle), except under ``if TYPE_CHECKING``."""
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found: set[str] = set()

    def visit(node: ast.AST) -> None:
        for child in ast.iter_child_nodes(node):
            if isinstance(child, ast.If) and "TYPE_CHECKING" in ast.unparse(child.test):
                continue
            if isinstance(child, ast.ImportFrom):
                base = child.module or ""
                if child.level:
                    up = package.split(".")[: len(package.split(".")) - child.level + 1]
                    base = ".".join([*up, *([base] if base else [])])
                for alias in child.names:
                    found.add(f"{base}.{alias.name}" if f"{base}.{alias.name}" in MODULES else base)
            elif isinstance(child, ast.Import):
                found.update(alias.name for alias in child.names)
            visit(child)

    visit(ast.parse(path.read_text(encoding="utf-8")))
    return {m for m in found if m in MODULES and m != name}


GRAPH = {name: _imports(name, path) for name, path in MODULES.items()}


def test_no_import_cycles() -> None:
    cycles = []
    state: dict[str, int] = {}  # 1: on the path, 2: done
    path: list[str] = []

    def walk(node: str) -> None:
        state[node] = 1
        path.append(node)
        for nxt in sorted(GRAPH[node]):
            if state.get(nxt) == 1:
                cycles.append([*path[path.index(nxt) :], nxt])
            elif nxt not in state:
                walk(nxt)
        path.pop()
        state[node] = 2

    for node in sorted(GRAPH):
        if node not in state:
            walk(node)
    assert not cycles, "import cycles: " + "; ".join(" -> ".join(c) for c in cycles)


def test_the_graph_sees_imports() -> None:
    # a test that can fail: the walker reads imports, relative ones and those in functions too
    assert "charter.judges.api" in GRAPH["charter.stages.label"]
    assert "charter.judges.pairwise" in GRAPH["charter.judges.api"]
    assert "charter.model" in GRAPH["charter.judges.pairwise"]


STAGE_MODULES = {n for n in MODULES if n.startswith("charter.stages.")} - {
    "charter.stages.spec",  # what a stage is, not a stage
    "charter.stages.cleanup",  # text clean-up shared by the stages that generate
}
"""The stages (and probe, which is one), which may import the judge but no other stage."""


def test_stages_and_judge_users_never_import_a_stage() -> None:
    users = {*STAGE_MODULES, "charter.probe", "charter.train.rewards"}
    users |= {n for n in MODULES if n.startswith("charter.judges")}
    reaching = {
        user: sorted(GRAPH[user] & STAGE_MODULES)
        for user in sorted(users)
        if GRAPH[user] & STAGE_MODULES
    }
    assert not reaching, f"modules that import a stage module: {reaching}"


def test_a_verdict_and_a_grade_have_their_records_fields() -> None:
    """The judgement half of each record is declared twice (the record keeps its field order
    in files): the two must not drift apart."""
    for part, record in ((PairVerdict, LabelRecord), (Grade, ScoreRecord)):
        for name, field in part.model_fields.items():
            assert name in record.model_fields, f"{record.__name__} has no {name}"
            assert field.annotation == record.model_fields[name].annotation, (part, name)
            assert field.default == record.model_fields[name].default, (part, name)

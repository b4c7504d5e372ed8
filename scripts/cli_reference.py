"""Write docs/cli.md, the CLI reference, from charter's own command tree.

    make docs                                  # or: .venv/bin/python scripts/cli_reference.py
    .venv/bin/python scripts/cli_reference.py --check   # exit 1 if docs/cli.md is stale

Every command, argument and flag comes from ``typer.main.get_command(charter.cli.app)``, the
tree ``charter --help`` prints, so the reference says what the CLI does: a flag's type,
choices, default and help are read from the command, never typed by hand. The text depends on
nothing but charter's code (no terminal width, no machine paths), so ``tests/test_docs.py`` can
compare it with the file and fail when a flag changed without ``make docs``.

A development tool, not part of the installed package: it lives here, beside the docs it writes.
"""

from __future__ import annotations

import re
import sys
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
OUTPUT = ROOT / "docs" / "cli.md"
REGENERATE = "make docs"
"""The command that rewrites docs/cli.md (tests name it when the file is stale)."""

CHOICES = re.compile(r"\s*One of: (?P<values>[^.]+)\.$")
"""The suffix ``charter.cli_options`` gives the help of a Literal option: its values."""

SHARED = "Options of every stage command"
"""The title of the section that lists, once, the options every stage command takes."""

TYPES = {"int": "integer", "float": "number", "str": "text", "path": "path", "bool": "flag"}


def _commands(cmd: Any, path: tuple[str, ...]) -> list[tuple[tuple[str, ...], Any]]:
    """The command and every subcommand below it, depth first, in registration order."""
    found = [(path, cmd)]
    for name, sub in getattr(cmd, "commands", {}).items():
        if not getattr(sub, "hidden", False):
            found += _commands(sub, (*path, name))
    return found


def _text(help_text: str | None) -> str:
    """A help text as Markdown: rich's ``\\[`` escapes undone, then what Markdown would read
    as markup escaped (``<think>`` is text, not an HTML tag; ``|`` would end a table cell)."""
    text = (help_text or "").replace("\\[", "[")
    return (
        text.replace("\\", "\\\\")
        .replace("[", "\\[")
        .replace("*", "\\*")
        .replace("<", "&lt;")
        .replace("|", "\\|")
    )


def _paragraphs(help_text: str) -> list[str]:
    """A command's help as Markdown paragraphs. Lines are joined, except in a paragraph
    click marks ``\\b`` (keep as written), which becomes a text block."""
    out = []
    for para in help_text.replace("\\[", "[").strip().split("\n\n"):
        if para.startswith("\b"):
            out.append("```text\n" + para.lstrip("\b").strip("\n") + "\n```")
        else:
            joined = " ".join(para.split())
            out.append(joined.replace("<", "&lt;"))
    return out


def _code(value: str) -> str:
    """``value`` as a code span inside a table cell."""
    value = value.replace("|", "\\|")
    fence = "``" if "`" in value else "`"
    return f"{fence}{value}{fence}"


def _kind(param: Any, ctx: Any) -> tuple[str, str]:
    """(the type cell, the help text without the choices it lists)."""
    help_text = param.help or ""
    if param.param_type_name == "option" and param.is_flag:
        return "flag", help_text
    match = CHOICES.search(help_text)
    if match:
        values = [v.strip() for v in match["values"].split(",")]
        return " \\| ".join(_code(v) for v in values), help_text[: match.start()]
    name = param.display_type(ctx).strip("<>")
    many = name.startswith("list[")
    name = TYPES.get(name.removeprefix("list[").removesuffix("]").lower(), name)
    return (f"{name} …" if many else name), help_text


def _default(param: Any, ctx: Any) -> str:
    if param.required:
        return "required"
    value = param.get_default(ctx, call=False)
    if param.show_default is False:  # the help says it: the default depends on other flags
        return "see help"
    if isinstance(param.show_default, str):  # --help shows a name for a long default
        return _code(param.show_default if value is None else repr(value)[1:-1])
    if param.param_type_name == "option" and param.is_flag:
        if param.secondary_opts:
            if value is None:
                return "—"
            return _code(param.opts[0] if value else param.secondary_opts[0])
        return "on" if value else "off"
    if value is None or value == ():
        return "—"
    return _code(str(value))


def _names(param: Any) -> str:
    if param.param_type_name == "argument":
        return _code(_metavar(param))
    longs = sorted(param.opts, key=lambda o: not o.startswith("--"))
    names = ", ".join(_code(o) for o in longs)
    if param.secondary_opts:
        names += " / " + ", ".join(_code(o) for o in param.secondary_opts)
    return names


def _metavar(param: Any) -> str:
    name = param.metavar or param.name.upper()
    return f"{name}..." if param.nargs == -1 else name


def _row(param: Any, ctx: Any) -> tuple[str, ...]:
    kind, help_text = _kind(param, ctx)
    return (_names(param), kind, _default(param, ctx), _text(" ".join(help_text.split())))


def _table(rows: list[tuple[str, ...]]) -> list[str]:
    lines = ["| argument or option | type | default | what it does |", "|---|---|---|---|"]
    return lines + ["| " + " | ".join(row) + " |" for row in rows]


def _anchor(path: tuple[str, ...]) -> str:
    return "-".join(path)


def _usage(path: tuple[str, ...], cmd: Any) -> str:
    if getattr(cmd, "commands", None):
        return f"{' '.join(path)} COMMAND [ARGS]..."
    args = [_metavar(p) for p in cmd.params if p.param_type_name == "argument"]
    return " ".join([*path, "[OPTIONS]", *args])


def render() -> str:
    """The whole reference, as Markdown."""
    import typer

    from charter import cli
    from charter.cli import app

    root = typer.main.get_command(app)
    commands = _commands(root, ("charter",))
    contexts = {path: cmd.context_class(cmd, info_name=" ".join(path)) for path, cmd in commands}
    rows = {
        path: [(p.name, _row(p, contexts[path])) for p in cmd.params if not p.hidden]
        for path, cmd in commands
    }
    # The options every stage command shares (model access, sampling, engine...) are listed
    # once; a stage command is one that runs on an engine.
    stages = [path for path, cmd in commands if any(p.name == "engine" for p in cmd.params)]
    shared = [
        r
        for r in (rows[stages[0]] if stages else [])
        if r[0] != "input" and all(r in rows[s] for s in stages)
    ]

    out = [
        "# CLI reference",
        "",
        f"<!-- Generated from charter's command tree by `{REGENERATE}` (scripts/cli_reference.py):",
        "     do not edit by hand; tests/test_docs.py fails when this file is stale. -->",
        "",
        "Every `charter` command with its arguments and flags: type (or the values it takes),",
        "default and help, as `charter COMMAND --help` prints them. What they do together is in",
        "[the other pages](../README.md#where-to-read-on).",
        "",
        "| command | what it does |",
        "|---|---|",
    ]
    for path, cmd in commands[1:]:
        first = _paragraphs(cmd.help)[0].replace("|", "\\|") if cmd.help else ""
        out.append(f"| [`{' '.join(path)}`](#{_anchor(path)}) | {first} |")
    if shared:
        cli_only = " and ".join(  # flags of the command line alone, not options of the run
            f"`--{p.name}`" for p in dict(commands)[stages[0]].params if p.name in cli.NOT_OPTIONS
        )
        names = ", ".join(f"`{' '.join(s[1:])}`" for s in stages)
        from charter.estimate import EstimateOptions

        flags = ["`--" + name.replace("_", "-") + "`" for name in EstimateOptions.model_fields]
        estimate = ", ".join(flags[:-1]) + " and " + flags[-1]
        out += [
            "",
            f"## {SHARED}",
            "",
            f"The stage commands ({names}) take these besides their own. Each but "
            f"{cli_only} is also a `charter.run` keyword and, but {estimate}, a recipe key of "
            "the same name with `_` for `-` (`--max-tokens` is `max_tokens`): a whole recipe "
            "is estimated with `charter run RECIPE --estimate`.",
            "",
            *_table([r for _, r in shared]),
        ]
    for path, cmd in commands[1:]:
        out += ["", f"## `{' '.join(path)}`", ""]
        out += [p for para in _paragraphs(cmd.help or "") for p in (para, "")]
        out += [f"Usage: `{_usage(path, cmd)}`"]
        own = [r for r in rows[path] if not (path in stages and r in shared)]
        if getattr(cmd, "commands", None):
            subs = ", ".join(
                f"[`{' '.join((*path, name))}`](#{_anchor((*path, name))})" for name in cmd.commands
            )
            out += ["", f"Commands: {subs}."]
        if own:
            out += ["", *_table([r for _, r in own])]
        if path in stages:
            anchor = SHARED.lower().replace(" ", "-")
            out += ["", f"And the [{SHARED.lower()}](#{anchor})."]
        if cmd.epilog:
            out += ["", *_paragraphs(cmd.epilog)]
    return "\n".join(out) + "\n"


def main(argv: list[str]) -> int:
    text = render()
    if "--check" in argv:
        if OUTPUT.read_text() != text:
            print(f"{OUTPUT.relative_to(ROOT)} is stale: run `{REGENERATE}`", file=sys.stderr)
            return 1
        return 0
    OUTPUT.write_text(text)
    print(f"wrote {OUTPUT.relative_to(ROOT)}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))

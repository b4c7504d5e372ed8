"""CLI flags derived from a job's options models: one declaration per setting.

Every field of a job's options (``charter.config.StageOptions`` and the stage's own, then the
groups it takes apart, such as ``EngineOptions``) becomes a flag of the same name
(``max_tokens`` is ``--max-tokens``) with the field's docstring as its help and the field's
default as its default; a field marked ``Positional`` (``input``) is an argument. So a flag, a
recipe key and a ``charter.run`` keyword cannot drift apart.
"""

from __future__ import annotations

import inspect
import types
import typing
from collections.abc import Callable
from pathlib import Path
from typing import Annotated, Any

import typer
from pydantic import BaseModel
from pydantic.fields import FieldInfo

from charter.config import Positional, Sampling, StageOptions

SHORT = {"output": "-o", "model": "-m", "judge": "-j", "concurrency": "-c"}
"""Short forms of the flags used most."""


def _help(field: FieldInfo) -> str:
    # rich would read "[lo, hi]" as markup and drop it
    text = " ".join((field.description or "").replace("``", "").split())
    return text.replace("[", "\\[")


def _cli_type(annotation: Any) -> tuple[Any, bool]:
    """(the type click parses, whether None is allowed). Literals and tuples arrive as text
    and are validated by the options model, which names the flag on failure."""
    args = typing.get_args(annotation)
    union = typing.get_origin(annotation) in (typing.Union, types.UnionType)
    optional = union and type(None) in args
    core = next(a for a in args if a is not type(None)) if union else annotation
    if core in (bool, int, float, str, Path):
        return core, optional
    return str, optional


def _choices(annotation: Any) -> list[str]:
    """The values a Literal option takes (inside an Optional too), for its help."""
    for candidate in (annotation, *typing.get_args(annotation)):
        if typing.get_origin(candidate) is typing.Literal:
            return [str(v) for v in typing.get_args(candidate)]
    return []


class Override(typing.NamedTuple):
    """How a command shows one option differently from its model (probe's output)."""

    type: Any
    default: Any
    help: str | None = None
    show_default: bool | str = True


def _parameter(
    name: str, field: FieldInfo, override: Override | None, help: str | None = None
) -> inspect.Parameter:
    help_text = _help(field) if help is None else help.replace("[", "\\[")
    choices = _choices(field.annotation)
    if choices:
        help_text += f" One of: {', '.join(choices)}."
    kind = inspect.Parameter.KEYWORD_ONLY
    if any(isinstance(m, Positional) for m in field.metadata):
        many = typing.get_origin(field.annotation) is list
        cli: Any = list[Path] if many else (Path if field.annotation is Path else str)
        argument = typer.Argument(help=help_text, show_default=False, metavar=name.upper())
        return inspect.Parameter(name, kind, annotation=Annotated[cli, argument])
    core, optional = _cli_type(field.annotation)
    flag = "--" + name.replace("_", "-")
    negative = f"--no-{name.replace('_', '-')}"
    decls = [flag, *([SHORT[name]] if name in SHORT else [])]
    if core is bool and (optional or field.default is True):
        decls = [f"{flag}/{negative}"]  # a flag that is on by default can be turned off
    if field.is_required():
        default: Any = inspect.Parameter.empty
    elif field.default_factory is not None:  # a list: absent unless given (model's default)
        default, optional = None, True
    else:
        default = field.default
    show_default: bool | str = help is None  # a job's own help states its own default
    if override is not None:
        core, default = override.type, override.default
        optional = default is None
        help_text = override.help or help_text
        show_default = override.show_default
    cli_type = core | None if optional else core
    option = typer.Option(*decls, help=help_text, show_default=show_default)
    return inspect.Parameter(name, kind, annotation=Annotated[cli_type, option], default=default)


QUIET_HELP = "No progress bar (or, off a terminal, no lines)."
VERBOSE_HELP = "Log retries and details."


def cli_only(quiet: str = QUIET_HELP, verbose: str = VERBOSE_HELP) -> list[inspect.Parameter]:
    """Flags of the command line only (not options of the run): -q and -v, with what they
    mean for the command."""
    return [
        inspect.Parameter(
            "quiet",
            inspect.Parameter.KEYWORD_ONLY,
            default=False,
            annotation=Annotated[bool, typer.Option("--quiet", "-q", help=quiet)],
        ),
        inspect.Parameter(
            "verbose",
            inspect.Parameter.KEYWORD_ONLY,
            default=False,
            annotation=Annotated[bool, typer.Option("--verbose", "-v", help=verbose)],
        ),
    ]


EXTRA_ARGS = {"allow_extra_args": True, "ignore_unknown_options": True}
"""Context settings of a command built with ``extra_args=True``."""


def command_for(
    options: type[BaseModel],
    run: Callable[[dict[str, Any]], None],
    *,
    overrides: dict[str, Override] | None = None,
    skip: tuple[str, ...] = (),
    extra_args: bool = False,
    cli_help: dict[str, str] | None = None,
    groups: tuple[type[BaseModel], ...] = (),
) -> Callable[..., None]:
    """A function typer turns into the job's command: its parameters are the options'
    fields (the arguments and the output, then the job's own, then those every stage takes,
    then the fields of ``groups``), then -q and -v; calling it hands the values to ``run``.
    ``overrides``: how a command shows a field differently (probe's output has a computed
    default). ``extra_args``: the command takes arguments it does not declare (register it
    with ``EXTRA_ARGS`` as context settings). ``cli_help``: what -q / -v mean for a command
    that is not a stage run."""
    fields = dict(options.model_fields)
    shared = [*Sampling.model_fields, *StageOptions.model_fields]
    grouped = {n for group in groups for n in group.model_fields}
    own = [n for n in fields if n not in shared and n not in grouped]
    order = [n for n, f in fields.items() if any(isinstance(m, Positional) for m in f.metadata)]
    order += ["output"] if "output" in fields else []
    order += [n for n in own if fields[n].is_required() and n not in order]
    order += [n for n in own if not fields[n].is_required()]
    order += [n for n in shared if n not in order and n in fields]
    for group in groups:  # the options' own or the engine's, shown last
        fields |= group.model_fields
        order += [n for n in group.model_fields if n not in order]
    helps: dict[str, str] = getattr(options, "flag_help", {})  # a shared flag's help, here
    params = [
        _parameter(n, fields[n], (overrides or {}).get(n), helps.get(n))
        for n in order
        if n not in skip
    ]
    params += cli_only(**(cli_help or {}))
    params.insert(
        0, inspect.Parameter("ctx", inspect.Parameter.KEYWORD_ONLY, annotation=typer.Context)
    )

    def command(ctx: typer.Context, **values: Any) -> None:
        values = given(ctx, values)
        if extra_args:  # unknown ``--name value`` arguments, as values["extra_args"]
            values["extra_args"] = list(ctx.args)
        run(values)

    command.__signature__ = inspect.Signature(params)  # type: ignore[attr-defined]
    command.__annotations__ = {p.name: p.annotation for p in params}
    return command


def given(ctx: typer.Context, values: dict[str, Any]) -> dict[str, Any]:
    """The values of the flags and arguments the command line gave: the others are left to
    the options model, so its defaults apply and ``model_fields_set`` is what was given, as
    from a recipe or ``charter.run`` (an option whose default depends on another, such as
    score's temperature by mode, can tell)."""

    def from_user(name: str) -> bool:
        source = ctx.get_parameter_source(name)  # click's ParameterSource (typer vendors it)
        return source is not None and source.name != "DEFAULT"

    return {name: value for name, value in values.items() if from_user(name)}

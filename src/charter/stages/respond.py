"""``respond``: K answers per prompt from the policy model; with ``--turns N``, K final
answers to a conversation carried on for N assistant turns with a second model playing the
user."""

from __future__ import annotations

import asyncio
import json
import logging
import re
from collections.abc import Callable, Iterator, Sequence
from functools import partial
from pathlib import Path
from typing import Any, ClassVar

from pydantic import BaseModel, ConfigDict, Field

from charter.config import ModelSpec, Sampling, StageOptions
from charter.constitution import parse_data_file
from charter.engines.base import ModelFactory, OutputPaths, Prepared, RunSummary, Work
from charter.errors import ConfigError, InputError, ParseError
from charter.fingerprint import content_hash, settings_of
from charter.io import (
    OnInvalid,
    RowIds,
    read_output,
    read_prompts,
    row_prompt,
    valid_rows,
    write_rows,
)
from charter.model import Model, with_usage
from charter.prompts import OWN_TEMPLATES, render, templates_hash
from charter.records import Dialogue, DialoguePrompt, PromptRecord, ResponseRecord
from charter.seeds import derive_rng, sample_seed
from charter.stages.spec import StageSpec
from charter.types import GenerateConfig, Message, Role

log = logging.getLogger("charter")

USER_TEMPLATES = OWN_TEMPLATES["respond --turns"]
"""The simulated user's prompt templates (hashed into the settings of a multi-turn run)."""


class RespondConfig(Sampling):
    """Settings of the respond stage (CLI flags and recipe keys alike)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    n: int = Field(default=1, ge=1)
    """Answers per prompt."""
    turns: int = Field(default=1, ge=1)
    """Assistant turns in each conversation; the last one is sampled ``n`` times."""


def _sampling(config: RespondConfig, seed: int) -> GenerateConfig:
    return GenerateConfig(
        max_tokens=config.max_tokens, temperature=config.temperature, top_p=config.top_p, seed=seed
    )


@with_usage
async def respond(
    record: PromptRecord, model: Model | Sequence[Model], config: RespondConfig
) -> ResponseRecord:
    """``config.n`` answers from the model, or from each of several models in turn (their
    answers side by side in one row, so ``label`` compares the models head to head)."""
    models = [model] if isinstance(model, Model) else list(model)
    return await _answers(record.id, record.messages, models, config)


async def _answers(
    record_id: str,
    messages: list[Message],
    models: Sequence[Model],
    config: RespondConfig,
    dialogue: Dialogue | None = None,
) -> ResponseRecord:
    """The record of ``config.n`` answers to ``messages`` from each model (its usage is set
    by the work function's ``with_usage``)."""
    seeds = [sample_seed(config.seed, record_id, i) for i in range(config.n)]
    generations = await asyncio.gather(
        *(m.generate(messages, _sampling(config, s)) for m in models for s in seeds)
    )
    return ResponseRecord(
        id=record_id,
        messages=messages,
        responses=[g.text for g in generations],
        finish_reasons=[g.finish_reason for g in generations],
        model=",".join(m.name for m in models),
        models=[m.name for m in models for _ in seeds] if len(models) > 1 else None,
        seeds=seeds * len(models),
        dialogue=dialogue,
    )


# -- multi-turn conversations (--turns N) --------------------------------------------------
class Persona(BaseModel):
    """One user for the user model to play: an entry of a --personas file."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    persona: str
    """Who the user is: background, manner, what they know."""
    goal: str | None = None
    """What they want from the conversation."""


DEFAULT_PERSONA = Persona(
    persona="an ordinary person who uses an AI assistant for everyday questions and tasks, "
    "and asks a follow-up question when an answer is unclear, incomplete or not quite what "
    "they needed"
)
"""Who the user model plays for a row that names no persona, when no --personas is given."""


@with_usage
async def converse(
    record: DialoguePrompt, policy: Model, user: Model, config: RespondConfig
) -> ResponseRecord:
    """Carry the conversation on to ``config.turns`` assistant turns: the policy answers,
    the user model writes the next user turn, and so on. The earlier assistant turns are
    sampled once; the final one ``config.n`` times, as single-turn ``respond`` samples its
    answers, so the record has the same shape (``messages`` ends with the final user turn).
    An empty earlier turn fails the record: there is no conversation to carry on."""
    messages = list(record.messages)
    finish_reasons: list[str] = []
    user_finish_reasons: list[str] = []
    for turn in range(1, config.turns):
        seed = sample_seed(config.seed, f"{record.id}:assistant", turn)
        answer = await policy.generate(messages, _sampling(config, seed))
        if not answer.text.strip():
            raise ParseError(
                f"{policy.name} wrote an empty answer at assistant turn {turn} of "
                f"{config.turns}: no conversation to carry on"
            )
        finish_reasons.append(answer.finish_reason)
        messages.append(Message(role="assistant", content=answer.text))
        seed = sample_seed(config.seed, f"{record.id}:user", turn)
        reply = await user.generate(
            user_view(messages, record.persona, record.goal), _sampling(config, seed)
        )
        text = clean_user_turn(reply.text)
        if not text:
            cut = " (cut off at max_tokens)" if reply.finish_reason == "length" else ""
            raise ParseError(
                f"the user model {user.name} wrote an empty user turn after assistant turn "
                f"{turn} of {config.turns}{cut}"
            )
        user_finish_reasons.append(reply.finish_reason)
        messages.append(Message(role="user", content=text))
    dialogue = Dialogue(
        turns=config.turns,
        user_model=user.name,
        persona=record.persona,
        goal=record.goal,
        finish_reasons=finish_reasons,
        user_finish_reasons=user_finish_reasons,
    )
    return await _answers(record.id, messages, [policy], config, dialogue)


_FLIP: dict[Role, Role] = {"user": "assistant", "assistant": "user", "system": "system"}


def user_view(messages: Sequence[Message], persona: str, goal: str | None) -> list[Message]:
    """What the user model reads: a system message that casts it as the user (the persona,
    the goal, and the conversation's own system message as context), then the conversation
    with the roles flipped, so that the next user turn is its own assistant turn."""
    instructions = "\n\n".join(m.content for m in messages if m.role == "system")
    system = render("user_turn", persona=persona, goal=goal, instructions=instructions)
    return [
        Message(role="system", content=system),
        *(Message(role=_FLIP[m.role], content=m.content) for m in messages if m.role != "system"),
    ]


_SPEAKER = re.compile(r"^(?:\*\*|__)?\s*(?:user|human)\s*(?:\*\*|__)?\s*:\s*(?:\*\*|__)?\s*", re.I)
_NEXT_SPEAKER = re.compile(r"\n\s*(?:\*\*|__)?\s*assistant\s*(?:\*\*|__)?\s*:", re.I)


def clean_user_turn(text: str) -> str:
    """The user's message from the user model's reply: without a leading ``User:`` label,
    quotation marks around the whole of it, or a turn it went on to write for the assistant."""
    text = _SPEAKER.sub("", text.strip(), count=1)
    text = _NEXT_SPEAKER.split(text, maxsplit=1)[0].strip()
    if len(text) >= 2 and text[0] == text[-1] == '"' and '"' not in text[1:-1]:
        text = _SPEAKER.sub("", text[1:-1].strip(), count=1)  # "User: ..." in quotes
    return text


def load_personas(path: Path) -> tuple[Persona, ...]:
    """The personas of a YAML/JSON list or a JSONL file: each a string (the persona) or a
    mapping with ``persona`` and an optional ``goal``. Anything wrong is one ConfigError
    naming the file and the entry (the line, in JSONL)."""
    if not path.is_file():
        what = "is a folder, expected a personas file" if path.is_dir() else "not found"
        raise ConfigError(f"personas file {path}: {what}")
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as e:
        raise ConfigError(f"personas file {path}: cannot read ({e})") from e
    name = path.name.lower()
    entries: list[tuple[str, Any]] = []
    if name.endswith((".jsonl", ".ndjson")):
        for lineno, line in enumerate(text.splitlines(), start=1):
            if not line.strip():
                continue
            try:
                entries.append((f"{path}:{lineno}", json.loads(line)))
            except json.JSONDecodeError as e:
                raise ConfigError(f"{path}:{lineno}: malformed JSON ({e.msg})") from e
    elif name.endswith((".yaml", ".yml", ".json")):
        data = parse_data_file(text, path.suffix.lower(), str(path))
        if data is None:
            raise ConfigError(f"{path}: holds no personas")
        if not isinstance(data, list):
            raise ConfigError(
                f"{path}: expected a list of personas (strings, or mappings with 'persona' "
                f"and an optional 'goal'), got {type(data).__name__}"
            )
        entries = [(f"{path}: entry {i}", item) for i, item in enumerate(data, start=1)]
    else:
        raise ConfigError(f"{path}: unsupported personas file (use .yaml, .yml, .json or .jsonl)")
    if not entries:
        raise ConfigError(f"{path}: holds no personas")
    return tuple(_persona(where, item) for where, item in entries)


def _persona(where: str, item: Any) -> Persona:
    if isinstance(item, str):
        item = {"persona": item}
    if not isinstance(item, dict):
        raise ConfigError(
            f"{where}: expected a string or a mapping with 'persona', got {type(item).__name__}"
        )
    unknown = sorted(str(k) for k in item if k not in Persona.model_fields)
    if unknown:
        raise ConfigError(
            f"{where}: unknown key {', '.join(map(repr, unknown))} (a persona has 'persona' "
            "and an optional 'goal')"
        )
    persona, goal = item.get("persona"), item.get("goal")
    if not isinstance(persona, str) or not persona.strip():
        raise ConfigError(f"{where}: 'persona' must be a non-empty string")
    if goal is not None and not isinstance(goal, str):
        raise ConfigError(f"{where}: 'goal' must be a string, got {type(goal).__name__}")
    return Persona(persona=persona.strip(), goal=(goal or "").strip() or None)


def pick_persona(personas: Sequence[Persona], seed: int, record_id: str) -> Persona:
    """The persona of a row that names none: one of ``personas`` fixed by the seed and the
    row's id (not by its place in the file), else the default."""
    if not personas:
        return DEFAULT_PERSONA
    return personas[derive_rng(seed, "persona", record_id).randrange(len(personas))]


def read_dialogues(
    source: str | Path,
    on_invalid: OnInvalid | None = None,
    *,
    personas: Sequence[Persona] = (),
    seed: int = 0,
) -> Iterator[DialoguePrompt]:
    """Prompt records (the same ids as :func:`charter.io.read_prompts`) with the user each
    conversation is carried on by: a row's own ``persona`` (and ``goal``), else one picked
    from ``personas`` (a row's own ``goal`` still wins), else the default."""
    ids = RowIds()

    def convert(where: str, row: dict[str, Any]) -> DialoguePrompt:
        messages, response = row_prompt(row, where)
        persona, goal = _row_text(row, "persona", where), _row_text(row, "goal", where)
        rid = ids(row, where, messages)
        if persona is None:
            picked = pick_persona(personas, seed, rid)
            persona, goal = picked.persona, goal if goal is not None else picked.goal
        return DialoguePrompt(
            id=rid, messages=messages, response=response, persona=persona, goal=goal
        )

    yield from valid_rows(source, on_invalid, convert)


def _row_text(row: dict[str, Any], key: str, where: str) -> str | None:
    value = row.get(key)
    if value is None:
        return None
    if not isinstance(value, str):
        raise InputError(f"{where}: field {key!r} must be a string, got {type(value).__name__}")
    return value.strip() or None


class RespondOptions(StageOptions, Sampling):
    """``charter respond``."""

    output_fields: ClassVar[tuple[str, ...]] = (*StageOptions.output_fields, "sft")

    model: ModelSpec
    """Model spec: openai/NAME, hf/PATH, smollm2, mock/NAME; a comma list gives every prompt
    answers from each model, side by side (label then compares them head to head)."""
    n: int = Field(default=1, ge=1)
    """Answers per prompt."""
    sft: Path | None = None
    """Also write TRL SFT rows here: one ``messages`` row (the prompt, then the answer) per
    answer, for ``charter train sft``."""
    sft_keep_truncated: bool = False
    """Keep answers cut off at max_tokens in the --sft rows (default: left out)."""
    turns: int = Field(default=1, ge=1)
    """Assistant turns to write in each conversation (after any the row already has): with
    N > 1, --user-model writes a user turn after each of the first N-1 answers (sampled
    once) and the N-th is sampled --n times."""
    user_model: ModelSpec | None = None
    """With --turns N > 1: the model spec that plays the user (openai/NAME, hf/PATH,
    smollm2, mock/NAME)."""
    personas: Path | None = None
    """With --turns N > 1: a YAML list or JSONL file of users to play, each a string or
    {persona, goal}; a row without its own ``persona`` gets one picked by the seed and its
    id (default: a neutral user)."""

    def stage_config(self) -> RespondConfig:
        return RespondConfig(n=self.n, turns=self.turns, **self.sampling())


def _model_specs(text: str) -> list[str]:
    return [m.strip() for m in text.split(",") if m.strip()]


def _dialogue_setup(opts: RespondOptions) -> tuple[str | None, tuple[Persona, ...]]:
    """The user model's spec and the personas, or a refusal of a setting that would reach
    nothing (or mean something other than it says)."""
    user_model = (opts.user_model or "").strip() or None
    if opts.turns == 1:
        if user_model is not None:
            raise ConfigError(
                "--user-model writes the user's turns of a multi-turn conversation, and "
                "--turns is 1: add --turns N (N > 1), or drop --user-model"
            )
        if opts.personas is not None:
            raise ConfigError(
                "--personas are played by the user model of a multi-turn conversation, and "
                "--turns is 1: add --turns N (N > 1) and --user-model, or drop --personas"
            )
        return None, ()
    if user_model is None:
        raise ConfigError(
            f"--turns {opts.turns} needs --user-model SPEC: the model that writes the user's "
            "turns between the assistant's (mock/NAME, openai/NAME, smollm2, hf/PATH)"
        )
    if len(_model_specs(user_model)) > 1:
        raise ConfigError(f"--user-model takes one model spec, not a list ({user_model})")
    if len(_model_specs(opts.model)) > 1:
        raise ConfigError(
            f"--turns {opts.turns} takes one --model: with several ({opts.model}) the earlier "
            "assistant turns would come from only one of them; run respond once per model"
        )
    personas = load_personas(opts.personas) if opts.personas is not None else ()
    return user_model, personas


def prepare(opts: RespondOptions) -> Prepared:
    config = opts.stage_config()
    user_model, personas = _dialogue_setup(opts)
    specs = _model_specs(opts.model)

    def build(models: ModelFactory) -> Work:
        if config.n > 1 and config.temperature == 0:
            log.warning("--n %d with --temperature 0 gives identical answers", config.n)
        chosen = [models(spec) for spec in specs]
        if user_model is not None:
            user = chosen[0] if user_model == specs[0] else models(user_model)
            return partial(converse, policy=chosen[0], user=user, config=config)
        return partial(respond, model=chosen[0] if len(chosen) == 1 else chosen, config=config)

    def finish(summary: RunSummary, paths: OutputPaths) -> None:
        if user_model is not None:
            report_cut_turns(paths.work)
        if opts.sft is None:
            return
        written, cut, empty = write_sft(
            paths.work, opts.sft, keep_truncated=opts.sft_keep_truncated
        )
        if not written:
            log.warning(
                "no SFT rows written to %s: %d answer(s) were cut off at max_tokens (raise "
                "--max-tokens, or --sft-keep-truncated keeps them) and %d were empty",
                opts.sft,
                cut,
                empty,
            )
            return
        log.info(
            "SFT rows: %d written to %s (%d cut off at max_tokens%s, %d empty left out)",
            written,
            opts.sft,
            cut,
            " kept" if opts.sft_keep_truncated else " left out",
            empty,
        )

    read: Callable[[OnInvalid | None], Iterator[PromptRecord]] = partial(read_prompts, opts.input)
    if user_model is not None:
        read = partial(read_dialogues, opts.input, personas=personas, seed=config.seed)
    return Prepared(
        settings=settings_of(
            "respond",
            opts,
            exclude=["sft", "sft_keep_truncated"],
            personas=content_hash([p.model_dump() for p in personas]) if personas else None,
            user_prompt=None if user_model is None else templates_hash(*USER_TEMPLATES),
        ),
        read=read,
        build=build,
        extra_outputs=[opts.sft] if opts.sft is not None else [],
        finish=finish,
    )


def report_cut_turns(responses: Path) -> None:
    """Warn about conversations with an earlier turn cut off at max_tokens: the final answers
    reply to it as it stands (``dialogue.finish_reasons`` says which)."""
    cut = sum(
        1
        for rec in read_output(responses, ResponseRecord)
        if rec.dialogue is not None
        and "length" in (*rec.dialogue.finish_reasons, *rec.dialogue.user_finish_reasons)
    )
    if cut:
        log.warning(
            "%d conversation(s) in %s have an earlier turn cut off at max_tokens (see "
            "dialogue.finish_reasons and dialogue.user_finish_reasons); raise --max-tokens to "
            "avoid it",
            cut,
            responses,
        )


def write_sft(responses: Path, dest: Path, *, keep_truncated: bool = False) -> tuple[int, int, int]:
    """TRL conversational SFT rows from a respond output: ``{"id": "ID:k", "messages": [prompt
    turns..., the k-th answer], "model"}``, k counting every answer of the record (across
    models too). Derived from the whole output each time and replaced at once, so after a
    resume it covers every record. Answers cut off at max_tokens are left out unless
    ``keep_truncated``; empty answers always (nothing to learn). Returns (written, cut off,
    empty)."""
    lines: list[str] = []
    cut = empty = 0
    for rec in read_output(responses, ResponseRecord):
        prompt = [m.model_dump() for m in rec.messages]
        for k, answer in enumerate(rec.responses):
            truncated = k < len(rec.finish_reasons) and rec.finish_reasons[k] == "length"
            cut += truncated
            if truncated and not keep_truncated:
                continue
            if not answer.strip():
                empty += 1
                continue
            row = {
                "id": f"{rec.id}:{k}",
                "messages": [*prompt, {"role": "assistant", "content": answer}],
                "model": rec.models[k] if rec.models else rec.model,
            }
            lines.append(json.dumps(row, ensure_ascii=False))
    write_rows(dest, lines)
    return len(lines), cut, empty


SPEC = StageSpec(
    name="respond",
    options=RespondOptions,
    prepare=prepare,
    help="Generate K answers per prompt.",
)

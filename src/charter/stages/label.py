"""``label``: RL-CAI / RLAIF preference labels as calibrated soft probabilities.

Each pair is judged by ``charter.judges.compare`` (both orders, sampled principles, exact
option probabilities, fallbacks that never guess; a reward model's sigmoid(r_a - r_b)) and
written as a ``LabelRecord`` with its TRL columns. This module is the stage: its options,
what it reads, and the summary after a run.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from functools import partial

from charter.config import PairJudgeOptions
from charter.constitution import Constitution, LabelExample, load_constitution, load_label_examples
from charter.engines.base import ModelFactory, OutputPaths, Prepared, RunSummary, Work
from charter.errors import ConfigError
from charter.fingerprint import content_hash, settings_of
from charter.judges.api import label_pair
from charter.judges.pairwise import LabelConfig, check_choices, check_reward_judge
from charter.judges.records import label_summary
from charter.pairs import PairReader
from charter.stages.spec import StageSpec

log = logging.getLogger("charter")


label = label_pair
"""The stage's work on one pair: its label record (``charter.judges.api.label_pair``)."""


class LabelOptions(PairJudgeOptions):
    """``charter label``: the stage options, how pairs are judged, and the judge."""

    few_shot: str = "none"
    """Worked comparisons shown before each question: none, auto (the constitution's
    label_examples) or a YAML/JSON file of them (as examples/label-few-shot.yaml)."""

    def stage_config(self) -> LabelConfig:
        return LabelConfig.of(self, self.sampling())


def resolve_examples(choice: str, constitution: Constitution) -> tuple[LabelExample, ...]:
    """The few-shot labelling examples ``--few-shot`` names; one whose principle_id is not in
    the constitution is a ConfigError."""
    if choice == "none":
        return ()
    examples = constitution.label_examples if choice == "auto" else load_label_examples(choice)
    if choice == "auto" and not examples:
        log.info("%s has no label_examples: no few-shot examples", constitution.name)
    known = {p.id for p in constitution.principles}
    for i, ex in enumerate(examples):
        if ex.principle_id is not None and ex.principle_id not in known:
            raise ConfigError(
                f"--few-shot {choice}: example {i + 1} names principle {ex.principle_id!r}, "
                f"which {constitution.name} does not have"
            )
    return examples


def setup(opts: LabelOptions) -> Constitution:
    constitution = load_constitution(opts.constitution)
    check_choices(opts, constitution)
    return constitution


def prepare(opts: LabelOptions) -> Prepared:
    constitution = setup(opts)
    examples = resolve_examples(opts.few_shot, constitution)
    config = opts.stage_config().model_copy(update={"examples": examples})
    reader = PairReader(opts.input, opts.pairs, opts.seed)

    def build(models: ModelFactory) -> Work:
        judge = models(opts.judge)
        if judge.capabilities.principles:
            check_reward_judge(judge.name, config, principled=True)
            log.info(
                "%s is a principle-conditioned reward model: labels are sigmoid(r_a - r_b), "
                "the rewards under %d principle(s) of %r",
                judge.name,
                config.principles,
                constitution.name,
            )
            trained = getattr(judge.backend, "principled", None) or {}
            if trained.get("hash") != constitution.hash:
                log.warning(
                    "%s was trained on the principles of %r; %r is another constitution: "
                    "its principles' texts may be new to it",
                    judge.name,
                    trained.get("constitution"),
                    constitution.name,
                )
        elif judge.capabilities.reward:
            check_reward_judge(judge.name, config)
            log.info(
                "%s is a reward model: labels are sigmoid(r_a - r_b); it ignores the "
                "constitution %r",
                judge.name,
                constitution.name,
            )
        elif not judge.capabilities.option_logprobs:
            how = f"{config.votes} votes" if config.votes > 1 else "one parsed answer"
            log.warning(
                "%s gives no log-probabilities: labels come from %s per judgement", judge.name, how
            )
        if config.cot and config.cot_style == "continue" and not judge.capabilities.continue_final:
            log.warning(
                "%s cannot continue its own turn: --cot-style continue asks the letter in a "
                "second turn (ask)",
                judge.name,
            )
        return partial(label, judge=judge, constitution=constitution, config=config)

    def finish(summary: RunSummary, paths: OutputPaths) -> None:
        reader.report(summary)
        label_summary(paths.work)

    return Prepared(
        settings=settings_of(
            "label",
            opts,
            exclude=opts.PRIORITY_SETTING,
            constitution=constitution.hash,
            few_shot=_examples_hash(examples) if examples else "none",
            **opts.priority_setting(),
        ),
        read=reader,
        build=build,
        finish=finish,
    )


def _examples_hash(examples: Sequence[LabelExample]) -> str:
    """The examples by content (a file named by --few-shot can change under the same name)."""
    return content_hash([ex.model_dump(mode="json") for ex in examples])


SPEC = StageSpec(
    name="label",
    options=LabelOptions,
    prepare=prepare,
    help="RLAIF: AI preference labels as soft probabilities, both orders averaged.",
)

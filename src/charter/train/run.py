"""Running one ``charter train`` method on TRL.

The flow is the same for every trainer: check the data and the model, parse the TRL config
(file, then charter's flags, then extra ``--name value`` arguments), train (resuming from the
last checkpoint of a killed run), merge a LoRA adapter, save an HF folder with its tokenizer,
and record what was trained in ``DIR/charter-train.json`` so a re-run with the same settings
is a no-op and one with other settings is refused without ``--force``.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import shutil
import warnings
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from charter.errors import ConfigError, InputError, UngradedError
from charter.fingerprint import content_hash
from charter.principled import FORMAT, RECORD_KEY, TRAIN_RECORD, conditioning, trained_format
from charter.train import data
from charter.train.options import (
    DPOOptions,
    PreferenceOptions,
    RewardOptions,
    RLOptions,
    TrainOptions,
)
from charter.train.processes import bound_to_launcher, check_processes, launched, one_voice
from charter.train.rewards import CountedReward, JudgeReward, JudgeTally, RemoteReward

log = logging.getLogger("charter")

MARKER = TRAIN_RECORD
"""What was trained into a folder, and whether it finished."""
INSTALL = "charter train needs the train extra: pip install 'charter[train]'"


@dataclass
class TrainResult:
    """What a ``charter train`` run did."""

    output: Path
    """The model folder."""
    steps: int
    """Optimizer steps run (0 when the folder already held this training)."""
    skipped: bool
    """True when the folder already held a model trained with these settings."""
    metrics: dict[str, float]
    """TRL's final training metrics (loss, runtime...)."""
    judged: JudgeTally | None = None
    """With ``rl --reward-judge``: how many completions the judge graded and did not (over
    every process)."""
    main_process: bool = True
    """False on every process but the first of a multi-process run, whose summary the first
    one gives."""


def _import() -> tuple[Any, Any, Any]:
    try:
        import torch
        import transformers
        import trl
    except ImportError as e:
        raise ConfigError(f"{INSTALL} ({e})") from e
    transformers.utils.logging.set_verbosity_error()  # type: ignore[no-untyped-call]
    import datasets

    datasets.disable_progress_bars()
    datasets.utils.logging.set_verbosity_error()
    warnings.filterwarnings("ignore", category=FutureWarning, module="transformers")
    warnings.filterwarnings("ignore", category=UserWarning, module="trl")
    return torch, transformers, trl


def _accelerator(torch: Any) -> bool:
    """A GPU or another accelerator torch can train on (not the CPU)."""
    found = getattr(torch, "accelerator", None)  # torch >= 2.6
    return bool(found.is_available()) if found is not None else bool(torch.cuda.is_available())


def model_path(spec: str) -> str:
    """The folder behind ``--model`` (``smollm2``, ``hf/DIR``, ``rm/DIR`` or a folder)."""
    if spec == "smollm2":
        from charter.backends.smollm2 import converted_dir

        return str(converted_dir())
    path = _named_folder(spec)
    folder = Path(path)
    if not folder.exists():
        if spec.startswith("hf/") and _hub_id(path):
            return path  # a model id on the Hugging Face Hub, downloaded by transformers
        raise ConfigError(
            f"{spec}: no such folder (use smollm2, hf/DIR, a local model folder or hf/ORG/NAME)"
        )
    if not (folder / "config.json").is_file():
        raise ConfigError(f"--model {spec}: {folder} is not a model folder (no config.json)")
    return path


def _hub_id(path: str) -> bool:
    parts = path.split("/")
    return len(parts) == 2 and all(parts) and not path.startswith((".", "~"))


def _named_folder(spec: str) -> str:
    """The path a model spec names: ``hf/DIR`` and ``rm/DIR`` without the prefix, a bare
    folder as it is."""
    return spec.split("/", 1)[1] if spec.startswith(("hf/", "rm/")) else spec


def _check_output_apart(opts: TrainOptions) -> None:
    """Refuse an output folder that is, or holds, something the run reads: training empties
    it (``--force``, or a start over), which would delete the data or a model mid-run."""
    read: list[tuple[str, str, str]] = [("the training data", opts.input, opts.input)]
    models = [("--model", opts.model)]
    if isinstance(opts, RLOptions):
        models += [("--reward", spec) for spec in opts.reward if not is_url(spec)]
        if opts.reward_judge is not None and opts.reward_judge.startswith(("hf/", "rm/")):
            models.append(("--reward-judge", opts.reward_judge))
    read += [(what, spec, _named_folder(spec)) for what, spec in models if spec != "smollm2"]
    if opts.config is not None:
        read.append(("--config", str(opts.config), str(opts.config)))
    if isinstance(opts, RewardOptions) and opts.constitution is not None:
        read.append(("--constitution", opts.constitution, opts.constitution))
    out = opts.output.resolve()
    for what, spec, path in read:
        where = Path(path).resolve()
        if Path(path).exists() and (where == out or out in where.parents):
            raise ConfigError(
                f"-o {opts.output} {'is' if where == out else 'holds'} {what} "
                f"({spec}), which training would overwrite or delete: choose another -o"
            )


def is_url(spec: str) -> bool:
    """``--reward http://HOST:PORT``: a charter serve, not a folder."""
    return spec.startswith(("http://", "https://"))


def reward_folders(opts: TrainOptions) -> list[str]:
    """The folders of ``--reward rm/DIR``, each checked to hold a reward model (a charter
    serve URL is checked when it is asked)."""
    from charter.backends.rm import check_reward_folder

    if not isinstance(opts, RLOptions):
        return []
    urls = [spec for spec in opts.reward if is_url(spec)]
    if opts.max_ungraded is not None and opts.reward_judge is None and not urls:
        raise ConfigError(
            "--max-ungraded bounds what --reward-judge or a charter serve --reward URL leaves "
            "ungraded: add one"
        )
    if len(urls) + (opts.reward_judge is not None) > 1:
        raise ConfigError(
            "give one of --reward-judge and a charter serve --reward URL (a server can mix a "
            "judge and reward models itself: charter serve --reward-weights)"
        )
    folders = []
    for spec in opts.reward:
        if is_url(spec):
            continue
        if not spec.startswith("rm/"):
            raise ConfigError(
                f"--reward {spec}: write a reward model as rm/DIR, or charter serve's address "
                "as http://HOST:PORT"
            )
        folder = model_path(spec)
        check_reward_folder(spec, Path(folder))
        if trained_format(spec, Path(folder)) is not None:
            raise ConfigError(
                f"--reward {spec} is principle-conditioned: it scores under a principle, and "
                "train rl gives none (use a reward model trained without "
                "--principle-conditioned)"
            )
        folders.append(folder)
    if opts.reward_judge is not None and opts.reward_judge.startswith("rm/"):
        raise ConfigError(
            f"--reward-judge {opts.reward_judge} is a reward model: pass it as --reward"
        )
    if not folders and not urls and opts.reward_judge is None:
        raise ConfigError(
            "train rl needs a reward: --reward rm/DIR or http://HOST:PORT (charter serve) "
            "and/or --reward-judge SPEC"
        )
    n = len(folders) + len(urls) + (opts.reward_judge is not None)
    if opts.reward_weights is not None and len(opts.reward_weights) != n:
        raise ConfigError(
            f"--reward-weights has {len(opts.reward_weights)} value(s) for {n} reward(s)"
        )
    return folders


# -- TRL configs ----------------------------------------------------------------------------
def _parser(config_cls: Any) -> Any:
    from trl import ModelConfig, TrlParser

    class Parser(TrlParser):  # type: ignore[misc]
        """TRL's parser, with errors as charter's one line instead of argparse's exit."""

        def error(self, message: str) -> Any:
            raise ConfigError(f"TRL option: {message}")

    return Parser((config_cls, ModelConfig))


def _cpu_defaults(opts: TrainOptions, cuda: bool, cpu_ddp: bool = False) -> dict[str, Any]:
    """Defaults a CPU needs (TRL assumes a GPU: bf16 and activation checkpointing on); on a
    GPU TRL's own stand. Everything here can be overridden by the config file or a flag.
    ``cpu_ddp``: several launched processes on a machine without GPUs, which only
    ``use_cpu`` makes one DDP run (over gloo): without it each would train alone."""
    values: dict[str, Any] = {
        "report_to": "none",
        "save_strategy": "steps",
        "save_steps": opts.save_steps,
        "save_total_limit": 1,
        "logging_steps": 5,
        "seed": opts.seed,
    }
    if not cuda:
        values |= {
            "bf16": False,
            "activation_checkpointing": False,
            "dataloader_pin_memory": False,
        }
    if cpu_ddp:
        values["use_cpu"] = True
    if isinstance(opts, RLOptions) and not cuda:
        values |= {
            "num_generations": 4,
            "per_device_train_batch_size": 4,
            "max_completion_length": 64,
            "num_train_epochs": 1,
        }
    if isinstance(opts, DPOOptions) and opts.labels == "soft":
        values["loss_type"] = ["robust"]
    return values


def _flag_args(opts: TrainOptions) -> list[str]:
    """charter's flags as TRL arguments (only those given, so the config file keeps the rest)."""
    pairs: dict[str, Any] = {
        "max_steps": opts.max_steps,
        "num_train_epochs": opts.epochs,
        "learning_rate": opts.learning_rate,
        "per_device_train_batch_size": opts.batch_size,
    }
    if isinstance(opts, DPOOptions | RLOptions):
        pairs["beta"] = opts.beta
    if isinstance(opts, RLOptions):
        pairs["num_generations"] = opts.num_generations
        pairs["max_completion_length"] = opts.max_completion_length
        if opts.reward_weights is not None:
            pairs["reward_weights"] = " ".join(str(w) for w in opts.reward_weights)
    args: list[str] = []
    for key, value in pairs.items():
        if value is not None:
            args += [f"--{key}", *str(value).split(" ")]
    if opts.lora:
        args += ["--use_peft", "true"]
    return args


def parse_configs(
    opts: TrainOptions, config_cls: Any, cuda: bool, cpu_ddp: bool = False
) -> tuple[Any, Any]:
    """(TRL's trainer config, TRL's ModelConfig) from the file, the flags and extra args."""
    parser = _parser(config_cls)
    parser.set_defaults(**_cpu_defaults(opts, cuda, cpu_ddp))
    argv = ["--output_dir", str(opts.output), *_flag_args(opts), *opts.trl]
    if opts.config is not None:
        _check_config_file(opts.config)
        argv = ["--config", str(opts.config), *argv]
    try:
        args, model_args = parser.parse_args_and_config(args=argv)
    except (ValueError, TypeError) as e:
        text = " ".join(str(e).split())
        if "not used by the HfArgumentParser" in text:
            unused = text.split(":", 1)[1].strip()
            names = f"{config_cls.__name__} and ModelConfig"
            raise ConfigError(f"unknown TRL option(s) {unused}: not fields of {names}") from e
        raise ConfigError(f"TRL config: {text[:400]}") from e
    if str(Path(args.output_dir).resolve()) != str(opts.output.resolve()):
        raise ConfigError("output_dir comes from -o/--output; remove it from the TRL options")
    if model_args.model_name_or_path is not None:
        raise ConfigError("the model comes from --model; remove model_name_or_path")
    return args, model_args


def _check_config_file(path: Path) -> None:
    import yaml

    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ConfigError(f"--config: no such file: {path}") from None
    except (OSError, yaml.YAMLError) as e:
        raise ConfigError(f"--config {path}: not readable YAML: {' '.join(str(e).split())}") from e
    if not isinstance(data, dict):
        raise ConfigError(f"--config {path}: must be a YAML mapping of TRL options")
    for key, flag in (("output_dir", "-o/--output"), ("model_name_or_path", "--model")):
        if key in data:
            raise ConfigError(f"--config {path}: {key} comes from {flag}; remove it")


# -- models ---------------------------------------------------------------------------------
def load_model(
    opts: TrainOptions, head: str, model_args: Any, remote_code: bool = False
) -> tuple[Any, Any]:
    """(model, tokenizer) to start from; ``head``: ``causal`` or ``reward`` (one output).
    TRL's ``ModelConfig`` says how: dtype, attention, revision, remote code, 4/8-bit."""
    torch, transformers, trl = _import()
    path = model_path(opts.model)
    dtype = model_args.dtype
    kwargs: dict[str, Any] = {
        "dtype": dtype if dtype in ("auto", None) else getattr(torch, dtype),
        "revision": model_args.model_revision,
        "trust_remote_code": remote_code,
    }
    if model_args.attn_implementation is not None:
        kwargs["attn_implementation"] = model_args.attn_implementation
    quantization = trl.get_quantization_config(model_args)
    if quantization is not None:
        kwargs |= {"quantization_config": quantization, "device_map": trl.get_kbit_device_map()}
    try:
        tokenizer = transformers.AutoTokenizer.from_pretrained(
            path, revision=model_args.model_revision, trust_remote_code=remote_code
        )
        if head == "reward":
            model = transformers.AutoModelForSequenceClassification.from_pretrained(
                path, num_labels=1, **kwargs
            )
        else:
            model = transformers.AutoModelForCausalLM.from_pretrained(path, **kwargs)
    except (OSError, ValueError, KeyError, ImportError) as e:
        raise ConfigError(
            f"--model {opts.model}: cannot load: {' '.join(str(e).split())[:300]}"
        ) from e
    if not getattr(tokenizer, "chat_template", None):
        raise ConfigError(f"--model {opts.model}: the tokenizer has no chat template")
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    model.config.pad_token_id = tokenizer.pad_token_id
    return model, tokenizer


def _peft(model_args: Any, head: str) -> Any:
    from trl import get_peft_config

    if not model_args.use_peft:
        return None
    if head == "reward":
        model_args.lora_task_type = "SEQ_CLS"
        if not model_args.lora_modules_to_save:
            model_args.lora_modules_to_save = ["score"]  # the new head must train in full
    return get_peft_config(model_args)


# -- the run --------------------------------------------------------------------------------
def _data_hash(source: str) -> str:
    """The training data's content (a folder's files by name, size and modification time)."""
    path = Path(source)
    h = hashlib.sha256()
    if path.is_file():
        with path.open("rb") as f:
            for block in iter(lambda: f.read(2**20), b""):
                h.update(block)
    elif path.is_dir():
        for p in sorted(p for p in path.rglob("*") if p.is_file()):
            stat = p.stat()
            h.update(f"{p.relative_to(path)}\0{stat.st_size}\0{stat.st_mtime_ns}\0".encode())
    else:
        h.update(source.encode())
    return h.hexdigest()[:16]


def _weights(spec: str) -> str:
    """The model behind a spec, by the content of its folder (a Hub id by its name)."""
    from charter.backends.weights import weights_fingerprint

    path = Path(model_path(spec))
    return f"weights:{weights_fingerprint(path)}" if path.is_dir() else spec


def _settings(opts: TrainOptions, processes: int = 1) -> dict[str, Any]:
    """What defines the trained model: re-running with the same is a no-op. Models are taken
    by their weights, so retraining the starting model or a reward model counts as a change.
    Several processes make a larger global batch: their number counts too (left out for
    one, so folders trained before it was recorded keep their settings)."""
    # how it runs or is checked, not what it trains
    how = {"output", "force", "input", "config", "save_steps", "max_ungraded"}
    if isinstance(opts, RewardOptions):
        # the constitution is the one the data was labelled under, known by the data's hash;
        # an ordinary reward model's settings stay as they were before the option existed
        how |= {"constitution"} | (
            set() if opts.principle_conditioned else {"principle_conditioned"}
        )
    values = opts.model_dump(mode="json", exclude=how)
    if isinstance(opts, RewardOptions) and opts.principle_conditioned:
        values["principle_format"] = FORMAT
    values["data"] = _data_hash(opts.input)
    values["model"] = _weights(opts.model)
    if isinstance(opts, RLOptions):
        # a server by its address: what it serves is its own to keep (its /health says)
        values["reward"] = [spec if is_url(spec) else _weights(spec) for spec in opts.reward]
    if opts.config is not None and opts.config.is_file():
        values["config"] = content_hash(opts.config.read_text(encoding="utf-8"))
    if processes > 1:
        values["processes"] = processes
    return values


def _check_folder(opts: TrainOptions, settings: dict[str, Any]) -> str:
    """What to do with the output folder: ``new`` (absent or empty), ``done`` (it holds this
    training, finished), ``resume`` (this training, unfinished) or ``redo`` (--force, or an
    unfinished start with other settings and no checkpoint). Refuses anything else."""
    out = opts.output
    if out.exists() and not out.is_dir():
        raise ConfigError(f"-o {out}: is a file; the output is a model folder")
    if not out.exists() or not any(out.iterdir()):
        return "new"
    marker = out / MARKER
    if not marker.is_file():
        raise ConfigError(f"{out} exists and was not written by charter train: choose another -o")
    try:
        previous = json.loads(marker.read_text(encoding="utf-8"))
    except (OSError, ValueError) as e:
        raise ConfigError(f"{marker}: unreadable ({e}); remove the folder to start over") from e
    if opts.force:
        return "redo"
    same = previous.get("settings") == settings
    if same:
        return "done" if previous.get("finished") else "resume"
    if previous.get("finished") or any(out.glob("checkpoint-*")):
        old = previous.get("settings") or {}
        changed = sorted(k for k in {*old, *settings} if old.get(k) != settings.get(k))
        raise ConfigError(
            f"{out} holds a model trained with other settings "
            f"({', '.join(changed) or 'unknown'} differ): pass --force to train again "
            "(the folder is emptied first) or choose another -o"
        )
    return "redo"


def _clear(folder: Path) -> None:
    """Empty ``folder``; a link in it is removed, never what it points to."""
    for child in folder.iterdir():
        if child.is_dir() and not child.is_symlink():
            shutil.rmtree(child)
        else:
            child.unlink()


def _write_marker(
    opts: TrainOptions,
    settings: dict[str, Any],
    finished: bool,
    judged: JudgeTally | None = None,
    principled: dict[str, Any] | None = None,
) -> None:
    opts.output.mkdir(parents=True, exist_ok=True)
    info: dict[str, Any] = {"method": opts.method, "settings": settings, "finished": finished}
    if judged is not None:
        info["judged"] = judged.as_record()
    if principled is not None:  # rm/DIR reads it: the model scores under a principle
        info[RECORD_KEY] = principled
    tmp = opts.output / f".{MARKER}.tmp"
    tmp.write_text(json.dumps(info, indent=2), encoding="utf-8")
    tmp.replace(opts.output / MARKER)


def train(opts: TrainOptions, callbacks: Sequence[Any] = (), quiet: bool = False) -> TrainResult:
    """Train ``opts.method`` from ``opts.model`` on ``opts.input`` into ``opts.output``.
    ``callbacks``: transformers ``TrainerCallback``s added to the trainer (progress, timing);
    ``quiet``: no progress bar or metric lines.

    Under ``accelerate launch`` (or torchrun, deepspeed) every process calls this alike: each
    checks the inputs and the folder before the process group starts, so a bad input stops
    every one of them; only the first writes the folder, and the others wait where it must
    be done first (emptied for ``--force``, finished before any process returns)."""
    rank, processes = launched()
    with one_voice(rank), bound_to_launcher():
        return _train(opts, callbacks, quiet, rank, processes)


def _train(
    opts: TrainOptions, callbacks: Sequence[Any], quiet: bool, rank: int, processes: int
) -> TrainResult:
    method = opts.method
    _check_output_apart(opts)
    # bad data, models and rewards fail before anything is loaded or written
    rows, principled = _rows(opts)
    model_path(opts.model)
    reward_folders(opts)
    settings = _settings(opts, processes)
    state = _check_folder(opts, settings)
    if state == "done":
        log.info("%s already holds this %s training (--force trains it again)", opts.output, method)
        return TrainResult(opts.output, 0, True, {}, main_process=rank == 0)
    torch, transformers, trl = _import()
    cuda = bool(torch.cuda.is_available())
    config_cls = {
        "sft": trl.SFTConfig,
        "reward": trl.RewardConfig,
        "dpo": trl.DPOConfig,
        "rl": trl.GRPOConfig,
    }[method]
    cpu_ddp = processes > 1 and not _accelerator(torch)
    args, model_args = parse_configs(opts, config_cls, cuda, cpu_ddp)
    check_processes(args.world_size, processes)
    if quiet:
        args.disable_tqdm = True
    # The trainer seeds itself when it is built, after the weights it starts from exist: a
    # reward model's new head and a LoRA adapter are made before that, from whatever state the
    # generators were in. Seeded first, the same command trains the same weights.
    if args.full_determinism:
        transformers.enable_full_determinism(args.seed)
    else:
        transformers.set_seed(args.seed)
    with _trl_errors():
        trainer, tokenizer, closers, judge = _trainer(opts, args, model_args, rows)
    _check_kept(trainer, len(rows), opts)
    main = trainer.is_world_process_zero()
    everyone = trainer.accelerator.wait_for_everyone
    everyone()  # every process has read the folder's state before the first changes it
    if state == "redo" and main:
        _clear(opts.output)
    if main:
        _write_marker(opts, settings, finished=False, principled=principled)
    everyone()  # ... and it is emptied before any process trains (and writes checkpoints)
    trainer.add_callback(_no_final_checkpoint())
    if quiet:
        trainer.remove_callback(transformers.PrinterCallback)
    for callback in callbacks:
        trainer.add_callback(callback)
    last = _last_checkpoint(opts.output) if state == "resume" else None
    if last is not None:
        log.info("resuming from %s", last)
    if judge is not None:  # what the judge graded before a checkpoint counts after it too
        trainer.add_callback(_tally_keeper(judge, last))
    try:
        with _trl_errors():
            result = trainer.train(resume_from_checkpoint=last)
    finally:
        for close in closers:
            close()
    _save(trainer, tokenizer, opts.output)
    # the judge's tally counts every process's completions (JudgedGRPOTrainer): the same
    # on each, so each decides alike
    tally = judge.tally if judge is not None else None
    bound = opts.max_ungraded_share if isinstance(opts, RLOptions) else 1.0
    too_many = tally is not None and tally.share > bound
    if main:
        _write_marker(opts, settings, finished=not too_many, judged=tally, principled=principled)
        if not too_many:
            for checkpoint in opts.output.glob("checkpoint-*"):
                shutil.rmtree(checkpoint, ignore_errors=True)
    everyone()  # the folder is whole before any process returns
    if too_many:
        assert tally is not None and judge is not None
        raise UngradedError(
            f"{judge.what} could not grade {tally} of the completions, more than "
            f"--max-ungraded {bound:g} allows; the model is saved in {opts.output} but not "
            f"marked finished. {judge.advice()}"
        )
    metrics = {k: float(v) for k, v in result.metrics.items() if isinstance(v, int | float)}
    if processes > 1 and "train_loss" in metrics:
        # transformers adds the steps since its last metric line to this process's share
        # alone: their mean over the processes is the run's loss
        loss = torch.tensor(metrics["train_loss"], device=trainer.accelerator.device)
        metrics["train_loss"] = float(trainer.accelerator.reduce(loss, reduction="mean"))
    return TrainResult(opts.output, int(result.global_step), False, metrics, tally, main)


@contextlib.contextmanager
def _trl_errors() -> Iterator[None]:
    """A setting TRL or transformers refuse (an option their trainer cannot use with this
    data or machine) as charter's one line."""
    try:
        yield
    except (ValueError, ImportError, NotImplementedError) as e:
        raise ConfigError(f"TRL: {' '.join(str(e).split())[:400]}") from e


def _check_kept(trainer: Any, given: int, opts: TrainOptions) -> None:
    """TRL drops examples longer than ``max_length`` without a word: say so, and stop when
    none is left."""
    kept = len(trainer.train_dataset)
    if kept == 0:
        raise InputError(
            f"{opts.input}: every one of the {given:,} example(s) is longer than max_length "
            f"({trainer.args.max_length}): raise it (--max_length N)"
        )
    if kept < given:
        log.warning(
            "%d of %d example(s) are longer than max_length (%s) and are left out",
            given - kept,
            given,
            trainer.args.max_length,
        )


def _no_final_checkpoint() -> Any:
    """transformers saves a checkpoint (weights and optimizer state) at the last step; the
    model is saved whole right after, and the checkpoint would only be deleted."""
    from transformers import TrainerCallback

    class NoFinalCheckpoint(TrainerCallback):  # type: ignore[misc]
        def on_step_end(self, args: Any, state: Any, control: Any, **kwargs: Any) -> Any:
            if state.max_steps and state.global_step >= state.max_steps:
                control.should_save = False
            return control

    return NoFinalCheckpoint()


JUDGED = "charter-judged.json"
"""In a checkpoint folder of ``rl --reward-judge``: what the judge had graded by then."""


def _tally_keeper(judge: CountedReward, resumed: str | None) -> Any:
    """Each checkpoint records the judge's tally; a run resumed from one starts from it, so
    a killed and resumed run reports (and is bounded by) the share over all its steps."""
    from transformers import TrainerCallback

    if resumed is not None and (Path(resumed) / JUDGED).is_file():
        kept = json.loads((Path(resumed) / JUDGED).read_text(encoding="utf-8"))
        judge.tally = JudgeTally(graded=int(kept["graded"]), ungraded=int(kept["ungraded"]))

    class KeepTally(TrainerCallback):  # type: ignore[misc]
        def on_save(self, args: Any, state: Any, control: Any, **kwargs: Any) -> Any:
            folder = Path(args.output_dir) / f"checkpoint-{state.global_step}"
            if state.is_world_process_zero and folder.is_dir():
                (folder / JUDGED).write_text(json.dumps(judge.tally.as_record()))
            return control

    return KeepTally()


def _last_checkpoint(folder: Path) -> str | None:
    """The newest ``checkpoint-N`` folder a killed run left, to resume from."""
    steps = [
        (int(p.name.split("-", 1)[1]), p)
        for p in folder.glob("checkpoint-*")
        if p.is_dir() and p.name.split("-", 1)[1].isdigit() and (p / "trainer_state.json").exists()
    ]
    return str(max(steps)[1]) if steps else None


def _rows(opts: TrainOptions) -> tuple[list[dict[str, Any]], dict[str, Any] | None]:
    """The training examples and, for a principle-conditioned reward model, what its folder
    records of that (``charter.principled``)."""
    method = opts.method
    if method == "sft":
        return data.sft_rows(opts.input), None
    if method == "rl":
        return data.prompt_rows(opts.input), None
    if isinstance(opts, RewardOptions) and opts.principle_conditioned:
        found = data.principle_rows(opts.input, opts.labels, opts.constitution)
        record = conditioning(found.constitution.name, found.constitution.hash)
        return found.rows, {**record, "examples": len(found.rows), "left_out": found.left_out}
    if isinstance(opts, RewardOptions) and opts.constitution is not None:
        raise ConfigError("--constitution goes with --principle-conditioned: add it or drop it")
    assert isinstance(opts, PreferenceOptions)
    return data.preference_rows(opts.input, opts.labels), None


def _trainer(
    opts: TrainOptions, args: Any, model_args: Any, rows: list[dict[str, Any]]
) -> tuple[Any, Any, list[Any], CountedReward | None]:
    """The TRL trainer for the method, its tokenizer, what to close after training, and the
    judge that rewards it (``rl --reward-judge``)."""
    from datasets import Dataset

    from charter.train import trainers

    method = opts.method
    head = "reward" if method == "reward" else "causal"
    remote_code = bool(getattr(args, "trust_remote_code", False))
    model, tokenizer = load_model(opts, head, model_args, remote_code)
    peft_config = _peft(model_args, head)
    dataset = Dataset.from_list(rows)
    common = {
        "model": model,
        "args": args,
        "train_dataset": dataset,
        "processing_class": tokenizer,
        "peft_config": peft_config,
    }
    if method == "sft":
        from trl import SFTTrainer

        return SFTTrainer(**common), tokenizer, [], None
    if method == "reward":
        assert isinstance(opts, PreferenceOptions)
        trainer = trainers.SoftRewardTrainer(**common, soft=opts.labels == "soft")
        return trainer, tokenizer, [], None
    if method == "dpo":
        assert isinstance(opts, PreferenceOptions)
        return trainers.SoftDPOTrainer(**common, soft=opts.labels == "soft"), tokenizer, [], None
    assert isinstance(opts, RLOptions)
    return _grpo(opts, common, tokenizer)


def _grpo(
    opts: RLOptions, common: dict[str, Any], tokenizer: Any
) -> tuple[Any, Any, list[Any], CountedReward | None]:
    import asyncio

    from charter.train.trainers import JudgedGRPOTrainer

    funcs: list[Any] = []
    judge: CountedReward | None = None
    folders = iter(reward_folders(opts))
    sole = len(opts.reward) + (opts.reward_judge is not None) == 1
    for spec in opts.reward:  # in the order given, as --reward-weights weighs them
        if is_url(spec):
            judge = RemoteReward(spec, sole=sole)
            funcs.append(judge)
        else:
            funcs.append(next(folders))
    if opts.reward_judge is not None:
        from charter.rubric import load_rubric

        options = {"base_url": opts.base_url} if opts.base_url else {}
        judge = JudgeReward(
            opts.reward_judge,
            load_rubric(opts.rubric),
            backend_options=options,
            concurrency=opts.concurrency,
            seed=opts.seed,
            # with no reward model beside it, a step the judge grades nothing of has no reward
            sole=sole,
        )
        funcs.append(judge)
    if judge is not None:
        # it says what it left ungraded, once a batch: not TRL's whole prompt each time
        logging.getLogger("trl.trainer.grpo_trainer").addFilter(_unrewarded)
    trainer = JudgedGRPOTrainer(reward_funcs=funcs, judge=judge, **common)
    closers: list[Any] = []
    if judge is not None:

        def close() -> None:
            future = asyncio.run_coroutine_threadsafe(judge.aclose(), trainer.async_loop)
            future.result(timeout=30)

        closers.append(close)
    return trainer, tokenizer, closers, judge


def _unrewarded(record: logging.LogRecord) -> bool:
    """Drops TRL's warning for a completion no reward function rewarded (it prints the whole
    prompt and completion): charter's judge reports those itself."""
    return "All reward functions returned None" not in record.getMessage()


def _save(trainer: Any, tokenizer: Any, folder: Path) -> None:
    """The trained model as a plain HF folder with its tokenizer: a LoRA adapter is merged
    in; otherwise the trainer saves it (gathering the weights under FSDP or ZeRO-3)."""
    model = trainer.accelerator.unwrap_model(trainer.model)
    if not hasattr(model, "merge_and_unload"):
        trainer.save_model(str(folder))
        return
    merged = model.merge_and_unload()
    if trainer.is_world_process_zero():
        merged.save_pretrained(folder)
        tokenizer.save_pretrained(folder)

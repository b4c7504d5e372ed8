"""``rm/<folder>``: a trained reward model as a judge.

The folder holds an ``AutoModelForSequenceClassification`` with one output and its tokenizer,
as TRL's RewardTrainer saves it. An answer is scored exactly as the trainer saw it: the
conversation plus the answer as the assistant's turn, through the chat template (no generation
prompt), the reward read at the last token that is not padding. Concurrent requests are
gathered into right-padded batches (as TRL's collator pads) and run in a worker thread.

A model trained with ``charter train reward --principle-conditioned`` (its folder's
``charter-train.json`` says so) scores an answer under a principle, shown as it was in
training (``charter.principled``); asked for a reward without one, it refuses.
"""

from __future__ import annotations

import asyncio
import json
import math
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from charter.backends.base import Capabilities
from charter.backends.hf import MAX_BATCH_SIZE, BatchWorker, import_torch, local_options
from charter.backends.weights import weights_fingerprint
from charter.errors import BackendError, ConfigError
from charter.principled import trained_record, with_principle
from charter.types import GenerateConfig, Generation, Message, OptionScores, Reward

TRAINED_BY = "an AutoModelForSequenceClassification with num_labels=1, as TRL's RewardTrainer saves"
_Job = tuple[list[int], "asyncio.Future[Reward]"]


class RewardModelBackend:
    """A sequence-classification model with one output: ``reward`` scores, nothing else."""

    def __init__(
        self,
        name: str,
        path: str,
        *,
        device: str | None = None,
        max_batch_size: int = MAX_BATCH_SIZE,
    ) -> None:
        folder = Path(path)
        if not folder.is_dir():
            raise ConfigError(f"{name}: no such folder (rm/ takes a folder holding {TRAINED_BY})")
        check_reward_folder(name, folder)
        self.principled = trained_record(name, folder)
        """What its folder records of a principle-conditioned training (the format, the
        constitution); None: it was shown no principle."""
        self.principle_format = None if self.principled is None else self.principled["format"]
        """How the model was shown a principle in training; None: it was shown none."""
        torch, transformers = import_torch()
        self._torch = torch
        self.name = name
        self.capabilities = Capabilities(
            option_logprobs=False, reward=True, principles=self.principle_format is not None
        )
        self.device = device or ("cuda" if torch.cuda.is_available() else "cpu")
        self.max_batch_size = max_batch_size
        try:
            self.tokenizer = transformers.AutoTokenizer.from_pretrained(path)
            self.model, info = transformers.AutoModelForSequenceClassification.from_pretrained(
                path,
                dtype=torch.float32 if self.device == "cpu" else "auto",
                output_loading_info=True,
            )
        except (OSError, ValueError, KeyError) as e:
            raise ConfigError(f"{name}: cannot load: {' '.join(str(e).split())[:300]}") from e
        if info.get("missing_keys"):
            missing = ", ".join(sorted(info["missing_keys"])[:3])
            raise ConfigError(f"{name}: untrained weights ({missing}); expected {TRAINED_BY}")
        if self.model.config.num_labels != 1:
            raise ConfigError(
                f"{name}: the model has {self.model.config.num_labels} outputs; "
                f"expected {TRAINED_BY}"
            )
        if not getattr(self.tokenizer, "chat_template", None):
            raise ConfigError(f"{name}: the tokenizer has no chat template")
        # As TRL's RewardTrainer: the model finds each row's last token by the pad id.
        if self.tokenizer.pad_token is None:
            self.tokenizer.pad_token = self.tokenizer.eos_token
        if self.tokenizer.pad_token_id is None:
            raise ConfigError(f"{name}: the tokenizer has neither a pad nor an eos token")
        self.model.config.get_text_config().pad_token_id = self.tokenizer.pad_token_id
        self.model.to(self.device).eval()
        self.server = f"weights:{weights_fingerprint(folder)}"
        """Keeps cached rewards of a model apart from those of another saved in its place."""
        self._batches: BatchWorker[_Job] = BatchWorker(self._run_batches)
        self.on_batch: Callable[[int], object] | None = None
        """Told the size of each batch run (``charter serve``'s metrics)."""

    async def reward(
        self, messages: Sequence[Message], response: str, principle: str | None = None
    ) -> Reward:
        """The reward of ``response`` after ``messages``; a principle-conditioned model's
        under ``principle`` (its rule), which it needs and an ordinary model cannot take."""
        if self.principle_format is not None:
            if principle is None:
                raise ConfigError(
                    f"{self.name} is principle-conditioned: it scores an answer under a "
                    "principle, and none was given (label --constitution C, score --rubric R)"
                )
            messages = with_principle(messages, principle)
        elif principle is not None:
            raise ConfigError(f"{self.name} was not trained to follow a principle")
        ids = self.encode(messages, response)
        fut: asyncio.Future[Reward] = asyncio.get_running_loop().create_future()
        self._batches.put((ids, fut))
        return await fut

    async def generate(self, messages: Sequence[Message], config: GenerateConfig) -> Generation:
        raise ConfigError(
            f"{self.name} is a reward model: it scores answers and cannot write text "
            "(use it as a --judge of label or score)"
        )

    async def option_logprobs(
        self, messages: Sequence[Message], options: Sequence[str], config: GenerateConfig
    ) -> OptionScores:
        raise ConfigError(f"{self.name} is a reward model: it has no option log-probabilities")

    async def aclose(self) -> None:
        self._batches.close()

    def encode(self, messages: Sequence[Message], response: str) -> list[int]:
        """Token ids as TRL's RewardTrainer builds them for conversational data; an answer
        longer than the model's context fails its own request, not its batch."""
        conversation = [{"role": m.role, "content": m.content} for m in messages]
        conversation.append({"role": "assistant", "content": response})
        enc = self.tokenizer.apply_chat_template(conversation, tokenize=True, return_dict=True)
        ids: list[int] = list(enc["input_ids"])
        limit = getattr(self.model.config.get_text_config(), "max_position_embeddings", None)
        if limit and len(ids) > limit:
            raise BackendError(
                f"{self.name}: conversation and answer are {len(ids)} tokens; "
                f"the model's context is {limit}"
            )
        return ids

    async def _run_batches(self, queue: asyncio.Queue[_Job]) -> None:
        while True:
            batch = [await queue.get()]
            await asyncio.sleep(0)  # let callers that are ready enqueue theirs too
            while not queue.empty() and len(batch) < self.max_batch_size:
                batch.append(queue.get_nowait())
            batch = [job for job in batch if not job[1].cancelled()]
            if not batch:
                continue
            if self.on_batch is not None:
                self.on_batch(len(batch))
            try:
                values = await asyncio.to_thread(self.score_batch, [ids for ids, _ in batch])
            except Exception as e:  # one failure fails the batch, never the worker
                err = e if isinstance(e, BackendError) else BackendError(f"{self.name}: {e}")
                for _, fut in batch:
                    if not fut.done():
                        fut.set_exception(err)
                continue
            for (ids, fut), value in zip(batch, values, strict=True):
                if fut.done():
                    continue
                if math.isfinite(value):
                    fut.set_result(Reward(value=value, prompt_tokens=len(ids)))
                else:
                    fut.set_exception(BackendError(f"{self.name}: the reward is {value}"))

    def score_batch(self, rows: Sequence[Sequence[int]]) -> list[float]:
        """Rewards of tokenised rows, run together right-padded (as TRL's collator pads)."""
        torch = self._torch
        width = max(len(r) for r in rows)
        ids = torch.full((len(rows), width), self.tokenizer.pad_token_id, dtype=torch.long)
        mask = torch.zeros((len(rows), width), dtype=torch.long)
        for i, row in enumerate(rows):
            ids[i, : len(row)] = torch.tensor(row, dtype=torch.long)
            mask[i, : len(row)] = 1
        with torch.inference_mode():
            logits = self.model(
                input_ids=ids.to(self.device), attention_mask=mask.to(self.device)
            ).logits
        return [float(v) for v in logits[:, 0].float().cpu()]


def check_reward_folder(name: str, folder: Path) -> None:
    """Refuse a folder that holds no model, or a causal LM, before importing torch."""
    config = folder / "config.json"
    try:
        data = json.loads(config.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ConfigError(f"{name}: no config.json: not a model folder") from None
    except (OSError, ValueError) as e:
        raise ConfigError(f"{name}: unreadable config.json ({e})") from e
    archs = data.get("architectures") if isinstance(data, dict) else None
    if archs and not any(str(a).endswith("ForSequenceClassification") for a in archs):
        raise ConfigError(f"{name}: holds a {archs[0]}, not a reward model ({TRAINED_BY})")


def create(model: str, **options: Any) -> RewardModelBackend:
    if not model:
        raise ConfigError("rm/ needs a folder holding a reward model, e.g. rm/./my-reward-model")
    return RewardModelBackend(f"rm/{model}", model, **local_options("rm/", options))

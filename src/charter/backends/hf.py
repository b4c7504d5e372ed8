"""``hf/<path-or-id>``: a local transformers model.

Concurrent requests are gathered into batches (left-padded) and run in a worker thread, so
the event loop stays free and stages keep the same async interface as for remote servers.
Option log-probabilities come from one forward pass, with no generation.
"""

from __future__ import annotations

import asyncio
import math
from collections.abc import Callable, Coroutine, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Generic, TypeVar

from pydantic import Field

from charter.backends.base import BackendOptions, Capabilities, option_spellings, parse_options
from charter.errors import BackendError, ConfigError
from charter.types import FinishReason, GenerateConfig, Generation, Message, OptionScores

INSTALL_HINT = "the hf, rm and smollm2 backends need the local extra: pip install 'charter[local]'"
MAX_BATCH_SIZE = 16
"""Requests run together in one forward pass when none is given."""


def import_torch() -> tuple[Any, Any]:
    """Import torch and transformers, or say which pip command fixes their absence."""
    try:
        import torch
        import transformers
    except ImportError as e:
        raise ConfigError(f"{INSTALL_HINT} ({e})") from e
    transformers.utils.logging.set_verbosity_error()  # type: ignore[no-untyped-call]
    transformers.utils.logging.disable_progress_bar()  # type: ignore[no-untyped-call]
    return torch, transformers


def import_transformers() -> Any:
    """transformers alone (for a tokenizer: no weights), or which pip command fixes it."""
    try:
        import transformers
    except ImportError as e:
        raise ConfigError(f"{INSTALL_HINT} ({e})") from e
    transformers.utils.logging.set_verbosity_error()  # type: ignore[no-untyped-call]
    return transformers


@dataclass
class _Job:
    kind: str
    messages: Sequence[Message]
    config: GenerateConfig
    options: Sequence[str]
    future: asyncio.Future[Any] = field(repr=False)

    def batch_key(self) -> tuple[Any, ...]:
        if self.kind == "options":
            return ("options", tuple(self.options))
        # Each row samples from its own seeded generator (see _RowSampler), so requests with
        # different seeds batch together and every output stays reproducible.
        return ("generate", self.config.model_copy(update={"seed": None}))


J = TypeVar("J")


class BatchWorker(Generic[J]):
    """One task on the running event loop that drains a queue of jobs in batches (``drain``
    is its body). It starts on first use, and again under a new ``asyncio.run()``: a local
    model outlives the event loop of one run, and a task belongs to one loop."""

    def __init__(self, drain: Callable[[asyncio.Queue[J]], Coroutine[Any, Any, None]]) -> None:
        self._drain = drain
        self._queue: asyncio.Queue[J] | None = None
        self._task: asyncio.Task[None] | None = None

    def put(self, job: J) -> None:
        loop = asyncio.get_running_loop()
        if (
            self._queue is None
            or self._task is None
            or self._task.done()
            or self._task.get_loop() is not loop
        ):
            self._queue = asyncio.Queue()
            self._task = loop.create_task(self._drain(self._queue))
        self._queue.put_nowait(job)

    def close(self) -> None:
        if self._task is not None:
            self._task.cancel()
            self._task = None


_NEW_TURN = {"add_generation_prompt": True}
_OPEN_TURN = {"add_generation_prompt": False, "continue_final_message": True}


def chat_text(tokenizer: Any, messages: Sequence[Message]) -> str:
    """The prompt as the chat template writes it, ending with an open assistant turn: a new
    one, or the last message's when it is the assistant's (continued, not closed). Its tokens
    are what a local model reads (``--estimate`` counts them the same way)."""
    text: str = tokenizer.apply_chat_template(
        [{"role": m.role, "content": m.content} for m in messages],
        tokenize=False,
        **_OPEN_TURN if messages and messages[-1].role == "assistant" else _NEW_TURN,
    )
    return text


class HFBackend:
    """A transformers causal LM with batched generation and forward-pass option scoring."""

    def __init__(
        self,
        name: str,
        path: str,
        *,
        device: str | None = None,
        max_batch_size: int = MAX_BATCH_SIZE,
        **load_kwargs: Any,
    ) -> None:
        torch, transformers = import_torch()
        self._torch = torch
        self.name = name
        self.capabilities = Capabilities(option_logprobs=True, continue_final=True)
        self.device = device or ("cuda" if torch.cuda.is_available() else "cpu")
        self.max_batch_size = max_batch_size
        try:
            self.tokenizer = transformers.AutoTokenizer.from_pretrained(path, **load_kwargs)
            self.model = transformers.AutoModelForCausalLM.from_pretrained(
                path, dtype=torch.float32 if self.device == "cpu" else "auto", **load_kwargs
            )
        except (OSError, ValueError) as e:
            raise ConfigError(
                f"cannot load local model {path!r}: {' '.join(str(e).split())[:300]}"
            ) from e
        self.model.to(self.device).eval()
        self.tokenizer.padding_side = "left"
        if self.tokenizer.pad_token is None:
            self.tokenizer.pad_token = self.tokenizer.eos_token
        if not getattr(self.tokenizer, "chat_template", None):
            raise ConfigError(f"local model {path!r} has no chat template")
        self._batches: BatchWorker[_Job] = BatchWorker(self._run_batches)
        self._option_ids: dict[str, list[int]] = {}
        self.server: str | None = None
        """Set for a local folder: a fingerprint of its weights (the request cache's key)."""

    # -- async side: gather concurrent requests into batches -------------------------------
    async def _submit(
        self,
        job_kind: str,
        messages: Sequence[Message],
        config: GenerateConfig,
        options: Sequence[str] = (),
    ) -> Any:
        self._check_length(messages)
        fut: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        self._batches.put(_Job(job_kind, messages, config, options, fut))
        return await fut

    async def _run_batches(self, queue: asyncio.Queue[_Job]) -> None:
        pending: list[_Job] = []
        while True:
            if not pending:
                pending.append(await queue.get())
            await asyncio.sleep(0)  # let callers that are ready enqueue theirs too
            while not queue.empty():
                pending.append(queue.get_nowait())
            key = pending[0].batch_key()
            batch = [j for j in pending if j.batch_key() == key][: self.max_batch_size]
            pending = [j for j in pending if j not in batch]
            batch = [j for j in batch if not j.future.cancelled()]
            if not batch:
                continue
            try:
                if key[0] == "options":
                    results: list[Any] = await asyncio.to_thread(
                        self._score_batch, [j.messages for j in batch], batch[0].options
                    )
                else:
                    results = await asyncio.to_thread(
                        self._generate_batch,
                        [j.messages for j in batch],
                        batch[0].config,
                        [j.config.seed for j in batch],
                    )
            except Exception as e:  # one failure fails the batch, never the worker
                err = e if isinstance(e, BackendError) else BackendError(f"{self.name}: {e}")
                for j in batch:
                    if not j.future.done():
                        j.future.set_exception(err)
                continue
            for j, r in zip(batch, results, strict=True):
                if not j.future.done():
                    j.future.set_result(r)

    async def generate(self, messages: Sequence[Message], config: GenerateConfig) -> Generation:
        result: Generation = await self._submit("generate", messages, config)
        return result

    async def option_logprobs(
        self, messages: Sequence[Message], options: Sequence[str], config: GenerateConfig
    ) -> OptionScores:
        result: OptionScores = await self._submit("options", messages, config, options)
        return result

    async def aclose(self) -> None:
        self._batches.close()

    def _check_length(self, messages: Sequence[Message]) -> None:
        """A prompt longer than the context fails its own request, not its whole batch."""
        limit = getattr(self.model.config, "max_position_embeddings", None)
        if not limit:
            return
        ids = self.tokenizer(self._chat_text(messages), add_special_tokens=False)["input_ids"]
        n = len(ids["input_ids"] if isinstance(ids, dict) or hasattr(ids, "keys") else ids)
        if n >= limit:
            raise BackendError(f"{self.name}: prompt is {n} tokens; the model's context is {limit}")

    def _chat_text(self, messages: Sequence[Message]) -> str:
        return chat_text(self.tokenizer, messages)

    # -- worker thread: plain torch -------------------------------------------------------
    def _encode(self, conversations: Sequence[Sequence[Message]]) -> Any:
        texts = [self._chat_text(conv) for conv in conversations]
        enc = self.tokenizer(texts, return_tensors="pt", padding=True, add_special_tokens=False)
        return enc.to(self.device)

    def _generate_batch(
        self,
        conversations: Sequence[Sequence[Message]],
        config: GenerateConfig,
        seeds: Sequence[int | None],
    ) -> list[Generation]:
        torch = self._torch
        from transformers import LogitsProcessorList

        enc = self._encode(conversations)
        kwargs: dict[str, Any] = {
            "max_new_tokens": config.max_tokens,
            "do_sample": False,
            "pad_token_id": self.tokenizer.pad_token_id,
            "temperature": None,
            "top_p": None,
            "top_k": None,
        }
        if config.temperature > 0:
            sampler = _RowSampler(torch, seeds, config.temperature, config.top_p, self.device)
            kwargs["logits_processor"] = LogitsProcessorList([sampler])
        with torch.inference_mode():
            out = self.model.generate(**enc, **kwargs)
        prompt_len = enc["input_ids"].shape[1]
        eos_ids = self._eos_ids()
        results = []
        for row, mask in zip(out, enc["attention_mask"], strict=True):
            new = row[prompt_len:].tolist()
            cut = next((i for i, t in enumerate(new) if t in eos_ids), None)
            finish: FinishReason = "stop" if cut is not None else "length"
            tokens = new if cut is None else new[:cut]
            text = self.tokenizer.decode(tokens, skip_special_tokens=True)
            for s in config.stop:
                if s in text:
                    text, finish = text.split(s, 1)[0], "stop"
            results.append(
                Generation(
                    text=text.strip(),
                    finish_reason=finish,
                    prompt_tokens=int(mask.sum()),
                    completion_tokens=len(tokens),
                )
            )
        return results

    def _eos_ids(self) -> set[int]:
        ids = self.model.generation_config.eos_token_id
        found = set(ids if isinstance(ids, list) else [ids] if ids is not None else [])
        if self.tokenizer.eos_token_id is not None:
            found.add(self.tokenizer.eos_token_id)
        return found

    def option_token_ids(self, option: str) -> list[int]:
        """Vocabulary ids whose single token spells ``option`` (``A``, `` A``, ``(A``...)."""
        if option not in self._option_ids:
            ids: list[int] = []
            for spelling in option_spellings(option):
                enc = self.tokenizer.encode(spelling, add_special_tokens=False)
                if len(enc) == 1 and enc[0] not in ids:
                    ids.append(enc[0])
            if not ids:
                raise BackendError(f"{self.name}: option {option!r} is not a single token")
            self._option_ids[option] = ids
        return self._option_ids[option]

    def _score_batch(
        self, conversations: Sequence[Sequence[Message]], options: Sequence[str]
    ) -> list[OptionScores]:
        torch = self._torch
        rows = [self._token_ids(c) for c in conversations]
        with torch.inference_mode():
            shared = _common_prefix(rows)
            if shared >= MIN_SHARED_PREFIX:
                logits = self._last_logits_shared(rows, shared)
            else:
                logits = self._last_logits_padded(conversations)
        logprobs = torch.log_softmax(logits.float(), dim=-1)
        ids = {o: self.option_token_ids(o) for o in options}
        results = []
        for row, tokens in zip(logprobs, rows, strict=True):
            scores: dict[str, float | None] = {}
            for o in options:
                value = float(torch.logsumexp(row[ids[o]], dim=0))
                scores[o] = value if math.isfinite(value) else None
            results.append(OptionScores(logprobs=scores, prompt_tokens=len(tokens)))
        return results

    def _token_ids(self, conversation: Sequence[Message]) -> list[int]:
        text = self._chat_text(conversation)
        ids: list[int] = self.tokenizer(text, add_special_tokens=False)["input_ids"]
        return ids

    def _last_logits_padded(self, conversations: Sequence[Sequence[Message]]) -> Any:
        """Next-token logits for left-padded rows. Only the last position's logits are
        computed: all of them would cost a (prompt length x vocabulary) matmul for nothing."""
        enc = self._encode(conversations)
        mask = enc["attention_mask"]
        positions = (mask.cumsum(-1) - 1).clamp(min=0)
        return self.model(
            input_ids=enc["input_ids"],
            attention_mask=mask,
            position_ids=positions,
            logits_to_keep=1,
            use_cache=False,
        ).logits[:, -1, :]

    def _last_logits_shared(self, rows: Sequence[Sequence[int]], shared: int) -> Any:
        """Next-token logits when every row starts with the same ``shared`` tokens (the judge
        template's instructions): the prefix is run once and its key/value cache reused by all
        rows, whose right-padded suffixes are then run together."""
        torch = self._torch
        prefix = torch.tensor([list(rows[0][:shared])], device=self.device)
        cache = self.model(input_ids=prefix, use_cache=True).cache
        n = len(rows)
        if n > 1:
            cache.batch_repeat_interleave(n)
        suffixes = [list(r[shared:]) for r in rows]
        width = max(len(x) for x in suffixes)
        ids = torch.full(
            (n, width), self.tokenizer.pad_token_id, dtype=torch.long, device=self.device
        )
        mask = torch.zeros((n, shared + width), dtype=torch.long, device=self.device)
        mask[:, :shared] = 1
        for i, suffix in enumerate(suffixes):
            ids[i, : len(suffix)] = torch.tensor(suffix, device=self.device)
            mask[i, shared : shared + len(suffix)] = 1
        positions = (shared + torch.arange(width, device=self.device)).expand(n, width)
        last = torch.tensor([len(x) - 1 for x in suffixes], device=self.device)
        keep = torch.unique(last)  # logits only where some row ends
        logits = self.model(
            input_ids=ids,
            attention_mask=mask,
            position_ids=positions,
            cache=cache,
            use_cache=True,
            logits_to_keep=keep,
        ).logits
        column = torch.searchsorted(keep, last)
        return logits[torch.arange(n, device=self.device), column]


MIN_SHARED_PREFIX = 32
"""Shorter shared prefixes are not worth a separate forward pass."""


def _common_prefix(rows: Sequence[Sequence[int]]) -> int:
    """Tokens all rows share at the start, leaving every row at least one token of its own."""
    shortest = min(len(r) for r in rows)
    n = 0
    while n < shortest - 1 and all(r[n] == rows[0][n] for r in rows):
        n += 1
    return n


class _RowSampler:
    """Samples each row with its own seeded generator, then leaves only the sampled token
    finite, so greedy decoding picks it. Output depends on the row's seed, not on which other
    requests share its batch."""

    def __init__(
        self,
        torch: Any,
        seeds: Sequence[int | None],
        temperature: float,
        top_p: float,
        device: str,
    ) -> None:
        self.torch = torch
        self.temperature = temperature
        self.top_p = top_p
        self.generators = []
        for seed in seeds:
            g = torch.Generator(device=device)
            g.manual_seed(seed if seed is not None else int(torch.seed()) & 0x7FFFFFFF)
            self.generators.append(g)

    def __call__(self, input_ids: Any, scores: Any) -> Any:
        torch = self.torch
        logits = scores.float() / self.temperature
        if self.top_p < 1.0:
            ordered, index = torch.sort(logits, descending=True, dim=-1)
            cumulative = torch.softmax(ordered, dim=-1).cumsum(dim=-1)
            drop = cumulative - torch.softmax(ordered, dim=-1) >= self.top_p
            ordered = ordered.masked_fill(drop, float("-inf"))
            logits = torch.full_like(logits, float("-inf")).scatter(-1, index, ordered)
        probs = torch.softmax(logits, dim=-1)
        out = torch.full_like(scores, float("-inf"))
        for row, generator in enumerate(self.generators):
            token = torch.multinomial(probs[row], 1, generator=generator)
            out[row, token] = 0.0
        return out


class HFOptions(BackendOptions):
    """Options of the local backends, ``hf/<path-or-id>``, ``rm/<folder>`` and ``smollm2``."""

    device: str | None = None
    """torch device, e.g. ``cpu`` or ``cuda:1`` (default: cuda if available, else cpu)."""
    max_batch_size: int = Field(default=MAX_BATCH_SIZE, ge=1)
    """Requests run together in one forward pass."""


def local_options(backend: str, options: dict[str, Any]) -> dict[str, Any]:
    """``options`` checked for a local backend, as HFBackend's keyword arguments (the shared
    timeout and base_url are dropped: the model wrapper enforces the timeout)."""
    opts = parse_options(backend, HFOptions, options)
    return opts.model_dump(exclude=set(BackendOptions.model_fields))


def create(model: str, **options: Any) -> HFBackend:
    if not model:
        raise ConfigError("hf/ needs a local path or model id, e.g. hf/./my-model")
    backend = HFBackend(f"hf/{model}", model, **local_options("hf/", options))
    if Path(model).is_dir():  # a local folder may be trained again under the same name
        from charter.backends.weights import weights_fingerprint

        backend.server = f"weights:{weights_fingerprint(Path(model))}"
    return backend

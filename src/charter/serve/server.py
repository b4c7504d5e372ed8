"""``charter serve``: rewards over HTTP for RL engines.

API (with a token, every POST needs ``Authorization: Bearer TOKEN`` or ``?token=TOKEN``):

- ``POST /get_reward`` — OpenRLHF's remote reward model (``--remote_rm_url URL/get_reward``):
  ``{"query": [str], "prompts": [str]?, "labels": [str]?}`` -> ``{"rewards": [float],
  "scores": [float], "extra_logs": {"ungraded": [0|1]}}``. Each query is the prompt as the
  policy's chat template rendered it, then the response, special tokens left in. The response
  is what follows the query's prompt (``prompts``) or, without one, the last assistant marker
  of ``--template``; the prompt's turns are read back with that template, and a prompt in no
  template is one user message. ``labels`` carry the reference answers of ``--constitution``.
- ``POST /v1/rewards`` — charter's own: ``{"messages": [...], "completions": [str],
  "reference": str?, "allow_ungraded": bool?}`` -> ``{"rewards": [float|null], "ungraded":
  [{"index", "why"}]}``; null only with ``allow_ungraded`` (TRL's "no reward").
- ``GET /health``: what is served; ``GET /metrics``: Prometheus text.

A completion no source can reward gets ``--ungraded-reward`` where one is stated, else the
request is answered 502 naming it (``allow_ungraded``: null); either way it is counted. A
judge that cannot be asked at all answers 503. Bad requests get 4xx ``{"error": ...}`` naming
the field.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from aiohttp import web

from charter.errors import ConfigError, Refused
from charter.rewards import FATAL, Query, Rewarded, RewardMix
from charter.serve.chat import ChatFormat
from charter.serve.metrics import Metrics
from charter.serve.options import ServeOptions
from charter.types import Message
from charter.web import (
    check_token,
    error_response,
    is_loopback,
    json_body,
    json_response,
    listen,
    own_names,
    resolve_token,
)

log = logging.getLogger("charter")

MAX_BODY = 256 * 1024 * 1024
"""Largest request body: a few thousand long completions."""
Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


@dataclass
class Service:
    """What the server answers with: the reward mix, how to read rendered prompts, what to
    give an ungraded completion, and what it has counted."""

    mix: RewardMix
    chat: ChatFormat | None = None
    ungraded_reward: float | None = None
    max_batch: int = 4096
    metrics: Metrics = field(default_factory=Metrics)
    closers: list[Callable[[], Awaitable[None]]] = field(default_factory=list)
    info: dict[str, Any] = field(default_factory=dict)
    """What /health says is served."""

    async def reward(self, queries: Sequence[Query], route: str) -> list[Rewarded]:
        """Each completion's reward, counted; a judge that cannot be asked is a 503."""
        self.metrics.completions.labels(route).inc(len(queries))
        self.metrics.batch_size.labels(route).observe(len(queries))
        try:
            results = await self.mix.many(queries)
        except FATAL as e:
            raise Refused(503, f"the judge cannot be asked: {e}") from e
        done = []
        for r in results:
            if r.reward is None:
                self.metrics.ungraded.labels(route).inc()
                if self.ungraded_reward is not None:
                    r = Rewarded(self.ungraded_reward, r.why, r.parts)
            done.append(r)
        return done

    def unrewarded(self, results: Sequence[Rewarded], field: str) -> None:
        """A 502 naming the first completion with no reward (there is no stated one)."""
        for i, r in enumerate(results):
            if r.reward is None:
                n = sum(x.reward is None for x in results)
                raise Refused(
                    502,
                    f"{field}[{i}]: no reward ({r.why}); {n} of {len(results)} ungraded. "
                    "Start charter serve with --ungraded-reward X to give such completions X",
                )

    async def aclose(self) -> None:
        for close in self.closers:
            await close()


# -- requests ---------------------------------------------------------------------------
def _strings(
    data: dict[str, Any], key: str, n: int | None, *, required: bool, limit: int | None = None
) -> list[Any]:
    """A list of strings: ``n`` of them where given, at least one and at most ``limit`` of
    a required one."""
    value = data.get(key)
    if value is None:
        if required:
            raise Refused(400, f"'{key}': give a list of strings")
        return []
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise Refused(400, f"'{key}': give a list of strings")
    if n is not None and len(value) != n:
        raise Refused(400, f"'{key}': {len(value)} item(s) for {n} quer(ies)")
    if required and not value:
        raise Refused(400, f"'{key}': give at least one")
    if limit is not None and len(value) > limit:
        raise Refused(413, f"'{key}': {len(value)} items; at most {limit}")
    return value


def _references(data: dict[str, Any], key: str, n: int, service: Service) -> list[str | None]:
    """Each query's reference answer (OpenRLHF's labels): required by a --constitution judge,
    which compares with it; a rubric judge sees a string one too."""
    value = data.get(key)
    if not service.mix.needs_reference:
        if isinstance(value, list) and len(value) == n:
            return [v if isinstance(v, str) and v.strip() else None for v in value]
        return [None] * n
    if not isinstance(value, list) or len(value) != n:
        raise Refused(
            400,
            f"'{key}': give each query's reference answer (a string): --constitution compares "
            "each completion with it",
        )
    for i, v in enumerate(value):
        if not isinstance(v, str) or not v.strip():
            raise Refused(400, f"'{key}[{i}]': the reference answer, a non-empty string")
    return list(value)


def openrlhf_queries(data: dict[str, Any], service: Service) -> list[Query]:
    """The completions of an OpenRLHF request, each split into its conversation and its
    response."""
    queries = _strings(data, "query", None, required=True, limit=service.max_batch)
    prompts = _strings(data, "prompts", len(queries), required=False)
    refs = _references(data, "labels", len(queries), service)
    chat = service.chat
    out = []
    for i, text in enumerate(queries):
        given = prompts[i] if prompts else None
        split = _split(text, given, chat)
        if split is None:
            raise Refused(400, f"'query[{i}]': " + _unsplit(i, given, chat))
        prompt, response, by_marker = split
        if by_marker:
            service.metrics.split_by_marker.inc()
        messages = chat.messages(prompt) if chat is not None else None
        if messages is None:
            if chat is not None and chat.has_markers(chat.strip_padding(prompt)):
                field = f"prompts[{i}]" if given and not by_marker else f"query[{i}]"
                raise Refused(
                    400, f"'{field}': holds {chat.name}'s turn markers but not as its turns"
                )
            messages = [Message(role="user", content=prompt)]  # a prompt in no template
        out.append(Query(messages=messages, response=response, reference=refs[i]))
    return out


def _unsplit(i: int, prompt: str | None, chat: ChatFormat | None) -> str:
    """Why a query could not be split, and what would split it."""
    template = "start charter serve with --template MODEL (the policy's chat template)"
    if chat is None and prompt:
        return f"does not start with prompts[{i}]; or {template} to split at its marker"
    if chat is None:
        return f"cannot be split: give 'prompts', or {template}"
    if prompt:
        return f"does not start with prompts[{i}], and holds no assistant marker of {chat.name}"
    return f"holds no assistant marker of {chat.name}: give 'prompts'"


def _split(query: str, prompt: str | None, chat: ChatFormat | None) -> tuple[str, str, bool] | None:
    """(prompt, response, whether split at the marker): after the given prompt where the
    query starts with it (padding aside), else after the template's last assistant marker (an
    empty prompt is none). A policy can game the marker (a response that writes one has only
    its tail rewarded): clients should send prompts; the fallback is counted."""
    if prompt:
        bare_query = chat.strip_padding(query) if chat else query
        bare_prompt = chat.strip_padding(prompt) if chat else prompt
        if bare_query.startswith(bare_prompt):
            response = bare_query[len(bare_prompt) :]
            return bare_prompt, chat.strip_end(response) if chat else response, False
    split = chat.split(query) if chat is not None else None
    return (*split, True) if split is not None else None


def charter_queries(data: dict[str, Any], service: Service) -> list[Query]:
    """The completions of a /v1/rewards request."""
    raw = data.get("messages")
    if not isinstance(raw, list) or not raw:
        raise Refused(400, "'messages': give the conversation, a list of {role, content}")
    messages = []
    for i, m in enumerate(raw):
        if (
            not isinstance(m, dict)
            or m.get("role") not in ("system", "user", "assistant")
            or not isinstance(m.get("content"), str)
        ):
            raise Refused(400, f"'messages[{i}]': {{role: system|user|assistant, content: string}}")
        messages.append(Message(role=m["role"], content=m["content"]))
    if messages[-1].role != "user":
        raise Refused(
            400, f"'messages[{len(raw) - 1}]': end with the user turn the completions answer"
        )
    completions = _strings(data, "completions", None, required=True, limit=service.max_batch)
    reference = data.get("reference")
    if service.mix.needs_reference and (not isinstance(reference, str) or not reference.strip()):
        raise Refused(
            400, "'reference': the reference answer (a string) --constitution compares with"
        )
    if reference is not None and not isinstance(reference, str):
        raise Refused(400, "'reference': a string")
    if not isinstance(data.get("allow_ungraded", False), bool):
        raise Refused(400, "'allow_ungraded': true or false")
    return [Query(messages=messages, response=c, reference=reference or None) for c in completions]


# -- the app ----------------------------------------------------------------------------
def build_app(service: Service, *, token: str | None, host: str) -> web.Application:
    """The API over ``service``. On loopback, requests naming another host are refused."""
    loopback, names = is_loopback(host), own_names(host)
    metrics = service.metrics

    @web.middleware
    async def guard(request: web.Request, handler: Handler) -> web.StreamResponse:
        start = time.perf_counter()
        route = request.path if request.path in ROUTES else "other"
        counted = route != "/metrics"  # a scrape is not a request in flight
        if counted:
            metrics.in_flight.inc()
        try:
            if loopback and (request.url.host or "").lower() not in names:
                raise Refused(403, "this server answers to its loopback address only")
            if token is not None and request.method == "POST":
                check_token(request, token, in_query=True)
            response = await handler(request)
        except Refused as e:
            response = error_response(e.status, str(e))
            if e.status >= 500:
                log.warning("%s: %s", request.path, e)
        except web.HTTPException as e:
            response = error_response(e.status, e.reason)
        except Exception as e:  # a bug: one line in the log and a JSON 500, never a page
            log.error(
                "%s: %s: %s",
                request.path,
                type(e).__name__,
                e,
                exc_info=log.isEnabledFor(logging.DEBUG),
            )
            response = error_response(500, f"the server failed: {type(e).__name__}: {e}")
        finally:
            if counted:
                metrics.in_flight.dec()
        metrics.requests.labels(route, str(response.status)).inc()
        metrics.latency.labels(route).observe(time.perf_counter() - start)
        return response

    async def get_reward(request: web.Request) -> web.Response:
        queries = openrlhf_queries(await json_body(request), service)
        results = await service.reward(queries, "/get_reward")
        service.unrewarded(results, "query")
        rewards = [r.reward for r in results]
        return json_response(
            {
                "rewards": rewards,
                "scores": rewards,
                "extra_logs": {"ungraded": [int(r.why is not None) for r in results]},
            }
        )

    async def v1_rewards(request: web.Request) -> web.Response:
        data = await json_body(request)
        queries = charter_queries(data, service)
        results = await service.reward(queries, "/v1/rewards")
        if not data.get("allow_ungraded", False):
            service.unrewarded(results, "completions")
        return json_response(
            {
                "rewards": [r.reward for r in results],
                "ungraded": [
                    {"index": i, "why": r.why} for i, r in enumerate(results) if r.why is not None
                ],
            }
        )

    async def health(request: web.Request) -> web.Response:
        return json_response({"status": "ok", **service.info})

    async def metrics_text(request: web.Request) -> web.Response:
        body, kind = metrics.render()
        return web.Response(body=body, headers={"Content-Type": kind})

    app = web.Application(middlewares=[guard], client_max_size=MAX_BODY)
    app.router.add_post("/get_reward", get_reward)
    app.router.add_post("/v1/rewards", v1_rewards)
    app.router.add_get("/health", health)
    app.router.add_get("/metrics", metrics_text)
    return app


ROUTES = ("/get_reward", "/v1/rewards", "/health", "/metrics")


# -- building what is served --------------------------------------------------------------
def build_service(opts: ServeOptions) -> Service:
    """The reward mix the options name, with its models loaded; the caller closes it
    (``Service.aclose``)."""
    from charter.backends.rm import RewardModelBackend
    from charter.cache import RequestCache
    from charter.constitution import load_constitution
    from charter.engines.base import ModelFactory
    from charter.judges.grading import ScoreConfig
    from charter.judges.pairwise import LabelConfig, check_choices
    from charter.rewards import ModelReward, ReferenceReward, RubricReward, Source
    from charter.rubric import load_rubric
    from charter.serve.normalise import normalisations

    norms = normalisations(opts.reward, opts.normalize_from)
    cache = RequestCache(opts.cache) if opts.cache is not None else None
    factory = ModelFactory(opts, cache)
    metrics = Metrics()
    sources: list[Source] = []
    try:
        for spec, norm in zip(opts.reward, norms, strict=True):
            model = factory(spec)
            if isinstance(model.backend, RewardModelBackend):
                model.backend.on_batch = metrics.model_batch.observe
            sources.append(ModelReward(model, norm))
        if opts.judge is not None and opts.rubric is not None:
            rubric = load_rubric(opts.rubric)
            config = ScoreConfig(cot=opts.cot, seed=opts.seed, max_tokens=256)
            sources.append(RubricReward(factory(opts.judge), rubric, config))
        elif opts.judge is not None and opts.constitution is not None:
            constitution = load_constitution(opts.constitution)
            judging = opts.model_dump(include=set(LabelConfig.model_fields) - {"seed"})
            label_config = LabelConfig(**judging, seed=opts.seed)
            check_choices(label_config, constitution)
            sources.append(ReferenceReward(factory(opts.judge), constitution, label_config))
        mix = RewardMix(sources, opts.reward_weights)
        chat = _chat_format(opts)
    except BaseException:
        # the models have opened nothing yet (sessions and batch workers start on first use)
        if cache is not None:
            cache.close()
        raise

    async def close() -> None:
        for m in factory.models:
            await m.aclose()
        if cache is not None:
            cache.close()

    info = {
        "rewards": mix.names,
        "weights": mix.weights,
        "normalisation": {
            spec: {"mean": n.mean, "std": n.std, "source": n.source}
            for spec, n in zip(opts.reward, norms, strict=True)
        },
        "template": chat.name if chat is not None else None,
        "needs_reference": mix.needs_reference,
        "ungraded_reward": opts.ungraded_reward,
    }
    return Service(
        mix=mix,
        chat=chat,
        ungraded_reward=opts.ungraded_reward,
        max_batch=opts.max_batch,
        metrics=metrics,
        closers=[close],
        info=info,
    )


def _chat_format(opts: ServeOptions) -> ChatFormat | None:
    """The policy's chat template: --template, else the first reward model's tokenizer."""
    spec = opts.template or (opts.reward[0] if opts.reward else None)
    if spec is None:
        return None
    try:
        from transformers import AutoTokenizer
    except ImportError as e:
        raise ConfigError("--template needs transformers: pip install 'charter[local]'") from e
    if spec == "smollm2":
        from charter.backends.smollm2 import converted_dir

        path = str(converted_dir())
    else:  # hf/DIR, rm/DIR or a folder holding (at least) a tokenizer
        path = spec.split("/", 1)[1] if spec.startswith(("hf/", "rm/")) else spec
    try:
        tokenizer = AutoTokenizer.from_pretrained(path)
    except (OSError, ValueError) as e:
        why = " ".join(str(e).split())[:200]
        raise ConfigError(f"--template {spec}: cannot load its tokenizer ({why})") from e
    if not getattr(tokenizer, "chat_template", None):
        if opts.template is None:
            return None  # the reward model's tokenizer has none: queries bring prompts
        raise ConfigError(f"--template {spec}: its tokenizer has no chat template")
    return ChatFormat.from_tokenizer(tokenizer, spec)


async def serve(
    opts: ServeOptions, *, on_ready: Callable[[str, Service, str | None], None] | None = None
) -> None:
    """Serve rewards until cancelled. ``on_ready`` gets the server's address, what it serves
    and the token requests must carry (given, or made for a host off loopback)."""
    token = resolve_token(opts.host, opts.token)
    service = await asyncio.to_thread(build_service, opts)
    runner: web.AppRunner | None = None
    try:
        runner = web.AppRunner(build_app(service, token=token, host=opts.host), access_log=None)
        port = await listen(runner, opts.host, opts.port)
        if on_ready is not None:
            on_ready(base_url(opts.host, port), service, token)
        await asyncio.Event().wait()
    finally:
        if runner is not None:
            await runner.cleanup()
        await service.aclose()


def base_url(host: str, port: int) -> str:
    """The server's address to print: for a server on every interface, this machine's name
    (what other machines use), not 0.0.0.0."""
    import socket

    if host in ("0.0.0.0", "::", ""):
        host = socket.gethostname()
    shown = f"[{host}]" if ":" in host else host
    return f"http://{shown}:{port}"

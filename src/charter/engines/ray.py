"""``--engine ray``: a stage's records in shards on the workers of a Ray cluster.

The driver (this process) reads the input, leaves out the records already in the output,
groups the rest into shards of ``--shard-size`` input rows and hands them to a pool of worker
actors. Each worker builds the stage's work once (its own HTTP sessions and models, or one
local model per worker) and runs a shard through the same record window as the local engine.
Results come back to the driver, which alone writes the output: appended to OUT (a file), or
one ``part-NNNNN`` file per shard, written whole and then renamed into place (a folder).

The guarantees are the local engine's. Every input id ends exactly once in the output or in
OUT.failed.jsonl: a shard's records are written only when its result reaches the driver, once.
A worker that dies (kill -9, out of memory) is restarted by Ray and its shard re-run; a driver
that dies loses only shards in flight, and a re-run skips every record already written.

The request cache is split by shard: CACHE.shards/STAGE-NNNNNN.sqlite (default
charter-cache.shards/ beside the output), one SQLite file per shard of the input, so a shard
re-run on another worker finds its answers again. It is shared by workers that see the same
folder (one machine, or a shared filesystem); on a cluster without one, each machine keeps
the caches of the shards it ran.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import os
import signal
import threading
import uuid
from collections.abc import AsyncIterator, Callable, Iterable, Iterator
from contextlib import AsyncExitStack, asynccontextmanager
from contextvars import ContextVar
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pydantic import BaseModel

from charter.cache import RequestCache
from charter.config import EngineOptions, StageOptions, model_options
from charter.engines.base import ModelFactory, ModelUsage, OutputPaths, RunStats, RunSummary, Work
from charter.engines.local import compact_failed, failed_record, skip_done
from charter.engines.run import Run, start_run
from charter.engines.window import run_window
from charter.errors import (
    BackendFatalError,
    BackendUnavailable,
    CharterError,
    ConfigError,
    InputError,
)
from charter.io import JsonlWriter, jsonl_to_parquet, part_files, read_done
from charter.records import FailedRecord
from charter.stages.spec import StageSpec

log = logging.getLogger("charter")

RESTARTS = 4
"""Times Ray restarts a worker that died, re-running the shards it had."""
SHARDS_PER_WORKER = 2
"""Shards a worker runs at once, so it has the next one going while one finishes."""
_FATAL_TYPES: dict[str, type[CharterError]] = {
    cls.__name__: cls
    for cls in (BackendFatalError, BackendUnavailable, ConfigError, InputError, CharterError)
}
_WORKER_ENV = ("OPENAI_", "CHARTER_", "HF_TOKEN", "HUGGING_FACE_HUB_TOKEN", "HF_HUB_OFFLINE")
"""Environment a worker is given (a cluster's workers do not share the driver's); not paths
such as HF_HOME, which are the driver machine's."""


# -- the worker side ------------------------------------------------------------------------
_SHARD_CACHE: ContextVar[RequestCache | None] = ContextVar("charter_shard_cache", default=None)


class _ShardCaches(RequestCache):
    """The cache models see inside a worker: each request goes to the cache file of the
    shard it belongs to (the shard's records run in a context that names it)."""

    def __init__(self) -> None:  # no file of its own
        self._open: dict[str, tuple[RequestCache, int]] = {}

    def get(self, key: str) -> str | None:
        cache = _SHARD_CACHE.get()
        return cache.get(key) if cache is not None else None

    def put(self, key: str, *, model: str, kind: str, value: str) -> None:
        cache = _SHARD_CACHE.get()
        if cache is not None:
            cache.put(key, model=model, kind=kind, value=value)

    def acquire(self, path: str) -> RequestCache:
        cache, users = self._open.get(path, (None, 0))
        if cache is None:
            cache = RequestCache(path)
        self._open[path] = (cache, users + 1)
        return cache

    def release(self, path: str) -> None:
        cache, users = self._open[path]
        if users > 1:
            self._open[path] = (cache, users - 1)
        else:
            del self._open[path]
            cache.close()

    def close(self) -> None:
        for cache, _ in self._open.values():
            cache.close()
        self._open.clear()


@dataclass
class ShardResult:
    """What a worker sends back for one shard."""

    shard: int
    written: list[tuple[str, BaseModel]] = field(default_factory=list)
    """(input hash, record) of each record made."""
    failed: list[FailedRecord] = field(default_factory=list)
    worker: str = ""
    """The worker process (a restarted worker is a new one)."""
    usage: list[ModelUsage] = field(default_factory=list)
    """The worker's models' usage so far (cumulative)."""
    fatal: tuple[str, str] | None = None
    """An error that stops the run: (type name, message)."""


class ShardWorker:
    """A Ray actor: the stage's work, built once, run over shard after shard."""

    def __init__(
        self,
        build: Callable[[ModelFactory], Work],
        opts: StageOptions,
        env: dict[str, str],
        cwd: str,
    ):
        os.environ.update(env)
        if os.path.isdir(cwd):  # relative paths (an hf/ model) mean what they mean to the driver
            os.chdir(cwd)
        handler = logging.StreamHandler()
        handler.setFormatter(logging.Formatter("%(levelname)s %(message)s"))
        log.addHandler(handler)
        log.setLevel(logging.WARNING)
        self.id = uuid.uuid4().hex
        self.opts = opts
        self.caches = _ShardCaches()
        self.factory = ModelFactory(opts, self.caches)
        self.error: BaseException | None = None
        self.work: Work | None = None
        self.closing = False
        self.running: set[asyncio.Task[Any]] = set()
        try:
            self.work = build(self.factory)
        except Exception as e:  # reported with the first shard, which then stops the run
            self.error = e

    def pid(self) -> int:
        return os.getpid()

    async def close(self) -> None:
        """Before the actor is killed: stop the shards still running (each closes its cache
        file, writing its queue, as it ends) and close the models' sessions."""
        self.closing = True
        for task in self.running:
            task.cancel()
        if self.running:
            await asyncio.wait(self.running, timeout=10)
        for model in self.factory.models:
            await model.aclose()

    async def run_shard(
        self, shard: int, stage: str, items: list[tuple[Any, str]], cache: str | None
    ) -> ShardResult:
        result = ShardResult(shard=shard, worker=self.id)
        if self.work is None:
            result.fatal = _describe(self.error or RuntimeError("the stage was not built"))
            return result

        def done(record: Any, digest: str, outcome: BaseModel | BaseException) -> None:
            if isinstance(outcome, BaseException):
                result.failed.append(failed_record(stage, record, outcome))
            else:
                result.written.append((digest, outcome))

        task = asyncio.current_task()
        if task is not None:
            self.running.add(task)
        token = _SHARD_CACHE.set(self.caches.acquire(cache) if cache else None)
        try:
            window = max(2 * self.factory.slots, 8)
            await run_window(iter(items), self.work, window, done)
        except Exception as e:
            if not self.closing:  # a run stopping breaks what is in flight: no news
                result.fatal = _describe(e)
        finally:
            _SHARD_CACHE.reset(token)
            if cache:
                self.caches.release(cache)
            if task is not None:
                self.running.discard(task)
        result.usage = self.factory.usage()
        return result


def _describe(error: BaseException) -> tuple[str, str]:
    if not isinstance(error, CharterError):
        log.exception("a worker failed", exc_info=error)
    return type(error).__name__, " ".join(str(error).split())


def _rebuild(kind: str, message: str) -> CharterError:
    """A worker's fatal error, raised again on the driver (a known type keeps its exit)."""
    cls = _FATAL_TYPES.get(kind)
    return cls(message) if cls is not None else CharterError(f"a worker failed: {kind}: {message}")


# -- the driver side ------------------------------------------------------------------------
def _ray() -> Any:
    try:
        import ray
    except ImportError:
        raise ConfigError("--engine ray needs Ray: pip install 'charter[ray]'") from None
    return ray


@asynccontextmanager
async def connected(address: str | None) -> AsyncIterator[Any]:
    """Ray for one run: the cluster at ``address`` (or $RAY_ADDRESS, or the one running on
    this machine), else a local Ray started for the run. However the run ends (done, an
    error, Ctrl-C, SIGTERM), what it connected is undone: a local Ray it started is stopped,
    a cluster is left running. A Ray the caller had connected (``ray.init``) is left as is."""
    ray = _ray()
    if ray.is_initialized():
        yield ray
        return
    try:
        _init(ray, address)
        yield ray
    finally:
        ray.shutdown()


def _init(ray: Any, address: str | None) -> None:
    # On the main thread ray.init puts in a SIGTERM handler that exits at once, mid-start
    # too, leaving the Ray processes started so far running, and Ray's core worker one that
    # prints a stack. Where this process has a handler of its own (charter's: stop like
    # Ctrl-C), it is kept throughout: a SIGTERM during start-up stops the run once Ray is up,
    # and the run stops Ray. ray.init stays on the main thread: Ray's processes die with the
    # thread that started them.
    previous = signal.getsignal(signal.SIGTERM)
    own = callable(previous) and threading.current_thread() is threading.main_thread()
    utils: Any = getattr(getattr(ray, "_private", None), "utils", None)
    put_in = getattr(utils, "set_sigterm_handler", None) if own else None
    if put_in is not None:
        utils.set_sigterm_handler = lambda handler: None
    try:
        ray.init(
            address=address,
            include_dashboard=False,
            logging_level=logging.ERROR,
            log_to_driver=True,
        )
    except (ConnectionError, RuntimeError, ValueError) as e:
        where = address or os.environ.get("RAY_ADDRESS") or "a local Ray"
        hint = ""
        if where not in ("a local Ray", "auto") and "RAY_AUTH_MODE" not in os.environ:
            hint = (
                " (a cluster with token authentication, Ray's default, is joined by address "
                "with RAY_AUTH_MODE=token set, or with --ray-address auto on one of its nodes)"
            )
        raise ConfigError(f"cannot start or join {where}: {' '.join(str(e).split())}{hint}") from e
    finally:
        if put_in is not None:
            utils.set_sigterm_handler = put_in
        if own:  # back from Ray's core worker too
            signal.signal(signal.SIGTERM, previous)


def _uses_local_model(opts: StageOptions) -> bool:
    specs = [getattr(opts, name) for name in model_options(type(opts))]
    names = [s for value in specs for s in str(value or "").split(",")]  # respond -m A,B
    return any(s == "smollm2" or s.startswith("hf/") for s in names)


def _worker_options(
    ray: Any, opts: StageOptions, engine: EngineOptions
) -> tuple[int, dict[str, Any]]:
    """How many workers, and the resources each asks for: one GPU per worker for a local
    model when the cluster has GPUs, else a share of the CPUs."""
    resources = ray.cluster_resources()
    gpus = int(resources.get("GPU", 0))
    common: dict[str, Any] = {
        "max_restarts": RESTARTS,
        "max_task_retries": RESTARTS,
        "max_concurrency": SHARDS_PER_WORKER,
    }
    if gpus and _uses_local_model(opts):
        return engine.workers or gpus, {**common, "num_gpus": 1}
    cpus = max(1.0, float(resources.get("CPU", 1)))
    n = engine.workers or max(1, int(cpus))
    return n, {**common, "num_cpus": min(1.0, cpus / n)}


def _shards(
    records: Iterable[Any],
    size: int,
    done: dict[str, str | None],
    stats: RunStats,
    on_skip: Callable[[], None],
) -> Iterator[tuple[int, list[tuple[Any, str]]]]:
    """(shard number, the records still to do with their input hashes). Shard k holds input
    rows k*size ... (k+1)*size - 1, whether done or not, so a shard (and its cache file) is
    the same on every run of one input."""
    batch: list[Any] = []
    shard = 0
    stream = iter(records)
    while True:
        try:
            record = next(stream)
        except StopIteration:
            break
        except InputError:  # a bad row: the rows before it are run first
            todo = list(skip_done(batch, done, stats, on_skip))
            if todo:
                yield shard, todo
            raise
        batch.append(record)
        if len(batch) == size:
            todo = list(skip_done(batch, done, stats, on_skip))
            if todo:
                yield shard, todo
            batch, shard = [], shard + 1
    todo = list(skip_done(batch, done, stats, on_skip))
    if todo:
        yield shard, todo


class _Parts:
    """Writes an output folder's part files: each whole under a hidden name, then renamed."""

    def __init__(self, folder: Path, fmt: str) -> None:
        self.folder = folder
        self.fmt = fmt
        for stale in [*folder.glob(".part-*.tmp"), *folder.glob("part-*.tmp")]:
            stale.unlink()  # a part being written when a driver died: its shard is re-run
        other = {p.suffix[1:] for p in part_files(folder)} - {fmt}
        if other:
            held = other.pop()
            raise ConfigError(
                f"{folder} holds {held} parts: resume it with --part-format {held} "
                "(readers take one format per folder)"
            )
        numbers = [int(p.stem.split("-")[1]) for p in part_files(folder) if p.stem[5:].isdigit()]
        self.next = max(numbers, default=-1) + 1

    def write(self, records: list[tuple[str, BaseModel]]) -> None:
        if not records:
            return
        name = f"part-{self.next:05d}"
        tmp = self.folder / f".{name}.jsonl.tmp"
        tmp.unlink(missing_ok=True)
        writer = JsonlWriter(tmp)
        try:
            for digest, record in records:
                writer.write(record, input_hash=digest)
        finally:
            writer.close()
        if self.fmt == "parquet":
            jsonl_to_parquet(tmp, self.folder / f"{name}.parquet")
            tmp.unlink()
        else:
            os.replace(tmp, self.folder / f"{name}.jsonl")
        self.next += 1


def _total_usage(snapshots: Iterable[list[ModelUsage]]) -> list[ModelUsage]:
    """Each worker's models' usage, added up per model."""
    total: dict[str, ModelUsage] = {}
    for snapshot in snapshots:
        for u in snapshot:
            have = total.get(u.name)
            if have is None:
                total[u.name] = u.model_copy(deep=True)
                continue
            have.usage.add(u.usage)
            for key in ("failed", "discarded", "fallbacks", "retries", "errors"):
                setattr(have, key, getattr(have, key) + getattr(u, key))
            if u.cost is not None:
                have.cost = (have.cost or 0.0) + u.cost
    return list(total.values())


class RayEngine:
    """Runs a stage on a Ray cluster (``--engine ray``)."""

    name = "ray"

    async def run(
        self,
        spec: StageSpec,
        opts: StageOptions,
        engine: EngineOptions,
        *,
        progress: bool = False,
        report: Callable[[RunSummary], None] | None = None,
    ) -> RunSummary:
        if getattr(opts, "batch", False):
            raise ConfigError(
                "--batch runs on the local engine (a provider's batch does the spreading out): "
                "drop --engine ray"
            )
        if opts.max_cost is not None:  # workers cannot share one budget's reservations
            raise ConfigError("--max-cost applies to --engine local only")
        paths = OutputPaths.for_run(opts.output, engine.engine)
        folder = paths.is_folder
        async with (
            AsyncExitStack() as stack,
            start_run(spec, opts, paths, stack, sharded_cache=True) as run,
        ):
            ray = await stack.enter_async_context(connected(engine.ray_address))
            stats = RunStats()
            usage: dict[str, list[ModelUsage]] = {}
            done = read_done(paths.out if folder else paths.work)
            failed = JsonlWriter(paths.failed)
            stack.callback(failed.close)
            try:
                tokens = lambda: sum(  # noqa: E731
                    u.usage.total_tokens for snap in usage.values() for u in snap
                )
                with run.progress(tokens, progress) as bar:
                    start = asyncio.get_running_loop().time()

                    parts = _Parts(paths.out, engine.part_format) if folder else None

                    def take(result: ShardResult) -> None:
                        if parts is not None:
                            parts.write(result.written)
                        else:
                            for digest, record in result.written:
                                run.writer.write(record, input_hash=digest)
                        for record in result.failed:
                            failed.write(record)
                        stats.written += len(result.written)
                        stats.failed += len(result.failed)
                        for _ in result.written:
                            bar.advance(True)
                        for _ in result.failed:
                            bar.advance(False)
                        usage[result.worker] = result.usage

                    shards = _shards(run.records(), engine.shard_size, done, stats, bar.skip_one)
                    try:
                        await _dispatch(ray, run, shards, take, engine)
                    finally:
                        stats.seconds = asyncio.get_running_loop().time() - start
                if opts.limit is None:
                    stats.orphans = list(done)
            finally:
                failed.close()
                compact_failed(paths.failed, paths.out if folder else paths.work)
            if not folder and paths.work != paths.out:
                jsonl_to_parquet(paths.work, paths.out)
        if folder:  # the stage's finish reads the records: all the parts
            run.paths = dataclasses.replace(paths, work=paths.out)
        return run.finish(stats, _total_usage(usage.values()), report)


async def _dispatch(
    ray: Any,
    run: Run,
    shards: Iterator[tuple[int, list[tuple[Any, str]]]],
    take: Callable[[ShardResult], None],
    engine: EngineOptions,
) -> None:
    """Keep every worker busy with shards until none is left, handing each result to
    ``take`` as it comes. A fatal error (from a worker, or a worker that died more often
    than Ray restarts it) stops the run once the results already back are taken."""
    opts = run.opts
    n, options = _worker_options(ray, opts, engine)
    env = {k: v for k, v in os.environ.items() if k.startswith(_WORKER_ENV)}
    actor = ray.remote(ShardWorker).options(**options)
    workers = [actor.remote(run.prepared.build, opts, env, os.getcwd()) for _ in range(n)]
    load = [0] * n
    cache_dir = run.cache_path.resolve() if run.cache_path is not None else None
    if cache_dir is not None:
        cache_dir.mkdir(parents=True, exist_ok=True)
    pending: dict[asyncio.Future[ShardResult], tuple[Any, int]] = {}
    fatal: BaseException | None = None
    bad_input: InputError | None = None
    more = True
    try:
        while True:
            while more and fatal is None and len(pending) < SHARDS_PER_WORKER * n:
                try:
                    shard, items = next(shards)
                except StopIteration:
                    more = False
                    break
                except InputError as e:  # finish what is running, then report the bad row
                    bad_input, more = e, False
                    break
                w = load.index(min(load))
                load[w] += 1
                cache = None
                if cache_dir is not None:
                    cache = str(cache_dir / f"{run.spec.name}-{shard:06d}.sqlite")
                ref = workers[w].run_shard.remote(shard, run.spec.name, items, cache)
                pending[asyncio.wrap_future(ref.future())] = (ref, w)
            if not pending:
                break
            finished, _ = await asyncio.wait(pending, return_when=asyncio.FIRST_COMPLETED)
            for future in finished:
                _, w = pending.pop(future)
                load[w] -= 1
                try:
                    result = future.result()
                except Exception as e:  # the worker died more often than Ray restarts it
                    fatal = fatal or CharterError(
                        f"a Ray worker failed for good: {' '.join(str(e).split())[:300]}"
                    )
                    continue
                take(result)
                if result.fatal is not None:
                    fatal = fatal or _rebuild(*result.fatal)
            if fatal is not None:
                raise fatal
        if bad_input is not None:
            raise bad_input
    finally:
        for ref, _ in pending.values():
            ray.cancel(ref)
        closing = [asyncio.wrap_future(w.close.remote().future()) for w in workers]
        for future in [*pending, *closing]:  # their errors are expected: nothing to report
            future.add_done_callback(_consume)
        try:
            await asyncio.wait(closing, timeout=15)
        finally:  # a second Ctrl-C while waiting still takes the workers down
            for worker in workers:
                ray.kill(worker, no_restart=True)


def _consume(future: asyncio.Future[Any]) -> None:
    if not future.cancelled():
        future.exception()

"""A real llama.cpp HTTP server on 127.0.0.1, serving the bundled SmolLM2 GGUF, offline.

``xllamacpp`` (``pip install 'charter[llamacpp]'``) runs llama.cpp's own server in-process:
the same HTTP code users run as ``llama-server``, with its OpenAI-compatible
``/v1/chat/completions``, its quirks and its extensions (grammars, ``post_sampling_probs``).
Tests use it to check charter against a server charter did not write; benchmarks and users
can start one by hand::

    python -m charter.testing.llamacpp --port 8080
    charter label pairs.jsonl -o out.jsonl -j openai/smollm2 --base-url http://127.0.0.1:8080/v1 ...
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import socket
import threading
import time
import urllib.error
import urllib.request
from pathlib import Path
from types import TracebackType
from typing import Any

from charter.errors import ConfigError

INSTALL = "pip install 'charter[llamacpp]'"


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class LlamaCppServer:
    """``with LlamaCppServer() as srv:`` then point clients at ``srv.base_url``.

    ``model``: a GGUF file (default: the bundled SmolLM2-135M-Instruct). ``parallel``: slots
    (requests decoded together); ``ctx``: context tokens shared by the slots."""

    def __init__(
        self,
        model: str | Path | None = None,
        *,
        port: int = 0,
        parallel: int = 4,
        ctx: int = 8192,
        threads: int | None = None,
        metrics: bool = True,
    ) -> None:
        try:
            import xllamacpp
        except ImportError as e:
            raise ConfigError(f"a llama.cpp server needs xllamacpp: {INSTALL}") from e
        if model is None:
            from charter.backends.smollm2 import gguf_file

            model = gguf_file()
        self.model = Path(model)
        if not self.model.is_file():
            raise ConfigError(f"GGUF model not found: {self.model}")
        self.port = port or _free_port()
        params = xllamacpp.CommonParams()
        params.model.path = str(self.model)
        params.port = self.port
        params.n_parallel = parallel
        params.n_ctx = ctx
        params.cpuparams.n_threads = threads or min(4, os.cpu_count() or 1)
        params.endpoint_metrics = metrics
        params.verbosity = 0  # errors only: llama.cpp logs every request otherwise
        self._params = params
        self._xllamacpp = xllamacpp
        self._server: Any = None

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}/v1"

    def start(self) -> LlamaCppServer:
        self._server = self._xllamacpp.Server(self._params)
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:  # the HTTP thread may still be binding
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{self.port}/health", timeout=2):
                    return self
            except (urllib.error.URLError, OSError):
                time.sleep(0.05)
        raise RuntimeError(f"llama.cpp server did not answer on port {self.port}")

    def stop(self) -> None:
        self._server = None  # the server shuts down when the object is released

    def metrics(self) -> dict[str, float]:
        """llama.cpp's Prometheus counters (``prompt_tokens_total``, ``requests_processing``...),
        without the ``llamacpp:`` prefix: what the server itself did, for tests to check."""
        url = f"http://127.0.0.1:{self.port}/metrics"
        with urllib.request.urlopen(url, timeout=10) as resp:
            text = resp.read().decode()
        values: dict[str, float] = {}
        for line in text.splitlines():
            if line.startswith("llamacpp:"):
                name, _, value = line.partition(" ")
                values[name.removeprefix("llamacpp:")] = float(value)
        return values

    def __enter__(self) -> LlamaCppServer:
        return self.start()

    def __exit__(
        self, et: type[BaseException] | None, e: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--port", type=int, default=8080)
    parser.add_argument("--model", help="GGUF file (default: the bundled SmolLM2-135M-Instruct)")
    parser.add_argument("--parallel", type=int, default=4, help="requests decoded together")
    parser.add_argument("--ctx", type=int, default=8192, help="context tokens (all slots)")
    parser.add_argument("--threads", type=int, default=None, help="CPU threads")
    args = parser.parse_args(argv)
    try:
        server = LlamaCppServer(
            args.model, port=args.port, parallel=args.parallel, ctx=args.ctx, threads=args.threads
        ).start()
    except ConfigError as e:
        raise SystemExit(f"error: {e}") from None
    print(
        json.dumps({"base_url": server.base_url, "model": str(server.model)}), flush=True
    )  # one line a script can read
    stop = threading.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: stop.set())
    stop.wait()
    server.stop()


if __name__ == "__main__":
    main()

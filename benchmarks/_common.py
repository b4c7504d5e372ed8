"""Shared helpers for the benchmarks: a stand-in server in its own process, input files,
and timing of whole child processes (wall time, CPU time, peak RSS)."""

from __future__ import annotations

import json
import os
import resource
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
CHARTER = [sys.executable, "-m", "charter"]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@contextmanager
def stand_in_server(
    latency: float,
    token_latency: float = 0.0,
    max_concurrency: int | None = None,
    prefer: str = "A",
) -> Iterator[str]:
    """charter's OpenAI-compatible test server in a separate process (so it does not share
    the client's interpreter), with fixed latency per request and, with ``max_concurrency``,
    at most that many requests processed at once (the rest wait, as vLLM's --max-num-seqs)."""
    port = free_port()
    cap = ["--max-concurrency", str(max_concurrency)] if max_concurrency else []
    cap += ["--prefer", prefer]  # the option its log-probabilities favour ("4": a rubric score)
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "charter.testing.server",
            "--port",
            str(port),
            "--latency",
            str(latency),
            "--token-latency",
            str(token_latency),
            *cap,
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
    )
    try:
        assert proc.stdout is not None
        proc.stdout.readline()  # "serving on ..."
        url = f"http://127.0.0.1:{port}/v1"
        for _ in range(100):
            try:
                with socket.create_connection(("127.0.0.1", port), timeout=0.2):
                    break
            except OSError:
                time.sleep(0.05)
        yield url
    finally:
        proc.terminate()
        proc.wait(10)


def write_pairs(path: Path, n: int) -> Path:
    with path.open("w") as f:
        for i in range(n):
            f.write(
                json.dumps(
                    {
                        "id": f"p{i}",
                        "prompt": f"Question number {i}: which reply is kinder?",
                        "response_a": f"A kind and careful reply {i}.",
                        "response_b": f"A curt reply {i}.",
                    }
                )
                + "\n"
            )
    return path


def write_prompts(path: Path, n: int) -> Path:
    with path.open("w") as f:
        for i in range(n):
            f.write(
                json.dumps({"id": f"q{i}", "prompt": f"Question number {i}: how do I stay calm?"})
                + "\n"
            )
    return path


@dataclass
class Measured:
    wall_s: float
    cpu_s: float
    peak_rss_mb: float
    returncode: int
    stderr: str


def run_measured(cmd: list[str], env: dict[str, str] | None = None, cwd: Path = ROOT) -> Measured:
    """Run a child process to completion; report its wall time, CPU time and peak RSS."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    start = time.perf_counter()
    proc = subprocess.run(
        cmd, capture_output=True, text=True, env={**os.environ, **(env or {})}, cwd=cwd
    )
    wall = time.perf_counter() - start
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    return Measured(wall, cpu, after.ru_maxrss / 1024, proc.returncode, proc.stderr)


def run_bare_client(url: str, n: int, concurrency: int) -> Measured:
    """The reference client (benchmarks/bare_client.py) sending n 1-token judgements."""
    return run_measured(
        [
            sys.executable,
            str(ROOT / "benchmarks/bare_client.py"),
            "--url",
            url,
            "--n",
            str(n),
            "--concurrency",
            str(concurrency),
        ]
    )


def run_charter_label(
    pairs: Path, out: Path, url: str, concurrency: int, *, cache: bool = False
) -> Measured:
    """`charter label --orders first` over pairs as a whole process: uncached, or with the
    request cache on (the default path users run; the cache file goes beside ``out``)."""
    m = run_measured(
        [
            *CHARTER,
            "label",
            str(pairs),
            "-o",
            str(out),
            "-j",
            "openai/bench",
            "--base-url",
            url,
            "--constitution",
            "harmless",
            "--orders",
            "first",
            "-c",
            str(concurrency),
            *([] if cache else ["--no-cache"]),
            "-q",
        ]
    )
    assert m.returncode == 0, m.stderr
    return m

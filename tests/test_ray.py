"""``--engine ray`` on a local Ray cluster of 2 CPUs (``ray start --head``, as a user scales
out), against the in-repo server: every input id exactly once with faults, worker and driver
kills, resume without re-requesting, folders of part files."""

from __future__ import annotations

import contextlib
import json
import os
import random
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from charter.testing.server import FakeOpenAIServer, Fault

from .conftest import ROOT

ray = pytest.importorskip("ray", reason="Ray is not installed (pip install 'charter[ray]')")

LABEL = ["label", "--judge", "openai/judge", "--constitution", "harmless", "--orders", "first"]
FAST_RETRY = ["--retry-wait", "0.01", "--retries", "8"]


@pytest.fixture(scope="module")
def cluster() -> Iterator[str]:
    """A local Ray cluster with 2 CPUs, started the way the README tells users to."""
    ray_bin = Path(sys.executable).with_name("ray")
    port = str(_free_port())
    started = subprocess.run(
        [str(ray_bin), "start", "--head", "--num-cpus", "2", "--port", port,
         "--include-dashboard", "false", "--disable-usage-stats"],
        capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    if started.returncode != 0:
        pytest.skip(f"cannot start a local Ray cluster: {started.stderr[-500:]}")
    address = "auto"  # this machine's cluster (a given IP:PORT needs RAY_AUTH_MODE=token)
    try:
        yield address
    finally:
        if ray.is_initialized():
            ray.shutdown()
        subprocess.run([str(ray_bin), "stop", "--force"], capture_output=True, timeout=120)


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def charter(*args: str, address: str, timeout: float = 240) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "NO_COLOR": "1", "COLUMNS": "200", "RAY_ADDRESS": address}
    return subprocess.run(
        [sys.executable, "-m", "charter", *args],
        capture_output=True, text=True, env=env, timeout=timeout, cwd=ROOT,
    )  # fmt: skip


def popen(*args: str, address: str) -> subprocess.Popen[str]:
    env = {**os.environ, "NO_COLOR": "1", "RAY_ADDRESS": address}
    return subprocess.Popen(
        [sys.executable, "-m", "charter", *args],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env, cwd=ROOT,
    )  # fmt: skip


def write_pairs(path: Path, n: int) -> list[str]:
    ids = [f"pair-{i}" for i in range(n)]
    with path.open("w") as f:
        for i, rid in enumerate(ids):
            row = {"id": rid, "prompt": f"q {i}", "response_a": f"yes {i}", "response_b": f"no {i}"}
            f.write(json.dumps(row) + "\n")
    return ids


def ids_in(path: Path) -> list[str]:
    if not path.exists():
        return []
    if path.is_dir():
        from charter.io import iter_records

        return [r["id"] for r in iter_records(path)]
    return [json.loads(line)["id"] for line in path.read_text().splitlines() if line]


def assert_exactly_once(ids: list[str], out: Path, failed: Path) -> None:
    written, lost = ids_in(out), ids_in(failed)
    dup = [k for k, n in Counter(written).items() if n > 1]
    assert not dup, f"written twice: {dup[:5]}"
    assert not set(written) & set(lost), "an id is both written and failed"
    assert sorted(written + lost) == sorted(ids)


def faulty(rate: float, seed: int) -> Any:
    rng = random.Random(seed)

    def rule(body: dict[str, Any]) -> Fault | None:
        return Fault(status=rng.choice([500, 503])) if rng.random() < rate else None

    return rule


def wait_until(check: Any, timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() > deadline:
            raise AssertionError("timed out waiting")
        time.sleep(0.05)


def test_faults_over_two_endpoints_exactly_once_then_resume(cluster: str, tmp_path: Path) -> None:
    """2,000 pairs over two servers that each fail 20 % of requests: every id once, both
    servers used; a re-run sends nothing and writes nothing."""
    ids = write_pairs(tmp_path / "pairs.jsonl", 2000)
    out = tmp_path / "labels.jsonl"
    probs = {"A": 0.7, "B": 0.3}
    with (
        FakeOpenAIServer(option_probs=probs, fault_rule=faulty(0.2, 1), latency=0.002) as one,
        FakeOpenAIServer(option_probs=probs, fault_rule=faulty(0.2, 2), latency=0.002) as two,
    ):
        urls = f"{one.base_url},{two.base_url}"
        args = [*LABEL, str(tmp_path / "pairs.jsonl"), "-o", str(out), "--base-url", urls]
        r = charter(*args, *FAST_RETRY, "--engine", "ray", "--shard-size", "200", address=cluster)
        assert r.returncode == 0, r.stderr[-3000:]
        assert_exactly_once(ids, out, tmp_path / "labels.failed.jsonl")
        assert one.served > 200 and two.served > 200, (one.served, two.served)
        assert len(list((tmp_path / "charter-cache.shards").glob("label-*.sqlite"))) == 10
        sent = one.served + two.served
        again = charter(*args, "--engine", "ray", address=cluster)
        assert again.returncode == 0, again.stderr[-3000:]
        assert one.served + two.served == sent  # nothing re-requested
        assert_exactly_once(ids, out, tmp_path / "labels.failed.jsonl")
        assert "0 written, 2,000 already done" in again.stderr, again.stderr


def _worker_pids() -> list[int]:
    found = subprocess.run(["pgrep", "-f", "ray::ShardWorker"], capture_output=True, text=True)
    return [int(p) for p in found.stdout.split()]


def test_a_worker_killed_mid_run_loses_and_duplicates_nothing(cluster: str, tmp_path: Path) -> None:
    ids = write_pairs(tmp_path / "pairs.jsonl", 1500)
    out = tmp_path / "labels.jsonl"
    with FakeOpenAIServer(option_probs={"A": 0.6, "B": 0.4}, latency=0.02) as srv:
        proc = popen(
            *LABEL, str(tmp_path / "pairs.jsonl"), "-o", str(out), "--base-url", srv.base_url,
            "--engine", "ray", "--shard-size", "100", "-c", "8", address=cluster,
        )  # fmt: skip
        try:
            wait_until(lambda: srv.served > 300 and _worker_pids())
            victim = _worker_pids()[0]
            os.kill(victim, signal.SIGKILL)
            assert proc.poll() is None  # killed mid-run
            _, stderr = proc.communicate(timeout=240)
        finally:
            proc.kill()
        assert proc.returncode == 0, stderr[-3000:]
        assert srv.served < 1500 + 2 * 100 + 1  # at most the victim's shards asked again
    assert_exactly_once(ids, out, tmp_path / "labels.failed.jsonl")
    assert not (tmp_path / "labels.failed.jsonl").exists()


def test_the_driver_killed_mid_run_resumes_on_rerun(cluster: str, tmp_path: Path) -> None:
    ids = write_pairs(tmp_path / "pairs.jsonl", 1200)
    out = tmp_path / "labels"  # a folder of part files
    with FakeOpenAIServer(option_probs={"A": 0.6, "B": 0.4}, latency=0.02) as srv:
        args = [*LABEL, str(tmp_path / "pairs.jsonl"), "-o", str(out), "--base-url",
                srv.base_url, "--engine", "ray", "--shard-size", "100", "-c", "8"]  # fmt: skip
        proc = popen(*args, address=cluster)
        try:
            wait_until(lambda: len(list(out.glob("part-*.jsonl"))) >= 2)
            proc.send_signal(signal.SIGKILL)
            proc.wait(timeout=30)
        finally:
            proc.kill()
        before = ids_in(out)
        assert 0 < len(before) < len(ids)
        assert len(before) == len(set(before))
        # a part the driver was writing when it died (hidden, never renamed) holds records
        # of a shard that is run again: its lines must not come back with it
        stale = out / f".part-{len(list(out.glob('part-*'))):05d}.jsonl.tmp"
        stale.write_text(json.dumps({"id": ids[-1], "p_a": 0.5}) + "\n")
        served = srv.served
        r = charter(*args, address=cluster)
        assert r.returncode == 0, r.stderr[-3000:]
        # the parts written before the kill were not asked for again
        assert srv.served - served <= len(ids) - len(before) + 2 * 100 * 2
    assert_exactly_once(ids, out, tmp_path / "labels.failed.jsonl")
    assert not stale.exists()
    datasets = pytest.importorskip("datasets")
    loaded = datasets.load_dataset(str(out), split="train")
    assert sorted(loaded["id"]) == sorted(ids)


def test_parquet_parts_and_next_stage_reads_the_folder(cluster: str, tmp_path: Path) -> None:
    ids = write_pairs(tmp_path / "pairs.jsonl", 300)
    out = tmp_path / "labels"
    with FakeOpenAIServer(option_probs={"A": 0.6, "B": 0.4}) as srv:
        args = [*LABEL, str(tmp_path / "pairs.jsonl"), "-o", str(out), "--base-url",
                srv.base_url, "--engine", "ray", "--shard-size", "100",
                "--part-format", "parquet"]  # fmt: skip
        r = charter(*args, address=cluster)
        assert r.returncode == 0, r.stderr[-3000:]
        assert len(list(out.glob("part-*.parquet"))) == 3
        assert_exactly_once(ids, out, tmp_path / "labels.failed.jsonl")
        # a folder of parts is an input like any other (here: by the local engine)
        again = tmp_path / "relabelled.jsonl"
        r = charter(
            *LABEL, str(out), "-o", str(again), "--base-url", srv.base_url, "--limit", "5",
            address=cluster,
        )  # fmt: skip
        assert r.returncode == 0, r.stderr[-3000:]
        assert len(ids_in(again)) == 5
    datasets = pytest.importorskip("datasets")
    loaded = datasets.load_dataset(str(out), split="train")
    assert loaded.num_rows == 300 and sorted(loaded["id"]) == sorted(ids)
    # resuming in the other format would leave readers one format per folder: refused
    r = charter(*args[:-1], "jsonl", address=cluster)
    assert r.returncode == 2 and "resume it with --part-format parquet" in r.stderr


def test_fatal_errors_stop_with_one_line(cluster: str, tmp_path: Path) -> None:
    write_pairs(tmp_path / "pairs.jsonl", 50)
    with FakeOpenAIServer(api_key="right") as srv:
        r = charter(
            *LABEL, str(tmp_path / "pairs.jsonl"), "-o", str(tmp_path / "o.jsonl"),
            "--base-url", srv.base_url, "--engine", "ray", address=cluster,
        )  # fmt: skip
    assert r.returncode != 0
    assert "Traceback" not in r.stderr
    assert "authentication failed" in r.stderr
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"prompt": "p", "chosen": "a", "rejected": "b"}\nnot json\n')
    with FakeOpenAIServer(option_probs={"A": 0.6, "B": 0.4}) as srv:
        r = charter(
            *LABEL, str(bad), "-o", str(tmp_path / "b.jsonl"), "--base-url", srv.base_url,
            "--engine", "ray", address=cluster,
        )  # fmt: skip
    assert r.returncode != 0 and "Traceback" not in r.stderr
    assert "bad.jsonl:2: malformed JSON" in r.stderr
    assert ids_in(tmp_path / "b.jsonl") != []  # the good row before it was kept


def test_library_call_and_local_engine_refuse_a_folder(cluster: str, tmp_path: Path) -> None:
    import charter as lib
    from charter.errors import ConfigError

    ids = write_pairs(tmp_path / "pairs.jsonl", 40)
    ray.init(address=cluster)
    with FakeOpenAIServer(option_probs={"A": 0.6, "B": 0.4}) as srv:
        opts: dict[str, Any] = {
            "input": tmp_path / "pairs.jsonl", "judge": "openai/judge",
            "constitution": "harmless", "base_url": srv.base_url,
        }  # fmt: skip
        summary = lib.run("label", output=tmp_path / "o.jsonl", engine="ray", **opts)
        assert isinstance(summary, lib.RunSummary)
        assert summary.written == 40 and summary.models[0].usage.requests == 80
        assert ray.is_initialized()  # the caller's Ray: the run leaves it connected
        with pytest.raises(ConfigError, match="folder"):
            lib.run("label", output=tmp_path / "folder", **opts)
    assert_exactly_once(ids, tmp_path / "o.jsonl", tmp_path / "o.failed.jsonl")


def test_a_recipe_on_ray_with_folders_between_stages(cluster: str, tmp_path: Path) -> None:
    """``engine: ray`` in a recipe; one stage's folder of parts is the next stage's input;
    the summary names what was written and skipped, and a re-run resumes every stage."""
    prompts = tmp_path / "prompts.jsonl"
    prompts.write_text("".join(json.dumps({"prompt": f"question {i}"}) + "\n" for i in range(30)))
    recipe = tmp_path / "r.yaml"
    recipe.write_text(
        f"""
defaults: {{engine: ray, shard_size: 8, max_tokens: 16}}
stages:
  - stage: respond
    model: mock/policy
    input: {prompts}
    output: {tmp_path / "responses"}
    n: 2
  - stage: revise
    model: mock/policy
    input: "@respond"
    output: {tmp_path / "revisions"}
    constitution: harmless
    rounds: 1
    pairs: {tmp_path / "sft-pairs.jsonl"}
  - stage: label
    judge: mock/judge
    input: "@respond"
    output: {tmp_path / "labels"}
    constitution: harmless
"""
    )
    r = charter("run", str(recipe), address=cluster)
    assert r.returncode == 0, r.stderr[-3000:]
    assert len(ids_in(tmp_path / "responses")) == 30
    assert len(ids_in(tmp_path / "revisions")) == 30
    assert len(ids_in(tmp_path / "labels")) == 30
    assert r.stderr.count("30 written") == 3
    # the stages' own summaries read every part
    assert "labels: 30 pairs" in r.stderr
    pairs = ids_in(tmp_path / "sft-pairs.jsonl")
    found = re.search(r"preference pairs: (\d+) written .*\((\d+) unrevised", r.stderr)
    assert found and int(found[1]) == len(pairs) and int(found[1]) + int(found[2]) == 30
    again = charter("run", str(recipe), address=cluster)
    assert again.returncode == 0, again.stderr[-3000:]
    assert again.stderr.count("0 written, 30 already done") == 3, again.stderr
    assert len(ids_in(tmp_path / "labels")) == 30
    report = charter("evaluate", str(tmp_path / "labels"), "-o", str(tmp_path / "report"),
                     address=cluster)  # fmt: skip
    assert report.returncode == 0, report.stderr[-3000:]


def test_one_endpoint_down_all_work_goes_to_the_other(cluster: str, tmp_path: Path) -> None:
    ids = write_pairs(tmp_path / "pairs.jsonl", 400)
    down = f"http://127.0.0.1:{_free_port()}/v1"  # nothing listens there
    with FakeOpenAIServer(option_probs={"A": 0.6, "B": 0.4}) as up:
        r = charter(
            *LABEL, str(tmp_path / "pairs.jsonl"), "-o", str(tmp_path / "o.jsonl"),
            "--base-url", f"{down},{up.base_url}", "--engine", "ray", "--shard-size", "100",
            address=cluster,
        )  # fmt: skip
        assert r.returncode == 0, r.stderr[-3000:]
        assert up.served >= 400
    assert_exactly_once(ids, tmp_path / "o.jsonl", tmp_path / "o.failed.jsonl")
    assert not (tmp_path / "o.failed.jsonl").exists()


def test_sigterm_stops_like_ctrl_c_and_relative_paths_are_the_drivers(
    cluster: str, tmp_path: Path
) -> None:
    """SIGTERM to the driver: exit 130 with the resume line, records kept; the run is
    started from another folder than Ray's, with relative paths, which mean the driver's."""
    ids = write_pairs(tmp_path / "pairs.jsonl", 800)
    args = [*LABEL, "pairs.jsonl", "-o", "out/labels.jsonl", "--engine", "ray",
            "--shard-size", "50", "-c", "4"]  # fmt: skip
    env = {**os.environ, "NO_COLOR": "1", "RAY_ADDRESS": cluster}
    with FakeOpenAIServer(option_probs={"A": 0.6, "B": 0.4}, latency=0.02) as srv:
        full = [sys.executable, "-m", "charter", *args, "--base-url", srv.base_url]
        proc = subprocess.Popen(
            full, cwd=tmp_path, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
        )
        try:
            wait_until(lambda: len(ids_in(tmp_path / "out/labels.jsonl")) >= 100)
            proc.send_signal(signal.SIGTERM)
            _, stderr = proc.communicate(timeout=60)
        finally:
            proc.kill()
        assert proc.returncode == 130, stderr[-3000:]
        assert "re-run to resume" in stderr and "Traceback" not in stderr
        assert "never retrieved" not in stderr and "SIGTERM received" not in stderr  # Ray's
        r = subprocess.run(full, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=240)
        assert r.returncode == 0, r.stderr[-3000:]
    assert_exactly_once(ids, tmp_path / "out/labels.jsonl", tmp_path / "out/labels.failed.jsonl")
    assert len(list((tmp_path / "out/charter-cache.shards").glob("label-*.sqlite"))) == 16
    assert not (ROOT / "out").exists()


def _processes_in(folder: Path) -> list[int]:
    """Processes working in ``folder`` or holding a file open in it: with RAY_TMPDIR there,
    every process of the Ray a run starts (its session, logs and sockets are there)."""
    found = []
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit() or int(proc.name) == os.getpid():
            continue
        try:
            links = [proc / "cwd", *(proc / "fd").iterdir()]
        except OSError:  # gone, or not ours to read
            continue
        for link in links:
            try:
                target = os.readlink(link)
            except OSError:
                continue
            if target == str(folder) or target.startswith(f"{folder}/"):
                found.append(int(proc.name))
                break
    return found


def _command(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode()
    except OSError:
        return ""


@pytest.mark.skipif(not Path("/proc/self/fd").is_dir(), reason="reads processes from /proc")
def test_sigterm_while_charter_starts_ray_stops_the_run_and_that_ray() -> None:
    """No cluster: charter starts a local Ray for the run. A SIGTERM while it starts stops the
    run as Ctrl-C does (exit 130, the resume line) and leaves none of that Ray's processes
    running (Ray's own handler exited 15 mid-start, its agents then ran on for a minute)."""
    folder = Path(tempfile.mkdtemp(prefix="charter-ray-", dir="/tmp"))  # short: Ray's sockets
    write_pairs(folder / "pairs.jsonl", 40)
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}
    env |= {"NO_COLOR": "1", "RAY_TMPDIR": str(folder)}  # finds no cluster: starts its own
    args = ["label", "pairs.jsonl", "-o", "labels.jsonl", "-j", "mock/judge",
            "--constitution", "harmless", "--engine", "ray"]  # fmt: skip
    proc = subprocess.Popen(
        [sys.executable, "-m", "charter", *args], cwd=folder, env=env, text=True,
        stdout=subprocess.PIPE, stderr=subprocess.PIPE,
    )  # fmt: skip

    def starting() -> bool:  # the raylet has started its agents; ray.init waits for the node
        return any("DashboardAgent" in _command(p) for p in _processes_in(folder))

    try:
        wait_until(starting, 120)
        proc.send_signal(signal.SIGTERM)
        _, stderr = proc.communicate(timeout=120)
        deadline = time.monotonic() + 10
        while (left := _processes_in(folder)) and time.monotonic() < deadline:
            time.sleep(0.1)
        commands = [_command(p)[:60] for p in left]
        assert (proc.returncode, commands) == (130, []), stderr[-3000:]
        assert "re-run to resume" in stderr and "Traceback" not in stderr
    finally:
        proc.kill()
        for pid in _processes_in(folder):  # what a failed run left: this test's own
            with contextlib.suppress(OSError):
                os.kill(pid, signal.SIGKILL)
        shutil.rmtree(folder, ignore_errors=True)

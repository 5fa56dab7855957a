"""`facestream up` as a new user starts it: in an empty directory, no --dir, nothing exported;
then the other commands from the same directory (a second terminal) find it by themselves."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from facestream.control.embedded import free_port
from facestream.control.samples import write_samples

FACESTREAM = [sys.executable, "-m", "facestream.control.cli"]

pytestmark = pytest.mark.slow


def _env(**extra: str) -> dict[str, str]:
    """A user's shell: no FACESTREAM_* exported (the tests' own ones removed)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("FACESTREAM_")}
    return {**env, "FACESTREAM_INTRA_OP_THREADS": "1", **extra}


def _wait_ready(proc: subprocess.Popen[bytes], err: Path, timeout_s: float = 120) -> str:
    deadline = time.monotonic() + timeout_s
    text = ""
    while "ready;" not in text:
        assert proc.poll() is None and time.monotonic() < deadline, text
        time.sleep(0.2)
        text = err.read_text()
    return text


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Any]]:
    here = tmp_path_factory.mktemp("empty")
    logs = tmp_path_factory.mktemp("logs")
    port = free_port()
    env = _env(FACESTREAM_HTTP_PORT=str(port))
    proc = subprocess.Popen(
        [*FACESTREAM, "up", "--detectors", "1"],  # the default --dir: relative
        cwd=here,
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=(logs / "up.err").open("wb"),
    )
    text = _wait_ready(proc, logs / "up.err")
    yield {
        "proc": proc,
        "here": here,
        "port": port,
        "env": env,
        "text": text,
        "samples": write_samples(logs / "samples"),
    }
    proc.send_signal(signal.SIGINT)
    assert proc.wait(timeout=60) == 0, (logs / "up.err").read_text()[-3000:]
    assert not (here / ".facestream" / "stack.json").exists()  # removed on stop


def run(stack: dict[str, Any], *args: str, **env: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [*FACESTREAM, *args],
        cwd=stack["here"],
        env={**stack["env"], **env},
        capture_output=True,
        text=True,
        timeout=120,
    )


def test_up_starts_with_its_default_dir_and_leaves_its_address(stack: dict[str, Any]) -> None:
    data = stack["here"] / ".facestream"
    assert (data / "redis").is_dir()
    written = json.loads((data / "stack.json").read_text())
    assert written["pid"] == stack["proc"].pid
    assert written["redis_url"] in stack["text"]
    assert written["detectors"] == [f"{socket.gethostname()}-detector-0"]
    assert (data / "stack.json").stat().st_mode & 0o077 == 0  # may hold a password
    assert "metrics    detector-0" in stack["text"]


def test_detect_from_the_same_directory_finds_it(stack: dict[str, Any]) -> None:
    done = run(stack, "detect", str(stack["samples"][0]))
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout)["faces"]
    assert "(the running `facestream up` in .facestream/stack.json)" in done.stderr


def test_an_explicit_url_wins(stack: dict[str, Any], redis_url: str) -> None:
    done = run(stack, "detect", str(stack["samples"][0]), FACESTREAM_REDIS_URL=redis_url)
    assert done.returncode == 2  # that Redis has no detector: said, naming it
    assert f"facestream: redis {redis_url} (FACESTREAM_REDIS_URL)" in done.stderr
    assert "no detector is alive" in done.stderr


def test_results_last(stack: dict[str, Any]) -> None:
    done = run(stack, "detect", *map(str, stack["samples"][:3]))
    assert done.returncode == 0, done.stderr
    ids = [json.loads(line)["id"] for line in done.stdout.splitlines()]
    time.sleep(0.5)
    last = run(stack, "results", "--last", "3")
    assert last.returncode == 0, last.stderr
    assert sorted(json.loads(line)["id"] for line in last.stdout.splitlines()) == sorted(ids)


def test_health_ops_and_a_second_up(stack: dict[str, Any], tmp_path: Path) -> None:
    health = run(stack, "health", "detector")
    assert health.returncode == 0, health.stdout + health.stderr
    assert f"healthy: detector {socket.gethostname()}-detector-0" in health.stdout
    assert run(stack, "health", "sink", "jsonl").returncode == 0
    status = run(stack, "ops", "status")
    assert status.returncode == 0 and "of no limit" in status.stdout, status.stdout
    pending = run(stack, "ops", "pending")
    assert pending.stdout.strip() == "no pending entries in group detectors"
    assert run(stack, "ops", "dlq", "list").stdout.strip() == "no dead letters"

    started = time.monotonic()
    again = run(stack, "up")
    assert again.returncode == 2 and "already running" in again.stderr, again.stderr
    busy = run(stack, "up", "--dir", str(tmp_path / "other"))  # the same gateway port
    assert busy.returncode == 2, busy.stderr
    assert f"port {stack['port']}" in busy.stderr and "FACESTREAM_HTTP_PORT" in busy.stderr
    assert time.monotonic() - started < 30
    assert "Traceback" not in again.stderr + busy.stderr


def test_detect_draw_with_a_very_long_file_name(stack: dict[str, Any], tmp_path: Path) -> None:
    photos = tmp_path / "photos"
    photos.mkdir()
    long_name = "é" * 122 + ".png"  # 248 bytes of UTF-8, as in the issue (the limit is 255)
    (photos / long_name).write_bytes(stack["samples"][0].read_bytes())
    (photos / "short.png").write_bytes(stack["samples"][2].read_bytes())
    done = run(stack, "detect", "--draw", str(tmp_path / "drawn"), str(photos))
    assert done.returncode == 0, done.stderr
    rows = [json.loads(line) for line in done.stdout.splitlines()]
    assert len(rows) == 2 and all(Path(r["drawn"]).is_file() for r in rows)
    assert all(len(r["id"]) <= 128 for r in rows)


def test_an_unreadable_image_is_answered_in_words(stack: dict[str, Any], tmp_path: Path) -> None:
    broken = tmp_path / "broken.png"
    broken.write_bytes(b"\x89PNG\r\n\x1a\n" + bytes(200))  # the magic, then nothing usable
    done = run(stack, "detect", str(broken))
    assert done.returncode == 1
    (row,) = [json.loads(line) for line in done.stdout.splitlines()]
    assert row["error"]["code"] == "undecodable"
    assert row["error"]["message"] == "cannot decode PNG image: the header is not readable"
    assert " at 0x" not in done.stdout + done.stderr


def test_up_with_no_detectors_runs_none(tmp_path: Path) -> None:
    err = tmp_path / "up.err"
    proc = subprocess.Popen(
        [*FACESTREAM, "up", "--detectors", "0", "--no-gateway", "--no-sink"],
        cwd=tmp_path,
        env=_env(),
        stdout=subprocess.DEVNULL,
        stderr=err.open("wb"),
    )
    try:
        text = _wait_ready(proc, err, 60)
    finally:
        proc.send_signal(signal.SIGINT)
        assert proc.wait(timeout=60) == 0
    assert "detectors  none" in text
    assert "stopped (0 processes)" in err.read_text()

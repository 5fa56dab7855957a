"""The command line as a user runs it: `facestream up`, then `detect`, `publish`, `results`."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from facestream.control.client import expand
from facestream.control.embedded import free_port
from facestream.control.samples import write_samples
from tests.support.procs import ROOT

FACESTREAM = [sys.executable, "-m", "facestream.control.cli"]


def test_expand_files_dirs_and_globs(tmp_path: Path) -> None:
    (tmp_path / "a" / "b").mkdir(parents=True)
    for name in ("a/1.jpg", "a/b/2.png", "a/b/3.txt", "4.jpg"):
        (tmp_path / name).write_bytes(b"x")
    assert expand([str(tmp_path / "a")]) == [
        tmp_path / "a/1.jpg",
        tmp_path / "a/b/2.png",
        tmp_path / "a/b/3.txt",
    ]
    assert expand([str(tmp_path / "**/*.jpg")]) == [tmp_path / "4.jpg", tmp_path / "a/1.jpg"]
    with pytest.raises(FileNotFoundError):
        expand([str(tmp_path / "missing.jpg")])
    with pytest.raises(FileNotFoundError):
        expand([str(tmp_path / "*.gif")])


@pytest.fixture(scope="module")
def up(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Any]]:
    work = tmp_path_factory.mktemp("up")
    port = free_port()
    env = {
        **os.environ,
        "FACESTREAM_HTTP_PORT": str(port),
        "FACESTREAM_LOG_FORMAT": "json",
        "FACESTREAM_INTRA_OP_THREADS": "1",
    }
    env.pop("FACESTREAM_REDIS_URL", None)
    err = (work / "up.err").open("wb")
    proc = subprocess.Popen(
        [*FACESTREAM, "up", "--detectors", "2", "--dir", str(work / "fs")],
        cwd=ROOT,
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=err,
    )
    deadline = time.monotonic() + 120
    text = ""
    while "ready;" not in text:
        assert proc.poll() is None and time.monotonic() < deadline, text
        time.sleep(0.2)
        text = (work / "up.err").read_text()
    url = re.search(r"^redis\s+(redis://\S+)", text, re.M)
    assert url, text
    yield {
        "proc": proc,
        "redis": url.group(1),
        "port": port,
        "work": work,
        "env": env,
        "samples": write_samples(work / "samples"),
    }
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(timeout=60) == 0, (work / "up.err").read_text()[-3000:]
    assert "stopped (4 processes)" in (work / "up.err").read_text()


def cli(up: dict[str, Any], *args: str) -> subprocess.CompletedProcess[str]:
    env = {**up["env"], "FACESTREAM_REDIS_URL": up["redis"]}
    return subprocess.run(
        [*FACESTREAM, *args], cwd=ROOT, env=env, capture_output=True, text=True, timeout=120
    )


def test_up_then_detect_the_samples(up: dict[str, Any]) -> None:
    done = cli(up, "detect", str(up["work"] / "samples"))
    assert done.returncode == 0, done.stderr
    rows = {Path(r["path"]).stem: r for r in map(json.loads, done.stdout.splitlines())}
    assert {k: len(v["faces"]) for k, v in rows.items()} == {
        "astronaut": 1,
        "camera": 1,
        "coffee": 0,
        "grace_hopper": 1,
        "lfw_mosaic": 20,
    }
    table = cli(up, "detect", "--table", str(up["work"] / "samples" / "*.png"))
    assert table.returncode == 0
    assert table.stdout.splitlines()[0].split()[:3] == ["path", "faces", "size"]
    assert all(" yes " in line for line in table.stdout.splitlines()[1:])  # now cached


def test_detect_fails_for_a_non_image(up: dict[str, Any]) -> None:
    bad = up["work"] / "notes.txt"
    bad.write_text("not an image")
    done = cli(up, "detect", str(bad), str(up["samples"][0]))
    assert done.returncode == 1
    rows = [json.loads(x) for x in done.stdout.splitlines()]
    assert {r["path"]: (r.get("error") or {}).get("code") for r in rows} == {
        str(bad): "not_an_image",
        str(up["samples"][0]): None,
    }
    assert "1 of 2 images failed" in done.stderr


def test_gateway_and_jsonl_sink_of_the_stack(up: dict[str, Any]) -> None:
    image = up["samples"][1].read_bytes()
    resp = httpx.post(
        f"http://127.0.0.1:{up['port']}/v1/detect",
        params={"wait": "true", "id": "via-http"},
        content=image,
        timeout=30,
    )
    assert resp.status_code == 200 and len(resp.json()["faces"]) == 1
    sink_file = up["work"] / "fs" / "results.jsonl"
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        ids = [json.loads(x)["id"] for x in sink_file.read_text().splitlines()]
        if "via-http" in ids:
            break
        time.sleep(0.1)
    assert "via-http" in ids and len(ids) == len(set(ids))


def test_publish_then_results(up: dict[str, Any]) -> None:
    done = cli(up, "publish", *map(str, up["samples"][:2]))
    assert done.returncode == 0, done.stderr
    ids = [line.split("\t")[0] for line in done.stdout.splitlines()]
    assert len(ids) == 2
    deadline = time.monotonic() + 30
    seen: set[str] = set()
    while not set(ids) <= seen and time.monotonic() < deadline:
        out = cli(up, "results", "--from", "0")
        seen = {json.loads(x)["id"] for x in out.stdout.splitlines()}
    assert set(ids) <= seen
    grouped = cli(up, "results", "--group", "cli-test", "--count", "3")
    assert len(grouped.stdout.splitlines()) == 3


def test_detect_draw_writes_one_image_per_input(up: dict[str, Any], tmp_path: Path) -> None:
    from PIL import Image

    drawn = tmp_path / "drawn"
    done = cli(up, "detect", "--draw", str(drawn), *map(str, up["samples"]))
    assert done.returncode == 0, done.stderr
    rows = [json.loads(x) for x in done.stdout.splitlines()]
    files = sorted(drawn.iterdir())
    assert len(files) == len(up["samples"]) == len(rows)
    for row in rows:
        out = Path(row["drawn"])
        assert out.parent == drawn and out.name == Path(row["path"]).stem + ".faces.jpg"
        with Image.open(out) as img:
            assert img.format == "JPEG" and img.size == (row["width"], row["height"])


def test_detect_without_a_detector_says_so_at_once(
    redis_url: str, tmp_path: Path, photo_png: dict[str, bytes]
) -> None:
    photo = tmp_path / "a.png"
    photo.write_bytes(next(iter(photo_png.values())))
    env = {**os.environ, "FACESTREAM_REDIS_URL": redis_url, "FACESTREAM_PREFIX": "nodetector"}
    for command in ("detect", "publish"):
        started = time.monotonic()
        done = subprocess.run(
            [*FACESTREAM, command, str(photo)],
            cwd=ROOT,
            env=env,
            capture_output=True,
            text=True,
            timeout=30,
        )
        took = time.monotonic() - started
        assert done.returncode == 2, done.stderr
        assert took < 5, took
        assert "no detector is alive" in done.stderr
        assert redis_url.split("//")[1].split("/")[0] in done.stderr  # the URL it used
        assert "facestream detector" in done.stderr and "--no-wait-check" in done.stderr
        assert done.stdout == ""


def test_detect_with_no_redis_at_all_says_so(tmp_path: Path, photo_png: dict[str, bytes]) -> None:
    photo = tmp_path / "a.png"
    photo.write_bytes(next(iter(photo_png.values())))
    url = f"redis://127.0.0.1:{free_port()}/0"  # nothing listens there
    env = {**os.environ, "FACESTREAM_REDIS_URL": url}
    done = subprocess.run(
        [*FACESTREAM, "detect", str(photo)],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert done.returncode == 2 and f"cannot reach Redis at {url}" in done.stderr


def test_progress_bar_on_a_terminal_only() -> None:
    import io

    from facestream.common.progress import Progress

    class Tty(io.StringIO):
        def isatty(self) -> bool:
            return True

    tty = Tty()
    bar = Progress(4, "detect", tty)
    for _ in range(4):
        bar.advance(note="1 faces")
    bar.close()
    last = tty.getvalue().strip().split("\r")[-1]
    assert "4/4" in last and "/s" in last and re.search(r"\d+:\d\d", last), last
    half = Tty()
    bar = Progress(10, "detect", half)
    bar._started -= 10  # 10 s for 5 images: 5 more take about 10 s
    bar.advance(5)
    assert "ETA 0:10" in half.getvalue(), half.getvalue()
    plain = io.StringIO()
    bar = Progress(3, "detect", plain)
    bar.advance()
    bar.close()
    assert plain.getvalue() == ""

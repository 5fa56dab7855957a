"""The README's "Using it" section, typed as a new user types it (tests/support/readme.py).

In a new empty directory, with no FACESTREAM_* variable set, against the installed package:
`make test-readme` (a CI step) builds the wheel and installs it into a new virtual environment
and names its bin directory in FACESTREAM_README_BIN; without it, the `facestream` beside this
interpreter runs (the development install, `make test`). Every command must exit 0 and do
what the README says it does; a command added to the section is run too (exit 0 at least).
"""

from __future__ import annotations

import json
import os
import re
import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.support.readme import Step, blocks, script, section, steps

ROOT = Path(__file__).resolve().parents[2]
README = ROOT / "README.md"


def _port_free(port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        try:
            s.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _user_env(bin_dir: Path, home: Path) -> dict[str, str]:
    """A user's shell: the installed package first on PATH, no facestream setting exported."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("FACESTREAM_", "PYTHON"))}
    env["PATH"] = f"{bin_dir}{os.pathsep}{env.get('PATH', '')}"
    env.pop("VIRTUAL_ENV", None)
    env["HOME"] = str(home)
    return env


def _json_lines(text: str) -> list[dict[str, object]]:
    return [json.loads(line) for line in text.splitlines() if line.startswith("{")]


def test_the_section_is_read() -> None:
    """The extractor finds what the README shows (it must not pass by running nothing)."""
    found = steps(blocks(section(README.read_text(), "Using it")))
    kinds = [s.kind for s in found]
    assert kinds.count("python") >= 1
    assert any(s.text.startswith("facestream up") for s in found)
    assert sum(k == "run" for k in kinds) >= 5
    assert all(s.kind == "skipped" for s in found if s.text.startswith("pip install"))


@pytest.mark.slow
def test_readme_commands_run_as_written(tmp_path: Path) -> None:
    bin_dir = Path(os.environ.get("FACESTREAM_README_BIN") or Path(sys.executable).parent)
    if not (bin_dir / "facestream").exists():
        pytest.fail(f"no facestream command in {bin_dir}")
    if shutil.which("curl") is None:
        pytest.skip("curl is not installed (.ci/run installs it)")
    found = steps(blocks(section(README.read_text(), "Using it")))
    work, logs, home = tmp_path / "work", tmp_path / "logs", tmp_path / "home"
    for d in (work, logs, home):
        d.mkdir()
    port = None if _port_free(8080) else _free_port()
    (tmp_path / "readme.sh").write_text(script(found, logs, port))
    started = time.monotonic()
    done = subprocess.run(
        ["bash", str(tmp_path / "readme.sh")],
        cwd=work,
        env=_user_env(bin_dir, home),
        timeout=600,
        capture_output=True,
        text=True,
    )
    assert done.returncode == 0, done.stderr

    def out(step: Step) -> str:
        return (logs / f"{step.index}.out").read_text(errors="replace")

    def err(step: Step) -> str:
        return (logs / f"{step.index}.err").read_text(errors="replace")

    report = "\n".join(
        f"[{s.index}] {s.kind} $ {s.text[:80]}\n  rc={(logs / f'{s.index}.rc').read_text().strip()}"
        f"\n  stderr: {err(s)[-600:] if (logs / f'{s.index}.err').exists() else ''}"
        for s in found
        if s.kind != "skipped"
    )
    for step in found:
        if step.kind == "skipped":
            continue
        rc = (logs / f"{step.index}.rc").read_text().strip()
        assert rc == "0", f"`{step.text}` exited {rc}\n{report}"
        assert "Traceback" not in err(step), f"`{step.text}` printed a traceback\n{report}"

    # Where `mkdir try && cd try` took the user.
    stacks = list(work.rglob(".facestream"))
    assert len(stacks) == 1, report
    here = stacks[0].parent
    for step in found:
        if step.kind == "skipped":
            continue
        text, stdout = step.text, out(step)
        if text.startswith("facestream samples"):
            assert len(list((here / "photos").iterdir())) >= 3
        elif text.startswith("facestream up"):
            assert "ready" in err(step) and "stopped" in err(step)
            assert not (here / ".facestream" / "stack.json").exists(), "left after stop"
        elif text.startswith("facestream detect") and "--table" in text:
            assert stdout.splitlines()[0].split()[:2] == ["path", "faces"], stdout
            assert len(stdout.splitlines()) == 1 + len(list((here / "photos").iterdir()))
        elif text.startswith("facestream detect") and "--draw" in text:
            (row,) = _json_lines(stdout)
            assert Path(str(row["drawn"])).name.endswith(".faces.jpg")
            assert (here / "drawn" / Path(str(row["drawn"])).name).is_file()
        elif text.startswith("facestream publish"):
            assert re.fullmatch(r"\S+\t\S+\n", stdout), stdout
        elif text.startswith("facestream results") and "--last" in text:
            n = int(text.split("--last")[1].split()[0])
            assert len(_json_lines(stdout)) == n, stdout
        elif "--follow" in text:
            assert _json_lines(stdout), f"`{text}` printed no result\n{report}"
        elif text.startswith("curl"):
            answer = json.loads(stdout)
            assert answer["faces"] and answer["width"] > 0, stdout
        elif step.kind == "python":
            assert re.fullmatch(r"\d+-\d+\n", stdout), stdout
        if text.startswith("facestream") and not text.startswith(
            ("facestream up", "facestream samples")
        ):
            assert "facestream: redis redis://127.0.0.1:" in err(step), err(step)
            assert "running `facestream up`" in err(step), err(step)

    # The Python example published into the stack (not into another Redis): its result is
    # in the sink's file.
    sink_file = here / ".facestream" / "results.jsonl"
    ids = [json.loads(line)["id"] for line in sink_file.read_text().splitlines()]
    assert "order-42" in ids, ids
    print(f"README: {len(found)} steps in {time.monotonic() - started:.1f} s")

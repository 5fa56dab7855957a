"""The README's "Using it" section as a script a new user would type.

The fenced `sh` and `python` blocks of the section become one bash script, run in README order
in a new empty directory: each command as written, its output and exit status kept apart
(step N), so a test can check each one. Three kinds of line are not run as they stand, because
a user does not run them that way either:

- `pip install ...`: installing is the test's own set-up (`make test-readme` builds the wheel
  and installs it, with the `demo` extra, into a new virtual environment; `make test` uses the
  development one);
- `facestream up ...` and anything with `--follow`: they run until Ctrl-C, so they are
  started in the background (a second terminal), `up` waited for until it says `ready`, and
  all of them stopped with SIGINT after the last block;
- a `python` block runs as `python - <<'PY'` in the same directory, with the stack up.

`localhost:8080` is rewritten only when that port is taken on the test machine (the stack then
runs on a free one, through FACESTREAM_HTTP_PORT).
"""

from __future__ import annotations

import re
import shlex
from dataclasses import dataclass
from pathlib import Path

FENCE = re.compile(r"^```(\w*)\s*$")


@dataclass(frozen=True)
class Block:
    lang: str
    text: str


@dataclass(frozen=True)
class Step:
    index: int
    kind: str  # "run", "background", "python", "skipped"
    text: str


def section(markdown: str, title: str) -> str:
    """The text under a `## title` heading, up to the next heading of level 1 or 2."""
    lines = markdown.splitlines()
    out: list[str] = []
    inside = fenced = False
    for line in lines:
        if FENCE.match(line):
            fenced = not fenced
        if not fenced and re.match(r"^#{1,2} ", line):
            if inside:
                break
            inside = line.strip("# ").strip() == title
            continue
        if inside:
            out.append(line)
    if not out:
        raise ValueError(f"no section {title!r}")
    return "\n".join(out)


def blocks(text: str) -> list[Block]:
    out: list[Block] = []
    lang: str | None = None
    body: list[str] = []
    for line in text.splitlines():
        match = FENCE.match(line)
        if match and lang is None:
            lang, body = match.group(1) or "text", []
        elif line.strip() == "```" and lang is not None:
            out.append(Block(lang, "\n".join(body)))
            lang = None
        elif lang is not None:
            body.append(line)
    return out


def _command(line: str) -> str:
    """The command of a line: its shell comment dropped (the shell would drop it too)."""
    lexer = shlex.shlex(line, posix=True, punctuation_chars=False)
    lexer.whitespace_split = True
    lexer.commenters = "#"
    try:
        words = list(lexer)
    except ValueError:
        return line.strip()
    if not words:
        return ""
    # Cut the raw line where its comment starts, keeping the user's own quoting.
    cut = line
    for i in range(len(line)):
        if line[i] == "#" and (i == 0 or line[i - 1].isspace()):
            head = line[:i]
            if head.count("'") % 2 == 0 and head.count('"') % 2 == 0:
                cut = head
                break
    return cut.strip()


def steps(blocks_: list[Block]) -> list[Step]:
    out: list[Step] = []
    for block in blocks_:
        if block.lang == "python":
            out.append(Step(len(out), "python", block.text))
            continue
        if block.lang not in ("sh", "bash", "console"):
            continue
        for raw in block.text.splitlines():
            command = _command(raw)
            if not command:
                continue
            if command.startswith("pip install"):
                kind = "skipped"
            elif command.startswith("facestream up") or "--follow" in command.split():
                kind = "background"
            else:
                kind = "run"
            out.append(Step(len(out), kind, command))
    return out


def script(steps_: list[Step], logs: Path, port: int | None) -> str:
    """Bash for the steps: logs/N.out, N.err and N.rc per step; background steps' pids in
    logs/N.pid; `up` waited for until `ready` (or its death)."""
    # -m: background commands keep SIGINT (a non-interactive shell would ignore it for them)
    lines = ["set -um", f"LOGS={shlex.quote(str(logs))}"]
    if port is not None:
        lines.append(f"export FACESTREAM_HTTP_PORT={port}")
    for step in steps_:
        n = step.index
        out, err, rc = f'"$LOGS/{n}.out"', f'"$LOGS/{n}.err"', f'"$LOGS/{n}.rc"'
        text = step.text
        if port is not None:
            text = text.replace("localhost:8080", f"localhost:{port}")
        if step.kind == "skipped":
            lines.append(f"echo skipped > {rc}")
        elif step.kind == "python":
            lines.append(f"python - > {out} 2> {err} <<'PY'\n{text}\nPY")
            lines.append(f"echo $? > {rc}")
        elif step.kind == "background":
            lines.append(f"{text} > {out} 2> {err} &")
            lines.append(f'echo $! > "$LOGS/{n}.pid"')
            if text.startswith("facestream up"):
                lines.append(
                    f"for _ in $(seq 600); do grep -q '^ready' {err} && break; "
                    f'kill -0 $(cat "$LOGS/{n}.pid") 2>/dev/null || break; sleep 0.2; done'
                )
            else:
                lines.append("sleep 1")  # a reader that starts after later writes sees none
        else:
            lines.append(f"{text} > {out} 2> {err}")
            lines.append(f"echo $? > {rc}")
    lines.append("sleep 2")  # the last results reach the followers and the sink
    # Stop the background commands, newest first (the followers before the stack).
    for step in reversed(steps_):
        if step.kind == "background":
            n = step.index
            lines.append(f'kill -INT $(cat "$LOGS/{n}.pid") 2>/dev/null')
            lines.append(f'wait $(cat "$LOGS/{n}.pid"); echo $? > "$LOGS/{n}.rc"')
    return "\n".join(lines) + "\n"

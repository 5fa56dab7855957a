"""The overload and recovery run (benchmarks/overload.py): goodput, refusals, the recovery
windows and the recovery time computed from per-request records made up here, and the open-loop
client's records against a stub server that refuses, as facestream's admission control does,
what it cannot answer within the request's `timeout_ms` (no figures are asserted on timing).
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import re
from dataclasses import dataclass, field

import pytest

from benchmarks import bench
from benchmarks.capacity import Bound
from benchmarks.classes import HIT, JOINED, NEW
from benchmarks.common import photos
from benchmarks.loadgen import Target, Workload, deadline_ms, v1_target, with_deadline
from benchmarks.openloop import Record, StepOutcome, error_code
from benchmarks.overload import (
    REFUSED,
    Options,
    measure,
    outcome,
    overload_phase,
    recovery_s,
    to_json,
    windows,
)
from benchmarks.overload_report import report
from benchmarks.sidebyside import System
from tests.system.test_bench_openloop import Stub, stub_server

BOUND = Bound(p99_ms=100, new_p99_ms=250)


def rec(
    at_s: float, kind: str, ms: float, status: int = 200, code: str = "", cause: str = ""
) -> Record:
    return Record(at_s, kind, status, cause or str(status), code, ms / 1000)


def phase(records: list[Record], seconds: float, offered: float = 15.0) -> StepOutcome:
    out = StepOutcome(offered, seconds, scheduled=len(records), sent=len(records), records=[])
    for r in records:
        assert out.records is not None
        out.records.append(r)
        if r.status == 200:
            out.by_class.add(r.kind, r.latency_s)
    return out


# --- phase A ----------------------------------------------------------------------------------


def test_goodput_counts_answers_within_the_bound_of_their_class() -> None:
    records = [
        rec(0.1, HIT, 50),  # in time
        rec(0.2, HIT, 150),  # answered, past the 100 ms bound of a hit
        rec(0.3, NEW, 200),  # in time: a new photo's bound is 250 ms
        rec(0.4, NEW, 300),  # late
        rec(0.5, JOINED, 90),  # in time (a joined request has the 100 ms bound)
        rec(0.6, JOINED, 120),  # late
        rec(0.7, NEW, 2, 503, "overloaded"),
        rec(1.1, NEW, 4, 503, "overloaded"),
        rec(1.2, NEW, 251, 504, "timeout"),
        rec(1.3, NEW, 0, 0, cause="dropped"),
        rec(1.4, NEW, 1, 503, "no_detector"),
        rec(1.5, HIT, 3, 503),  # the old design's 503 has no code
    ]
    a = overload_phase(phase(records, seconds=2.0), capacity=10.0, bound=BOUND)
    assert (a.answered, a.good, a.refused) == (6, 3, 2)
    assert a.goodput == pytest.approx(1.5) and a.goodput_pct == pytest.approx(15.0)
    assert a.refused_p50_ms == pytest.approx(3.0) and a.refused_p99_ms == pytest.approx(3.98)
    assert a.errors == {"504 timeout": 1, "dropped": 1, "503 no_detector": 1, "503": 1}
    assert a.classes[HIT].n == 2 and a.classes[NEW].n == 2 and a.classes[JOINED].n == 2


def test_a_phase_with_nothing_refused_reports_no_refusal_latency() -> None:
    a = overload_phase(phase([rec(0.1, HIT, 5)], 1.0), capacity=1.0, bound=BOUND)
    assert a.refused == 0 and a.refused_p99_ms == 0.0 and a.goodput_pct == pytest.approx(100)


def test_what_a_record_says_happened() -> None:
    assert outcome(rec(0, NEW, 1, 503, "overloaded")) == REFUSED
    assert outcome(rec(0, NEW, 1, 0, cause="timeout")) == "timeout"
    assert outcome(rec(0, HIT, 1)) == "200"


# --- phase B ----------------------------------------------------------------------------------


def test_each_window_holds_by_the_bound_and_refusals_fail_it() -> None:
    records = [
        rec(0.2, HIT, 5),
        rec(0.5, NEW, 3, 503, "overloaded"),  # window 0: a refusal at the recovery rate
        *(rec(1.0 + i / 200, HIT, 5) for i in range(98)),
        rec(1.9, HIT, 500),
        rec(1.95, HIT, 600),  # window 1: p99 of 100 answers over 100 ms
        rec(2.1, NEW, 80),
        rec(2.2, HIT, 99),  # window 2 holds (a new photo counts in all answers' p99 too)
        rec(3.5, NEW, 260),  # window 3: a new photo past 250 ms (all answers' p99 too)
        rec(4.1, HIT, 1, 0, cause="connection"),  # window 4: an error
        rec(5.9, HIT, 1),  # window 5 holds
        rec(6.4, JOINED, 10),  # window 6 (0.5 s long) holds
        rec(6.5, HIT, 10),  # at the very end (a timer's rounding): counted in the last window
    ]
    ws = windows(records, seconds=6.5, window_s=1.0, bound=BOUND)
    assert [w.start_s for w in ws] == [0, 1, 2, 3, 4, 5, 6]
    assert [w.held for w in ws] == [False, False, True, False, False, True, True]
    assert ws[0].failed == ["1 refused"] and (ws[0].arrivals, ws[0].answered) == (2, 1)
    assert ws[1].failed[0].startswith("p99 ") and ws[1].answered == 100
    assert ws[3].failed == ["p99 260 ms", "new p99 260 ms"]
    assert ws[4].failed == ["errors connection x1"] and ws[4].errors == 1
    assert ws[6].arrivals == 2
    assert recovery_s(records, ws, BOUND) == 5.0


def test_the_recovery_time_is_where_the_bound_holds_again_from_then_on() -> None:
    ok, bad = rec(0.1, HIT, 5), rec(0.1, HIT, 500)
    refused = rec(0.1, NEW, 3, 503, "overloaded")

    def at(start: float, r: Record) -> Record:
        return Record(start + r.at_s, r.kind, r.status, r.cause, r.code, r.latency_s)

    def recovery(pattern: str, per_window: int = 1) -> float | None:
        kinds = {"+": ok, "-": bad, "r": refused}
        records = [
            at(i + j / (per_window + 1), kinds[c])
            for i, c in enumerate(pattern)
            for j in range(per_window)
        ]
        return recovery_s(records, windows(records, len(pattern), 1.0, BOUND), BOUND)

    assert recovery("+++++") == 0.0  # never failed
    assert recovery("--+++") == 2.0  # a backlog: every tail that starts in it fails
    assert recovery("+++-") is None  # the phase's last answers too slow: not recovered
    assert recovery("r++++") == 1.0  # a refusal at the recovery rate: not recovered yet
    # Two slow answers among 300: the window of 100 they fall in fails (its p99 is about its
    # second-worst), the tail from the start holds (its p99, about the third-worst, is fast)
    records = [at(i + j / 101, ok) for i in range(3) for j in range(100)]
    records[150], records[160] = at(1.5, bad), at(1.6, bad)
    ws = windows(records, 3, 1.0, BOUND)
    assert [w.held for w in ws] == [True, False, True]
    assert recovery_s(records, ws, BOUND) == 0.0
    assert recovery_s([], windows([], 3, 1.0, BOUND), BOUND) == 0.0  # no arrivals


# --- the deadline sent ------------------------------------------------------------------------


def test_the_deadline_goes_where_the_route_has_one() -> None:
    v1 = v1_target(8000)
    assert deadline_ms(v1) == 60000
    short = with_deadline(v1, 250)
    assert deadline_ms(short) == 250 and short.path == "/v1/detect?wait=true&timeout_ms=250"
    assert with_deadline(v1, None) == v1
    multipart = Target(8000, "/face-detection", multipart=True)  # the old design's: none
    assert with_deadline(multipart, 250) == multipart and deadline_ms(multipart) is None


def test_an_error_answers_code_is_read_from_its_body() -> None:
    assert error_code(b'{"error":{"code":"overloaded","message":"x"}}') == "overloaded"
    assert error_code(b'{"error": {"code": "timeout", "message": "x"}}') == "timeout"
    assert error_code(b'{"error":"the image is being processed, try again"}') == ""
    assert error_code(b"") == ""


def test_overload_alone_needs_the_capacities() -> None:
    with pytest.raises(SystemExit):
        bench.main(["--only", "overload"])
    with pytest.raises(SystemExit):
        bench.main(["--only", "overload", "--overload-capacity", "1500"])


# --- against a stub that refuses --------------------------------------------------------------


@dataclass
class RefusingStub(Stub):
    """Stub's photos and cache, plus admission control: a new photo whose expected wait (the
    photos ahead of it over the slots, its own run included) is past the request's timeout_ms
    is answered 503 `overloaded` at once; hits and joined requests are never refused."""

    waiting: int = 0
    counts: dict[str, int] = field(
        default_factory=lambda: {"ran": 0, "cached": 0, "joined": 0, "refused": 0}
    )

    async def handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while line := await reader.readline():
                found = re.search(rb"timeout_ms=(\d+)", line)
                timeout_s = int(found.group(1)) / 1000 if found else 60.0
                length = 0
                while (line := await reader.readline()) not in (b"\r\n", b""):
                    if line.lower().startswith(b"content-length:"):
                        length = int(line.split(b":")[1])
                sha = hashlib.sha256(await reader.readexactly(length)).hexdigest()
                writer.write(await self._answer(sha, timeout_s))
        except (ConnectionError, asyncio.IncompleteReadError):
            pass
        finally:
            writer.close()

    async def _answer(self, sha: str, timeout_s: float) -> bytes:
        status, cached = b"200 OK", sha in self.done
        if cached:
            self.counts["cached"] += 1
        elif sha in self.flight:
            self.counts["joined"] += 1
            await self.flight[sha]
        elif (self.waiting // self.slots + 1) * self.service_s > timeout_s:
            self.counts["refused"] += 1
            body = b'{"error":{"code":"overloaded","message":"past the deadline"}}'
            return (
                b"HTTP/1.1 503 Service Unavailable\r\nContent-Length: %d\r\n\r\n" % len(body) + body
            )
        else:
            self.counts["ran"] += 1
            self.waiting += 1
            self.flight[sha] = asyncio.get_running_loop().create_future()
            async with self.gate:
                await asyncio.sleep(self.service_s)
            self.waiting -= 1
            self.done.add(sha)
            self.flight.pop(sha).set_result(None)
        body = b'{"faces":[],"cached":%s}' % (b"true" if cached else b"false")
        return b"HTTP/1.1 %s\r\nContent-Length: %d\r\n\r\n" % (status, len(body)) + body


def test_the_run_records_every_request_and_the_refusals_it_got() -> None:
    """4 slots of 50 ms: 80 new photos a second. Offered 2.5x that in new photos only with a
    deadline of 150 ms, the stub refuses what would wait longer; every arrival of the phases
    is accounted for, the refusals counted as the stub counted them."""
    slots, service_s = 4, 0.05
    opts = Options(
        factor=2.5,
        seconds=1.0,
        recover_factor=0.5,
        recover_s=1.5,
        warmup_s=0.5,
        settle_s=0.0,
        window_s=0.5,
        deadline_ms=150,
        new_pct=100.0,
        bound=Bound(p99_ms=1000, new_p99_ms=1000),
    )
    stub = RefusingStub(slots, service_s)
    with stub_server(slots, service_s, stub):
        target = Target(stub.port, "/v1/detect?timeout_ms=60000", multipart=False)
        work = Workload(photos(2), seed=9, label=6 * 10**9)
        result = measure(System("stub", target, {}), work, slots / service_s, opts)
    a = result.overload
    assert result.deadline_ms == 150 and result.capacity == 80
    assert a.offered == 200 and a.refused > 0
    assert set(a.errors) <= {"dropped"}, a.errors  # refused or answered, nothing else
    assert a.good <= a.answered and a.answered + a.refused + sum(a.errors.values()) == a.scheduled
    assert len(result.windows) == 3
    b_refused = sum(w.refused for w in result.windows)
    before = result.before
    assert before is not None
    before_refused = before.errors.get("503", 0)
    assert a.refused + b_refused + before_refused == stub.counts["refused"]
    assert sum(w.arrivals for w in result.windows) == result.after.scheduled
    assert result.recovery_s is None or 0 <= result.recovery_s < 1.5
    # the tables and the JSON are made from it
    text = report([result], opts)
    assert "Overload (phase A)" in text and "recovered after" in text and "150" in text
    saved = json.loads(json.dumps(to_json([result])))
    assert saved[0]["overload"]["refused"] == a.refused and "records" not in json.dumps(saved)
    assert len(saved[0]["windows"]) == 3 and "held" in saved[0]["windows"][0]

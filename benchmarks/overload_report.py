"""The overload and recovery run's tables (benchmarks/overload.py)."""

from __future__ import annotations

from typing import TYPE_CHECKING

from benchmarks.classes import CLASSES
from benchmarks.common import table

if TYPE_CHECKING:
    from benchmarks.capacity import RatePoint
    from benchmarks.overload import Options, Result, Window

# issue 27's targets for facestream
GOODPUT_PCT = 90.0
REFUSED_P99_MS = 10.0
RECOVERY_S = 5.0


def report(results: list[Result], opts: Options) -> str:
    if not results:
        return table("Overload and recovery: no system had a capacity to run at", ["-"], [])
    return "\n".join(
        [overload_table(results, opts), windows_table(results, opts), summary(results)]
    )


def _deadline(r: Result) -> str:
    return f"{r.deadline_ms:,}" if r.deadline_ms is not None else "none (no such parameter)"


def overload_table(results: list[Result], opts: Options) -> str:
    b = opts.bound
    title = (
        f"Overload (phase A): {opts.factor:g}x capacity C for {opts.seconds:g} s, after "
        f"{opts.warmup_s:g} s at {opts.recover_factor:g}x on the same connections; requests by "
        f"arrival time. Goodput: answers (200) within their bound, {b.p99_ms:g} ms for hits and "
        f"joined requests (the p99 bound), {b.new_p99_ms:g} ms for new photos (the new-photo "
        "bound), per second of the phase; refused: 503 `overloaded`, with their latency from "
        "arrival; other errors by kind ('dropped': no free connection in the client); answers "
        f"per class 'p50 / p99 ms (n)'. Deadline: the timeout_ms sent. {opts.new_pct:g} % new "
        "photos"
    )
    rows: list[list[object]] = []
    for r in results:
        a = r.overload
        rows.append(
            [
                r.system,
                f"{r.capacity:,.0f}",
                _deadline(r),
                f"{a.offered:,.0f} / {a.achieved:,.0f}",
                f"{a.goodput:,.0f} ({a.goodput_pct:.0f} %)",
                f"{a.answered / a.seconds:,.0f}",
                f"{a.refused / a.seconds:,.0f}",
                f"{a.refused_p50_ms:.1f} / {a.refused_p99_ms:.1f}" if a.refused else "-",
                ", ".join(f"{k} x{v:,}" for k, v in a.errors.items()) or "none",
                *(a.classes[c].cell() for c in CLASSES),
                f"{100 * a.late / a.sent:.1f} %" if a.sent else "-",
                f"{a.peak_connections:,}",
            ]
        )
    return table(
        title,
        [
            "system",
            "C /s",
            "deadline ms",
            "offered / sent /s",
            "goodput /s (% of C)",
            "answered /s",
            "refused /s",
            "refused p50 / p99 ms",
            "other errors",
            "hit",
            "new",
            "joined",
            "client late",
            "connections",
        ],
        rows,
    )


def _cell(w: Window) -> str:
    p99 = f"{w.p99_ms:,.0f}" if w.answered else "-"
    new = f"{w.new_p99_ms:,.0f}" if w.new else "-"
    return f"{p99} / {new} ms, {w.refused:,} refused, {w.errors:,} errors: " + (
        "holds" if w.held else "fails"
    )


def windows_table(results: list[Result], opts: Options) -> str:
    b = opts.bound
    title = (
        f"Recovery (phase B): {opts.recover_factor:g}x C for {opts.recover_s:g} s right after "
        f"phase A, no pause; per {opts.window_s:g}-s window by arrival time, per system the "
        "answers' p99 / new photos' p99, refusals, other errors. A window holds when every request "
        f"in it was answered 200 (a refusal is a backlog not yet gone) with p99 <= {b.p99_ms:g} "
        f"ms and new photos' p99 <= {b.new_p99_ms:g} ms. Recovery time: the start t of the "
        "first window from which the bound holds again: no refusal or error from t on, and the "
        "answers from t to the end, taken together, within the bound"
    )
    n = max(len(r.windows) for r in results)
    rows: list[list[object]] = []
    for i in range(n):
        row: list[object] = []
        for r in results:
            row.append(_cell(r.windows[i]) if i < len(r.windows) else "")
        start = opts.window_s * i
        rows.append([f"{start:g}-{start + opts.window_s:g}", *row])
    rows.append(["recovered after", *(recovery_text(r) for r in results)])
    return table(title, ["window s", *(r.system for r in results)], rows)


def recovery_text(r: Result) -> str:
    if r.recovery_s is None:
        return f"not within {len(r.windows) * r.window_s:g} s"
    return f"{r.recovery_s:g} s"


def _judged(p: RatePoint | None) -> str:
    if p is None:
        return "-"
    verdict = "held" if p.held else "; ".join(p.failed)
    new = p.classes["new"]
    return f"{p.p99_ms:,.0f} / {f'{new.p99_ms:,.0f}' if new.n else '-'} ms: {verdict}"


def summary(results: list[Result]) -> str:
    """Each system against issue 27's targets (the targets are facestream's; the old design's
    row is the comparison)."""
    rows: list[list[object]] = []
    for r in results:
        a = r.overload
        rows.append(
            [
                r.system,
                _judged(r.before),
                f"{a.goodput_pct:.0f} % ({'met' if a.goodput_pct >= GOODPUT_PCT else 'not met'})",
                (
                    f"{a.refused_p99_ms:.1f} ms "
                    f"({'met' if a.refused_p99_ms <= REFUSED_P99_MS else 'not met'})"
                    if a.refused
                    else "none refused"
                ),
                f"{recovery_text(r)} ("
                + ("met" if r.recovery_s is not None and r.recovery_s <= RECOVERY_S else "not met")
                + ")",
                _judged(r.after),
                f"{r.elapsed_s:.0f} s",
            ]
        )
    return table(
        f"Overload and recovery against the targets (goodput >= {GOODPUT_PCT:g} % of C, "
        f"refusals p99 <= {REFUSED_P99_MS:g} ms, recovered within {RECOVERY_S:g} s); before: "
        "the warm-up at the recovery rate and phase B whole, 'p99 / new p99' and the capacity "
        "search's verdict",
        [
            "system",
            "before",
            "goodput",
            "refusals p99",
            "recovery",
            "phase B whole",
            "run took",
        ],
        rows,
    )

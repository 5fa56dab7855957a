"""benchmarks/model_cost.py's arithmetic and turn-taking (pure report logic; the timings
themselves are run by hand, never asserted by the tests)."""

from __future__ import annotations

from typing import Any, cast

from benchmarks.model_cost import measure, summarise

# Round medians in ms. The ratio is taken per round, then its median: here 2.0, where the
# ratio of the two medians would be 24 / 10 = 2.4.
ROUNDS = [
    {"a": {"prepare": 2.0, "run": 10.0, "post": 0.1}, "b": {"prepare": 3.0, "run": 25.0}},
    {"a": {"prepare": 4.0, "run": 12.0, "post": 0.3}, "b": {"prepare": 5.0, "run": 24.0}},
    {"a": {"prepare": 3.0, "run": 8.0, "post": 0.2}, "b": {"prepare": 4.0, "run": 12.0}},
]


def test_medians_spread_and_the_per_round_ratio() -> None:
    a, b = summarise(["a", "b"], ROUNDS)
    assert a.medians_ms == {"prepare": 3.0, "run": 10.0, "post": 0.2}
    assert a.spread_ms == (8.0, 12.0) and a.ratio == 1.0
    # b: per-round ratios 2.5, 2.0, 1.5 -> 2.0; no post-processing timed, none reported.
    assert b.medians_ms == {"prepare": 4.0, "run": 24.0}
    assert b.spread_ms == (12.0, 25.0) and b.ratio == 2.0


class Recorder:
    """Stands in for a loaded model: measure() only calls the step functions it returns."""

    def __init__(self, name: str, calls: list[str]) -> None:
        self.name, self.calls = name, calls

    def steps(self) -> dict[str, Any]:
        return {"run": lambda: self.calls.append(self.name)}


def test_models_take_turns_the_order_reversed_every_other_round() -> None:
    calls: list[str] = []
    timed = {n: cast(Any, Recorder(n, calls)) for n in ("a", "b", "c")}
    rounds = measure(timed, rounds=3, runs=2, warmup=1)
    turns = ["a", "b", "c", "c", "b", "a", "a", "b", "c"]
    assert calls == ["a", "b", "c"] + [n for n in turns for _ in range(2)]
    assert len(rounds) == 3 and all(set(r) == {"a", "b", "c"} for r in rounds)

"""The side-by-side benchmark's rounds: medians per point and each round's own ratio (pure
report logic; the benchmark itself is run by hand, not by the tests)."""

from __future__ import annotations

from benchmarks.sidebyside import NEW, OLD, Options, Point, medians, report, round_ratios


def point(system: str, users: int, qps: float, p99: float, errors: dict[int, int]) -> Point:
    cpu = {"workers": 1.0, "redis": 1.0} if system == OLD else {"gateway": 1.0, "detectors": 2.0}
    cpu["client"] = 1.0
    if system == NEW:
        cpu["redis"] = 1.0
    return Point("published", system, users, 7.7, qps, 10.0, 5.0, p99, 90.0, errors, cpu)


ROUNDS = [
    point(OLD, 10, 500, 60, {}),
    point(NEW, 10, 1000, 50, {503: 1}),
    point(NEW, 10, 900, 40, {}),  # round 2: the order swapped
    point(OLD, 10, 300, 90, {503: 2}),
    point(OLD, 10, 400, 70, {}),
    point(NEW, 10, 1200, 45, {}),
]


def test_each_figure_is_the_median_of_its_rounds_and_errors_add_up() -> None:
    merged = {p.system: p for p in medians(ROUNDS)}
    assert merged[OLD].qps == 400 and merged[NEW].qps == 1000
    assert merged[OLD].p99_ms == 70 and merged[NEW].p99_ms == 45
    assert merged[OLD].errors == {503: 2} and merged[NEW].errors == {503: 1}


def test_each_round_pairs_the_two_systems_of_that_round() -> None:
    assert round_ratios(ROUNDS, 10) == [2.0, 3.0, 3.0]


def test_the_report_gives_the_median_of_the_rounds_ratios_and_their_range() -> None:
    text = report(ROUNDS, Options(users=(10,), rounds=3))
    row = next(line for line in text.splitlines() if line.startswith("| 10 "))
    assert "400 / 1,000" in row
    assert "3.00x (2.00-3.00)" in row
    assert "3 rounds per point" in text

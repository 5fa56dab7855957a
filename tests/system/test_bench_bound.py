"""The side-by-side report's ceiling: what the cores allow from the work nobody can skip (the
arithmetic, and its floor measured on the real model)."""

from __future__ import annotations

import dataclasses
import os

import pytest

from benchmarks.bound import MissFloor, ceiling_qps, measure_floor
from benchmarks.sidebyside import NEW, Options, report
from tests.system.test_bench_rounds import ROUNDS, point


def test_the_ceiling_is_the_cores_over_the_mean_unavoidable_work() -> None:
    floor = MissFloor(run_ms=16.0, prepare_ms=2.0)
    # 7.7 % new: 0.077 * 18 ms + 0.923 * 0.25 ms = 1.617 ms per request on 2 cores
    assert ceiling_qps(floor, 0.077, 250, 2) == pytest.approx(2000 / 1.61675)
    # all hits: only the hit cost counts
    assert ceiling_qps(floor, 0.0, 250, 2) == pytest.approx(8000)


def test_the_report_sets_the_ceiling_beside_the_target() -> None:
    hits = [
        dataclasses.replace(point(NEW, u, 5000, 40, {}), scenario="all hits", miss_pct=0.0)
        for u in (10, 200)
    ]
    hits[0].cpu_us.update(gateway=250.0, detectors=0.0, redis=30.0, client=20.0)
    hits[1].cpu_us.update(gateway=200.0, detectors=0.0, redis=30.0, client=20.0)
    floor = MissFloor(run_ms=16.0, prepare_ms=2.0)
    text = report(ROUNDS + hits, Options(users=(10,), rounds=3), floor)
    assert "250 us per other request" in text  # the cheaper all-hits point's cost
    row = next(line for line in text.splitlines()[::-1] if line.startswith("| 10 "))
    # the old design's median 400 QPS: 2.5x is 1,000; 77 new/s x 18 ms = 1.39 cores
    cells = [c.strip() for c in row.strip("|").split("|")]
    ceiling = ceiling_qps(floor, 0.077, 250, os.cpu_count() or 1)
    assert cells[1:4] == ["1,000", "1.39", "0.23"]
    assert cells[5] == f"{ceiling / 400:.2f}x"
    assert report(ROUNDS, Options(users=(10,), rounds=3), floor).count("cores allow") == 0


def test_the_floor_is_measured_on_the_real_model() -> None:
    floor = measure_floor(n=4)
    assert 0 < floor.prepare_ms < floor.run_ms < 1000

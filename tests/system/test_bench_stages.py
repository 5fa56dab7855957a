"""The benchmark's breakdown (benchmarks/stages.py): the stage histograms of a /metrics page,
the difference between two scrapes, and p50 / p99 estimated from the buckets, on pages written
by prometheus-client itself with the services' buckets."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Histogram, generate_latest

from benchmarks.classes import ClassStats
from benchmarks.stages import Hist, breakdown, breakdown_table, parse
from facestream.common.metrics import STAGE_BUCKETS


def page(observed: dict[str, list[float]], family: str = "facestream_stage_seconds") -> str:
    registry = CollectorRegistry()
    hist = Histogram(family, "stages", ["stage"], buckets=STAGE_BUCKETS, registry=registry)
    for stage, values in observed.items():
        child = hist.labels(stage)
        for v in values:
            child.observe(v)
    return generate_latest(registry).decode()


def test_the_step_is_the_difference_of_two_scrapes_per_class_and_stage() -> None:
    before = parse(page({"model": [0.010] * 5, "stream": [0.001] * 5}))
    after = parse(
        page({"model": [0.010] * 5 + [0.012] * 100, "stream": [0.001] * 5 + [0.0004] * 100})
    )
    rows = {(r.cls, r.stage): r for r in breakdown(after, before)}
    model, stream = rows[("new", "model")], rows[("new", "stream")]
    assert (model.n, stream.n) == (100, 100)
    assert abs(model.mean_ms - 12.0) < 1e-6 and abs(stream.mean_ms - 0.4) < 1e-6
    # Estimates land in the value's bucket: 12 ms in (10, 15], 0.4 ms in (0.3, 0.5].
    assert 10 < model.p50_ms <= 15 and 10 < model.p99_ms <= 15
    assert 0.3 < stream.p50_ms <= 0.5
    # Only what the pages carry: no other stage, no hit stages.
    assert set(rows) == {("new", "model"), ("new", "stream")}


def test_quantiles_interpolate_within_a_bucket_and_stop_at_the_last_bound() -> None:
    hist = Hist({0.001: 50.0, 0.002: 100.0, float("inf"): 100.0}, 0.15)
    assert hist.quantile(0.5) == 0.001
    assert abs(hist.quantile(0.75) - 0.0015) < 1e-12
    past = Hist({0.001: 0.0, 10.0: 1.0, float("inf"): 100.0}, 1000.0)
    assert past.quantile(0.99) == 10.0  # in +Inf: the last finite bound
    assert Hist({float("inf"): 0.0}).quantile(0.5) == 0.0


def test_the_table_sets_the_sum_of_the_means_beside_the_client() -> None:
    hits = page(
        {
            "compute_input": [0.0002] * 10,
            "queue": [0.0001] * 10,
            "compute_infer": [0.0005] * 10,
            "compute_output": [0.0001] * 10,
        },
        "facestream_hit_stage_seconds",
    )
    rows = breakdown(parse(hits), {})
    text = breakdown_table("t", rows, {"hit": ClassStats(10, 1.2, 3.4)})
    last = next(line for line in text.splitlines() if "sum of the means" in line)
    cells = [c.strip() for c in last.strip("|").split("|")]
    assert cells[0] == "hit" and cells[2] == "10" and cells[3] == "0.90"
    assert cells[4:] == ["1.20", "3.40"]
    assert [r.stage for r in rows] == ["compute_input", "queue", "compute_infer", "compute_output"]

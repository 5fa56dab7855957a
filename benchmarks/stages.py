"""Where a request's time goes, as facestream itself measures it: its processes' stage
histograms (`facestream_stage_seconds`: a new photo, stage by stage, at the detectors and the
gateway's reply; `facestream_hit_stage_seconds`: a cache hit answered at the gateway, in
Triton's four parts), scraped from every process's /metrics before and after a benchmark step.
The difference is that step's: per stage its observations, their mean, and p50 / p99 estimated
from the buckets the way Prometheus's histogram_quantile does (linear within a bucket).
docs/performance.md, "Where a request's time goes", says what each stage covers.
"""

from __future__ import annotations

import math
import urllib.request
from dataclasses import dataclass

from prometheus_client.parser import text_string_to_metric_families

from benchmarks.classes import HIT, NEW, ClassStats
from benchmarks.common import table

NEW_FAMILY = "facestream_stage_seconds"
HIT_FAMILY = "facestream_hit_stage_seconds"
# Per class the stages in the order a request passes them.
ORDER = {
    NEW: (
        NEW_FAMILY,
        ("stream", "lookup", "parked", "decode", "model_queue", "model", "write", "reply"),
    ),
    HIT: (HIT_FAMILY, ("compute_input", "queue", "compute_infer", "compute_output")),
}

Key = tuple[str, str]  # (histogram, stage)


@dataclass
class Hist:
    """One histogram's samples for one stage: cumulative counts per upper bound, and the sum."""

    buckets: dict[float, float]  # le -> observations at or under it (+Inf: all of them)
    total_s: float = 0.0

    @property
    def n(self) -> float:
        return self.buckets.get(math.inf, 0.0)

    def minus(self, before: Hist | None) -> Hist:
        if before is None:
            return self
        return Hist(
            {le: c - before.buckets.get(le, 0.0) for le, c in self.buckets.items()},
            self.total_s - before.total_s,
        )

    def quantile(self, q: float) -> float:
        """Seconds under which a share `q` of the observations fell, interpolated linearly in
        its bucket (Prometheus's histogram_quantile); past the last finite bound: that bound."""
        n = self.n
        if not n:
            return 0.0
        rank, lower, below = q * n, 0.0, 0.0
        for le in sorted(self.buckets):
            count = self.buckets[le]
            if count >= rank:
                if math.isinf(le):
                    return lower
                inside = count - below
                return lower + (le - lower) * ((rank - below) / inside if inside else 1.0)
            lower, below = le, count
        return lower


Snapshot = dict[Key, Hist]


def parse(text: str) -> Snapshot:
    """The stage histograms of one /metrics page."""
    out: Snapshot = {}
    for family in text_string_to_metric_families(text):
        if family.name not in (NEW_FAMILY, HIT_FAMILY):
            continue
        for sample in family.samples:
            key = (family.name, sample.labels.get("stage", ""))
            hist = out.setdefault(key, Hist({}))
            if sample.name.endswith("_bucket"):
                hist.buckets[float(sample.labels["le"])] = sample.value
            elif sample.name.endswith("_sum"):
                hist.total_s = sample.value
    return out


def scrape(urls: list[str]) -> Snapshot:
    """Every process's stage histograms, summed (several detectors); a process that does not
    answer is left out, said once: a step's other figures still count."""
    total: Snapshot = {}
    for url in urls:
        try:
            with urllib.request.urlopen(url, timeout=5) as resp:
                page = parse(resp.read().decode())
        except OSError as exc:
            print(f"stages: {url} not scraped ({exc})", flush=True)
            continue
        for key, hist in page.items():
            mine = total.setdefault(key, Hist({}))
            for le, count in hist.buckets.items():
                mine.buckets[le] = mine.buckets.get(le, 0.0) + count
            mine.total_s += hist.total_s
    return total


@dataclass
class StageStats:
    cls: str  # benchmarks/classes.py: new or hit
    stage: str
    n: int
    mean_ms: float
    p50_ms: float
    p99_ms: float


def breakdown(after: Snapshot, before: Snapshot) -> list[StageStats]:
    """Per class and stage, in order, what was observed between the two scrapes."""
    rows = []
    for cls, (family, stages) in ORDER.items():
        for stage in stages:
            hist = after.get((family, stage))
            if hist is None:
                continue
            step = hist.minus(before.get((family, stage)))
            n = round(step.n)
            rows.append(
                StageStats(
                    cls,
                    stage,
                    n,
                    1000 * step.total_s / n if n else 0.0,
                    1000 * step.quantile(0.5),
                    1000 * step.quantile(0.99),
                )
            )
    return rows


def breakdown_table(title: str, rows: list[StageStats], client: dict[str, ClassStats]) -> str:
    """Per class its stages, then a row with the sum of their means (the stages follow one
    another) beside the client's own p50 / p99 for the class at the same step: what the
    stages do not cover is the client, the network and the gateway outside them."""
    lines: list[list[object]] = []
    for cls in ORDER:
        mine = [r for r in rows if r.cls == cls]
        if not mine:
            continue
        for r in mine:
            lines.append(
                [cls, r.stage, f"{r.n:,}", f"{r.mean_ms:.2f}", f"{r.p50_ms:.2f}", f"{r.p99_ms:.2f}"]
            )
        seen = client.get(cls)
        lines.append(
            [
                cls,
                "sum of the means; the client's p50, p99",
                f"{seen.n:,}" if seen else "-",
                f"{sum(r.mean_ms for r in mine):.2f}",
                f"{seen.p50_ms:.2f}" if seen else "-",
                f"{seen.p99_ms:.2f}" if seen else "-",
            ]
        )
    return table(title, ["class", "stage", "n", "mean ms", "p50 ms", "p99 ms"], lines)

"""How much a system could do on these cores at all, from the work nobody can skip.

Every new photo is one model run plus its decode and pre-processing; every other request
costs at least what a cache hit costs facestream (gateway, Redis and the client, measured in
the same run on all hits). With `cores` cores doing nothing else, a workload with a share
`new` of new photos can be answered at most at

    cores / (new * (run + decode) + (1 - new) * hit)

requests per second. The report sets that ceiling beside the old design's QPS: where the
ceiling is under the target ratio, no change to facestream's own code reaches the target on
this machine with this model (a cheaper model or more cores would).
"""

from __future__ import annotations

import os
import statistics
import time
from dataclasses import dataclass

import numpy as np

from benchmarks.common import photos, table, unique_jpeg
from facestream.common.settings import Settings
from facestream.detector.imaging import decode_image
from facestream.detector.model.loader import load_model


@dataclass(frozen=True)
class MissFloor:
    """Medians on this machine, one onnxruntime thread, nothing else running."""

    run_ms: float  # session.run on a pre-processed 640x480 photo
    prepare_ms: float  # decode + pre-processing of the JPEG

    @property
    def per_new_ms(self) -> float:
        return self.run_ms + self.prepare_ms


def measure_floor(n: int = 24) -> MissFloor:
    settings = Settings(intra_op_threads=1)
    model = load_model(settings)
    spec = model.spec
    bodies = [unique_jpeg(b, 9 * 10**8 + i) for i, b in enumerate(photos(n))]

    def prepared(body: bytes) -> np.ndarray:
        image = decode_image(
            body,
            max_bytes=settings.max_image_bytes,
            max_pixels=settings.max_pixels,
            max_side=spec.fit,
            upscale=spec.norm.upscale,
            resize=spec.resize,
        )
        return model.prepare(image).tensor[None]

    # Each step back to back over all photos, its output dropped at once (warm caches, no
    # idle gaps, memory reused): the cheapest figures this machine gives, as a ceiling wants.
    prepare, run = [], []
    for body in bodies:
        started = time.perf_counter()
        prepared(body)
        prepare.append(time.perf_counter() - started)
    model.backend.run(prepared(bodies[0]))  # the first run of a shape plans and allocates
    for body in bodies:
        tensor = prepared(body)
        started = time.perf_counter()
        model.backend.run(tensor)
        run.append(time.perf_counter() - started)
    return MissFloor(1000 * statistics.median(run), 1000 * statistics.median(prepare))


def ceiling_qps(floor: MissFloor, new: float, hit_us: float, cores: int) -> float:
    per_request_ms = new * floor.per_new_ms + (1 - new) * hit_us / 1000
    return 1000 * cores / per_request_ms


def bound_table(
    floor: MissFloor,
    rows: list[tuple[int, float, float]],
    hit_us: float,
    target: float,
    cores: int | None = None,
) -> str:
    """rows: (users, new photos in %, the old design's QPS)."""
    cores = cores or os.cpu_count() or 1
    out = []
    for users, new_pct, old_qps in rows:
        new = new_pct / 100
        ceiling = ceiling_qps(floor, new, hit_us, cores)
        wanted = target * old_qps
        misses = wanted * new
        out.append(
            [
                users,
                f"{wanted:,.0f}",
                f"{misses * floor.per_new_ms / 1000:.2f}",
                f"{(wanted - misses) * hit_us / 1e6:.2f}",
                f"{ceiling:,.0f}",
                f"{ceiling / old_qps:.2f}x" if old_qps else "-",
            ]
        )
    return table(
        f"What {cores} cores allow at all (model run {floor.run_ms:.1f} ms + decode and "
        f"pre-processing {floor.prepare_ms:.1f} ms per new photo, one thread; {hit_us:.0f} us "
        f"per other request, facestream's all-hits cost; nothing else counted)",
        [
            "users",
            f"{target:g}x old QPS",
            "cores: new photos",
            "cores: the rest",
            "ceiling QPS",
            "ceiling / old",
        ],
        out,
    )

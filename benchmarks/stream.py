"""Stream-level benchmarks: the hit path against the Redis ceiling for the same commands, the
miss path against bare onnxruntime, a single-flight burst, and scaling over processes."""

from __future__ import annotations

import hashlib
import os
import time

import redis

from benchmarks.common import (
    PREFIX,
    detectors,
    photos,
    publish,
    reset,
    results,
    table,
    wait_results,
)
from facestream.common.cache import scripts as cache_scripts
from facestream.common.cache.bloom import BloomShape
from facestream.common.contract.keys import Keys
from facestream.common.contract.schema import EVENT_FIELD
from facestream.common.settings import Settings
from facestream.common.streams.ack_gated import Emit
from facestream.common.streams.scripts import Scripts
from facestream.detector.imaging import decode_image
from facestream.detector.model.loader import load_model
from facestream.detector.model.preprocess import to_tensor


def result_rate(url: str) -> float:
    """Results per second, from the first to the last result's stream-id timestamp."""
    client = redis.Redis.from_url(url)
    stream = Keys(PREFIX).results
    first = client.xrange(stream, count=1)[0][0]
    last = client.xrevrange(stream, count=1)[0][0]
    n = client.xlen(stream)
    client.close()
    span_ms = int(last.split(b"-")[0]) - int(first.split(b"-")[0])
    return (n - 1) / max(span_ms / 1000, 1e-3)


def warm_cache(url: str, images: list[bytes]) -> None:
    reset(url)
    with detectors(url, 1):
        publish(url, images, "warm")
        wait_results(url, len(images))
    client = redis.Redis.from_url(url)
    client.delete(Keys(PREFIX).results)  # keep cache, Bloom and the (empty) images stream
    client.close()


def hit_rate_per_process(url: str, images: list[bytes], n: int, processes: int) -> float:
    warm_cache(url, images)
    publish(url, [images[i % len(images)] for i in range(n)], f"hit{processes}")
    with detectors(url, processes):
        wait_results(url, n)
    return result_rate(url)


def redis_ceiling(url: str, images: list[bytes], n: int, batch: int = 64) -> float:
    """The detector's hit-path commands, per read batch, in a bare pipelined loop with no
    decoding or Python work per event: XREADGROUP, one Bloom check, one look-up script per
    distinct image, one emit script. Events/s the server (and a minimal client) can carry."""
    keys = Keys("ceiling")
    client = redis.Redis.from_url(url)
    scripts = Scripts(client)
    scripts.load_blocking(client)  # pipelines queue EVALSHA only
    client.delete(keys.images, keys.results)
    client.xgroup_create(keys.images, "g", id="0", mkstream=True)
    payload = b"\x82" + b"x" * 600  # a result-sized payload
    pipe = client.pipeline(transaction=False)
    shas = [hashlib.sha256(img).hexdigest() for img in images]
    events = [b"e" * len(images[i % len(images)]) for i in range(n)]
    for ev in events:
        pipe.xadd(keys.images, {EVENT_FIELD: ev})
    pipe.execute()
    shape = BloomShape.for_capacity(1_000_000, 0.001)
    started = time.perf_counter()
    done = 0
    while done < n:
        entries = client.xreadgroup("g", "c", {keys.images: ">"}, count=batch)[0][1]
        ids = [e[0] for e in entries]
        distinct = {shas[(done + i) % len(shas)] for i in range(len(ids))}
        pipe = client.pipeline(transaction=False)
        cache_scripts.bloom_check(
            scripts,
            pipe,
            f"{keys.bloom('m')}:0",
            shape.hashes,
            [o for s in distinct for o in shape.offsets(s)],
        )
        pipe.execute()
        pipe = client.pipeline(transaction=False)
        for s in distinct:
            cache_scripts.lookup_or_lock(
                scripts, pipe, keys.cache(s, "m"), keys.lock(s, "m"), "t", 1000, True, "o."
            )
        pipe.execute()
        pipe = client.pipeline(transaction=False)
        Emit(keys.images, keys.results, "g", True, [(i.decode(), payload) for i in ids]).queue(
            scripts, pipe
        )
        pipe.execute()
        done += len(ids)
    elapsed = time.perf_counter() - started
    client.delete(keys.images, keys.results)
    client.close()
    return n / elapsed


def bench_hit_path(url: str, n: int = 20_000) -> str:
    images = photos(50, size=(160, 120))
    ceiling = redis_ceiling(url, images, n)
    rate = hit_rate_per_process(url, images, n, 1)
    return table(
        f"Stream hit path: {n} events of 50 cached images (160x120 JPEG), one detector process",
        ["events/s (detector)", "events/s (Redis ceiling, same commands)", "ratio"],
        [[f"{rate:,.0f}", f"{ceiling:,.0f}", f"{rate / ceiling:.0%}"]],
    )


def bare_onnxruntime(images: list[bytes], threads: int, batch: int = 1) -> float:
    """session.run alone on the pre-processed images (decoded and normalised beforehand),
    `batch` images per call: the ceiling for the model at this thread count."""
    model = load_model(Settings(intra_op_threads=threads))
    spec = model.spec
    pixels = [
        decode_image(
            d,
            max_bytes=1 << 30,
            max_pixels=1 << 30,
            max_side=spec.input_size,
            upscale=spec.norm.upscale,
        ).pixels
        for d in images
    ]
    shape = spec.padded(*pixels[0].shape[:2])
    tensors = [
        to_tensor(pixels[i : i + batch], spec.norm, shape) for i in range(0, len(pixels), batch)
    ]
    started = time.perf_counter()
    for tensor in tensors:
        model.backend.run(tensor)
    return len(images) / (time.perf_counter() - started)


def sequential_detect(images: list[bytes], threads: int) -> float:
    """Decode, pre-process, run and post-process one image after another: what a simple
    service does per request."""
    model = load_model(Settings(intra_op_threads=threads))
    spec = model.spec
    started = time.perf_counter()
    for data in images:
        model.detect(
            [
                decode_image(
                    data,
                    max_bytes=1 << 30,
                    max_pixels=1 << 30,
                    max_side=spec.input_size,
                    upscale=spec.norm.upscale,
                )
            ]
        )
    return len(images) / (time.perf_counter() - started)


def bench_miss_path(url: str, n: int = 300) -> str:
    images = photos(n)
    rows = []
    for threads in (1, 2):
        reset(url)
        publish(url, images, f"miss{threads}")
        with detectors(url, 1, FACESTREAM_INTRA_OP_THREADS=threads):
            # From the moment the (warmed-up) detector joined until the last answer.
            pipeline = n / wait_results(url, n)
        inferred = sum(1 for r in results(url) if not r["cached"])
        assert inferred == n, f"{inferred} of {n} images inferred: not all were misses"
        bare = bare_onnxruntime(images, threads)
        bare8 = bare_onnxruntime(images, threads, batch=8)
        simple = sequential_detect(images, threads)
        rows.append(
            [
                threads,
                f"{pipeline:.1f}",
                f"{bare:.1f}",
                f"{pipeline / bare:.2f}",
                f"{bare8:.1f}",
                f"{pipeline / bare8:.2f}",
                f"{simple:.1f}",
            ]
        )
    return table(
        f"Miss path: {n} distinct 640x480 JPEG photos, one detector process "
        "(max batch 1, the CPU default)",
        [
            "ort threads",
            "pipeline images/s",
            "bare ort, batch 1",
            "ratio",
            "bare ort, batch 8",
            "ratio",
            "sequential decode + detect",
        ],
        rows,
    )


def bench_single_flight(url: str, copies: int = 500, processes: int = 2) -> str:
    image = photos(1, size=(640, 480), quality=90)
    reset(url)
    with detectors(url, processes):
        started = time.perf_counter()
        publish(url, image * copies, "burst")
        wait_results(url, copies)
        elapsed = time.perf_counter() - started
    got = results(url)
    inferences = sum(1 for r in got if not r["cached"])
    return table(
        f"Single-flight burst: {copies} copies of one new image, {processes} detector processes",
        ["results", "inferences", "time to answer all (ms)"],
        [[len(got), inferences, f"{elapsed * 1000:.0f}"]],
    )


def bench_scaling(url: str, n: int = 20_000) -> str:
    images = photos(50, size=(160, 120))
    rows = []
    base = None
    for processes in (1, 2, 4):
        rate = hit_rate_per_process(url, images, n, processes)
        base = base or rate
        rows.append([processes, f"{rate:,.0f}", f"{rate / base:.2f}x"])
    return table(
        f"Scaling: hit path, {n} events, 1 / 2 / 4 detector processes (on {os.cpu_count()} cores)",
        ["processes", "events/s", "vs 1"],
        rows,
    )

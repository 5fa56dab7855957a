"""Cheaper misses (issue #15): the miss path under each thread / process layout and with each
built-in model (fp32, builtin-int8), every row against bare onnxruntime with the same model and
layout, in the same run. `python -m benchmarks.bench --only misses`."""

from __future__ import annotations

import multiprocessing as mp
import tempfile
import time
from dataclasses import dataclass
from multiprocessing.synchronize import Barrier

from benchmarks.common import detectors, photos, publish, reset, results, table, wait_results
from facestream.common.settings import Settings
from facestream.control import model_cli
from facestream.detector.imaging import decode_image
from facestream.detector.model.loader import load_model
from facestream.detector.model.preprocess import to_tensor


@dataclass(frozen=True)
class Layout:
    model: str  # FACESTREAM_MODEL
    processes: int
    threads: int  # onnxruntime intra-op threads per process


LAYOUTS = [
    Layout("builtin", 1, 1),
    Layout("builtin", 1, 2),
    Layout("builtin", 2, 1),
    Layout("builtin-int8", 1, 1),
    Layout("builtin-int8", 2, 1),
]


def _bare_worker(
    settings: Settings, images: list[bytes], barrier: Barrier, out: mp.Queue[tuple[float, float]]
) -> None:
    """session.run alone on pre-decoded, pre-normalised tensors (one image per call)."""
    model = load_model(settings)
    spec = model.spec
    tensors = []
    for data in images:
        px = decode_image(
            data, max_bytes=1 << 30, max_pixels=1 << 30, max_side=spec.fit, upscale=False
        ).pixels
        tensors.append(to_tensor([px], spec.norm, spec.padded(*px.shape[:2])))
    model.backend.run(tensors[0])  # the first run plans and allocates
    barrier.wait()
    started = time.time()  # wall clock: comparable across the processes
    for tensor in tensors:
        model.backend.run(tensor)
    out.put((started, time.time()))


def bare(settings: Settings, images: list[bytes], processes: int) -> float:
    """Images/s of `processes` bare sessions running at once, each on its share."""
    ctx = mp.get_context("spawn")
    barrier, out = ctx.Barrier(processes), ctx.Queue()
    workers = [
        ctx.Process(target=_bare_worker, args=(settings, images[i::processes], barrier, out))
        for i in range(processes)
    ]
    for w in workers:
        w.start()
    spans = [out.get(timeout=600) for _ in workers]
    for w in workers:
        w.join()
    return len(images) / (max(e for _, e in spans) - min(s for s, _ in spans))


def pipeline(url: str, images: list[bytes], layout: Layout, model_dir: str) -> float:
    reset(url)
    publish(url, images, f"m-{layout.model}-{layout.processes}x{layout.threads}")
    with detectors(
        url,
        layout.processes,
        FACESTREAM_MODEL=layout.model,
        FACESTREAM_MODEL_DIR=model_dir,
        FACESTREAM_INTRA_OP_THREADS=layout.threads,
    ):
        rate = len(images) / wait_results(url, len(images))
    inferred = sum(1 for r in results(url) if not r["cached"])
    assert inferred == len(images), f"{inferred} of {len(images)} inferred: not all misses"
    return rate


def bench_cheaper_misses(url: str, n: int = 150) -> str:
    images = photos(n)
    rows = []
    with tempfile.TemporaryDirectory(prefix="facestream-int8-") as model_dir:
        assert model_cli.quantize(Settings(model_dir=model_dir)) == 0
        for layout in LAYOUTS:
            settings = Settings(
                model=layout.model, model_dir=model_dir, intra_op_threads=layout.threads
            )
            rate = pipeline(url, images, layout, model_dir)
            ceiling = bare(settings, images, layout.processes)
            rows.append(
                [
                    layout.model,
                    f"{layout.processes} x {layout.threads}",
                    f"{rate:.1f}",
                    f"{ceiling:.1f}",
                    f"{rate / ceiling:.2f}",
                ]
            )
    return table(
        f"Cheaper misses: {n} distinct 640x480 JPEG photos, max batch 1",
        ["model", "processes x ort threads", "pipeline images/s", "bare ort images/s", "ratio"],
        rows,
    )

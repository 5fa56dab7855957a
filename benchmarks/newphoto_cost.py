"""What a new photo costs beyond its model run and decode (issue #27, item 3).

Two figures from the same photos, in one run:

- bare: in this process, one thread, per photo the JPEG decode with pre-processing (the
  detector's own `decode_image` + `to_tensor`) and the model call alone (CPU time);
- facestream: `facestream up`'s processes (benchmarks/sidebyside.py `facestream_stack`: the
  gateway's workers, the detectors, one onnxruntime thread each, and their Redis) answering
  only never-sent photos through `POST /v1/detect?wait=true` from a closed loop of a few users;
  the CPU each process group spent, divided by the photos answered.

The difference is the pipeline's own cost per new photo: HTTP, hashing, msgpack, Redis round
trips, the event loop, the write and the reply. With `--profile DIR`, py-spy samples every
process of the stack while it runs (when py-spy is on PATH or given) and the table of each
process's hottest functions (own time) is printed and saved.

    python -m benchmarks.newphoto_cost [--users 4] [--seconds 15] [--profile out/profile]
"""

from __future__ import annotations

import argparse
import collections
import os
import shutil
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from benchmarks.common import machine, photos, redis_server, table
from benchmarks.http import cpu_seconds
from benchmarks.loadgen import Workload, closed_loop
from benchmarks.sidebyside import Options as SystemOptions
from benchmarks.sidebyside import facestream_stack
from facestream.common.settings import Settings
from facestream.detector.imaging import decode_image
from facestream.detector.model.loader import load_model
from facestream.detector.model.preprocess import to_tensor


@dataclass(frozen=True)
class Bare:
    decode_ms: float  # decode + pre-processing, per photo
    model_ms: float  # the model call alone


def bare(images: list[bytes]) -> Bare:
    """CPU per photo of decode + pre-processing and of the model call, one thread."""
    settings = Settings(intra_op_threads=1)
    model = load_model(settings)
    spec = model.spec
    decode, run = [], []
    for i, data in enumerate(images):
        started = time.process_time()
        px = decode_image(
            data, max_bytes=1 << 30, max_pixels=1 << 30, max_side=spec.fit, upscale=False
        ).pixels
        tensor = to_tensor([px], spec.norm, spec.padded(*px.shape[:2]))
        decoded = time.process_time()
        model.backend.run(tensor)
        if i:  # the first call plans and allocates
            decode.append(decoded - started)
            run.append(time.process_time() - decoded)
    return Bare(1000 * float(np.median(decode)), 1000 * float(np.median(run)))


def children(pid: int) -> list[int]:
    found = subprocess.run(["pgrep", "-P", str(pid)], capture_output=True, text=True)
    return [int(c) for c in found.stdout.split()]


def profile(
    pids: dict[str, list[int]], seconds: float, out: Path, spy: str
) -> list[subprocess.Popen[bytes]]:
    out.mkdir(parents=True, exist_ok=True)
    return [
        subprocess.Popen(
            [
                spy,
                "record",
                "--pid",
                str(pid),
                "--duration",
                str(int(seconds)),
                "--rate",
                "200",
                "--format",
                "raw",
                "--nonblocking",
                "--output",
                str(out / f"{name}-{pid}.txt"),
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        for name, group in pids.items()
        for pid in group
    ]


def hottest(path: Path, top: int = 25) -> list[tuple[str, float]]:
    """The functions with the most own samples in a py-spy raw (collapsed stacks) file."""
    own: collections.Counter[str] = collections.Counter()
    total = 0
    for line in path.read_text().splitlines():
        stack, _, count = line.rpartition(" ")
        if not stack or not count.isdigit():
            continue
        total += int(count)
        own[stack.split(";")[-1]] += int(count)
    return [(frame, 100 * n / max(total, 1)) for frame, n in own.most_common(top)]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--users", type=int, default=4)
    ap.add_argument("--seconds", type=float, default=15.0)
    ap.add_argument("--warmup", type=float, default=3.0)
    ap.add_argument("--profile", type=Path, default=None, help="py-spy every process into DIR")
    ap.add_argument("--py-spy", default=shutil.which("py-spy") or "py-spy")
    args = ap.parse_args()
    print(f"machine: {machine()}", flush=True)
    bases = photos(40)
    b = bare(bases)
    sysopts = SystemOptions()
    with redis_server() as url, facestream_stack(url, sysopts) as system:
        work = Workload(bases, 7, 9 * 10**8)
        closed_loop(system.target, work, args.users, 1.0, args.warmup)
        spies: list[subprocess.Popen[bytes]] = []
        if args.profile is not None:
            pids = dict(system.pids)
            # uvicorn's workers are the gateway master's children: sample them.
            pids["gateway"] = [c for g in pids["gateway"] for c in children(g)] or pids["gateway"]
            spies = profile(pids, args.seconds, args.profile, args.py_spy)
        before = {k: f() for k, f in system.probes.items()}
        client_before = cpu_seconds(os.getpid())
        out = closed_loop(system.target, work, args.users, 1.0, args.seconds)
        after = {k: f() for k, f in system.probes.items()}
        client_cpu = cpu_seconds(os.getpid()) - client_before
        for spy in spies:
            spy.wait(timeout=60)
    n = max(1, len(out.latencies))
    per = {k: 1000 * (after[k] - before[k]) / n for k in system.probes}
    total = sum(per.values())
    ms = np.array(out.latencies or [0.0]) * 1000
    rows: list[list[object]] = [[k, f"{v:.2f}"] for k, v in per.items()]
    rows += [
        ["all of facestream", f"{total:.2f}"],
        ["bare decode + pre-processing", f"{b.decode_ms:.2f}"],
        ["bare model call", f"{b.model_ms:.2f}"],
        ["**beyond model + decode**", f"**{total - b.decode_ms - b.model_ms:.2f}**"],
        ["(the load generator)", f"{1000 * client_cpu / n:.2f}"],
    ]
    table(
        f"CPU ms per new photo, {args.users} users, {n} photos in {out.elapsed:.1f} s "
        f"({n / out.elapsed:.0f}/s, p50 {np.percentile(ms, 50):.1f} ms, errors {out.errors})",
        ["process", "CPU ms / photo"],
        rows,
    )
    if args.profile is not None:
        for path in sorted(args.profile.glob("*.txt")):
            hot = hottest(path)
            table(f"{path.stem}: own time", ["function", "%"], [[f, f"{p:.1f}"] for f, p in hot])


if __name__ == "__main__":
    main()

"""common/allocator.py on this machine's glibc, where it matters: a detector's decode threads
decode and pre-process photo after photo (the buffers freed on another thread once the model
ran). By default each photo faults in hundreds of fresh pages; with freed memory kept, few."""

from __future__ import annotations

import subprocess
import sys

import pytest

from facestream.common import allocator
from tests.support.procs import ROOT

# The detector's own decode + pre-processing (detector/inference.py `_prepare`) on two worker
# threads, each result dropped by another thread (here the main one), as the inference thread
# drops it after its call.
PROBE = """
import resource, sys
from concurrent.futures import ThreadPoolExecutor
from facestream.common import allocator
from facestream.common.settings import DetectorSettings
from facestream.detector.imaging import decode_image
from facestream.detector.model.loader import load_model
from benchmarks.common import photos as bench_photos
if sys.argv[1] == "keep":
    assert allocator.keep_freed_memory()
model = load_model(DetectorSettings())
spec = model.spec
photos = bench_photos(4)  # 640x480 JPEGs with faces, as the benchmarks send
def photo(i):
    before = resource.getrusage(resource.RUSAGE_THREAD).ru_minflt
    image = decode_image(
        photos[i % len(photos)], max_bytes=1 << 30, max_pixels=1 << 30, max_side=spec.fit,
        upscale=spec.norm.upscale, resize=spec.resize,
    )
    prepared = model.prepare(image)
    return prepared, resource.getrusage(resource.RUSAGE_THREAD).ru_minflt - before
with ThreadPoolExecutor(2) as pool:
    for _ in pool.map(photo, range(40)):
        pass
    faults = [n for _, n in pool.map(photo, range(300))]
# Photos that took fresh pages (the model's input alone is ~900 of them), of 300
print(sum(n >= 100 for n in faults))
"""


def faults(mode: str) -> int:
    done = subprocess.run(
        [sys.executable, "-c", PROBE, mode],
        cwd=ROOT,
        capture_output=True,
        text=True,
        check=True,
    )
    return int(done.stdout)


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc's mallopt")
def test_keeping_freed_memory_ends_most_page_faults_of_the_decode_path() -> None:
    """Counted per photo in its own thread, over 300 photos: by default photo after photo takes
    fresh pages (how many of them depends on how the two threads' frees interleave: 4 to 30 in
    100, fewer on a loaded machine); with freed memory kept, only the one or two photos during
    which an arena grows (0 to 5 in 300 here, against 12 to 80)."""
    default, kept = faults("default"), faults("keep")
    # Not photo after photo: only while an arena grows (a handful in 300).
    assert default >= 8 and kept <= default / 4, (default, kept)


def test_trim_runs_everywhere() -> None:
    allocator.trim()  # a no-op where the call does not exist

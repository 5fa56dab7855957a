"""Cost per image of models A, B, ... on this machine, each served as a detector serves it.

    python -m benchmarks.model_cost builtin builtin-int8 damofd-random path/to/model.onnx

Each model is loaded by facestream's loader (`FACESTREAM_MODEL` values: `builtin`, a
registry name such as `builtin-int8` from `FACESTREAM_MODEL_DIR`, or a path to an ONNX file)
with one onnxruntime thread by default, and given the same JPEG photo (a sample photo resized
to 640x480) decoded and pre-processed the way that model's spec says (its input size,
resize rule, padding). Per model it times three steps apart: the JPEG decode and
pre-processing, `session.run` on the prepared tensor, and the post-processing of that run's
outputs (decode, score threshold, NMS, the faces built).

The models take turns: every round runs each model `--runs` times back to back, the order
reversed every other round, so a change in the machine's load falls on all of them alike. A
figure is the median over rounds of the round's median; the ratio to the first model is the
median over rounds of the per-round ratio (both models measured in the same round).

`damofd-random` is DamoFD-0.5G (control/modeltools/damofd_net.py, the network `facestream
model fetch damofd` builds) with random weights, exported as the fetch exports it and loaded by
path: its model run and pre-processing cost what the real model's do (neither depends on the
weights), its post-processing does not (random weights score nearly every anchor over the
threshold, and NMS takes seconds), so that is not timed. Needs torch (the `damofd` extra).
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

from benchmarks.common import machine, photos, table
from facestream.common.settings import Settings
from facestream.detector.imaging import decode_image
from facestream.detector.model.face_model import FaceModel, Prepared
from facestream.detector.model.loader import load_model

DAMOFD_RANDOM = "damofd-random"
STEPS = ("prepare", "run", "post")


@dataclass(frozen=True)
class Row:
    model: str
    medians_ms: dict[str, float]  # step -> median over rounds of the round medians (if timed)
    spread_ms: tuple[float, float]  # lowest and highest round median of the model run
    ratio: float  # the model run against the first model's, median of the per-round ratios


def summarise(names: Sequence[str], rounds: Sequence[dict[str, dict[str, float]]]) -> list[Row]:
    """rounds[i][model][step]: that round's median in ms. The first model is the baseline."""
    base = names[0]
    rows = []
    for name in names:
        runs = [r[name]["run"] for r in rounds]
        rows.append(
            Row(
                model=name,
                medians_ms={
                    s: statistics.median(r[name][s] for r in rounds)
                    for s in STEPS
                    if s in rounds[0][name]
                },
                spread_ms=(min(runs), max(runs)),
                ratio=statistics.median(r[name]["run"] / r[base]["run"] for r in rounds),
            )
        )
    return rows


def damofd_random(directory: Path, seed: int = 0) -> Path:
    """DamoFD-0.5G with random weights, exported with the graph metadata the fetch writes."""
    import torch

    from facestream.control.modeltools.damofd_net import STRIDES, DamoFD
    from facestream.control.modeltools.export import SCRFDOutputs, export_onnx
    from facestream.detector.model.graph import SIGMOID_KEY

    torch.manual_seed(seed)
    net = DamoFD().eval()
    meta = {SIGMOID_KEY: "1", "facestream.pad_square": "1", "facestream.input_size": "640"}
    path = directory / "damofd-random.onnx"
    path.write_bytes(export_onnx(SCRFDOutputs(net, net), STRIDES, 640, metadata=meta))
    return path


class Timed:
    """One model and the photo as that model would receive it."""

    def __init__(
        self, model: FaceModel, settings: Settings, jpeg: bytes, time_post: bool = True
    ) -> None:
        self.model, self.settings, self.jpeg = model, settings, jpeg
        self.time_post = time_post
        self.prepared = self.prepare()
        self.shape = tuple(self.prepared.tensor.shape)

    def prepare(self) -> Prepared:
        spec = self.model.spec
        image = decode_image(
            self.jpeg,
            max_bytes=self.settings.max_image_bytes,
            max_pixels=self.settings.max_pixels,
            max_side=spec.fit,
            upscale=spec.norm.upscale,
            resize=spec.resize,
        )
        return self.model.prepare(image)

    def steps(self) -> dict[str, Callable[[], object]]:
        tensor = self.prepared.tensor[None]
        outputs = self.model.backend.run(tensor)
        _, ph, pw = self.prepared.tensor.shape
        spec = self.model.spec

        def post() -> object:
            # What detect_prepared does after the run: decode, then NMS and the faces built.
            (cand,) = self.model.decoder.decode(outputs, ph, pw, spec.score_threshold)
            return self.model._finish(cand, self.prepared.image)

        steps = {"prepare": self.prepare, "run": lambda: self.model.backend.run(tensor)}
        return steps | {"post": post} if self.time_post else steps


def median_ms(fn: Callable[[], object], runs: int) -> float:
    times = []
    for _ in range(runs):
        started = time.perf_counter()
        fn()
        times.append(time.perf_counter() - started)
    return 1000 * statistics.median(times)


def measure(
    timed: dict[str, Timed], rounds: int, runs: int, warmup: int = 3
) -> list[dict[str, dict[str, float]]]:
    names = list(timed)
    steps = {name: t.steps() for name, t in timed.items()}
    for name in names:  # onnxruntime plans and allocates on a shape's first runs
        for fn in steps[name].values():
            for _ in range(warmup):
                fn()
    out = []
    for i in range(rounds):
        order = names if i % 2 == 0 else names[::-1]
        out.append({n: {s: median_ms(f, runs) for s, f in steps[n].items()} for n in order})
    return out


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    parser.add_argument("models", nargs="+", help="FACESTREAM_MODEL values; the first is the base")
    parser.add_argument("--rounds", type=int, default=15)
    parser.add_argument("--runs", type=int, default=10, help="runs per model per round")
    parser.add_argument("--threads", type=int, default=1, help="onnxruntime intra-op threads")
    parser.add_argument("--size", default="640x480", help="the photo's size, WxH")
    parser.add_argument("--photo", type=int, default=0, help="which sample photo (0: astronaut)")
    args = parser.parse_args(argv)
    if args.rounds < 1 or args.runs < 1:
        parser.error("--rounds and --runs must be at least 1")
    w, h = (int(v) for v in args.size.lower().split("x"))
    jpeg = photos(args.photo + 1, size=(w, h))[args.photo]
    with tempfile.TemporaryDirectory(prefix="facestream-cost-") as tmp:
        timed = {}
        for name in args.models:
            value = str(damofd_random(Path(tmp))) if name == DAMOFD_RANDOM else name
            settings = Settings(model=value, intra_op_threads=args.threads)
            # Random weights score nearly every anchor over the threshold: NMS then takes
            # seconds, which says nothing about the trained model, so it is not timed.
            timed[name] = Timed(load_model(settings), settings, jpeg, name != DAMOFD_RANDOM)
        rows = summarise(args.models, measure(timed, args.rounds, args.runs))
    table(
        f"Cost per image, {w}x{h} photo, {args.threads} onnxruntime thread(s), "
        f"{args.rounds} rounds of {args.runs} runs per model, order reversed every other "
        f"round; medians in ms ({machine()})",
        [
            "model",
            "tag",
            "input",
            "model run",
            "round medians",
            f"x {args.models[0]}",
            "decode + pre-processing",
            "post-processing",
        ],
        [
            [
                r.model,
                timed[r.model].model.tag,
                "x".join(str(d) for d in timed[r.model].shape[1:]),
                f"{r.medians_ms['run']:.2f}",
                f"{r.spread_ms[0]:.2f}-{r.spread_ms[1]:.2f}",
                f"{r.ratio:.2f}x",
                f"{r.medians_ms['prepare']:.2f}",
                f"{r.medians_ms['post']:.2f}" if "post" in r.medians_ms else "not timed",
            ]
            for r in rows
        ],
    )


if __name__ == "__main__":
    main()

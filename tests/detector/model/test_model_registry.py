"""The model registry and `facestream model list | info | fetch`, without torch or the hub:
entries are made from small SCRFD graphs with known outputs (tests/scrfd_graph.py)."""

from __future__ import annotations

import hashlib
import json
import re
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest

from facestream.common.settings import Settings
from facestream.control.cli import main
from facestream.control.modeltools import damofd_fetch as damofd
from facestream.detector.model.loader import ModelLoadError, load_model
from facestream.detector.model.registry import (
    ONNX_FILE,
    RegistryEntry,
    RegistryError,
    list_entries,
    read_entry,
    write_entry,
)
from tests.conftest import encode
from tests.detector.model.test_model import EXPECTED, HOTS
from tests.support.faces import detect
from tests.support.scrfd_graph import build


def entry_for(graph: bytes, name: str = "tiny", **changes: object) -> RegistryEntry:
    entry = RegistryEntry(
        name=name,
        family="scrfd",
        source="test:scrfd_graph",
        input_size=64,
        bgr=False,
        mean=(127.5, 127.5, 127.5),
        std=(128.0, 128.0, 128.0),
        pad_square=False,
        strides=(8, 16, 32),
        anchors_per_cell=2,
        sigmoid_in_graph=True,
        score_threshold=0.3,
        nms_iou=0.45,
        weights_sha256="ab" * 32,
        onnx_sha256=hashlib.sha256(graph).hexdigest(),
    )
    return replace(entry, **changes)  # type: ignore[arg-type]


@pytest.fixture(autouse=True)
def no_logging_setup(monkeypatch: pytest.MonkeyPatch) -> None:
    # main() configures logging for a real process; inside pytest it must not bind the loggers
    # to this test's captured (and later closed) stderr.
    monkeypatch.setattr("facestream.control.cli.configure", lambda settings: None)


@pytest.fixture
def registry(tmp_path: Path) -> tuple[Path, bytes]:
    graph = build(tmp_path / "g.onnx", HOTS).read_bytes()
    root = tmp_path / "models"
    write_entry(root, entry_for(graph), graph)
    return root, graph


def test_a_registered_model_serves_by_name(registry: tuple[Path, bytes]) -> None:
    root, _ = registry
    model = load_model(Settings(model="tiny", model_dir=str(root)))
    assert model.spec.name == "tiny" and model.tag.startswith("tiny-")
    spec = model.spec
    assert (spec.input_size, spec.score_threshold, spec.nms_iou) == (64, 0.3, 0.45)
    faces = detect(model, encode(np.full((64, 64, 3), 128, np.uint8)))
    assert [f.score for f in faces] == [pytest.approx(e[0], abs=1e-5) for e in EXPECTED]
    assert faces[0].box == pytest.approx(EXPECTED[0][1], abs=0.01)


def test_tag_carries_the_weights_digest(tmp_path: Path, registry: tuple[Path, bytes]) -> None:
    root, graph = registry
    settings = Settings(model="tiny", model_dir=str(root))
    first = load_model(settings).tag
    assert load_model(settings).tag == first  # stable
    write_entry(root, entry_for(graph, weights_sha256="cd" * 32), graph)
    assert load_model(settings).tag != first  # other source weights, other cache entries
    other = build(tmp_path / "h.onnx", HOTS[:1]).read_bytes()
    write_entry(root, entry_for(other), other)
    assert load_model(settings).tag != first


def test_square_padding_from_the_entry(tmp_path: Path) -> None:
    graph = build(tmp_path / "g.onnx", HOTS).read_bytes()
    root = tmp_path / "m"
    write_entry(root, entry_for(graph, pad_square=True), graph)
    model = load_model(Settings(model="tiny", model_dir=str(root)))
    assert model.spec.letterbox and model.spec.padded(20, 64) == (64, 64)


def test_registry_errors_say_what_to_do(tmp_path: Path, registry: tuple[Path, bytes]) -> None:
    root, _ = registry
    with pytest.raises(ModelLoadError, match=r"'damofd' is not installed .*\(installed: tiny\)"):
        load_model(Settings(model="damofd", model_dir=str(root)))
    (root / "tiny" / ONNX_FILE).write_bytes(b"truncated")
    with pytest.raises(ModelLoadError, match="does not match the entry"):
        load_model(Settings(model="tiny", model_dir=str(root)))
    entry_path = root / "tiny" / "entry.json"
    raw = json.loads(entry_path.read_text())
    entry_path.write_text(json.dumps({**raw, "format_version": 99}))
    with pytest.raises(RegistryError, match="format_version 99"):
        read_entry(root, "tiny")
    entry_path.write_text(json.dumps({**raw, "std": [0, 1, 1], "family": "yolo"}))
    with pytest.raises(RegistryError, match=r"family: .*'yolo'.*; std\.0: .*greater than 0"):
        read_entry(root, "tiny")
    assert list_entries(root) == []  # unreadable entries are not listed
    with pytest.raises(RegistryError, match="onnx_sha256"):
        write_entry(root, entry_for(b"other"), b"graph")


def test_model_list_and_info(
    registry: tuple[Path, bytes],
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    root, _ = registry
    monkeypatch.setenv("FACESTREAM_MODEL_DIR", str(root))
    monkeypatch.setenv("FACESTREAM_MODEL", "tiny")
    assert main(["model", "list", "--json"]) == 0
    listed = json.loads(capsys.readouterr().out)
    assert listed["model_dir"] == str(root)
    assert [(m["name"], m["selected"]) for m in listed["models"]] == [
        ("builtin", False),
        ("tiny", True),
    ]
    assert main(["model", "list"]) == 0
    assert "* tiny" in capsys.readouterr().out
    assert main(["model", "info", "--json"]) == 0
    info = json.loads(capsys.readouterr().out)
    expected_tag = load_model(Settings(model="tiny", model_dir=str(root))).tag
    assert info["tag"] == expected_tag and info["entry"]["weights_sha256"] == "ab" * 32
    assert info["path"] == str(root / "tiny")
    assert main(["model", "info", "builtin", "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["tag"].startswith("retinaface-mnet025-")
    assert main(["model", "info", "nothere"]) == 2
    assert "not installed" in capsys.readouterr().err


def test_fetch_without_its_extra_names_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("FACESTREAM_MODEL_DIR", str(tmp_path))
    monkeypatch.setattr(damofd, "missing_requirements", lambda downloading: ["modelscope"])
    assert main(["model", "fetch", "damofd"]) == 2
    err = capsys.readouterr().err
    assert "facestream[damofd]" in err and "mmcv" not in err
    assert not any(tmp_path.iterdir())  # nothing half-installed


# --- entry.json checked by its schema: each malformed field one line, exit 2 (issue #25) ---
MALFORMED = [
    # (field, value, what the one line must say)
    ("strides", [0.01, 16, 32], r"strides\.0: Input should be a valid integer \(got 0\.01\)"),
    ("strides", [True, 16, 32], r"strides\.0: Input should be a valid integer \(got True\)"),
    ("strides", [0, 16, 32], r"strides\.0: Input should be greater than or equal to 1"),
    ("strides", [8, 8, 32], r"strides: Value error, strides must be distinct"),
    ("strides", [], r"strides: .*at least 1 item"),
    ("mean", ["127.5", 127.5, 127.5], r"mean\.0: Input should be a valid number \(got '127\.5'\)"),
    ("std", [float("nan"), 128.0, 128.0], r"std\.0: Input should be a finite number"),
    ("std", [128.0, 128.0], r"std: item 2 missing"),
    ("input_size", "640", r"input_size: Input should be a valid integer \(got '640'\)"),
    ("input_size", 640.0, r"input_size: Input should be a valid integer"),
    ("input_size", 100_000, r"input_size: Input should be less than or equal to 4096"),
    ("anchors_per_cell", True, r"anchors_per_cell: Input should be a valid integer"),
    ("bgr", 0, r"bgr: Input should be a valid boolean"),
    ("score_threshold", 1.5, r"score_threshold: Input should be less than or equal to 1"),
    ("nms_iou", float("inf"), r"nms_iou: Input should be a finite number"),
    ("onnx_sha256", "not-a-digest", r"onnx_sha256: String should match pattern"),
    ("name", None, r"name: Input should be a valid string"),
    ("name", "other", r"name 'other' is not its directory's \('tiny'\)"),
    ("format_version", True, r"format_version True, this facestream reads 1"),
]


@pytest.mark.parametrize(
    ("field", "value", "said"), MALFORMED, ids=[f"{f}={v!r}" for f, v, _ in MALFORMED]
)
def test_each_malformed_entry_field_is_one_line_and_exit_2(
    registry: tuple[Path, bytes],
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
    field: str,
    value: object,
    said: str,
) -> None:
    """Before the schema, a stride of 0.01 or true, a string mean or a NaN std loaded (exit 0)
    and failed every inference; input_size "640" was a traceback."""
    root, _ = registry
    entry_path = root / "tiny" / "entry.json"
    raw = json.loads(entry_path.read_text())
    entry_path.write_text(json.dumps({**raw, field: value}))
    monkeypatch.setenv("FACESTREAM_MODEL_DIR", str(root))
    monkeypatch.setenv("FACESTREAM_MODEL", "tiny")
    for action in (["info"], ["info", "tiny"], ["list"], ["list", "--json"]):
        assert main(["model", *action]) == 2, action
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and "Traceback" not in err, err
        assert str(entry_path) in err and re.search(said, err), err
    # What a detector's start does with the same settings (detector/__main__.py: one
    # `model_refused` line, exit 2).
    with pytest.raises(ModelLoadError, match=said):
        load_model(Settings(model="tiny", model_dir=str(root)))


def test_a_valid_entry_round_trips_through_the_schema(registry: tuple[Path, bytes]) -> None:
    root, graph = registry
    entry = read_entry(root, "tiny")
    assert entry == entry_for(graph)
    assert isinstance(entry.strides, tuple) and isinstance(entry.mean, tuple)
    with pytest.raises(RegistryError, match=r"new entry: strides\.0: .*greater than or equal"):
        write_entry(root, entry_for(graph, strides=(0, 16, 32)), graph)

"""How far model files are trusted (issue #25, item 6): no ONNX external data, the registry
and model directories owned by root or this user and not writable by others, no symbolic link
out of the registry. Graphs are the small SCRFD graphs of tests/support/scrfd_graph.py; the
directories, modes, owners and links are real ones made in tmp_path."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from facestream.common.settings import Settings
from facestream.control.cli import main
from facestream.detector.model.loader import ModelLoadError, load_model
from facestream.detector.model.registry import (
    ENTRY_FILE,
    ONNX_FILE,
    RegistryError,
    write_entry,
)
from facestream.detector.model.trust import OVERRIDE, external_tensors
from tests.detector.model.test_model import HOTS
from tests.detector.model.test_model_registry import entry_for
from tests.support.scrfd_graph import build

TABLE = "kps_8_table"  # the stride-8 keypoint table: 128 anchors x 10 floats
TABLE_BYTES = 128 * 10 * 4


@pytest.fixture(autouse=True)
def no_logging_setup(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("facestream.control.cli.configure", lambda settings: None)


def with_external(graph: Path, location: str) -> bytes:
    """The graph with its keypoint table read from `location` instead of stored inside."""
    proto = onnx.load(str(graph))
    (table,) = [t for t in proto.graph.initializer if t.name == TABLE]
    table.ClearField("raw_data")
    table.data_location = TensorProto.EXTERNAL
    for key, value in (("location", location), ("offset", "0"), ("length", str(TABLE_BYTES))):
        entry = table.external_data.add()
        entry.key, entry.value = key, value
    return proto.SerializeToString()


@pytest.mark.parametrize("where", ["cwd", "parent", "absolute", "own-dir"])
def test_a_graph_with_external_data_is_refused(
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
    where: str,
) -> None:
    """A secret file where the location points (the detector's working directory, a parent,
    an absolute path, the model's own directory) is never read: the graph is refused first."""
    work, models = tmp_path / "work", tmp_path / "models"
    work.mkdir()
    models.mkdir()
    monkeypatch.chdir(work)
    secret = {
        "cwd": work / "secret.bin",
        "parent": tmp_path / "secret.bin",
        "absolute": tmp_path / "secret.bin",
        "own-dir": models / "x.onnx.data",
    }[where]
    location = {
        "cwd": "secret.bin",
        "parent": "../secret.bin",
        "absolute": str(secret),
        "own-dir": "x.onnx.data",
    }[where]
    secret.parent.mkdir(parents=True, exist_ok=True)
    secret.write_bytes(b"SECRET!!" * (TABLE_BYTES // 8))
    path = models / "x.onnx"
    path.write_bytes(with_external(build(tmp_path / "g.onnx", HOTS), location))
    said = rf"x: tensor '{TABLE}' keeps its data in another file \('{location}'\)"
    with pytest.raises(ModelLoadError, match=said):
        load_model(Settings(model=str(path)))
    assert main(["model", "info", str(path)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "self-contained ONNX" in err and "Traceback" not in err


def test_a_registered_graph_with_external_data_is_refused(tmp_path: Path) -> None:
    root = tmp_path / "models"
    graph = with_external(build(tmp_path / "g.onnx", HOTS), "model.onnx.data")
    write_entry(root, entry_for(graph), graph)
    (root / "tiny" / "model.onnx.data").write_bytes(bytes(TABLE_BYTES))
    with pytest.raises(ModelLoadError, match="keeps its data in another file"):
        load_model(Settings(model="tiny", model_dir=str(root)))


def test_external_tensors_are_found_anywhere_in_the_graph() -> None:
    """Constants in a subgraph (an If branch) and local functions count as much as
    initializers."""

    def external(name: str) -> onnx.TensorProto:
        t = numpy_helper.from_array(np.zeros(1, np.float32), name)
        t.ClearField("raw_data")
        t.data_location = TensorProto.EXTERNAL
        e = t.external_data.add()
        e.key, e.value = "location", f"/{name}"
        return t

    branch = helper.make_graph(
        [helper.make_node("Constant", [], ["c"], value=external("in_branch"))],
        "branch",
        [],
        [helper.make_tensor_value_info("c", TensorProto.FLOAT, [1])],
    )
    plain = helper.make_graph(
        [helper.make_node("Constant", [], ["c"], value=numpy_helper.from_array(np.zeros(1)))],
        "plain",
        [],
        [helper.make_tensor_value_info("c", TensorProto.FLOAT, [1])],
    )
    node = helper.make_node("If", ["cond"], ["y"], then_branch=branch, else_branch=plain)
    graph = helper.make_graph(
        [node],
        "g",
        [helper.make_tensor_value_info("cond", TensorProto.BOOL, [])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1])],
    )
    model = helper.make_model(graph)
    fn_node = helper.make_node("Constant", [], ["k"], value=external("in_function"))
    model.functions.append(helper.make_function("local", "f", [], ["k"], [fn_node], []))
    found = sorted(external_tensors(model))
    assert found == [("in_branch", "/in_branch"), ("in_function", "/in_function")]
    assert list(external_tensors(onnx.load_model_from_string(build_bytes()))) == []


def build_bytes() -> bytes:
    import tempfile

    with tempfile.TemporaryDirectory() as tmp:
        return build(Path(tmp) / "g.onnx", HOTS).read_bytes()


@pytest.fixture
def registry(tmp_path: Path) -> Path:
    graph = build(tmp_path / "g.onnx", HOTS).read_bytes()
    root = tmp_path / "models"
    write_entry(root, entry_for(graph), graph)
    return root


def loads(root: Path, trust: str = "owner") -> None:
    load_model(Settings(model="tiny", model_dir=str(root), model_dir_trust=trust))


def test_installed_files_are_readable_by_others_and_writable_by_the_owner_only(
    registry: Path,
) -> None:
    for path in (registry / "tiny", registry / "tiny" / ONNX_FILE, registry / "tiny" / ENTRY_FILE):
        mode = path.stat().st_mode
        assert mode & 0o044 == 0o044 and mode & 0o022 == 0, (path, oct(mode))
    loads(registry)


@pytest.mark.parametrize("what", ["registry", "model dir", "entry", "graph"])
def test_a_world_writable_registry_or_model_is_refused(
    registry: Path, what: str, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    path = {
        "registry": registry,
        "model dir": registry / "tiny",
        "entry": registry / "tiny" / ENTRY_FILE,
        "graph": registry / "tiny" / ONNX_FILE,
    }[what]
    path.chmod(path.stat().st_mode | 0o002)
    at = re.escape(str(path))
    said = rf"{at}: writable by every user, .*`chmod -R go-w {at}` \(or {re.escape(OVERRIDE)}"
    with pytest.raises(ModelLoadError, match=said):
        loads(registry)
    monkeypatch.setenv("FACESTREAM_MODEL_DIR", str(registry))
    for action in (["info", "tiny"], ["list"]):
        assert main(["model", *action]) == 2, action
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and "writable by every user" in err, err
    loads(registry, trust="any")  # the documented override
    monkeypatch.setenv("FACESTREAM_MODEL_DIR_TRUST", "any")
    assert main(["model", "info", "tiny"]) == 0


def other_group() -> int | None:
    """A group this process may give its files that is not its own private group."""
    if os.geteuid() == 0:
        return 1  # daemon on Debian, Alpine and RHEL alike
    others = [g for g in os.getgroups() if g != os.getegid()]
    return others[0] if others else None


def test_a_group_writable_model_dir_is_refused_unless_the_group_is_private(
    registry: Path,
) -> None:
    gid = other_group()
    if gid is None:
        pytest.skip("this user belongs to no second group to give the directory")
    folder = registry / "tiny"
    folder.chmod(0o775)
    loads(registry)  # our own (private) group: still ours alone
    os.chown(folder, -1, gid)
    with pytest.raises(ModelLoadError, match=rf"{folder}: writable by group .*gid {gid}"):
        loads(registry)
    folder.chmod(0o755)
    loads(registry)  # another group that cannot write is fine


@pytest.mark.skipif(os.geteuid() != 0, reason="giving a file to another user needs root")
def test_a_model_owned_by_another_user_is_refused(registry: Path) -> None:
    graph = registry / "tiny" / ONNX_FILE
    os.chown(graph, 1, -1)
    with pytest.raises(ModelLoadError, match=rf"{graph}: owned by .*uid 1.*`chown -R root "):
        loads(registry)
    loads(registry, trust="any")


def test_a_symlink_out_of_the_registry_is_refused_on_load(registry: Path, tmp_path: Path) -> None:
    """A model directory or file that is a link leading outside the registry (as a tarball can
    carry) is refused; a link that stays inside is followed."""
    outside = tmp_path / "elsewhere"
    (registry / "tiny").rename(outside)
    (registry / "tiny").symlink_to(outside)
    with pytest.raises(ModelLoadError, match=rf"{registry / 'tiny'}: a symbolic link to {outside}"):
        loads(registry)
    (registry / "tiny").unlink()
    outside.rename(registry / "tiny")
    graph = registry / "tiny" / ONNX_FILE
    copy = tmp_path / "graph-copy.onnx"
    copy.write_bytes(graph.read_bytes())
    graph.unlink()
    graph.symlink_to(copy)
    with pytest.raises(ModelLoadError, match=rf"{graph}: a symbolic link to {copy}, outside"):
        loads(registry)
    spare = registry / "spare.onnx"  # inside the registry: fine
    copy.rename(spare)
    graph.unlink()
    graph.symlink_to(spare)
    loads(registry)


def test_install_never_writes_through_a_symlinked_model_dir(tmp_path: Path) -> None:
    graph = build(tmp_path / "g.onnx", HOTS).read_bytes()
    root, target = tmp_path / "models", tmp_path / "target"
    root.mkdir()
    target.mkdir()
    (root / "tiny").symlink_to(target)
    with pytest.raises(RegistryError, match=r"tiny: a symbolic link \(to .*target\); not install"):
        write_entry(root, entry_for(graph), graph)
    assert list(target.iterdir()) == []


def test_a_detector_refuses_an_untrusted_model_with_one_line_and_exit_2(registry: Path) -> None:
    """The real entry point: `python -m facestream.detector` loads the model before it
    connects anywhere, so no Redis is needed to see it refuse."""
    registry.chmod(0o777)
    env = {
        **os.environ,
        "FACESTREAM_MODEL": "tiny",
        "FACESTREAM_MODEL_DIR": str(registry),
        "FACESTREAM_REDIS_URL": "redis://127.0.0.1:1/0",
        "FACESTREAM_LOG_FORMAT": "json",
    }
    done = subprocess.run(
        [sys.executable, "-m", "facestream.detector"],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 2, done.stderr
    lines = [line for line in (done.stdout + done.stderr).splitlines() if line.strip()]
    refused = [line for line in lines if "model_refused" in line]
    assert len(refused) == 1 and "writable by every user" in refused[0], lines
    assert "Traceback" not in done.stderr


def test_builtin_int8_is_checked_the_same_way(tmp_path: Path) -> None:
    """`builtin-int8`'s directory is refused before its manifest is read."""
    from facestream.detector.model.int8 import QUANTIZED_NAME

    folder = tmp_path / QUANTIZED_NAME
    folder.mkdir()
    (folder / "quantized.json").write_text("{}")
    folder.chmod(0o777)
    with pytest.raises(ModelLoadError, match=rf"{QUANTIZED_NAME}: writable by every user"):
        load_model(Settings(model=QUANTIZED_NAME, model_dir=str(tmp_path)))
    folder.chmod(0o755)
    with pytest.raises(ModelLoadError, match="not a format 1 manifest"):
        load_model(Settings(model=QUANTIZED_NAME, model_dir=str(tmp_path)))

"""Where `facestream model fetch damofd` gets the checkpoint: the names and revisions tried on
ModelScope's hub, in order, and the downloaded copies `--from-dir` accepts.

The hub is unreachable from tests, so its one entry point, `snapshot_download`, is replaced by
tests/support/damofd_snapshot.py's FakeHub, which answers a missing name or revision with the
modelscope client's own NotExistError (what the real client raises for them, read from its
code: `get_valid_revision_detail`, HTTP 404). Everything after the download is the real code on
a checkpoint the tests build.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

torch = pytest.importorskip("torch", reason="needs torch (scripts/install.sh dev installs it)")
errors = pytest.importorskip("modelscope.hub.errors", reason="the hub's errors are modelscope's")

from facestream.common.settings import Settings  # noqa: E402
from facestream.control.cli import main  # noqa: E402
from facestream.control.modeltools import damofd_fetch as damofd  # noqa: E402
from facestream.control.modeltools.damofd_hub import (  # noqa: E402
    MODEL_IDS,
    Candidate,
    FetchError,
    candidates,
    download,
    is_not_found,
    locate,
)
from tests.support.damofd_snapshot import FakeHub, crafted, reference_sample, snapshot  # noqa: E402

DAMO, IIC = MODEL_IDS
NAME = DAMO.split("/")[1]


def pairs(tries: list[Candidate]) -> list[tuple[str, str | None]]:
    return [(c.model_id, c.revision) for c in tries]


def test_candidates_v1_1_under_both_names_then_the_hub_default() -> None:
    assert pairs(candidates()) == [(DAMO, "v1.1"), (IIC, "v1.1"), (DAMO, None), (IIC, None)]
    # --revision replaces the revisions, --model-id the names.
    assert pairs(candidates(revision="master")) == [(DAMO, "master"), (IIC, "master")]
    assert pairs(candidates(model_id=IIC)) == [(IIC, "v1.1"), (IIC, None)]
    assert pairs(candidates(IIC, "v1.0.0")) == [(IIC, "v1.0.0")]


def test_a_name_the_hub_lacks_is_passed_over_for_the_next(tmp_path: Path) -> None:
    hub = FakeHub(tmp_path, {(IIC, None)})
    chosen, path = download(candidates(), None, hub)
    assert hub.calls == [(DAMO, "v1.1"), (IIC, "v1.1"), (DAMO, None), (IIC, None)]
    assert (chosen, path) == (Candidate(IIC, None), tmp_path)


def test_when_none_is_on_the_hub_one_message_lists_every_try(tmp_path: Path) -> None:
    hub = FakeHub(None, set())
    with pytest.raises(FetchError) as info:
        download(candidates(), tmp_path, hub)
    message = str(info.value)
    assert len(hub.calls) == 4 and "\n" not in message
    for tried in (f"{DAMO}@v1.1", f"{IIC}@v1.1", f"{DAMO}@(hub default)", f"{IIC}@(hub default)"):
        assert tried in message
    assert "has no revision: v1.1" in message  # the hub's own answer, for each
    assert "--model-id" in message and "--revision" in message and "--from-dir" in message


def test_no_network_stops_at_once_with_the_offline_hint() -> None:
    calls: list[str] = []

    def offline(model_id: str, revision: str | None, cache_dir: Path | None) -> str:
        calls.append(model_id)
        raise errors.NetworkError("Connection refused")

    with pytest.raises(FetchError, match=r"downloading .*@v1\.1 from ModelScope failed: .*"):
        download(candidates(), None, offline)
    assert calls == [DAMO]  # the other names would fail the same way: not tried


def test_an_older_clients_404_is_not_found() -> None:
    requests = pytest.importorskip("requests")
    response = requests.Response()
    response.status_code = 404
    assert is_not_found(requests.HTTPError("404 Client Error", response=response))
    response.status_code = 500
    assert not is_not_found(requests.HTTPError("500 Server Error", response=response))
    assert not is_not_found(errors.NetworkError("timed out"))


def test_fetch_revision_chooses_and_nothing_is_installed_when_absent(tmp_path: Path) -> None:
    hub = FakeHub(snapshot(tmp_path / "s", crafted()), {(DAMO, "v1.1")})
    with pytest.raises(FetchError, match=r"none of the 2 tried"):
        damofd.fetch(Settings(), tmp_path / "models", None, None, revision="v9", hub=hub)
    assert hub.calls == [(DAMO, "v9"), (IIC, "v9")]
    assert not (tmp_path / "models").exists()


def test_revision_with_from_dir_is_refused(tmp_path: Path) -> None:
    source = snapshot(tmp_path / "s", crafted())
    with pytest.raises(FetchError, match="with --from-dir nothing is downloaded"):
        damofd.fetch(Settings(), tmp_path / "models", None, source, revision="v1.1")
    assert not (tmp_path / "models").exists()


@pytest.mark.parametrize(
    "layout",
    [
        "",  # the snapshot itself
        f"models/iic--{NAME}/snapshots/v1.1",  # modelscope >= 1.38's cache, from its root
        f"hub/models/damo--{NAME}/snapshots/master",  # ... from ~/.cache/modelscope
        f"damo/{NAME}",  # modelscope <= 1.37's cache (~/.cache/modelscope/hub)
        f"hub/iic/{NAME}",
        "snapshots/v1.1",  # the model's own folder in the new cache
    ],
)
def test_from_dir_finds_the_snapshot_in_the_hubs_layouts(tmp_path: Path, layout: str) -> None:
    where = snapshot(tmp_path / "cache" / layout, crafted())
    (where / "README.md").write_text("the hub's model card\n")  # other files are ignored
    assert locate(tmp_path / "cache") == where


def test_from_dir_with_two_copies_or_none_is_refused(tmp_path: Path) -> None:
    with pytest.raises(FetchError, match=r"no configuration\.json, and no ModelScope cache"):
        locate(tmp_path)
    for rev in ("v1.1", "master"):
        snapshot(tmp_path / "models" / f"iic--{NAME}" / "snapshots" / rev, crafted())
    with pytest.raises(FetchError, match="2 copies of the model") as info:
        locate(tmp_path)
    assert "snapshots/master" in str(info.value) and "snapshots/v1.1" in str(info.value)


def test_cli_fetch_from_a_hub_cache_without_counters(
    tmp_path: Path,
    photos: dict[str, np.ndarray],
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    """`facestream model fetch damofd --from-dir ~/.cache/modelscope`-like: a hub cache whose
    checkpoint has no num_batches_tracked buffers installs, saying how many were absent.
    Random weights cannot find the astronaut's face (test_damofd.py's docstring), so the
    sample the CLI uses is swapped for the face this network finds; nothing else is."""
    net = crafted()
    where = tmp_path / "cache" / "hub" / "models" / f"iic--{NAME}" / "snapshots" / "v1.1"
    snapshot(where, net, counters=False)
    monkeypatch.setattr(damofd, "astronaut", lambda: reference_sample(net, photos["astronaut"]))
    monkeypatch.setenv("FACESTREAM_MODEL_DIR", str(tmp_path / "models"))
    assert main(["model", "fetch", "damofd", "--from-dir", str(tmp_path / "cache")]) == 0
    out, err = capsys.readouterr()
    assert "installed damofd" in out
    assert "no num_batches_tracked for 41 BatchNorm layers" in err and "unused at inference" in err
    entry = json.loads((tmp_path / "models" / "damofd" / "entry.json").read_text())
    assert entry["model_id"] is None and entry["revision"] is None  # a local copy: unknown
    assert entry["check"]["num_batches_tracked_missing"] == 41
    assert main(["model", "fetch", "damofd", "--from-dir", str(where), "--revision", "v1.1"]) == 2
    assert "with --from-dir nothing is downloaded" in capsys.readouterr().err


def test_the_entry_schema_reads_the_new_fields_strictly() -> None:
    from pydantic import ValidationError

    from facestream.detector.model.entry import EntrySchema, describe

    base = {
        "format_version": 1,
        "name": "damofd",
        "family": "scrfd",
        "source": f"modelscope:{IIC}@v1.1",
        "input_size": 640,
        "bgr": False,
        "mean": [127.5] * 3,
        "std": [128.0] * 3,
        "pad_square": True,
        "strides": [8, 16, 32],
        "anchors_per_cell": 2,
        "sigmoid_in_graph": True,
        "score_threshold": 0.3,
        "nms_iou": 0.45,
        "weights_sha256": "ab" * 32,
        "onnx_sha256": "cd" * 32,
    }
    old = EntrySchema.model_validate_json(json.dumps(base))  # an entry from before: accepted
    assert old.model_id is None and old.revision is None
    new = EntrySchema.model_validate_json(json.dumps({**base, "model_id": IIC, "revision": "v1.1"}))
    assert (new.model_id, new.revision) == (IIC, "v1.1")
    with pytest.raises(ValidationError) as info:
        EntrySchema.model_validate_json(json.dumps({**base, "revision": 1.1}))
    assert describe(info.value) == "revision: Input should be a valid string (got 1.1)"

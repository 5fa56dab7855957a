"""Wire contract v1 pinned: names, event decoding and its error codes, result fields."""

from __future__ import annotations

import hashlib

import msgpack
import pytest

from facestream.common.contract.keys import Keys
from facestream.common.contract.schema import (
    ErrorCode,
    Face,
    ImageEvent,
    Limits,
    Result,
    SchemaError,
    decode_event,
    decode_result,
)
from facestream.common.settings import Settings

LIMITS = Limits()
SHA = "a" * 64
BIG_META = {"a": "v" * 3000, "b": "v" * 3000}  # each string fits, the map does not


def packed(**body: object) -> bytes:
    return msgpack.packb(body, use_bin_type=True)


def test_default_names_and_prefix() -> None:
    settings = Settings()
    assert settings.prefix == "facestream" and settings.detector_group == "detectors"
    keys = Keys(settings.prefix)
    assert keys.images == "facestream:images"
    assert keys.results == "facestream:results"
    assert keys.dlq == "facestream:dlq"
    assert keys.cache(SHA, "m-1") == f"facestream:face:{{{SHA}}}:m-1"
    # Lock and cache of one image share a hash tag: one cluster slot.
    assert keys.lock(SHA, "m-1") == f"facestream:lock:{{{SHA}}}:m-1"
    other = Keys("acme")
    assert other.images == "acme:images" and other.cache(SHA, "m").startswith("acme:face:{")


def test_prefix_cannot_carry_hash_tags() -> None:
    with pytest.raises(ValueError):
        Settings(prefix="a{b}")


def test_event_round_trip() -> None:
    event = ImageEvent(
        id="e1",
        image=b"\xff\xd8\xffxx",
        sha256=SHA,
        source="cam",
        ts_ms=5,
        meta={"k": [1]},
        reply_to="facestream:reply:g",
    )
    wire = msgpack.unpackb(event.to_wire())
    assert wire == {
        "v": 1,
        "id": "e1",
        "image": b"\xff\xd8\xffxx",
        "sha256": SHA,
        "source": "cam",
        "ts_ms": 5,
        "meta": {"k": [1]},
        "reply_to": "facestream:reply:g",
    }
    assert decode_event(event.to_wire(), LIMITS) == event


def test_minimal_event_and_unknown_fields_ignored() -> None:
    event = decode_event(packed(v=1, id="x", image=b"img", future_field=3), LIMITS)
    assert (event.id, event.image, event.sha256, event.meta) == ("x", b"img", None, None)


@pytest.mark.parametrize(
    ("payload", "code", "event_id"),
    [
        (None, ErrorCode.BAD_EVENT, ""),
        (b"\xc1not msgpack", ErrorCode.BAD_EVENT, ""),
        (packed(v=1, id="a"), ErrorCode.BAD_EVENT, "a"),  # no image
        (msgpack.packb([1, 2]), ErrorCode.BAD_EVENT, ""),  # not a map
        (packed(v=2, id="a", image=b"x"), ErrorCode.BAD_EVENT, "a"),
        (packed(v=True, id="a", image=b"x"), ErrorCode.BAD_EVENT, "a"),
        (packed(v=1, image=b"x"), ErrorCode.BAD_EVENT, ""),
        (packed(v=1, id="", image=b"x"), ErrorCode.BAD_EVENT, ""),
        (packed(v=1, id="a" * 129, image=b"x"), ErrorCode.BAD_EVENT, ""),
        (packed(v=1, id="a", image="text, not bin"), ErrorCode.BAD_EVENT, "a"),
        (packed(v=1, id="a", image=b"x", sha256="zz"), ErrorCode.BAD_EVENT, "a"),
        (packed(v=1, id="a", image=b"x", ts_ms=True), ErrorCode.BAD_EVENT, "a"),
        (packed(v=1, id="a", image=b"x", ts_ms="5"), ErrorCode.BAD_EVENT, "a"),
        (packed(v=1, id="a", image=b"x", meta=[1]), ErrorCode.BAD_EVENT, "a"),
        (packed(v=1, id="a", image=b"x", meta=BIG_META), ErrorCode.BAD_EVENT, "a"),
        (packed(v=1, id="a", image=b"x", reply_to=""), ErrorCode.BAD_EVENT, "a"),
    ],
)
def test_bad_events(payload: bytes | None, code: ErrorCode, event_id: str) -> None:
    with pytest.raises(SchemaError) as info:
        decode_event(payload, LIMITS)
    assert info.value.code == code
    assert info.value.event_id == event_id


def test_size_limits() -> None:
    small = Limits(max_event_bytes=10_000, max_image_bytes=1_000, max_meta_bytes=100)
    with pytest.raises(SchemaError) as info:
        decode_event(packed(v=1, id="a", image=b"x" * 2_000), small)
    assert info.value.code == ErrorCode.TOO_LARGE
    with pytest.raises(SchemaError) as info:
        decode_event(packed(v=1, id="a", image=b"x" * 20_000), small)
    assert info.value.code == ErrorCode.TOO_LARGE


def test_hash_is_verified() -> None:
    good = hashlib.sha256(b"img").hexdigest()
    event = decode_event(packed(v=1, id="a", image=b"img", sha256=good.upper()), LIMITS)
    assert event.content_sha256() == good
    event = decode_event(packed(v=1, id="a", image=b"img", sha256=SHA), LIMITS)
    with pytest.raises(SchemaError) as info:
        event.content_sha256()
    assert info.value.code == ErrorCode.HASH_MISMATCH


def test_result_fields_pinned() -> None:
    face = Face(box=[1.0, 2.0, 3.0, 4.0], score=0.9, kps=[[1.0, 1.0]] * 5)
    ok = Result(
        id="e",
        model="m-1",
        consumer="c",
        entry="1-0",
        done_ms=9,
        sha256=SHA,
        width=10,
        height=20,
        faces=[face],
        cached=True,
        source="s",
        meta={"a": 1},
        ts_ms=3,
    )
    body = decode_result(ok.to_wire())
    assert list(body) == [
        "v",
        "id",
        "sha256",
        "model",
        "width",
        "height",
        "faces",
        "cached",
        "source",
        "meta",
        "ts_ms",
        "done_ms",
        "consumer",
        "entry",
    ]
    assert body["faces"] == [{"box": [1.0, 2.0, 3.0, 4.0], "score": 0.9, "kps": [[1.0, 1.0]] * 5}]
    err = Result(
        id="e",
        model="m-1",
        consumer="c",
        entry="1-0",
        done_ms=9,
        error={"code": "undecodable", "message": "nope"},
    )
    body = decode_result(err.to_wire())
    assert "faces" not in body and body["error"] == {"code": "undecodable", "message": "nope"}
    assert body["cached"] is False and body["width"] is None


def test_error_codes_are_the_contracts() -> None:
    assert {c.value for c in ErrorCode} == {
        "bad_event",
        "undecodable",
        "too_large",
        "too_many_pixels",
        "too_complex",
        "hash_mismatch",
        "inference_failed",
        "max_deliveries",
    }


def test_settings_refuse_socket_timeout_below_block() -> None:
    with pytest.raises(ValueError, match="socket_timeout_s"):
        Settings(block_ms=10_000, socket_timeout_s=5)


def _nested_list(levels: int) -> list[object]:
    out: list[object] = [1]
    for _ in range(levels):
        out = [out]
    return out


def _event_bytes(**body: object) -> bytes:
    full = {"v": 1, "id": "e-1", "image": b"\x89PNG....", **body}
    return msgpack.packb(full, use_bin_type=True)


@pytest.mark.parametrize(
    ("meta", "why"),
    [
        ({"a": {1: "x"}}, "keys must be strings"),  # used to make the whole event unreadable
        ({"a": {(1, 2): "x"}}, "keys must be strings"),
        ({"a": _nested_list(40)}, "deeper"),
    ],
)
def test_a_bad_meta_is_a_bad_event_that_keeps_its_id(meta: object, why: str) -> None:
    with pytest.raises(SchemaError) as err:
        decode_event(_event_bytes(meta=meta), Limits())
    assert err.value.code == "bad_event" and err.value.event_id == "e-1"
    assert why in err.value.message


def test_corrupt_msgpack_says_why() -> None:
    with pytest.raises(SchemaError) as err:
        decode_event(b"\xc1", Limits())
    assert err.value.message.rstrip() != "not a valid msgpack event:"
    assert "FormatError" in err.value.message


@pytest.mark.parametrize(
    "meta",
    [
        {"n": 2**64},
        {"n": -(2**63) - 1},
        {"f": float("nan")},
        {"f": float("inf")},
        {1: "non-str key"},
        {"o": object()},
        {"s": {"x"}},
    ],
)
def test_make_event_refuses_meta_that_cannot_travel(meta: dict[object, object]) -> None:
    from facestream.common.contract.schema import MAX_META_DEPTH
    from facestream.ingest.publisher import BadRequest, make_event

    png = b"\x89PNG\r\n\x1a\n" + b"\0" * 16
    with pytest.raises(BadRequest):
        make_event(png, "x", meta=meta)  # type: ignore[arg-type]
    deep: dict[str, object] = {}
    for _ in range(MAX_META_DEPTH * 30):
        deep = {"a": deep}
    with pytest.raises(BadRequest, match="deeper"):
        make_event(png, "x", meta=deep)

"""The old service's request handler, as that design wrote it: one WSGI request does the whole
job, synchronously, inside the gunicorn thread that accepted it.

    POST /face-detection  (multipart field `image`)
    sha256(bytes) -> key  face_detection:<urlsafe base64 of the digest>
    Bloom says seen   -> HGETALL key; a hit answers from the cache
    otherwise         -> SET <key>:lock 1 NX EX 5; a worker that does not get the lock polls
                         every 1 ms until the answer is cached, and answers 503 after a bound
    the lock holder   -> decode + model, then HSET key (JSON fields) + EXPIRE 24 h + Bloom add
                         + DEL lock in one MULTI

Two deliberate details, both in the old design's favour: the lock attempt and the cache read go
in one pipelined round trip (so a request that arrives just as the holder finishes does not
infer again), and a counter key counts the inferences, so the benchmark and the tests can see
exactly how many model runs there were.

Configuration comes from the environment, because gunicorn imports the app in each worker:
OLD_REDIS_URL, OLD_KEY_PREFIX (face_detection:), OLD_LOCK_WAIT_S (5), OLD_READY_DIR.
"""

from __future__ import annotations

import base64
import hashlib
import json
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import redis
from flask import Flask, Response, jsonify, request

from benchmarks.olddesign.bloom import BitmapBloom
from facestream.common.contract.schema import SchemaError
from facestream.common.settings import Settings
from facestream.detector.imaging import decode_image
from facestream.detector.model.face_model import FaceModel
from facestream.detector.model.loader import load_model

CACHE_TTL_S = 24 * 3600
LOCK_TTL_S = 5
SPIN_S = 0.001


@dataclass(frozen=True)
class Config:
    redis_url: str
    prefix: str = "face_detection:"
    lock_wait_s: float = 5.0
    ready_dir: str | None = None

    @classmethod
    def from_env(cls) -> Config:
        return cls(
            redis_url=os.environ.get("OLD_REDIS_URL", "redis://127.0.0.1:6379/0"),
            prefix=os.environ.get("OLD_KEY_PREFIX", "face_detection:"),
            lock_wait_s=float(os.environ.get("OLD_LOCK_WAIT_S", "5")),
            ready_dir=os.environ.get("OLD_READY_DIR") or None,
        )

    @property
    def inferences_key(self) -> str:
        return f"{self.prefix}stats:inferences"


def cache_key(prefix: str, data: bytes) -> tuple[bytes, str]:
    digest = hashlib.sha256(data).digest()
    return digest, prefix + base64.urlsafe_b64encode(digest).decode()


class Detector:
    """facestream's built-in RetinaFace and decode, one onnxruntime thread per worker (as
    facestream's detectors); the gthread threads of a worker share the session."""

    def __init__(self) -> None:
        settings = Settings(model="builtin", intra_op_threads=1, providers="cpu")
        self.settings = settings
        self.model: FaceModel = load_model(settings)
        self.model.warm_up()

    def detect(self, data: bytes) -> dict[str, list[Any]]:
        spec = self.model.spec
        image = decode_image(
            data,
            max_bytes=self.settings.max_image_bytes,
            max_pixels=self.settings.max_pixels,
            max_side=spec.input_size,
            upscale=spec.norm.upscale,
        )
        faces = self.model.detect([image])[0]
        return {
            "boxes": [f.box for f in faces],
            "keypoints": [[v for point in f.kps for v in point] for f in faces],
            "scores": [f.score for f in faces],
        }


def error(status: int, message: str) -> tuple[Response, int]:
    return jsonify({"error": message}), status


def from_cache(fields: dict[bytes, bytes]) -> dict[str, Any]:
    return {name: json.loads(fields[name.encode()]) for name in ("boxes", "keypoints", "scores")}


def create_app(config: Config | None = None) -> Flask:
    cfg = config or Config.from_env()
    detector = Detector()
    r = redis.Redis.from_url(cfg.redis_url)
    bloom = BitmapBloom(f"{cfg.prefix}bloom")
    app = Flask(__name__)

    def cached_or_lock(key: str, lock: str) -> dict[bytes, bytes] | None:
        """The cached fields, or None once this request holds the lock (503 after the bound)."""
        deadline = time.monotonic() + cfg.lock_wait_s
        while True:
            pipe = r.pipeline(transaction=False)
            pipe.set(lock, 1, nx=True, ex=LOCK_TTL_S)
            pipe.hgetall(key)
            got, fields = pipe.execute()
            if fields:
                if got:
                    r.delete(lock)
                return dict(fields)
            if got:
                return None
            if time.monotonic() > deadline:
                raise TimeoutError
            time.sleep(SPIN_S)

    @app.post("/face-detection")
    def face_detection() -> Any:
        upload = request.files.get("image")
        if upload is None:
            return error(400, "no image file in field 'image'")
        data = upload.read()
        if not data:
            return error(400, "empty image")
        digest, key = cache_key(cfg.prefix, data)
        # The old design trusts the filter: "seen" goes to the cache, "never" skips it.
        if all(r.execute_command("BITFIELD", bloom.key, *bloom.contains_args(digest))):
            fields = r.hgetall(key)
            if fields:
                return jsonify(from_cache(dict(fields)))
        lock = f"{key}:lock"
        try:
            fields = cached_or_lock(key, lock)
        except TimeoutError:
            return error(503, "the image is being processed, try again")
        if fields is not None:
            return jsonify(from_cache(fields))
        try:
            answer = detector.detect(data)
        except SchemaError as exc:
            r.delete(lock)
            return error(400, exc.message)
        except Exception:
            r.delete(lock)
            raise
        pipe = r.pipeline(transaction=True)
        pipe.hset(key, mapping={name: json.dumps(v) for name, v in answer.items()})
        pipe.expire(key, CACHE_TTL_S)
        pipe.execute_command("BITFIELD", bloom.key, *bloom.add_args(digest))
        pipe.incr(cfg.inferences_key)
        pipe.delete(lock)
        pipe.execute()
        return jsonify(answer)

    if cfg.ready_dir:
        # Tells the launcher this worker has its model loaded (gunicorn binds before that).
        Path(cfg.ready_dir, str(os.getpid())).touch()
    return app

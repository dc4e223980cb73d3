"""Real Redis for the sharing tests: the machine's server, or one a test starts itself.

`shared_redis` yields the URL of the Redis on 127.0.0.1:6379 (every developer machine and CI
run one), or, if nothing answers there, of a `redis-server` this module starts on a free port.
`pool_name` gives each test its own pool (a key prefix), and deletes only that pool's keys
afterwards.  `OwnRedis` starts a server the test may stop and restart (``--save ''
--appendonly no``: nothing on disk).  Without the binary, the tests skip and name the command
that installs it.
"""

from __future__ import annotations

import contextlib
import shutil
import socket
import subprocess
import time
import uuid
from collections.abc import Iterator

import pytest

INSTALL = "redis-server is not installed: apt install redis-server"
MACHINE_REDIS = ("127.0.0.1", 6379)
STORE_TIMEOUT = 30.0
"""Seconds a test's own `RedisStore` waits for Redis: a hang guard.  Those tests check the
store's rules; the 0.25 s default is a client's bound, and on a busy machine connecting took
longer (``Timeout connecting to server`` failed a rule's test twice beside a second run)."""


def answers(host: str, port: int) -> bool:
    """Whether a Redis answers PING at host:port (a plain socket: no client needed)."""
    try:
        with socket.create_connection((host, port), timeout=1.0) as sock:
            sock.sendall(b"PING\r\n")
            return sock.recv(16).startswith(b"+PONG")
    except OSError:
        return False


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


class OwnRedis:
    """A redis-server this test started (and may stop and start again) on a free port."""

    def __init__(self) -> None:
        binary = shutil.which("redis-server")
        if binary is None:
            pytest.skip(INSTALL)
        self.binary = binary
        self.port = free_port()
        self.url = f"redis://127.0.0.1:{self.port}/0"
        self.process: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        self.process = subprocess.Popen(
            [self.binary, "--port", str(self.port), "--bind", "127.0.0.1", "--save", "",
             "--appendonly", "no"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        deadline = time.monotonic() + 30.0  # a hang guard, not a measurement
        while not answers("127.0.0.1", self.port):
            if time.monotonic() > deadline or self.process.poll() is not None:
                raise RuntimeError("redis-server did not start")
            time.sleep(0.02)

    def stop(self) -> None:
        if self.process is not None:
            self.process.kill()
            self.process.wait(timeout=30)
            self.process = None


@pytest.fixture
def own_redis() -> Iterator[OwnRedis]:
    """A redis-server of the test's own, started."""
    server = OwnRedis()
    server.start()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture(scope="session")
def shared_redis() -> Iterator[str]:
    """The URL of a Redis to share: the machine's, else one started for the session."""
    if answers(*MACHINE_REDIS):
        yield "redis://127.0.0.1:6379/0"
        return
    server = OwnRedis()
    server.start()
    try:
        yield server.url
    finally:
        server.stop()


@pytest.fixture
def pool_name(shared_redis: str) -> Iterator[str]:
    """A pool name no other test uses; its keys, and those of pools whose names begin with it
    (``NAME-1``...), are deleted afterwards (and only those)."""
    name = f"test-{uuid.uuid4().hex[:12]}"
    yield name
    import redis

    client = redis.Redis.from_url(shared_redis)
    with contextlib.closing(client):
        keys = list(client.scan_iter(match=f"{{{name}*", count=1000))
        if keys:
            client.delete(*keys)


def dump_pool(url: str, name: str) -> list[bytes]:
    """Every key name and value of pool `name` and of pools whose names begin with it, as
    bytes (for canary scans)."""
    import redis

    out: list[bytes] = []
    client = redis.Redis.from_url(url)
    with contextlib.closing(client):
        for key in client.scan_iter(match=f"{{{name}*", count=1000):
            out.append(key)
            kind = client.type(key)
            if kind == b"string":
                out.append(client.get(key) or b"")
            elif kind == b"hash":
                for field, value in client.hgetall(key).items():
                    out += [field, value]
            elif kind == b"zset":
                out += [member for member, _ in client.zrange(key, 0, -1, withscores=True)]
    return out

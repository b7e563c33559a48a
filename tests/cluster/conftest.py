"""Three gateways sharing one real `redis-server`, as a cluster behind a load balancer.

`redis-server` comes from `$PATH` (Debian's `redis-server` package; `scripts/test`
installs it when missing); the gateway from `$SWITCHYARD_BIN`. The upstream is a small
OpenAI-compatible server in this process that counts how many requests it is serving
at once, so a test can see the cluster-wide `max_concurrent` from the upstream's side.
"""

import json
import os
import shutil
import socket
import subprocess
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import httpx
import pytest
from stack import free_port, stop

STARTUP_SECONDS = 20
LEASE_SECS = 2.0


class Redis:
    """A redis-server on a free port that a test may stop and start again."""

    def __init__(self, directory):
        self.binary = shutil.which("redis-server")
        if self.binary is None:
            pytest.fail("redis-server is not installed; run the suite through scripts/test")
        self.port = free_port()
        self.directory = directory
        self.process = None

    def start(self):
        self.process = subprocess.Popen(
            [self.binary, "--port", str(self.port), "--bind", "127.0.0.1",
             "--save", "", "--appendonly", "no", "--dir", str(self.directory),
             "--enable-debug-command", "yes"],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        deadline = time.monotonic() + STARTUP_SECONDS
        while time.monotonic() < deadline:
            try:
                if self.command("PING") == "PONG":
                    return
            except OSError:
                pass
            time.sleep(0.05)
        pytest.fail("redis-server did not start")

    def stop(self):
        stop(self.process)

    def command(self, *args):
        """One command in RESP over a fresh socket; the reply, decoded simply."""
        with socket.create_connection(("127.0.0.1", self.port), timeout=5) as connection:
            parts = [f"*{len(args)}\r\n".encode()]
            for arg in args:
                data = str(arg).encode()
                parts.append(b"$%d\r\n%s\r\n" % (len(data), data))
            connection.sendall(b"".join(parts))
            reader = connection.makefile("rb")
            return _read(reader)


def _read(reader):
    line = reader.readline().rstrip(b"\r\n")
    kind, rest = line[:1], line[1:]
    if kind in (b"+", b"-"):
        return rest.decode()
    if kind == b":":
        return int(rest)
    if kind == b"$":
        length = int(rest)
        if length < 0:
            return None
        data = reader.read(length + 2)[:-2]
        return data.decode()
    if kind == b"*":
        count = int(rest)
        return None if count < 0 else [_read(reader) for _ in range(count)]
    raise ValueError(f"unexpected reply {line!r}")


class Upstream:
    """An OpenAI-compatible chat server: model `slow` takes 30 s, others `hold` s."""

    def __init__(self, hold=0.4):
        self.hold = hold
        self.lock = threading.Lock()
        self.active = 0
        self.most = 0
        self.served = 0
        upstream = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args):
                pass

            def do_GET(self):
                self._json({"object": "list", "data": [{"id": "m", "object": "model"}]})

            def do_POST(self):
                length = int(self.headers.get("content-length", 0))
                body = json.loads(self.rfile.read(length) or b"{}")
                with upstream.lock:
                    upstream.active += 1
                    upstream.most = max(upstream.most, upstream.active)
                try:
                    time.sleep(30 if body.get("model") == "slow" else upstream.hold)
                finally:
                    with upstream.lock:
                        upstream.active -= 1
                        upstream.served += 1
                self._json({
                    "id": "chatcmpl-1", "object": "chat.completion", "created": 1,
                    "model": body.get("model", "m"),
                    "choices": [{"index": 0, "finish_reason": "stop",
                                 "message": {"role": "assistant", "content": "ok"}}],
                    "usage": {"prompt_tokens": 3, "completion_tokens": 2, "total_tokens": 5},
                })

            def _json(self, value):
                data = json.dumps(value).encode()
                self.send_response(200)
                self.send_header("content-type", "application/json")
                self.send_header("content-length", str(len(data)))
                self.end_headers()
                try:
                    self.wfile.write(data)
                except OSError:
                    pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/v1"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self):
        self.server.shutdown()


class Gateway:
    def __init__(self, binary, directory, config):
        self.port = free_port()
        self.base = f"http://127.0.0.1:{self.port}"
        directory.mkdir(parents=True, exist_ok=True)
        self.directory = directory
        path = directory / "switchyard.toml"
        path.write_text(config.replace("{listen}", f"127.0.0.1:{self.port}"))
        self.log = open(directory / "gateway.log", "w")
        self.process = subprocess.Popen(
            [binary, "--config", str(path)],
            cwd=directory,
            stdout=self.log,
            stderr=subprocess.STDOUT,
            env={**os.environ, "RUST_LOG": "info"},
        )
        deadline = time.monotonic() + STARTUP_SECONDS
        while time.monotonic() < deadline:
            try:
                if self.health().get("redis") == "ok":
                    return
            except httpx.HTTPError:
                pass
            time.sleep(0.05)
        pytest.fail(f"gateway did not start with redis ok: {self.logs()}")

    def health(self):
        return httpx.get(f"{self.base}/health", timeout=5).json()

    def logs(self):
        self.log.flush()
        return (self.directory / "gateway.log").read_text()

    def stop(self, kill=False):
        stop(self.process, kill=kill)
        self.log.close()


def write_keys(directory, keys):
    path = directory / "keys.json"
    path.write_text(json.dumps(keys))
    return path


def cluster_config(keys, upstream, redis, max_concurrent=2, timeout_ms=1000):
    return f"""\
[server]
listen = "{{listen}}"
shutdown_timeout_secs = 1

[auth]
keys_file = {json.dumps(str(keys))}

[routing]
default_backend = "echo"

[[backends]]
name = "echo"
kind = "echo"

[[backends]]
name = "free"
kind = "openai"
url = "{upstream.url}"

[[backends]]
name = "gpu"
kind = "openai"
url = "{upstream.url}"
max_concurrent = {max_concurrent}
queue_timeout_secs = 30

[cluster]
redis_url = "redis://127.0.0.1:{redis.port}/0"
lease_secs = {LEASE_SECS}
instances = 3
timeout_ms = {timeout_ms}
"""


@pytest.fixture
def lease_secs():
    return LEASE_SECS


@pytest.fixture
def redis(tmp_path):
    server = Redis(tmp_path)
    server.start()
    yield server
    server.stop()


@pytest.fixture
def upstream():
    server = Upstream()
    yield server
    server.close()


@pytest.fixture
def cluster(tmp_path, redis, upstream):
    """Starts three gateways with `keys` (a dict as in the keys file); all stopped after."""
    binary = os.environ.get("SWITCHYARD_BIN")
    if not binary:
        pytest.fail("$SWITCHYARD_BIN is not set; run the suite through scripts/test")
    started = []

    def start(keys, max_concurrent=2, timeout_ms=1000):
        """A loaded test machine can miss the 50 ms default now and then, which would
        count some requests locally: the tests wait longer unless they test the wait."""
        path = write_keys(tmp_path, keys)
        config = cluster_config(path, upstream, redis, max_concurrent, timeout_ms)
        for index in range(3):
            started.append(Gateway(os.path.abspath(binary), tmp_path / f"g{index}", config))
        return started

    yield start
    for gateway in started:
        gateway.stop()

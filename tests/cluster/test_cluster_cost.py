"""What a limited key costs in Redis: its check is the one round trip of a request. The
tokens an answer used and its usage record ride with the next request's check; what no
request carries goes within a moment, in one call, and nothing is lost on the way.

A proxy between the gateway and Redis counts the gateway's writes: each one is a round
trip (a pipeline is written at once)."""

import os
import socket
import threading
import time

from conftest import Gateway, cluster_config, write_keys
from stack import free_port
from test_cluster import chat, wait_for

LIMITED = "sk-limited-0123456789"
REQUESTS = 30
# The upstream's every answer uses 5 tokens.
TOKENS = 5


class CountingProxy:
    """Relays TCP to Redis and counts what the gateway sends."""

    def __init__(self, target_port):
        self.port = free_port()
        self.writes = {"check": 0, "probe": 0, "other": 0}
        self.lock = threading.Lock()
        self.listener = socket.create_server(("127.0.0.1", self.port))
        self.target_port = target_port
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self):
        while True:
            try:
                client, _ = self.listener.accept()
            except OSError:
                return
            server = socket.create_connection(("127.0.0.1", self.target_port))
            threading.Thread(target=self._pump, args=(client, server, True), daemon=True).start()
            threading.Thread(target=self._pump, args=(server, client, False), daemon=True).start()

    def _pump(self, source, sink, counted):
        try:
            while data := source.recv(1 << 20):
                if counted:
                    # A request's limit check is the only call naming its rpm window;
                    # the background's probes are lone PINGs; anything else is what no
                    # request carried.
                    if b"switchyard:rpm:" in data:
                        kind = "check"
                    elif b"PING" in data and b"XADD" not in data and b"EVALSHA" not in data:
                        kind = "probe"
                    else:
                        kind = "other"
                    with self.lock:
                        self.writes[kind] += 1
                sink.sendall(data)
        except OSError:
            pass
        finally:
            for end in (source, sink):
                try:
                    end.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass

    def count(self):
        with self.lock:
            return dict(self.writes)

    def close(self):
        self.listener.close()


def test_a_limited_key_costs_one_redis_round_trip_per_request(tmp_path, redis, upstream):
    proxy = CountingProxy(redis.port)
    # Answers come at once, so requests follow each other within the 100 ms a charge
    # waits for a ride, as under load.
    upstream.hold = 0
    keys = write_keys(tmp_path, {LIMITED: {"user": "carol", "rpm": 1000, "tpm": 1_000_000}})
    gateway = Gateway(
        os.path.abspath(os.environ["SWITCHYARD_BIN"]),
        tmp_path / "g",
        cluster_config(keys, upstream, proxy),
    )
    try:
        assert chat(gateway, LIMITED, "free/m").status_code == 200
        time.sleep(0.5)
        before, started = proxy.count(), time.monotonic()
        for _ in range(REQUESTS):
            assert chat(gateway, LIMITED, "free/m").status_code == 200
        elapsed = time.monotonic() - started
        writes = {kind: count - before[kind] for kind, count in proxy.count().items()}
        # One round trip per request, its check, carrying the earlier answers' charges
        # and records. The background sends only what waited 100 ms for a ride, so at
        # most one call per 100 ms (none while requests keep coming); charging and
        # recording each answer on its own would take two more per request.
        assert writes["check"] == REQUESTS, writes
        assert writes["other"] <= elapsed / 0.1 + 1, (writes, elapsed)

        # A Redis that lost its scripts (restarted, or flushed) refuses the check with
        # NOSCRIPT after what rode along went in: the check is sent again, and what
        # rode along is not.
        redis.command("SCRIPT", "FLUSH")
        [window] = redis.command("KEYS", "switchyard:rpm:*")
        assert chat(gateway, LIMITED, "free/m").status_code == 200
        assert redis.command("ZCARD", window) == REQUESTS + 2
        answered = REQUESTS + 2

        # Nothing was lost, nothing was sent twice: every record is in the stream once,
        # every token charged once.
        wait_for(lambda: redis.command("XLEN", "switchyard:usage") == answered, 5,
                 "every record in the stream")
        time.sleep(0.3)
        assert redis.command("XLEN", "switchyard:usage") == answered
        [bucket] = redis.command("KEYS", "switchyard:tpm:*")
        charged = redis.command("HVALS", bucket)
        assert sum(int(tokens) for tokens in charged) == TOKENS * answered
    finally:
        gateway.stop()
        proxy.close()

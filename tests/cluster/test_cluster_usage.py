"""Usage across the instances: every record in one Redis stream, `switchyard usage
--cluster` totalling them, and records made while Redis was gone sent when it is back."""

import json
import os
import subprocess

from test_cluster import chat as cluster_chat
from test_cluster import wait_for

ALICE = "sk-alice-0123456789"
BOB = "sk-bob-0123456789ab"


def chat(gateway, key):
    """A one-line chat with the echo backend, which has no slot limit to wait on."""
    return cluster_chat(gateway, key, model="echo/m", timeout=30)


def usage(gateway, *args):
    done = subprocess.run(
        [os.path.abspath(os.environ["SWITCHYARD_BIN"]), "usage", "--cluster",
         "--config", str(gateway.directory / "switchyard.toml"), "--json", *args],
        capture_output=True, text=True, timeout=30, cwd=gateway.directory,
    )
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout)


def test_usage_cluster_totals_the_requests_of_all_three(cluster, redis):
    gateways = cluster({ALICE: "alice", BOB: "bob"})
    for index, gateway in enumerate(gateways):
        for _ in range(index + 1):
            assert chat(gateway, ALICE).status_code == 200
        assert chat(gateway, BOB).status_code == 200
    wait_for(lambda: redis.command("XLEN", "switchyard:usage") == 9, 5, "nine records in the stream")
    report = usage(gateways[0])
    assert report["total"]["requests"] == 9
    by_user = usage(gateways[1], "--by", "user")
    assert {row["user"]: row["requests"] for row in by_user["rows"]} == {"alice": 6, "bob": 3}
    # Each instance's own ledger has only its own requests (its writer gathers rows
    # for up to a quarter second before a transaction).
    def local_requests():
        local = subprocess.run(
            [os.path.abspath(os.environ["SWITCHYARD_BIN"]), "usage", "--json",
             "--config", str(gateways[2].directory / "switchyard.toml")],
            capture_output=True, text=True, timeout=30, cwd=gateways[2].directory,
        )
        assert local.returncode == 0, local.stderr
        return json.loads(local.stdout)["total"]["requests"]

    wait_for(lambda: local_requests() == 4, 5, "four requests in the third instance's ledger")
    assert usage(gateways[0], "--since", "1h")["total"]["requests"] == 9
    # A record sent twice (a call given up after it reached Redis is sent again) counts
    # once: each carries its own id.
    [[_, fields]] = redis.command("XRANGE", "switchyard:usage", "-", "+", "COUNT", 1)
    redis.command("XADD", "switchyard:usage", "*", *fields)
    assert redis.command("XLEN", "switchyard:usage") == 10
    assert usage(gateways[0])["total"]["requests"] == 9


def test_records_made_while_redis_was_gone_reach_the_stream(cluster, redis):
    gateways = cluster({ALICE: "alice"})
    redis.stop()
    for gateway in gateways:
        wait_for(lambda: gateway.health().get("redis") == "unreachable", 5, "redis is gone")
    for index in range(6):
        assert chat(gateways[index % 3], ALICE).status_code == 200
    redis.start()
    for gateway in gateways:
        wait_for(lambda: gateway.health().get("redis") == "ok", 10, "redis is back")
    for gateway in gateways:
        assert chat(gateway, ALICE).status_code == 200
    # Redis came back empty: the six held records and the three since, none lost.
    wait_for(lambda: redis.command("XLEN", "switchyard:usage") == 9, 10, "every record sent")
    assert usage(gateways[0])["total"]["requests"] == 9
